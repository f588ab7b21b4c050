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

#include <cmath>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "core/launch.h"
#include "kernels/cuda/device.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "runtime/tp/gloo_comm.h"
#include "tests/runtime/util.h"

using namespace shrink;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device present: GPU test not run"

namespace {

struct RankRun {
  std::vector<float> logits;  // every position of the prompt
  std::vector<int32_t> greedy;
  double ppl = 0;
  std::string error;
  std::string engine;
};

const std::vector<int32_t>& prompt() {
  static const std::vector<int32_t> p = {1, 17, 42, 99, 7, 63, 250, 3, 18, 77, 5, 140,
                                         29, 201, 11, 64, 2, 88, 120, 9, 33, 71, 150, 6};
  return p;
}

// One process's (comm null) or one rank's logits, 12 greedy steps (the decode graphs, with the
// collectives recorded into them) and perplexity, on the GPU with exact fp32 GEMMs.
RankRun rank_run(const std::string& dir, std::shared_ptr<runtime::TpComm> comm, int device) {
  RankRun r;
  runtime::EngineOptions o;
  o.device = "cuda";
  o.float_weights = "f32";
  o.max_seq_len = 64;
  o.tp = std::move(comm);
  o.cuda_device = device;
  auto e = runtime::Engine::load(dir, o);
  if (!e.is_ok()) {
    r.error = e.status().message();
    return r;
  }
  runtime::Engine& m = **e;
  r.engine = m.describe();
  const std::vector<int32_t>& p = prompt();
  Status st = m.forward({{0, p.data(), int64_t(p.size())}}, true, r.logits);
  m.reset_all();
  std::vector<int32_t> next;
  if (st.is_ok()) st = m.forward_argmax({{0, p.data(), int64_t(p.size())}}, next);
  for (int i = 0; i < 12 && st.is_ok(); ++i) {
    r.greedy.push_back(next[0]);
    st = m.forward_argmax({{0, &r.greedy.back(), 1}}, next);
  }
  if (!st.is_ok()) {
    r.error = st.message();
    return r;
  }
  std::vector<int32_t> stream;
  for (int k = 0; k < 4; ++k) stream.insert(stream.end(), p.begin(), p.end());
  auto ppl = runtime::perplexity(m, stream.data(), stream.size(), 32, 1);
  if (!ppl.is_ok()) {
    r.error = ppl.status().message();
    return r;
  }
  r.ppl = ppl->perplexity;
  return r;
}

std::vector<RankRun> run_ranks(const std::string& dir, int n) {
  const int port = core::tcp_port_free().take_or_throw();
  std::vector<RankRun> runs(static_cast<size_t>(n));
  std::vector<std::thread> ts;
  for (int r = 0; r < n; ++r) {
    ts.emplace_back([&, r] {
      auto comm = test::tp_join_local(r, n, port, "shm", 60);
      if (!comm.is_ok()) {
        runs[size_t(r)].error = comm.status().message();
        return;
      }
      runs[size_t(r)] = rank_run(dir, *comm, r);
    });
  }
  for (auto& t : ts) t.join();
  return runs;
}

void expect_equal(const RankRun& one, const RankRun& t, const std::string& at, float tol) {
  ASSERT_TRUE(t.error.empty()) << at << ": " << t.error;
  ASSERT_EQ(t.logits.size(), one.logits.size()) << at;
  float scale = 1, worst = 0;
  for (size_t i = 0; i < one.logits.size(); ++i) {
    scale = std::max(scale, std::fabs(one.logits[i]));
    worst = std::max(worst, std::fabs(t.logits[i] - one.logits[i]));
  }
  EXPECT_LE(worst, tol * scale) << at << ": logits differ by " << worst;
  EXPECT_EQ(t.greedy, one.greedy) << at;
  EXPECT_NEAR(t.ppl / one.ppl, 1.0, 1e-6) << at << ": " << t.ppl << " vs " << one.ppl;
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
    const RankRun one = rank_run(dir, nullptr, 0);
    ASSERT_TRUE(one.error.empty()) << what << ": " << one.error;
    const std::vector<RankRun> t = run_ranks(dir, 1);
    EXPECT_NE(t[0].engine.find("over NCCL"), std::string::npos) << t[0].engine;
    // One rank sums nothing: the same kernels on the same values, so the same logits up to
    // the vocabulary-parallel head's other GEMM shape (a padded slice of one rank is the whole).
    expect_equal(one, t[0], what + ", --tp 1 over NCCL", 1e-6f);
  }
  std::filesystem::remove_all(q);
}

TEST(CudaTensorParallel, TwoRanksEqualOneProcessOrNcclSaysWhy) {
  SKIP_WITHOUT_GPU();
  const std::string dir = test::fixture("qwen2_bias_tied_bf16");
  const RankRun one = rank_run(dir, nullptr, 0);
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
    expect_equal(one, t[size_t(r)], "--tp 2 over NCCL, rank " + std::to_string(r), 2e-5f);
  }
}
