// Tensor parallelism on the CUDA backend (issue 30): the forward's collectives on NCCL
// (runtime/backend_cuda_nccl.h), one device per rank, joined through a host group (shared
// memory here) that carries NCCL's handshake.
//   - One rank through the NCCL path (collectives over one rank, the vocabulary-parallel lookup
//     and head, the device-side re-layout of gathered slices) equals the engine without a group:
//     float32 and W8A8 dynamic (per-token maxima reduced over the group on the device).
//   - Two ranks: on a machine with two devices, they equal one process (greedy ids, logits,
//     perplexity); on one device NCCL refuses two ranks ("Duplicate GPU"), and the test says so.
// Every test calls GTEST_SKIP() when no CUDA device is present (CI), and says why; the NCCL
// library must be loadable (scripts/gpu_check.sh points SHRINK_NCCL_LIBRARY at pip's).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "kernels/cuda/device.h"
#include "runtime/engine.h"
#include "runtime/tp/gloo_comm.h"
#include "tests/runtime/tp_run.h"
#include "tests/runtime/util.h"

using namespace shrink;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device present: GPU test not run"

namespace {

using test::RankRun;

// One process (comm null) or one rank on the GPU with exact fp32 GEMMs.
runtime::EngineOptions gpu_options(int device) {
  runtime::EngineOptions o;
  o.device = "cuda";
  o.float_weights = "f32";
  o.max_seq_len = 64;
  o.cuda_device = device;
  return o;
}

RankRun one_process(const std::string& dir) { return test::rank_run(dir, gpu_options(0)); }

// N ranks over shared memory, rank r on device r (modulo the devices present).
std::vector<RankRun> run_ranks(const std::string& dir, int n) {
  return test::ranks_run(dir, n, gpu_options, "shm", 60);
}

core::QuantScheme w8a8_dynamic() {
  core::QuantScheme s;
  s.bits = 8;
  s.activations = "dynamic";
  return s;
}

}  // namespace

TEST(CudaTensorParallel, OneRankThroughNcclEqualsNoGroup) {
  SKIP_WITHOUT_GPU();
  const std::string q = test::temp_dir("cuda_tp_w8a8");
  test::quantize_dir(test::fixture("qwen2_bias_tied_bf16"), q, w8a8_dynamic());
  const std::vector<std::pair<std::string, std::string>> models = {
      {"gqa, llama3 rope", test::fixture("llama_gqa_llama3rope")},
      {"qwen2 biases, tied bf16 head", test::fixture("qwen2_bias_tied_bf16")},
      {"w8a8 dynamic", q},
  };
  for (const auto& [what, dir] : models) {
    const RankRun one = one_process(dir);
    ASSERT_TRUE(one.error.empty()) << what << ": " << one.error;
    const std::vector<RankRun> t = run_ranks(dir, 1);
    EXPECT_NE(t[0].engine.find("over NCCL"), std::string::npos) << t[0].engine;
    // One rank sums nothing: the same kernels on the same values, so the same logits up to
    // the vocabulary-parallel head's other GEMM shape (a padded slice of one rank is the whole).
    test::expect_rank_equals(one, t[0], what + ", --tp 1 over NCCL", 1e-6f);
  }
  std::filesystem::remove_all(q);
}

TEST(CudaTensorParallel, TwoRanksEqualOneProcessOrNcclSaysWhy) {
  SKIP_WITHOUT_GPU();
  const std::string dir = test::fixture("qwen2_bias_tied_bf16");
  const RankRun one = one_process(dir);
  ASSERT_TRUE(one.error.empty()) << one.error;
  const std::vector<RankRun> t = run_ranks(dir, 2);
  if (cuda::device_count() < 2) {
    // Both ranks on device 0: NCCL either runs them or refuses, naming the init step.
    if (!t[0].error.empty() || !t[1].error.empty()) {
      const std::string e = t[0].error.empty() ? t[1].error : t[0].error;
      EXPECT_NE(e.find("ncclCommInitRank"), std::string::npos) << e;
      GTEST_SKIP() << "one device: NCCL refused two ranks on it (" << e << ")";
    }
  }
  for (int r = 0; r < 2; ++r) {
    test::expect_rank_equals(one, t[size_t(r)], "--tp 2 over NCCL, rank " + std::to_string(r),
                             2e-5f);
  }
}
