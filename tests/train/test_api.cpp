// Tests of the LibTorch entry points: perplexity definition (windows, HF agreement, random-init
// perplexity ~ vocabulary size), generation determinism, random init, BLAS detection.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/dataset.h"
#include "core/safetensors.h"
#include "train/api.h"
#include "train/model.h"
#include "tests/train/util.h"

namespace fs = std::filesystem;
using namespace shrink;

namespace {

std::string write_tokens(const std::string& dir, const std::vector<int32_t>& toks, int32_t vocab) {
  core::ShardWriter w(dir, "all", vocab, "test");
  EXPECT_TRUE(w.append(toks.data(), toks.size()).is_ok());
  auto shards = w.finish().take_or_throw();
  return shards.at(0);
}

}  // namespace

TEST(Eval, RandomInitPerplexityIsOfTheOrderOfTheVocabulary) {
  const int64_t V = 500;
  std::string dir = test::temp_dir("randppl");
  train::model_init(test::micro_config(V), dir + "/model", {});
  std::mt19937 rng(1);
  std::vector<int32_t> toks(3000);
  for (auto& t : toks) t = int32_t(rng() % V);
  train::EvalOptions o;
  o.source.data = write_tokens(dir, toks, int32_t(V));
  o.seq_len = 128;
  train::EvalResult r = train::eval_perplexity(dir + "/model", o);
  // Init std 0.02 makes the logits nearly flat: perplexity ~ V (uniform would be exactly V).
  EXPECT_GT(r.perplexity, 0.8 * V);
  EXPECT_LT(r.perplexity, 1.25 * V);
  EXPECT_NEAR(r.mean_nll, std::log(double(V)), 0.2);
  // 3000 tokens / 128 = 23 full windows + a tail of 56.
  EXPECT_EQ(r.windows, 24u);
  EXPECT_EQ(r.tokens_scored, 23u * 127u + 55u);
  fs::remove_all(dir);
}

TEST(Eval, TextOfExactlySeqLenTokensIsOneWindow) {
  std::string dir = test::temp_dir("onewin");
  train::model_init(test::micro_config(64), dir + "/model", {});
  std::vector<int32_t> toks(32);
  for (int i = 0; i < 32; ++i) toks[size_t(i)] = i;
  train::EvalOptions o;
  o.source.data = write_tokens(dir, toks, 64);
  o.seq_len = 32;
  train::EvalResult r = train::eval_perplexity(dir + "/model", o);
  EXPECT_EQ(r.windows, 1u);
  EXPECT_EQ(r.tokens_scored, 31u);
  fs::remove_all(dir);
}

TEST(Eval, MeanNllMatchesTransformersOnStories260K) {
  std::string model = std::string(SHRINK_SHARED_DIR) + "/models/stories260K";
  if (!fs::exists(model + "/model.safetensors")) {
    GTEST_SKIP() << model << " is not present (a clone without ../shared): not tested here";
  }
  auto ref = core::SafetensorsFile::open(std::string(SHRINK_FIXTURES_DIR) +
                                         "/hf/stories260K/reference.safetensors")
                 .take_or_throw();
  const core::TensorInfo* ids = ref->find("input_ids");
  std::vector<int32_t> toks(size_t(ids->numel()));
  std::memcpy(toks.data(), ref->data(*ids), ids->nbytes);
  float want = 0;
  std::memcpy(&want, ref->data(*ref->find("mean_nll")), 4);
  std::string dir = test::temp_dir("stories");
  train::EvalOptions o;
  o.source.data = write_tokens(dir, toks, 512);
  o.seq_len = ids->shape[1];  // the two reference rows are two non-overlapping windows
  train::EvalResult r = train::eval_perplexity(model, o);
  EXPECT_EQ(r.windows, 2u);
  EXPECT_NEAR(r.mean_nll, want, 1e-4);
  fs::remove_all(dir);
}

TEST(Eval, TokenOutsideVocabularyIsRejected) {
  std::string dir = test::temp_dir("oov");
  train::model_init(test::micro_config(50), dir + "/model", {});
  train::EvalOptions o;
  o.source.data = write_tokens(dir, {1, 2, 70, 3}, 100);
  try {
    train::eval_perplexity(dir + "/model", o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("token 70 at position 2"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Generate, SeededSamplingIsDeterministicAndGreedyIsArgmax) {
  std::string dir = test::temp_dir("gen");
  train::model_init(test::micro_config(80), dir + "/model", {3, ""});
  train::GenerateOptions g;
  g.prompt_ids = {1, 2, 3};
  g.max_new_tokens = 12;
  g.stop_at_eos = false;
  g.sampling.temperature = 1.0f;
  g.seed = 11;
  auto a = train::generate(dir + "/model", g);
  auto b = train::generate(dir + "/model", g);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.ids.size(), 15u);
  g.seed = 12;
  EXPECT_NE(train::generate(dir + "/model", g).ids, a.ids);
  // Greedy = argmax of a full forward at every step.
  g.sampling.temperature = 0;
  auto gr = train::generate(dir + "/model", g);
  train::CausalLM m = train::model_load(dir + "/model");
  torch::NoGradGuard ng;
  std::vector<int64_t> seq(gr.ids.begin(), gr.ids.begin() + 3);
  for (int s = 0; s < 12; ++s) {
    auto logits = m->forward(torch::tensor(seq).unsqueeze(0)).logits;
    seq.push_back(logits[0][logits.size(1) - 1].argmax().item<int64_t>());
  }
  EXPECT_EQ(std::vector<int64_t>(gr.ids.begin(), gr.ids.end()), seq);
  fs::remove_all(dir);
}

TEST(Env, ThreadsAndBlasAreReported) {
  train::EnvInfo e = train::env_init(2);
  EXPECT_EQ(torch::get_num_threads(), 2);
  EXPECT_FALSE(e.blas_library.empty());
  // The warning text is produced exactly when the BLAS is the reference one.
  EXPECT_EQ(train::env_blas_warning(e).empty(), !e.blas_is_reference);
}
