// The runtime engine end to end:
//  - logits and greedy ids against Hugging Face transformers' reference outputs on the
//    checkpoints it wrote (tests/fixtures/hf: GQA + llama3 RoPE, Qwen2 bias + tied + bf16,
//    Mistral MQA + linear RoPE, sharded f16), with the tolerance of tests/train/test_model.cpp;
//  - KV-cache decode == full-sequence forward; a mixed-length batch == separate runs;
//    1 thread == 2 threads bit for bit; every ISA level agrees (a level the CPU lacks is a
//    visible skip, EngineIsa.AgreesWithRef/<isa>);
//  - int8 models (written by util.h's quantizer): W8A16 == the dequantised float model, W8A8
//    close to it, every scheme's decode == full forward; perplexity on a token file;
//  - malformed and unsupported models fail with kInvalidInput and a message naming the problem.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <tuple>

#include "core/dataset.h"
#include "core/sampling.h"
#include "core/tokens.h"
#include "kernels/cpu/isa.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "tests/runtime/util.h"

namespace fs = std::filesystem;
using namespace shrink;
using runtime::Engine;
using runtime::EngineOptions;
using runtime::SeqChunk;

namespace {

std::unique_ptr<Engine> load(const std::string& dir, EngineOptions o = {}) {
  auto r = Engine::load(dir, o);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

std::vector<float> run(Engine& e, int slot, const std::vector<int32_t>& ids, bool all = true) {
  std::vector<float> logits;
  Status st = e.forward({{slot, ids.data(), int64_t(ids.size())}}, all, logits);
  EXPECT_TRUE(st.is_ok()) << st.message();
  return logits;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

float max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float amax = 0;
  for (float v : b) amax = std::max(amax, std::fabs(v));
  return max_abs_diff(a, b) / amax;
}

const std::vector<int32_t> kSeq = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4};

}  // namespace

// ---- agreement with Hugging Face transformers --------------------------------------------------

class HfFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(HfFixture, LogitsAndGreedyMatchTransformers) {
  const std::string dir = test::fixture(GetParam());
  auto ref = core::SafetensorsFile::open(dir + "/reference.safetensors").take_or_throw();
  auto shape = ref->find("input_ids")->shape;
  auto ids_f = test::tensor_f32(*ref, "input_ids");
  auto want = test::tensor_f32(*ref, "logits");
  const int64_t B = shape[0], T = shape[1];
  EngineOptions o;
  o.max_batch = int(B);
  o.float_weights = "exact";  // transformers computed the reference in float32 (bf16 upcast)
  auto e = load(dir, o);
  ASSERT_TRUE(e);
  // All sequences of the reference batch in one forward (a batch of equal lengths).
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(B));
  std::vector<SeqChunk> chunks;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) seqs[static_cast<size_t>(b)].push_back(int32_t(ids_f[static_cast<size_t>(b * T + t)]));
    chunks.push_back({int(b), seqs[static_cast<size_t>(b)].data(), T});
  }
  std::vector<float> got;
  ASSERT_TRUE(e->forward(chunks, true, got).is_ok());
  // Tolerance: as tests/train/test_model.cpp: both sides compute in float32 in different op
  // orders; logits here are O(1) and differ by ~1e-6.
  const float d = max_abs_diff(got, want);
  EXPECT_LE(d, 2e-4f) << GetParam();
  std::printf("%s: max |logit diff| vs transformers %.3g (max relative %.3g)\n", GetParam(),
              double(d), double(max_rel_diff(got, want)));
  // Greedy continuation, token for token.
  auto prompt_f = test::tensor_f32(*ref, "greedy_prompt");
  auto greedy = test::tensor_f32(*ref, "greedy_ids");
  std::vector<int32_t> prompt(prompt_f.begin(), prompt_f.end());
  runtime::GenerateOptions g;
  g.max_new_tokens = int64_t(greedy.size() - prompt.size());
  g.stop_at_eos = false;
  auto r = runtime::generate(*e, prompt, g);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(std::vector<float>(r->ids.begin(), r->ids.end()), greedy) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Transformers, HfFixture,
                         ::testing::Values("llama_gqa_llama3rope", "qwen2_bias_tied_bf16",
                                           "mistral_mqa_linearrope", "llama_mha_sharded_f16"));

TEST(Stories260K, PretrainedCheckpointMatchesTransformers) {
  const std::string dir = std::string(SHRINK_SHARED_DIR) + "/models/stories260K";
  if (!fs::exists(dir + "/model.safetensors")) {
    GTEST_SKIP() << dir << " is not present (a clone without ../shared): not tested here";
  }
  auto ref = core::SafetensorsFile::open(test::fixture("stories260K") + "/reference.safetensors")
                 .take_or_throw();
  auto shape = ref->find("input_ids")->shape;
  auto ids_f = test::tensor_f32(*ref, "input_ids");
  auto want = test::tensor_f32(*ref, "logits");
  EngineOptions o;
  o.max_batch = int(shape[0]);
  auto e = load(dir, o);
  ASSERT_TRUE(e);
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(shape[0]));
  std::vector<SeqChunk> chunks;
  for (int64_t b = 0; b < shape[0]; ++b) {
    for (int64_t t = 0; t < shape[1]; ++t) seqs[static_cast<size_t>(b)].push_back(int32_t(ids_f[static_cast<size_t>(b * shape[1] + t)]));
    chunks.push_back({int(b), seqs[static_cast<size_t>(b)].data(), shape[1]});
  }
  std::vector<float> got;
  ASSERT_TRUE(e->forward(chunks, true, got).is_ok());
  EXPECT_LE(max_abs_diff(got, want), 5e-4f);  // as test_model.cpp's stories260K tolerance
}

// ---- KV cache, batches, threads, ISA ------------------------------------------------------------

TEST(Engine, DecodeThroughKvCacheEqualsFullForward) {
  EngineOptions o;
  o.float_weights = "exact";  // the same arithmetic for 20 rows as for one (see AutoKeeps...)
  for (const char* m : {"llama_gqa_llama3rope", "qwen2_bias_tied_bf16", "mistral_mqa_linearrope"}) {
    auto e = load(test::fixture(m), o);
    ASSERT_TRUE(e);
    auto full = run(*e, 0, kSeq);
    e->reset(0);
    std::vector<float> inc = run(*e, 0, std::vector<int32_t>(kSeq.begin(), kSeq.begin() + 7));
    for (size_t t = 7; t < kSeq.size(); ++t) {
      auto step = run(*e, 0, {kSeq[t]});
      inc.insert(inc.end(), step.begin(), step.end());
    }
    EXPECT_EQ(e->length(0), int64_t(kSeq.size()));
    // Tolerance: prefill rows go through oneDNN (M >= 8), decode rows through our GEMV; both
    // float32, different summation orders: ~1e-6 on O(1) logits.
    EXPECT_LE(max_abs_diff(inc, full), 1e-4f) << m;
  }
}

TEST(Engine, SlidingWindowDecodeEqualsFullForward) {
  // Mistral fixture with a window of 4 (shorter than the sequence), via a patched config.
  const std::string dir = test::temp_dir("window");
  for (const auto& f : fs::directory_iterator(test::fixture("mistral_mqa_linearrope"))) {
    fs::copy(f.path(), dir + "/" + f.path().filename().string());
  }
  auto text = core::read_file(dir + "/config.json").take_or_throw();
  auto j = nlohmann::json::parse(text);
  j["sliding_window"] = 4;
  ASSERT_TRUE(core::write_file_atomic(dir + "/config.json", j.dump()).is_ok());
  auto e = load(dir);
  ASSERT_TRUE(e);
  auto full = run(*e, 0, kSeq);
  e->reset(0);
  std::vector<float> inc;
  for (int32_t t : kSeq) {
    auto s = run(*e, 0, {t});
    inc.insert(inc.end(), s.begin(), s.end());
  }
  EXPECT_LE(max_abs_diff(inc, full), 1e-4f);
  // And the window matters: the unwindowed model differs.
  auto plain = load(test::fixture("mistral_mqa_linearrope"));
  EXPECT_GT(max_abs_diff(run(*plain, 0, kSeq), full), 1e-3f);
}

TEST(Engine, MixedLengthBatchEqualsSeparateRuns) {
  EngineOptions o;
  o.max_batch = 3;
  auto e = load(test::fixture("llama_gqa_llama3rope"), o);
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  std::vector<int32_t> a(kSeq.begin(), kSeq.begin() + 13), b(kSeq.begin() + 2, kSeq.begin() + 5),
      c = {7};
  std::vector<float> sa = run(*e, 0, a, false), sb = run(*e, 1, b, false), sc = run(*e, 2, c, false);
  e->reset_all();
  std::vector<float> batch;
  ASSERT_TRUE(e->forward({{0, a.data(), 13}, {1, b.data(), 3}, {2, c.data(), 1}}, false, batch).is_ok());
  ASSERT_EQ(batch.size(), static_cast<size_t>(3 * V));
  EXPECT_LE(max_abs_diff(std::vector<float>(batch.begin(), batch.begin() + V), sa), 1e-4f);
  EXPECT_LE(max_abs_diff(std::vector<float>(batch.begin() + V, batch.begin() + 2 * V), sb), 1e-4f);
  EXPECT_LE(max_abs_diff(std::vector<float>(batch.begin() + 2 * V, batch.end()), sc), 1e-4f);
  // Then one decode step for all three, each at a different position.
  std::vector<int32_t> nx = {1, 2, 3};
  ASSERT_TRUE(e->forward({{0, &nx[0], 1}, {1, &nx[1], 1}, {2, &nx[2], 1}}, false, batch).is_ok());
  e->reset_all();
  auto a2 = a;
  a2.push_back(1);
  auto ref0 = run(*e, 0, a2, false);
  EXPECT_LE(max_abs_diff(std::vector<float>(batch.begin(), batch.begin() + V), ref0), 1e-4f);
}

TEST(Engine, ForwardSampleIsTheSamplerOnTheLogits) {
  EngineOptions o;
  o.max_batch = 3;
  auto e = load(test::fixture("llama_gqa_llama3rope"), o);
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  std::vector<int32_t> a(kSeq.begin(), kSeq.begin() + 9), b(kSeq.begin() + 4, kSeq.begin() + 7),
      c = {7};
  const std::vector<SeqChunk> chunks = {{0, a.data(), 9}, {1, b.data(), 3}, {2, c.data(), 1}};
  std::vector<float> logits;
  ASSERT_TRUE(e->forward(chunks, false, logits).is_ok());
  e->reset_all();
  std::vector<core::SampleRow> rows(3);
  rows[1].temperature = 0.8f;
  rows[1].top_k = 20;
  rows[1].u = 0.37;
  rows[2].temperature = 1.3f;
  rows[2].top_p = 0.9f;
  rows[2].u = 0.81;
  std::vector<int32_t> next;
  ASSERT_TRUE(e->forward_sample(chunks, rows, next).is_ok());
  ASSERT_EQ(next.size(), 3u);
  std::vector<std::pair<float, int32_t>> scratch;
  for (size_t r = 0; r < 3; ++r) {
    const float* x = logits.data() + r * size_t(V);
    EXPECT_EQ(next[r], core::sample_select(x, V, rows[r])) << r;
    EXPECT_EQ(next[r], core::sample_sorted(x, V, rows[r], scratch)) << r;
  }
  EXPECT_EQ(next[0], core::argmax(logits.data(), V));
  // The slots advanced as in any forward.
  EXPECT_EQ(e->length(0), 9);
  EXPECT_EQ(e->length(2), 1);
  // One row per sequence, and valid parameters.
  e->reset_all();
  Status st = e->forward_sample(chunks, {rows[0]}, next);
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput);
  EXPECT_NE(st.message().find("1 sampling rows for 3 sequences"), std::string::npos) << st.message();
  rows[1].u = 1.0;
  EXPECT_EQ(e->forward_sample(chunks, rows, next).code(), StatusCode::kInvalidInput);
}

TEST(Engine, SampledGenerateEqualsTheSamplerOverFullLogits) {
  auto e = load(test::fixture("qwen2_bias_tied_bf16"));
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  runtime::GenerateOptions g;
  g.max_new_tokens = 16;
  g.stop_at_eos = false;
  g.sampling = {0.9f, 30, 0.95f};
  g.seed = 5;
  const std::vector<int32_t> prompt(kSeq.begin(), kSeq.begin() + 5);
  auto r = runtime::generate(*e, prompt, g);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  // The path generate took before device sampling: full logits to the host, Sampler::sample.
  core::Sampler s(g.sampling, g.seed);
  std::vector<int32_t> ids = prompt;
  e->reset_all();
  std::vector<float> logits;
  ASSERT_TRUE(e->forward({{0, ids.data(), int64_t(ids.size())}}, false, logits).is_ok());
  for (int t = 0; t < 16; ++t) {
    ids.push_back(s.sample(logits.data(), V));
    if (t + 1 < 16) {
      ASSERT_TRUE(e->forward({{0, &ids.back(), 1}}, false, logits).is_ok());
    }
  }
  EXPECT_EQ(r.value().ids, ids);
}

// Prompts long enough for the blocked attention kernel's several query and key blocks: one
// 200-token prefill equals the same tokens as two prefill chunks (the second starts at position
// 120, so its keys span both chunks) and as a prefill then decode steps (the one-query kernel),
// with GQA (Llama, 2 KV heads for 4) and MQA (Mistral, 1), with and without a sliding window
// (Mistral), in a batch next to a decode row, and on 1 or 2 threads.
TEST(Engine, LongPrefillBlockedAttentionEqualsChunksAndDecode) {
  std::vector<int32_t> seq(200);
  for (size_t i = 0; i < seq.size(); ++i) seq[i] = int32_t((i * 37 + 11) % 300);
  std::string windowed_dir;
  const std::pair<const char*, int64_t> cases[] = {
      {"llama_gqa_llama3rope", 0}, {"mistral_mqa_linearrope", 0}, {"mistral_mqa_linearrope", 50}};
  for (const auto& [m, window] : cases) {
    {
      std::string dir = test::fixture(m);
      if (window > 0) {
        dir = test::temp_dir(std::string("longwin_") + m);
        for (const auto& f : fs::directory_iterator(test::fixture(m))) {
          fs::copy(f.path(), dir + "/" + f.path().filename().string(),
                   fs::copy_options::overwrite_existing);
        }
        auto j = nlohmann::json::parse(core::read_file(dir + "/config.json").take_or_throw());
        j["sliding_window"] = window;
        ASSERT_TRUE(core::write_file_atomic(dir + "/config.json", j.dump()).is_ok());
        windowed_dir = dir;
      }
      const std::string tag = std::string(m) + " window " + std::to_string(window);
      EngineOptions o;
      o.max_batch = 2;
      auto e = load(dir, o);
      ASSERT_TRUE(e) << tag;
      const auto full = run(*e, 0, seq);
      e->reset_all();
      auto chunked = run(*e, 0, std::vector<int32_t>(seq.begin(), seq.begin() + 120));
      const auto rest = run(*e, 0, std::vector<int32_t>(seq.begin() + 120, seq.end()));
      chunked.insert(chunked.end(), rest.begin(), rest.end());
      EXPECT_LE(max_abs_diff(chunked, full), 1e-4f) << tag;
      e->reset_all();
      auto inc = run(*e, 0, std::vector<int32_t>(seq.begin(), seq.begin() + 180));
      for (size_t t = 180; t < seq.size(); ++t) {
        const auto step = run(*e, 0, {seq[t]});
        inc.insert(inc.end(), step.begin(), step.end());
      }
      EXPECT_LE(max_abs_diff(inc, full), 1e-4f) << tag;
      // A 40-token chunk of slot 1 next to a decode row of slot 0, in one forward.
      e->reset_all();
      (void)run(*e, 0, std::vector<int32_t>(seq.begin(), seq.begin() + 10));
      std::vector<float> both;
      const std::vector<int32_t> one = {seq[10]};
      ASSERT_TRUE(e->forward({{0, one.data(), 1}, {1, seq.data(), 40}}, true, both).is_ok());
      const int64_t V = e->config().vocab_size;
      const std::vector<float> row0(both.begin(), both.begin() + V), rows1(both.begin() + V, both.end());
      EXPECT_LE(max_abs_diff(row0, std::vector<float>(full.begin() + 10 * V, full.begin() + 11 * V)),
                1e-4f) << tag;
      EXPECT_LE(max_abs_diff(rows1, std::vector<float>(full.begin(), full.begin() + 40 * V)), 1e-4f)
          << tag;
      // Threads split the blocked tasks; every output row is still one task's.
      EngineOptions o2 = o;
      o2.threads = 2;
      auto e2 = load(dir, o2);
      ASSERT_TRUE(e2);
      EXPECT_LE(max_abs_diff(run(*e2, 0, seq), full), 1e-5f) << tag;
    }
  }
  // The window must matter over 200 tokens.
  auto plain = load(test::fixture("mistral_mqa_linearrope"));
  ASSERT_TRUE(plain);
  auto windowed = load(windowed_dir);
  ASSERT_TRUE(windowed);
  EXPECT_GT(max_abs_diff(run(*plain, 0, seq), run(*windowed, 0, seq)), 1e-3f);
}

TEST(Engine, F16AndInt8KvCachesAreCloseToF32AndSelfConsistent) {
  std::vector<int32_t> seq(200);
  for (size_t i = 0; i < seq.size(); ++i) seq[i] = int32_t((i * 37 + 11) % 300);
  // f16 keeps 11 significant bits; int8 per (token, KV head) about 8 below the row's maximum.
  const std::pair<const char*, float> kinds[] = {{"f16", 5e-3f}, {"int8", 2e-2f}};
  for (const auto& [kv, tol] : kinds) {
    for (const char* m : {"llama_gqa_llama3rope", "mistral_mqa_linearrope"}) {
      SCOPED_TRACE(std::string(m) + " " + kv);
      EngineOptions oh;
      oh.kv_cache = kv;
      auto e32 = load(test::fixture(m)), e16 = load(test::fixture(m), oh);
      ASSERT_TRUE(e32 && e16);
      const std::string named = std::string(kv) + " kv cache";
      EXPECT_NE(e16->describe().find(named), std::string::npos) << e16->describe();
      EXPECT_EQ(e32->describe().find("kv cache"), std::string::npos) << e32->describe();
      const auto l32 = run(*e32, 0, seq), l16 = run(*e16, 0, seq);
      // Keys and values are rounded when written: the logits move, by little.
      const float diff = max_abs_diff(l16, l32);
      EXPECT_GT(diff, 0.0f);
      EXPECT_LT(max_rel_diff(l16, l32), tol);
      // The greedy token is the same wherever f32's top-2 margin exceeds twice the largest change.
      const int64_t V = e32->config().vocab_size;
      int64_t decided = 0;
      for (size_t t = 0; t < seq.size(); ++t) {
        const float* a = l32.data() + int64_t(t) * V;
        const float* b = l16.data() + int64_t(t) * V;
        std::vector<float> row(a, a + V);
        std::partial_sort(row.begin(), row.begin() + 2, row.end(), std::greater<float>());
        if (row[0] - row[1] <= 2 * diff) continue;
        ++decided;
        EXPECT_EQ(std::max_element(a, a + V) - a, std::max_element(b, b + V) - b)
            << "position " << t;
      }
      EXPECT_GT(decided, int64_t(seq.size()) / 4);
      // Within one cache, prefill (blocked) and decode (split-K) read the same stored values.
      e16->reset_all();
      auto inc = run(*e16, 0, std::vector<int32_t>(seq.begin(), seq.begin() + 150));
      for (size_t t = 150; t < seq.size(); ++t) {
        const auto step = run(*e16, 0, {seq[t]});
        inc.insert(inc.end(), step.begin(), step.end());
      }
      EXPECT_LE(max_abs_diff(inc, l16), 1e-4f);
    }
  }
  using Bad = std::tuple<const char*, const char*, const char*>;  // kv_cache, device, message
  for (const auto& [kv, device, needle] :
       {Bad{"int4", "cpu", "--kv-cache 'int4': expected f32, f16 or int8"},
        Bad{"int4", "cuda", "--kv-cache 'int4': expected f32, f16 or int8"}}) {
    EngineOptions bad;
    bad.kv_cache = kv;
    bad.device = device;
    auto r = Engine::load(test::fixture("llama_gqa_llama3rope"), bad);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  }
}

TEST(Engine, ThreadCountDoesNotChangeResults) {
  EngineOptions o1, o2;
  o2.threads = 2;
  auto e1 = load(test::fixture("qwen2_bias_tied_bf16"), o1);
  auto e2 = load(test::fixture("qwen2_bias_tied_bf16"), o2);
  ASSERT_TRUE(e1 && e2);
  EXPECT_EQ(run(*e1, 0, {5}), run(*e2, 0, {5}));  // decode-sized: our kernels, bit-exact
  e1->reset_all();
  e2->reset_all();
  EXPECT_LE(max_abs_diff(run(*e1, 0, kSeq), run(*e2, 0, kSeq)), 1e-5f);
}

// One test per ISA level, so that a level the CPU lacks shows as skipped, with the reason.
class EngineIsa : public ::testing::TestWithParam<const char*> {};

TEST_P(EngineIsa, AgreesWithRef) {
  const char* isa = GetParam();
  kernels::cpu::Isa i;
  ASSERT_TRUE(kernels::cpu::isa_from_name(isa, &i));
  if (!kernels::cpu::isa_supported(i)) {
    GTEST_SKIP() << "CPU lacks " << isa << ": the engine on its kernels is not tested here";
  }
  auto base = load(test::fixture("llama_gqa_llama3rope"), [] { EngineOptions o; o.isa = "ref"; return o; }());
  ASSERT_TRUE(base);
  auto want = run(*base, 0, std::vector<int32_t>(kSeq.begin(), kSeq.begin() + 5));
  EngineOptions o;
  o.isa = isa;
  auto e = load(test::fixture("llama_gqa_llama3rope"), o);
  ASSERT_TRUE(e);
  EXPECT_LE(max_abs_diff(run(*e, 0, std::vector<int32_t>(kSeq.begin(), kSeq.begin() + 5)), want), 1e-4f) << isa;
}

INSTANTIATE_TEST_SUITE_P(Cpu, EngineIsa, ::testing::Values("avx2", "avx512", "avx512vnni"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param);
                         });

TEST(Engine, Int8LmHeadQuantizesTheHeadOnly) {
  // Tied (Qwen2 fixture: the head is the embedding) and untied heads.
  for (const char* name : {"qwen2_bias_tied_bf16", "llama_gqa_llama3rope"}) {
    SCOPED_TRACE(name);
    EngineOptions of, oq;
    of.float_weights = oq.float_weights = "f32";  // the head in f32 against int8
    oq.lm_head = "int8";
    auto ef = load(test::fixture(name), of);
    auto eq = load(test::fixture(name), oq);
    ASSERT_TRUE(ef && eq);
    const int64_t V = ef->config().vocab_size, H = ef->config().hidden_size;
    // Decode reads the head as int8 plus one f32 scale per row instead of f32.
    EXPECT_EQ(ef->weight_bytes() - eq->weight_bytes(), uint64_t(V * H * 4 - (V * H + V * 4)));
    auto lf = run(*ef, 0, kSeq), lq = run(*eq, 0, kSeq);
    // Per-channel int8 moves each weight by at most half a step (max|row| / 254): the logits
    // change, but by well under 1% of their range on these models.
    const float d = max_rel_diff(lq, lf);
    EXPECT_GT(d, 0.0f);
    EXPECT_LT(d, 1e-2f);
    for (size_t t = 0; t < kSeq.size(); ++t) {  // the same greedy choice at every position
      auto row_f = lf.begin() + int64_t(t) * V, row_q = lq.begin() + int64_t(t) * V;
      EXPECT_EQ(std::max_element(row_f, row_f + V) - row_f, std::max_element(row_q, row_q + V) - row_q)
          << "position " << t;
    }
  }
  EngineOptions bad;
  bad.lm_head = "int4";
  auto r = Engine::load(test::fixture("llama_gqa_llama3rope"), bad);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(r.status().message().find("--lm-head 'int4': expected auto, f32 or int8"), std::string::npos);
}

// --lm-head auto (the default): a float checkpoint keeps its head exact; a quantized one gets the
// int8 head, the same engine as --lm-head int8 (same weight bytes, same logits bit for bit).
TEST(Engine, AutoLmHeadIsInt8ForQuantizedCheckpointsOnly) {
  const std::string src = test::fixture("llama_gqa_llama3rope");
  EngineOptions def, f32, i8;
  f32.lm_head = "f32";
  i8.lm_head = "int8";
  auto ff = load(src, def), ff32 = load(src, f32);
  ASSERT_TRUE(ff && ff32);
  EXPECT_EQ(ff->weight_bytes(), ff32->weight_bytes());
  EXPECT_EQ(ff->describe().find("int8 lm_head"), std::string::npos) << ff->describe();
  const std::string q = test::temp_dir("auto_head");
  core::QuantScheme s;  // W8A16 per channel
  test::quantize_dir(src, q, s);
  auto qa = load(q, def), qf = load(q, f32), qi = load(q, i8);
  ASSERT_TRUE(qa && qf && qi);
  EXPECT_EQ(qa->weight_bytes(), qi->weight_bytes());
  EXPECT_LT(qa->weight_bytes(), qf->weight_bytes());
  EXPECT_NE(qa->describe().find("int8 lm_head"), std::string::npos) << qa->describe();
  EXPECT_EQ(run(*qa, 0, kSeq), run(*qi, 0, kSeq));
  EXPECT_NE(run(*qa, 0, kSeq), run(*qf, 0, kSeq));
  std::filesystem::remove_all(q);
}

// The CPU engine keeps a bf16 checkpoint as stored: its linears, embedding and tied head in bf16
// (no float32 copy; the embedding and linears take half the bytes). With float_weights "exact"
// it computes in fp32, so the logits equal the float32 engine's to float rounding (summation
// order only), prefill and decode. By default ("auto") the linears' activations are rounded to
// bf16 (8 significant bits, as llama.cpp and PyTorch compute a bf16 model), on every path: the
// prefill GEMM and the decode GEMV agree to summation order. A float32 checkpoint stays float32.
TEST(Engine, AutoKeepsABf16CheckpointAsStored) {
  EngineOptions of, ox;
  of.float_weights = "f32";
  ox.float_weights = "exact";
  auto ef = load(test::fixture("qwen2_bias_tied_bf16"), of);
  auto ex = load(test::fixture("qwen2_bias_tied_bf16"), ox);
  auto ea = load(test::fixture("qwen2_bias_tied_bf16"));
  ASSERT_TRUE(ef && ex && ea);
  EXPECT_NE(ex->describe().find("bf16 weights (fp32 arithmetic)"), std::string::npos) << ex->describe();
  EXPECT_NE(ea->describe().find("bf16 weights and activations"), std::string::npos) << ea->describe();
  EXPECT_EQ(ef->describe().find("bf16"), std::string::npos) << ef->describe();
  EXPECT_LT(ex->weight_bytes(), ef->weight_bytes() * 6 / 10);  // linears, head and embedding halve
  EXPECT_EQ(ea->weight_bytes(), ex->weight_bytes());
  auto lf = run(*ef, 0, kSeq), lx = run(*ex, 0, kSeq);  // 20 rows: the library GEMM path
  EXPECT_LT(max_rel_diff(lx, lf), 1e-5f);
  EXPECT_GT(max_abs_diff(lx, std::vector<float>(lx.size(), 0.0f)), 0.1f);
  auto la = run(*ea, 0, kSeq);  // bf16 activations: within bf16 precision, but not exact
  EXPECT_LT(max_rel_diff(la, lf), 2e-2f);
  EXPECT_GT(max_rel_diff(la, lf), 1e-4f) << "auto should round the activations to bf16";
  const int64_t V = ea->config().vocab_size;
  for (auto [e, full] : {std::pair{ex.get(), &lf}, std::pair{ea.get(), &la}}) {
    e->reset_all();  // one row at a time: the bf16 GEMV, against the same engine's 20 rows
    std::vector<float> last;
    for (int32_t t : kSeq) last = run(*e, 0, {t});
    EXPECT_LT(max_rel_diff(last, std::vector<float>(full->end() - V, full->end())), 1e-5f)
        << e->describe();
  }
  auto f32_model = load(test::fixture("llama_gqa_llama3rope"));  // stored in float32
  ASSERT_TRUE(f32_model);
  EXPECT_EQ(f32_model->describe().find("bf16"), std::string::npos) << f32_model->describe();
}

TEST(Engine, Bf16WeightsOnCpu) {
  // The Qwen2 fixture is stored in bf16, so bf16 storage holds its exact weights; the
  // activations are rounded to bf16 (decode steps in the GEMV, prefill-sized products in
  // oneDNN's bf16 matmul), so every step agrees with the f32-storage engine to bf16 precision
  // (8 significant bits) and no closer.
  EngineOptions of, ob;
  of.float_weights = "f32";
  ob.float_weights = "bf16";
  auto ef = load(test::fixture("qwen2_bias_tied_bf16"), of);
  auto eb = load(test::fixture("qwen2_bias_tied_bf16"), ob);
  ASSERT_TRUE(ef && eb);
  EXPECT_NE(eb->describe().find("bf16 weights"), std::string::npos) << eb->describe();
  EXPECT_LT(eb->weight_bytes(), ef->weight_bytes() * 6 / 10);  // the linears halve
  const std::vector<float> sf = run(*ef, 0, {5}), sb = run(*eb, 0, {5});
  EXPECT_LT(max_rel_diff(sb, sf), 2e-2f);
  EXPECT_GT(max_rel_diff(sb, sf), 1e-5f) << "bf16 should round the activations";
  ef->reset_all();
  eb->reset_all();
  auto lf = run(*ef, 0, kSeq), lb = run(*eb, 0, kSeq);
  EXPECT_LT(max_rel_diff(lb, lf), 2e-2f);
  // Decoding through the KV cache agrees with the full forward (same tolerance).
  eb->reset_all();
  std::vector<float> last;
  for (int32_t t : kSeq) last = run(*eb, 0, {t});
  const int64_t V = eb->config().vocab_size;
  std::vector<float> full_last(lb.end() - V, lb.end());
  EXPECT_LT(max_rel_diff(last, full_last), 2e-2f);

  EngineOptions bad;
  bad.float_weights = "f16";
  auto r = Engine::load(test::fixture("qwen2_bias_tied_bf16"), bad);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(r.status().message().find("expected f32 or bf16"), std::string::npos)
      << r.status().message();
}

// ---- int8 ---------------------------------------------------------------------------------------

namespace {
// activations: none (W8A16), static or dynamic; group 0: one scale per output channel.
core::QuantScheme scheme(const std::string& activations, int64_t group = 0) {
  core::QuantScheme s;
  s.activations = activations;
  if (group) {
    s.weight_strategy = "group";
    s.group_size = group;
  }
  return s;
}
}  // namespace

TEST(Int8, W8a16EqualsDequantisedFloatModel) {
  for (int64_t group : {int64_t(0), int64_t(32)}) {
    const std::string q = test::temp_dir("w8a16_" + std::to_string(group)), f = q + "_deq";
    test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, scheme("none", group), 0, f);
    EngineOptions head_f32;  // the dequantized reference keeps its float head
    head_f32.lm_head = "f32";
    head_f32.act_quant = "none";
    auto eq = load(q, head_f32), ef = load(f);
    ASSERT_TRUE(eq && ef);
    EXPECT_EQ(eq->scheme()->activations, "none");
    // x . (q * s) vs s * (x . q): float rounding only.
    EXPECT_LE(max_abs_diff(run(*eq, 0, kSeq), run(*ef, 0, kSeq)), 1e-4f) << group;
    eq->reset_all();
    ef->reset_all();
    EXPECT_LE(max_abs_diff(run(*eq, 0, {4}), run(*ef, 0, {4})), 1e-4f) << group;
    // The default (--act-quant auto) runs 8-bit weights with int8 activations per token (the
    // W8A8 kernels): within the activations' rounding of the float model, and not equal to it.
    head_f32.act_quant = "auto";
    auto ea = load(q, head_f32);
    ASSERT_TRUE(ea);
    EXPECT_NE(ea->describe().find("int8 activations per row"), std::string::npos)
        << ea->describe();
    ef->reset_all();
    const float e = max_rel_diff(run(*ea, 0, kSeq), run(*ef, 0, kSeq));
    EXPECT_GT(e, 0.0f) << group;
    EXPECT_LE(e, 0.04f) << group;  // measured 2.5% (per channel) on this fixture
    fs::remove_all(q);
    fs::remove_all(f);
  }
}

namespace {

// The quantized model in q computes what the float model ef computes (logits within 1e-4) at
// every ISA this CPU has: a prompt, then one decode step after a reset, then a run long enough
// for the prefill path; when scheme_name is given, the engine must name its scheme so.
void expect_matches_float_at_every_isa(const std::string& q, Engine& ef,
                                       const std::vector<int32_t>& long_seq,
                                       const std::string& what,
                                       const std::string& scheme_name = "",
                                       const std::string& act_quant = "none") {
  ef.reset_all();
  const auto lf = run(ef, 0, kSeq);
  ef.reset_all();
  const auto lf_long = run(ef, 0, long_seq);
  for (const char* isa : {"ref", "avx2", "avx512"}) {
    EngineOptions o;
    o.isa = isa;
    o.lm_head = "f32";  // the float reference's head
    o.act_quant = act_quant;
    auto eq = Engine::load(q, o);
    if (!eq.is_ok()) continue;  // an ISA this CPU lacks
    if (!scheme_name.empty()) {
      EXPECT_EQ(core::quant_scheme_name(*(*eq)->scheme()), scheme_name) << what;
    }
    EXPECT_LE(max_abs_diff(run(**eq, 0, kSeq), lf), 1e-4f) << what << " " << isa;
    (*eq)->reset_all();
    ef.reset_all();
    EXPECT_LE(max_abs_diff(run(**eq, 0, {4}), run(ef, 0, {4})), 1e-4f) << what << " " << isa;
    (*eq)->reset_all();
    EXPECT_LE(max_rel_diff(run(**eq, 0, long_seq), lf_long), 1e-4f) << what << " " << isa;
  }
}

}  // namespace

// W4A8 (--act-quant int8-row / int8-block on a 4-bit checkpoint): the int8 activations move the
// logits from the dequantized float model's by at most the activations' rounding (a few percent
// of the logits' range on this fixture, measured 1.3-2.2%); every ISA computes nearly the same
// logits (exact int32 block sums; an int8 rounding may flip on the float ops' last bits); decode
// steps equal the prefill's rows (the W4A8 kernels to the bit, the float head's library GEMM to
// rounding); and per-32 scales land closer to the float model than per-row ones.
TEST(Int8, W4a8CloseToDequantisedFloatModelAtEveryIsa) {
  std::vector<int32_t> long_seq;  // longer than kGemvMaxM: the prefill tiles
  for (int i = 0; i < 80; ++i) long_seq.push_back((i * 7 + 3) % 50);
  for (bool sym : {true, false})
    for (int64_t group : {int64_t(0), int64_t(32)}) {
      const std::string q = test::temp_dir("w4a8_" + std::to_string(group)), f = q + "_deq";
      core::QuantScheme s = scheme("none", group);
      s.bits = 4;
      s.symmetric = sym;
      test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, s, 0, f);
      auto ef = load(f);
      ASSERT_TRUE(ef);
      const auto lf = run(*ef, 0, long_seq);
      float err[2] = {0, 0};
      for (int mode = 0; mode < 2; ++mode) {
        const std::string act = mode ? "int8-block" : "int8-row";
        const std::string what = std::string(sym ? "sym" : "asym") + " group " +
                                 std::to_string(group) + " " + act;
        std::vector<float> first;
        for (const char* isa : {"ref", "avx2", "avx512vnni"}) {
          EngineOptions o;
          o.isa = isa;
          o.lm_head = "f32";
          o.act_quant = act;
          auto eq = Engine::load(q, o);
          if (!eq.is_ok()) continue;  // an ISA this CPU lacks
          EXPECT_NE((*eq)->describe().find(mode ? "int8 activations per 32"
                                                : "int8 activations per row"),
                    std::string::npos)
              << (*eq)->describe();
          const auto lq = run(**eq, 0, long_seq);
          const float e = max_rel_diff(lq, lf);
          EXPECT_LE(e, 0.03f) << what << " " << isa;
          EXPECT_GT(e, 0.0f) << what << " " << isa << ": the activations were not quantized";
          err[mode] = e;
          if (first.empty()) {
            first = lq;
          } else {
            // The ISAs' float ops (RMSNorm, attention) differ in the last bits, which can flip
            // an activation's rounding to int8 (one step, 1/127 of its row or block's max):
            // measured up to 0.35% here, against 1.3-2.2% for int8 against float.
            EXPECT_LE(max_rel_diff(lq, first), 0.01f) << what << " " << isa << " vs ref";
          }
          // Decode: the last 3 tokens one at a time equal the prefill's last rows.
          (*eq)->reset_all();
          std::vector<int32_t> head(long_seq.begin(), long_seq.end() - 3);
          run(**eq, 0, head);
          std::vector<float> steps;
          for (size_t i = long_seq.size() - 3; i < long_seq.size(); ++i) {
            const auto r = run(**eq, 0, {long_seq[i]});
            steps.insert(steps.end(), r.begin(), r.end());
          }
          const std::vector<float> tail(lq.end() - int64_t(steps.size()), lq.end());
          EXPECT_LE(max_rel_diff(steps, tail), 1e-5f) << what << " " << isa << " decode";
        }
      }
      std::printf("w4a8 %s group %lld: max rel diff to float, per row %.5f, per 32 %.5f\n",
                  sym ? "sym" : "asym", (long long)group, err[0], err[1]);
      EXPECT_LT(err[1], err[0]) << "per-32 activation scales should be closer than per-row";
    }
}

// A W4A8 checkpoint (4-bit weights, config.json's input activations int8 dynamic per token, as
// compressed-tensors' W4AINT8 writes them) runs its activations per token whatever --act-quant
// says: the same numbers as the W4A16 checkpoint of the same weights under --act-quant
// int8-row, bit for bit. The cuda device refuses it by name.
TEST(Int8, W4a8CheckpointRunsInt8ActivationsPerToken) {
  std::vector<int32_t> seq;
  for (int i = 0; i < 40; ++i) seq.push_back((i * 11 + 5) % 50);
  const std::string w4a16 = test::temp_dir("ckpt_w4a16"), w4a8 = test::temp_dir("ckpt_w4a8");
  core::QuantScheme s = scheme("none", 32);
  s.bits = 4;
  test::quantize_dir(test::fixture("llama_gqa_llama3rope"), w4a16, s, 0);
  s.activations = "dynamic";
  test::quantize_dir(test::fixture("llama_gqa_llama3rope"), w4a8, s, 0);
  EngineOptions row;
  row.lm_head = "f32";
  row.act_quant = "int8-row";
  auto ref = Engine::load(w4a16, row);
  ASSERT_TRUE(ref.is_ok()) << ref.status().message();
  const auto want = run(**ref, 0, seq);
  EngineOptions none = row;
  none.act_quant = "none";
  auto weight_only = Engine::load(w4a16, none);
  ASSERT_TRUE(weight_only.is_ok());
  EXPECT_GT(max_rel_diff(run(**weight_only, 0, seq), want), 0.0f) << "int8 activations had no effect";
  for (const char* act : {"auto", "none", "int8-block"}) {
    EngineOptions o = row;
    o.act_quant = act;
    auto e = Engine::load(w4a8, o);
    ASSERT_TRUE(e.is_ok()) << e.status().message();
    EXPECT_NE((*e)->describe().find("w4a8/g32"), std::string::npos) << (*e)->describe();
    EXPECT_NE((*e)->describe().find("int8 activations per row"), std::string::npos) << (*e)->describe();
    EXPECT_EQ(run(**e, 0, seq), want) << "--act-quant " << act;
  }
  EngineOptions cuda;
  cuda.device = "cuda";
  auto c = Engine::load(w4a8, cuda);
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(c.status().message().find("run on the cpu device only so far"), std::string::npos)
      << c.status().message();
}

// 4-bit weights (pack-quantized on disk, 4-bit blocks in the CPU backend) compute what the
// float model with the dequantized weights computes, at every ISA, in prefill and decode.
// Asymmetric 4 bits (zero points packed along the outputs) likewise, in the kernels' path
// (sum of q s x minus the zero-point correction) and the prefill library path (dequantized
// with zero points), which a run longer than kGemvMaxMW8A16 rows takes.
TEST(Int8, W4a16EqualsDequantisedFloatModel) {
  std::vector<int32_t> long_seq;
  for (int i = 0; i < 80; ++i) long_seq.push_back((i * 7 + 3) % 50);
  for (bool sym : {true, false})
    for (int64_t group : {int64_t(0), int64_t(32)}) {
      const std::string q = test::temp_dir("w4a16_" + std::to_string(group)), f = q + "_deq";
      core::QuantScheme s = scheme("none", group);
      s.bits = 4;
      s.symmetric = sym;
      const std::string what =
          std::string(sym ? "sym" : "asym") + " group " + std::to_string(group);
      test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, s, 0, f);
      {  // the checkpoint presents the packed weight as the I8 tensor readers expect
        auto ck = core::Checkpoint::open(q).take_or_throw();
        EXPECT_EQ(ck.find("model.layers.0.mlp.down_proj.weight_packed"), nullptr);
        const core::TensorInfo* t = ck.find("model.layers.0.mlp.down_proj.weight");
        ASSERT_NE(t, nullptr);
        EXPECT_EQ(t->dtype, core::DType::kI8);
        const int8_t* v = reinterpret_cast<const int8_t*>(ck.data(*t));
        EXPECT_TRUE(std::all_of(v, v + t->numel(), [](int8_t x) { return x >= -8 && x <= 7; }));
        EXPECT_TRUE(std::any_of(v, v + t->numel(), [](int8_t x) { return x == 7 || x == -7; }));
        const core::TensorInfo* z = ck.find("model.layers.0.mlp.down_proj.weight_zero_point");
        if (sym) {
          EXPECT_EQ(z, nullptr);
        } else {  // packed I32 [ceil(out / 8), G] on disk, presented as I8 [out, G]
          ASSERT_NE(z, nullptr);
          EXPECT_EQ(z->dtype, core::DType::kI8);
          EXPECT_EQ(z->shape, (std::vector<int64_t>{t->shape[0], group ? t->shape[1] / group : 1}));
          const int8_t* zv = reinterpret_cast<const int8_t*>(ck.data(*z));
          EXPECT_TRUE(std::any_of(zv, zv + z->numel(), [](int8_t x) { return x != 0; }));
          EXPECT_TRUE(core::checkpoint_check(core::config_load(q).take_or_throw(), ck).is_ok());
        }
      }
      auto ef = load(f);
      ASSERT_TRUE(ef);
      expect_matches_float_at_every_isa(
          q, *ef, long_seq, what,
          std::string(sym ? "w4a16" : "w4a16-asym") + (group ? "/g32" : ""));
      if (!sym) {
        // The config must say what the checkpoint holds: zero points under `symmetric: true`
        // would be silently dropped, and `symmetric: false` needs them.
        auto flip = [&](const std::string& dir, bool to) {
          core::ModelConfig c = core::config_load(dir).take_or_throw();
          c.raw["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] = to;
          ASSERT_TRUE(
              core::write_file_atomic(dir + "/config.json", core::config_to_json(c)).is_ok());
        };
        flip(q, true);
        auto bad = Engine::load(q, EngineOptions{});
        ASSERT_FALSE(bad.is_ok());
        EXPECT_NE(bad.status().message().find("weight_zero_point"), std::string::npos)
            << bad.status().message();
        const std::string qs = q + "_sym";
        s.symmetric = true;
        test::quantize_dir(test::fixture("llama_gqa_llama3rope"), qs, s, 0);
        flip(qs, false);
        auto missing = Engine::load(qs, EngineOptions{});
        ASSERT_FALSE(missing.is_ok());
        EXPECT_NE(missing.status().message().find(
                      "model.layers.0.self_attn.q_proj.weight_zero_point (symmetric: false needs zero points)"),
                  std::string::npos)
            << missing.status().message();
        fs::remove_all(qs);
        fs::remove_all(q);
        fs::remove_all(f);
        continue;
      }
      // 4 bits on disk: the packed file is smaller than the int8 one would be.
      const std::string q8 = q + "_w8";
      test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q8,
                         scheme("none", group), 0);
      EXPECT_LT(fs::file_size(q + "/model.safetensors"), fs::file_size(q8 + "/model.safetensors"));
      auto e4 = load(q), e8 = load(q8);
      ASSERT_TRUE(e4 && e8);
      EXPECT_LT(e4->weight_bytes(), e8->weight_bytes());
      fs::remove_all(q);
      fs::remove_all(q8);
      fs::remove_all(f);
    }
}

// GPTQ act-order groups (weight_g_idx: each group a scattered set of input columns, as
// llm-compressor's `actorder: group` writes): the engine reorders q's columns so that groups are
// contiguous and the CPU backend gathers the inputs to match, so the model computes what the
// float model with the dequantized weights computes, for 8 and 4 bits, with zero points too.
TEST(Int8, ActOrderGroupsEqualDequantisedFloatModel) {
  std::vector<int32_t> long_seq;
  for (int i = 0; i < 80; ++i) long_seq.push_back((i * 11 + 5) % 50);
  struct C {
    int bits;
    bool sym;
  };
  for (C c : {C{8, true}, C{4, true}, C{4, false}}) {
    const std::string q = test::temp_dir("gidx"), f = q + "_deq";
    core::QuantScheme s = scheme("none", 32);
    s.bits = c.bits;
    s.symmetric = c.sym;
    const std::string what = std::to_string(c.bits) + (c.sym ? " bits" : " bits asym");
    test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, s, 0, f, true);
    {
      auto ck = core::Checkpoint::open(q).take_or_throw();
      ASSERT_NE(ck.find("model.layers.0.mlp.down_proj.weight_g_idx"), nullptr);
      EXPECT_TRUE(core::checkpoint_check(core::config_load(q).take_or_throw(), ck).is_ok()) << what;
    }
    auto ef = load(f);
    ASSERT_TRUE(ef);
    expect_matches_float_at_every_isa(q, *ef, long_seq, what);
    if (c.bits == 8) {  // a g_idx whose groups do not hold group_size columns each is refused
      auto ck = core::Checkpoint::open(q).take_or_throw();
      std::vector<core::TensorView> v;
      std::vector<int32_t> bad;
      for (const std::string& n : ck.names()) {
        const core::TensorInfo* t = ck.find(n);
        if (n == "model.layers.1.mlp.up_proj.weight_g_idx") {
          bad.assign(reinterpret_cast<const int32_t*>(ck.data(*t)),
                     reinterpret_cast<const int32_t*>(ck.data(*t)) + t->numel());
          bad[0] = bad[0] == 0 ? 1 : 0;
          v.push_back(
              {n, t->dtype, t->shape, reinterpret_cast<const uint8_t*>(bad.data()), t->nbytes});
        } else {
          v.push_back({n, t->dtype, t->shape, ck.data(*t), t->nbytes});
        }
      }
      const std::string q2 = test::temp_dir("gidx_bad");
      ASSERT_TRUE(core::checkpoint_write(q2, v).is_ok());
      fs::copy_file(q + "/config.json", q2 + "/config.json");
      auto r = Engine::load(q2, EngineOptions{});
      ASSERT_FALSE(r.is_ok());
      EXPECT_NE(r.status().message().find("model.layers.1.mlp.up_proj.weight_g_idx: group"),
                std::string::npos)
          << r.status().message();
      fs::remove_all(q2);
    }
    fs::remove_all(q);
    fs::remove_all(f);
  }
}

TEST(Int8, W8a8CloseToFloatAndDecodeEqualsFull) {
  struct C { const char* activations; int64_t group; };
  for (C c : {C{"dynamic", 0}, C{"static", 0}, C{"dynamic", 16}}) {
    const std::string q = test::temp_dir("w8a8"), f = q + "_deq";
    test::quantize_dir(test::fixture("qwen2_bias_tied_bf16"), q, scheme(c.activations, c.group),
                       0.05f, f);
    auto eq = load(q), ef = load(f);
    ASSERT_TRUE(eq && ef);
    auto lq = run(*eq, 0, kSeq), lf = run(*ef, 0, kSeq);
    // Activation rounding (8 bits) moves logits by a few percent of their range here.
    EXPECT_LE(max_rel_diff(lq, lf), 0.1f) << core::quant_scheme_name(*eq->scheme());
    eq->reset_all();
    std::vector<float> inc = run(*eq, 0, std::vector<int32_t>(kSeq.begin(), kSeq.begin() + 9));
    for (size_t t = 9; t < kSeq.size(); ++t) {
      auto s = run(*eq, 0, {kSeq[t]});
      inc.insert(inc.end(), s.begin(), s.end());
    }
    // Per-token quantization makes every row independent of the batch, so decode and prefill
    // quantize identically; only the int32 -> float epilogue order differs (library vs ours).
    EXPECT_LE(max_abs_diff(inc, lq), 1e-4f) << core::quant_scheme_name(*eq->scheme());
    fs::remove_all(q);
    fs::remove_all(f);
  }
}

TEST(Int8, RandomShapesBuildInEveryFormat) {
  core::ModelConfig c = runtime::bench_shape("smollm-135m").take_or_throw();
  c.num_layers = 2;
  c.vocab_size = 512;
  for (const char* dt : {"f32", "w8a16", "w4a16", "w4a16-asym", "w8a8"}) {
    auto e = Engine::create_random(c, dt, 1, EngineOptions{});
    ASSERT_TRUE(e.is_ok()) << e.status().message();
    auto l = run(**e, 0, {1, 2, 3}, false);
    for (float v : l) ASSERT_TRUE(std::isfinite(v)) << dt;
  }
  EXPECT_FALSE(Engine::create_random(c, "int4", 1, EngineOptions{}).is_ok());
}

// ---- perplexity ----------------------------------------------------------------------------------

TEST(Perplexity, MatchesAHandComputedDefinition) {
  const std::string dir = test::temp_dir("ppl");
  std::vector<int32_t> toks;
  for (int i = 0; i < 45; ++i) toks.push_back((i * 37 + 11) % 300);
  {
    core::ShardWriter w(dir, "val", 300, "test");
    ASSERT_TRUE(w.append(toks.data(), toks.size()).is_ok());
    ASSERT_TRUE(w.finish().is_ok());
  }
  EngineOptions o;
  o.max_batch = 2;
  o.max_seq_len = 16;
  auto e = load(test::fixture("llama_gqa_llama3rope"), o);
  ASSERT_TRUE(e);
  core::TokenSource src;
  src.data = dir;
  auto data = core::tokens_load(test::fixture("llama_gqa_llama3rope"), 300, src);
  ASSERT_TRUE(data.is_ok()) << data.status().message();
  ASSERT_EQ(data->tokens, toks);
  auto r = runtime::perplexity(*e, toks.data(), toks.size(), 16, 2);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  // Windows of 16, 16, 13 tokens: 15 + 15 + 12 predictions.
  EXPECT_EQ(r->windows, 3u);
  EXPECT_EQ(r->tokens_scored, 42u);
  double nll = 0;
  for (uint64_t s : {0u, 16u, 32u}) {
    const int64_t len = std::min<int64_t>(16, 45 - int64_t(s));
    e->reset_all();
    auto l = run(*e, 0, std::vector<int32_t>(toks.begin() + long(s), toks.begin() + long(s) + len));
    for (int64_t t = 0; t + 1 < len; ++t) {
      const float* x = l.data() + t * 300;
      double mx = *std::max_element(x, x + 300), z = 0;
      for (int v = 0; v < 300; ++v) z += std::exp(x[v] - mx);
      nll -= x[toks[static_cast<size_t>(s + uint64_t(t) + 1)]] - mx - std::log(z);
    }
  }
  EXPECT_NEAR(r->mean_nll, nll / 42, 1e-6);
  // With at most 5 logit rows per pass (a large vocabulary's bound, made small): one window per
  // pass, prefilled 5 positions at a time through the KV cache; the same predictions scored.
  auto c = runtime::perplexity(*e, toks.data(), toks.size(), 16, 2, nullptr, 5);
  ASSERT_TRUE(c.is_ok()) << c.status().message();
  EXPECT_EQ(c->tokens_scored, 42u);
  EXPECT_NEAR(c->mean_nll, nll / 42, 1e-6);
  EXPECT_EQ(runtime::logit_rows_per_forward(128256), 130);
  EXPECT_EQ(runtime::logit_rows_per_forward(300), 55924);
  fs::remove_all(dir);
}

// ---- bad models -----------------------------------------------------------------------------------

namespace {
std::string copy_fixture(const std::string& name, const std::string& to) {
  const std::string dir = test::temp_dir(to);
  for (const auto& f : fs::directory_iterator(test::fixture(name))) {
    fs::copy(f.path(), dir + "/" + f.path().filename().string());
  }
  return dir;
}
void patch_config(const std::string& dir, const std::function<void(nlohmann::json&)>& f) {
  auto j = nlohmann::json::parse(core::read_file(dir + "/config.json").take_or_throw());
  f(j);
  ASSERT_TRUE(core::write_file_atomic(dir + "/config.json", j.dump()).is_ok());
}
void expect_invalid(const std::string& dir, const std::string& needle) {
  auto r = Engine::load(dir, EngineOptions{});
  ASSERT_FALSE(r.is_ok()) << dir;
  EXPECT_EQ(exit_code_for(r.status().code()), 2) << r.status().message();
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
}
}  // namespace

TEST(BadModels, FailWithClearMessages) {
  expect_invalid(test::temp_dir("empty"), "config.json");
  auto d = copy_fixture("llama_gqa_llama3rope", "trunc");
  fs::resize_file(d + "/model.safetensors", 5000);
  expect_invalid(d, "model.safetensors");
  d = copy_fixture("qwen2_bias_tied_bf16", "shape");
  patch_config(d, [](nlohmann::json& j) { j["intermediate_size"] = 95; });
  expect_invalid(d, "model.layers.0.mlp.down_proj.weight has shape");
  d = copy_fixture("llama_gqa_llama3rope", "arch");
  patch_config(d, [](nlohmann::json& j) { j["architectures"] = {"GPT2LMHeadModel"}; });
  expect_invalid(d, "GPT2LMHeadModel");
  d = copy_fixture("llama_gqa_llama3rope", "q4");
  patch_config(d, [](nlohmann::json& j) {
    j["quantization_config"] = core::quant_config_to_json(core::QuantScheme{});
    j["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 4;
  });
  expect_invalid(d, "num_bits: 4 is not supported");
  patch_config(d, [](nlohmann::json& j) {  // zero points: 4-bit weights only, never per tensor
    core::QuantScheme s;
    s.symmetric = false;
    j["quantization_config"] = core::quant_config_to_json(s);
  });
  expect_invalid(d, "weights.symmetric: false is not supported here");
  patch_config(d, [](nlohmann::json& j) {
    core::QuantScheme s;
    s.bits = 4;
    s.symmetric = false;
    s.weight_strategy = "tensor";
    j["quantization_config"] = core::quant_config_to_json(s);
  });
  expect_invalid(d, "symmetric false with strategy 'tensor' is not supported");
  patch_config(d, [](nlohmann::json& j) { j["quantization_config"]["quant_method"] = "gptq"; });
  expect_invalid(d, "quant_method: 'gptq'");
  // A quantized config over float weights, and an int8 dir missing its scales / input scales.
  patch_config(d, [](nlohmann::json& j) {
    core::QuantScheme s;
    s.activations = "static";
    j["quantization_config"] = core::quant_config_to_json(s);
  });
  EXPECT_TRUE(Engine::load(d, EngineOptions{}).is_ok());  // float weights in a quantized dir run in float
  const std::string q = test::temp_dir("noscale");
  test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, scheme("static"));
  {
    auto ck = core::Checkpoint::open(q).take_or_throw();
    std::vector<core::TensorView> v;
    for (const std::string& n : ck.names()) {
      if (n == "model.layers.1.self_attn.k_proj.weight_scale" || n == "model.layers.0.mlp.up_proj.input_scale") continue;
      const core::TensorInfo* t = ck.find(n);
      v.push_back({n, t->dtype, t->shape, ck.data(*t), t->nbytes});
    }
    const std::string q2 = test::temp_dir("noscale2");
    fs::copy(q + "/config.json", q2 + "/config.json");
    ASSERT_TRUE(core::checkpoint_write(q2, v).is_ok());
    expect_invalid(q2, "model.layers.1.self_attn.k_proj.weight_scale (an I8 weight needs a scale)");
    expect_invalid(q2, "model.layers.0.mlp.up_proj.input_scale (static activation quantization)");
  }
  // Out-of-vocabulary tokens and over-long sequences are errors, not crashes.
  auto e = load(test::fixture("llama_gqa_llama3rope"), [] { EngineOptions o; o.max_seq_len = 8; return o; }());
  ASSERT_TRUE(e);
  std::vector<float> l;
  std::vector<int32_t> bad = {1, 300};
  EXPECT_EQ(e->forward({{0, bad.data(), 2}}, false, l).code(), StatusCode::kInvalidInput);
  std::vector<int32_t> longer(9, 1);
  EXPECT_EQ(e->forward({{0, longer.data(), 9}}, false, l).code(), StatusCode::kInvalidInput);
}

// ---- speculative decoding --------------------------------------------------------------------

// Greedy speculative decoding gives exactly the target's greedy tokens whatever the draft: the
// model itself (every proposal accepted), the same model with an int8 head (most accepted) and
// random weights of the same shape (almost none accepted), for every count of draft tokens and
// lengths that end mid-round; it stops at an EOS where generate() stops; bad uses exit 2.
TEST(Speculative, GreedyTokensEqualTheTargetsWhateverTheDraft) {
  const std::string dir = test::fixture("llama_gqa_llama3rope");
  EngineOptions o;
  o.max_seq_len = 64;
  auto target = load(dir, o);
  ASSERT_TRUE(target);
  EngineOptions o8 = o;
  o8.lm_head = "int8";
  auto self = load(dir, o);
  auto near = load(dir, o8);
  auto cfg = core::config_load(dir).take_or_throw();
  auto rnd = Engine::create_random(cfg, "f32", 9, o).take_or_throw();
  auto qwen = load(test::fixture("qwen2_bias_tied_bf16"), o);  // another architecture, same vocabulary
  const std::vector<int32_t> prompt = {5, 17, 42, 99, 3};
  for (int64_t max_new : {1, 2, 7, 40}) {
    runtime::GenerateOptions g;
    g.max_new_tokens = max_new;
    g.stop_at_eos = false;
    auto want = runtime::generate(*target, prompt, g);
    ASSERT_TRUE(want.is_ok());
    ASSERT_EQ(int64_t(want->ids.size()), int64_t(prompt.size()) + max_new);
    struct D {
      const char* name;
      Engine* e;
    };
    for (D d : {D{"self", self.get()}, D{"int8 head", near.get()}, D{"random", rnd.get()}, D{"qwen2", qwen.get()}}) {
      for (int64_t k : {1, 3, 5}) {
        auto got = runtime::generate_speculative(*target, *d.e, prompt, g, k);
        const std::string what = std::string(d.name) + " k " + std::to_string(k) + " max_new " + std::to_string(max_new);
        ASSERT_TRUE(got.is_ok()) << what << ": " << got.status().message();
        EXPECT_EQ(got->ids, want->ids) << what;
        EXPECT_LE(got->accepted, got->drafted) << what;
        if (std::string(d.name) == "self") {
          EXPECT_EQ(got->accepted, got->drafted) << what;
        }
        // Each round adds its accepted proposals and one token of the target's own.
        if (max_new > 1) {
          EXPECT_EQ(got->accepted + got->rounds, max_new - 1) << what;
        }
        // The caches hold exactly the sequence but its last token (truncation worked).
        EXPECT_EQ(target->length(0), int64_t(got->ids.size()) - 1) << what;
      }
    }
    if (max_new == 40) {  // a random draft is rarely right; the model itself always is
      auto r = runtime::generate_speculative(*target, *rnd, prompt, g, 4);
      auto s = runtime::generate_speculative(*target, *self, prompt, g, 4);
      EXPECT_LT(double(r->accepted) / double(r->drafted), 0.5);
      EXPECT_EQ(s->rounds, 8);  // 39 tokens after the first, 5 per round: 7 full rounds + 4
    }
  }
  // EOS: stop where generate() stops.
  runtime::GenerateOptions g;
  g.max_new_tokens = 30;
  auto full = runtime::generate(*target, prompt, g);
  ASSERT_TRUE(full.is_ok());
  g.eos = {full->ids[prompt.size() + 6]};
  auto want = runtime::generate(*target, prompt, g);
  auto got = runtime::generate_speculative(*target, *near, prompt, g, 4);
  ASSERT_TRUE(got.is_ok());
  EXPECT_EQ(got->ids, want->ids);
  EXPECT_LE(want->ids.size(), prompt.size() + 7);
  // Bad uses.
  g.sampling.temperature = 0.8f;
  auto bad = runtime::generate_speculative(*target, *self, prompt, g, 4);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("greedy only"), std::string::npos);
  g.sampling.temperature = 0;
  EXPECT_FALSE(runtime::generate_speculative(*target, *self, prompt, g, 0).is_ok());
  core::ModelConfig c256 = cfg;
  c256.vocab_size = 256;
  auto other = Engine::create_random(c256, "f32", 9, o).take_or_throw();
  auto vocab = runtime::generate_speculative(*target, *other, prompt, g, 4);
  ASSERT_FALSE(vocab.is_ok());
  EXPECT_NE(vocab.status().message().find("same vocabulary"), std::string::npos) << vocab.status().message();
  EXPECT_FALSE(target->truncate(0, target->length(0) + 1).is_ok());
}
