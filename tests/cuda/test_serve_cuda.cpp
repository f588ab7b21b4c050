// Serving on the CUDA backend (issue 29's `--device cuda`): the scheduler's continuous batching,
// chunked prefill and prefix cache over the same engine calls as on the CPU, checked against
// runtime::generate run alone on the GPU; and the KV export/import the prefix cache uses (the
// backend's byte copies), bit for bit against the rows it exported. Every test calls
// GTEST_SKIP() when no CUDA device is present (CI), and says so.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "tests/runtime/serve_check.h"
#include "tests/runtime/util.h"

using namespace shrink;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device present: GPU test not run"

namespace {

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
  const std::vector<int32_t> p = test::ids_for(40, int32_t(V), 7);
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
  test::expect_scheduler_equals_generate(*alone, *served, 16u << 20);
}
