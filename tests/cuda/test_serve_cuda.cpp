// Serving on the CUDA backend (issue 29's `--device cuda`): the scheduler's continuous batching,
// chunked prefill and prefix cache over the same engine calls as on the CPU, checked against
// runtime::generate run alone on the GPU; and the KV export/import the prefix cache uses (the
// backend's byte copies), bit for bit against the rows it exported. Every test calls
// GTEST_SKIP() when no CUDA device is present (CI), and says so.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"
#include "tests/runtime/util.h"

using namespace shrink;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device present: GPU test not run"

namespace {

std::vector<int32_t> ids_for(int64_t n, int32_t vocab, uint32_t seed) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  uint32_t x = seed * 2654435761u + 12345u;
  for (auto& t : v) {
    x = x * 1664525u + 1013904223u;
    t = int32_t((x >> 8) % uint32_t(vocab));
  }
  return v;
}

// The fixture on the GPU with float32 weights and exact fp32 GEMMs (no TF32), so batched and
// alone differ by summation order only.
std::unique_ptr<runtime::Engine> gpu_engine(int slots, int64_t ctx = 128) {
  runtime::EngineOptions o;
  o.device = "cuda";
  o.float_weights = "f32";
  o.max_batch = slots;
  o.max_seq_len = ctx;
  auto e = runtime::Engine::load(test::fixture("llama_gqa_llama3rope"), o);
  EXPECT_TRUE(e.is_ok()) << e.status().message();
  return e.is_ok() ? std::move(e).value() : nullptr;
}

}  // namespace

TEST(CudaServe, KvExportImportReusesRowsExactly) {
  SKIP_WITHOUT_GPU();
  auto e = gpu_engine(3);
  ASSERT_TRUE(e);
  const int64_t V = e->config().vocab_size;
  const std::vector<int32_t> p = ids_for(40, int32_t(V), 7);
  std::vector<float> a, b;
  ASSERT_TRUE(e->forward({{0, p.data(), 32}}, false, a).is_ok());
  std::vector<uint8_t> rows(size_t(32 * e->kv_bytes_per_token()));
  ASSERT_TRUE(e->kv_export(0, 0, 32, rows.data()).is_ok());
  ASSERT_TRUE(e->kv_import(1, 0, 32, rows.data()).is_ok());
  ASSERT_TRUE(e->forward({{0, p.data() + 32, 8}}, false, a).is_ok());
  ASSERT_TRUE(e->forward({{1, p.data() + 32, 8}}, false, b).is_ok());
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a, b) << "imported rows must give the exporting slot's logits bit for bit";
}

TEST(CudaServe, SchedulerBatchesEqualGenerateAlone) {
  SKIP_WITHOUT_GPU();
  auto alone = gpu_engine(1);
  auto served = gpu_engine(4);
  ASSERT_TRUE(alone && served);
  const int64_t V = served->config().vocab_size;
  struct Case {
    std::vector<int32_t> prompt;
    core::SamplingParams s;
    uint64_t seed;
    int64_t max_tokens;
  };
  const std::vector<int32_t> shared = ids_for(37, int32_t(V), 11);
  std::vector<Case> cases;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p = i % 2 ? shared : std::vector<int32_t>();
    auto own = ids_for(5 + 9 * i, int32_t(V), 100 + uint32_t(i));
    p.insert(p.end(), own.begin(), own.end());
    core::SamplingParams s;
    if (i % 3 == 1) s.temperature = 0.9f, s.top_k = 40;
    if (i % 3 == 2) s.temperature = 1.1f, s.top_p = 0.9f;
    cases.push_back({p, s, uint64_t(1000 + i), 12 + i});
  }
  std::vector<std::vector<int32_t>> want;
  for (const Case& c : cases) {
    runtime::GenerateOptions g;
    g.max_new_tokens = c.max_tokens;
    g.sampling = c.s;
    g.seed = c.seed;
    g.stop_at_eos = false;
    auto r = runtime::generate(*alone, c.prompt, g);
    ASSERT_TRUE(r.is_ok()) << r.status().message();
    want.emplace_back(r.value().ids.begin() + r.value().prompt_len, r.value().ids.end());
  }
  runtime::SchedulerOptions so;
  so.max_batch_tokens = 24;  // longer prompts take several steps beside the others' decoding
  so.prefix_cache_bytes = 16u << 20;
  runtime::Scheduler sched(*served, so);
  sched.start();
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round);
    std::vector<std::shared_ptr<runtime::ServeStream>> streams;
    for (const Case& c : cases) {
      runtime::ServeRequest r;
      r.prompt = c.prompt;
      r.sampling = c.s;
      r.seed = c.seed;
      r.max_tokens = c.max_tokens;
      auto s = sched.submit(r);
      ASSERT_TRUE(s.is_ok()) << s.status().message();
      streams.push_back(s.value());
    }
    for (size_t i = 0; i < cases.size(); ++i) {
      std::vector<runtime::TokenOut> got;
      while (!streams[i]->wait(0, got, std::chrono::milliseconds(100))) {
      }
      streams[i]->wait(0, got, std::chrono::milliseconds(0));
      std::vector<int32_t> ids;
      for (const runtime::TokenOut& t : got) ids.push_back(t.id);
      EXPECT_EQ(ids, want[i]) << "request " << i;
      EXPECT_EQ(streams[i]->finish_reason(), "length");
      if (round == 1 && cases[i].prompt.size() > 16)
        EXPECT_GE(streams[i]->cached_tokens(), 16) << "request " << i;
    }
  }
  const runtime::SchedulerStats st = sched.stats();
  EXPECT_EQ(st.requests, 12u);
  EXPECT_GT(st.cached_tokens, 0u);
  EXPECT_LT(st.steps, st.generated_tokens);
  sched.shutdown(std::chrono::milliseconds(1000));
}
