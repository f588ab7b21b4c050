// Layer-by-layer evaluation (train/streamed.h) against the whole-model path it replaces by
// default: `shrink eval` (nll_over_windows on a loaded model) on a trained micro model, float and
// quantized (W8A8 static with SmoothQuant, W4A16 GPTQ with act-order groups and zero points), in
// batches with a short tail window and lm_head blocks that do not divide the
// vocabulary; spilled states give the same result as states in memory. The HF fixtures
// (transformers' logits) are checked in test_model.cpp; compare_streamed against the whole-model
// accuracy report in test_quantize.cpp.
#include <gtest/gtest.h>

#include <filesystem>

#include "core/dataset.h"
#include "core/tokens.h"
#include "tests/train/util.h"
#include "train/api.h"
#include "train/quantize.h"
#include "train/streamed.h"

namespace fs = std::filesystem;
using namespace shrink;
using namespace shrink::train;

namespace {

// The trained micro model of make_inputs, once per test binary run.
std::string trained_model(const std::string& dir) {
  test::trained_micro_model(dir, 30, 17);
  return dir + "/run/model";
}

}  // namespace

TEST(Streamed, EvalEqualsTheWholeModelPathFloatAndQuantized) {
  env_init(2);
  const std::string dir = test::temp_dir("streamed_eval");
  const std::string model = trained_model(dir);
  struct Case {
    const char* name;
    const char* scheme;
    const char* method;
    const char* acts;
    const char* sq;
    bool asym, groups;
  };
  std::vector<std::string> dirs = {model};
  for (Case c : {Case{"w8a8", "w8a8", "rtn", "static", "0.5", false, false},
                 Case{"w4a16", "w4a16", "gptq", "dynamic", "", true, true}}) {
    QuantizeOptions o;
    o.model = model;
    o.out = dir + "/" + c.name;
    o.scheme = c.scheme;
    o.method = c.method;
    o.activations = c.acts;
    o.smoothquant = c.sq;
    o.asym = c.asym;
    o.act_order = o.act_order_groups = c.groups;
    o.group_size = std::string(c.scheme) == "w8a8" ? 0 : 32;
    o.data = dir + "/data";
    o.calib_samples = 4;
    o.calib_len = 32;
    o.eval_tokens = 0;
    quantize_run(o);
    dirs.push_back(o.out);
  }
  int compared = 0;
  for (const std::string& d : dirs) {
    for (int64_t batch : {1, 3}) {
      EvalOptions eo;
      eo.source.data = dir + "/data";
      eo.source.split = "val";
      eo.source.max_tokens = 1000;  // 41 windows of 24 and a tail of 16
      eo.seq_len = 24;
      eo.batch = batch;
      eo.load_model = true;
      const EvalResult whole = eval_perplexity(d, eo);
      eo.load_model = false;
      const EvalResult streamed = eval_perplexity(d, eo);
      const std::string what = d + " batch " + std::to_string(batch);
      EXPECT_TRUE(streamed.streamed) << what;
      EXPECT_FALSE(whole.streamed) << what;
      EXPECT_EQ(streamed.tokens_scored, whole.tokens_scored) << what;
      EXPECT_EQ(streamed.tokens_scored, 41u * 23u + 15u) << what;
      EXPECT_NEAR(streamed.mean_nll, whole.mean_nll, 1e-6 * whole.mean_nll) << what;
      EXPECT_GT(whole.mean_nll, 0.1) << what;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 6);
  fs::remove_all(dir);
}

// Small lm_head blocks (7 rows, not dividing the vocabulary of 64) and spilled states: the
// block-by-block log-sum-exp gives the whole-block result to rounding, and spilling changes
// nothing at all.
TEST(Streamed, HeadBlocksAndSpilledStates) {
  env_init(2);
  const std::string dir = test::temp_dir("streamed_blocks");
  const std::string model = trained_model(dir);
  core::TokenSource src;
  src.data = dir + "/data";
  src.split = "val";
  src.max_tokens = 700;
  const core::LoadedTokens data = core::tokens_load(model, 64, src, false).take_or_throw();
  StreamedEvalOptions o;
  o.seq_len = 32;
  o.batch = 4;
  const StreamedEval one_block = nll_streamed(model, data.tokens.data(), data.tokens.size(), o);
  EXPECT_FALSE(one_block.states_spilled);
  EXPECT_EQ(one_block.states_bytes, 700u * 32u * 4u);
  EXPECT_EQ(one_block.bytes_read, core::Checkpoint::open(model).take_or_throw().total_bytes());
  EXPECT_GT(one_block.bytes_read, 0u);
  o.head_block = 7;
  const StreamedEval blocks = nll_streamed(model, data.tokens.data(), data.tokens.size(), o);
  EXPECT_EQ(blocks.scored, one_block.scored);
  EXPECT_NEAR(blocks.nll_sum, one_block.nll_sum, 1e-6 * one_block.nll_sum);
  o.max_memory = "1k";
  o.spill_dir = dir;
  const StreamedEval spilled = nll_streamed(model, data.tokens.data(), data.tokens.size(), o);
  EXPECT_TRUE(spilled.states_spilled);
  EXPECT_EQ(spilled.nll_sum, blocks.nll_sum);  // the same arithmetic, bit for bit
  // A model compared with itself: no divergence, full agreement, its own NLL twice.
  const StreamedEval self = compare_streamed(model, model, data.tokens.data(), data.tokens.size(), o);
  EXPECT_EQ(self.nll_sum, blocks.nll_sum);
  EXPECT_EQ(self.ref_nll_sum, blocks.nll_sum);
  EXPECT_EQ(self.top1_same, self.scored);
  EXPECT_NEAR(self.kl_sum, 0.0, 1e-9 * double(self.scored));
  fs::remove_all(dir);
}

TEST(Streamed, RejectsBadWindowsAndMismatchedModels) {
  env_init(1);
  const std::string dir = test::temp_dir("streamed_bad");
  const std::string model = trained_model(dir);
  std::vector<int32_t> tokens(100, 3);
  StreamedEvalOptions o;
  o.seq_len = 1;
  try {
    nll_streamed(model, tokens.data(), tokens.size(), o);
    ADD_FAILURE() << "seq_len 1 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("--seq-len"), std::string::npos) << e.what();
  }
  o.seq_len = 16;
  tokens[50] = 64;  // outside the vocabulary of 64
  try {
    nll_streamed(model, tokens.data(), tokens.size(), o);
    ADD_FAILURE() << "token 64 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("token id 64"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}
