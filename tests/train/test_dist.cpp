// Data-parallel pieces in one process: two ranks run as threads over one c10d HashStore with
// real Gloo process groups on loopback. Checks that the bucketed, hook-launched gradient
// all-reduce gives exactly the full-batch gradient, that broadcast copies rank 0's weights, and
// that a peer which disappears makes the survivor fail with a clear error instead of hanging.
// The multi-process equivalence, dead-rank and resume tests are in tests/cli/test_dist.sh.
#include <gtest/gtest.h>

#include <torch/csrc/distributed/c10d/HashStore.hpp>

#include <chrono>
#include <thread>

#include "core/status.h"
#include "train/dist.h"
#include "train/model.h"
#include "tests/train/util.h"

using namespace shrink;

namespace {

// Mean next-token cross-entropy of `m` on rows [first, first+count) of ids [B, T+1].
torch::Tensor lm_loss(train::CausalLM& m, const torch::Tensor& ids, int64_t first, int64_t count) {
  auto rows = ids.narrow(0, first, count);
  const int64_t T = ids.size(1) - 1;
  auto logits = m->forward(rows.narrow(1, 0, T)).logits;
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}),
                                              rows.narrow(1, 1, T).reshape({-1}));
}

}  // namespace

TEST(Dist, BucketedAllReduceEqualsFullBatchGradient) {
  const core::ModelConfig c = test::micro_config(64);
  torch::manual_seed(3);
  auto ids = torch::randint(0, 64, {8, 17}, torch::kLong);

  // Reference: one process, the whole batch of 8.
  train::CausalLM ref = train::model_create(c, 11);
  lm_loss(ref, ids, 0, 8).backward();

  // Models are made here, not in the threads: initialisation draws from LibTorch's global
  // generator, which two threads would interleave.
  std::vector<train::CausalLM> models = {train::model_create(c, 11),
                                         train::model_create(c, 12)};  // rank 1 differs...
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::vector<std::vector<torch::Tensor>> grads(2);
  std::vector<int64_t> buckets(2), overlapped(2);
  std::vector<std::string> errors(2);
  auto rank_main = [&](int rank) {
    try {
      auto g = train::DistGroup::join_store(store, rank, 2, 30);
      train::CausalLM& m = models[size_t(rank)];
      g->broadcast(m->parameters());  // ...until rank 0's weights are broadcast
      // 4 KiB buckets: the micro model's parameters span many buckets, so most launch from the
      // autograd hooks while backward is still running.
      train::GradReducer red(g.get(), m->parameters(), 4096);
      red.arm();
      lm_loss(m, ids, 4 * rank, 4).backward();
      red.finish();
      for (auto& p : m->parameters()) grads[size_t(rank)].push_back(p.grad().clone());
      buckets[size_t(rank)] = red.buckets();
      overlapped[size_t(rank)] = red.overlapped_last();
    } catch (const std::exception& e) {
      errors[size_t(rank)] = e.what();
    }
  };
  std::thread t0(rank_main, 0), t1(rank_main, 1);
  t0.join();
  t1.join();
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  EXPECT_GT(buckets[0], 4);
  EXPECT_GT(overlapped[0], 0);  // launched during backward, not all after it
  auto ref_params = ref->parameters();
  ASSERT_EQ(grads[0].size(), ref_params.size());
  for (size_t i = 0; i < ref_params.size(); ++i) {
    // The mean of two half-batch means is the full-batch mean; only the float summation order
    // differs, so the agreement is at float32 rounding.
    const auto& want = ref_params[i].grad();
    const double scale = want.abs().max().item<double>() + 1e-12;
    EXPECT_LT((grads[0][i] - want).abs().max().item<double>() / scale, 1e-5) << "param " << i;
    EXPECT_TRUE(torch::equal(grads[0][i], grads[1][i])) << "ranks disagree on param " << i;
  }
}

TEST(Dist, LostPeerFailsWithClearErrorWithinTimeout) {
  auto store = c10::make_intrusive<c10d::HashStore>();
  std::string error;
  double seconds = 0;
  std::thread t1([&] {
    // Rank 1 joins, then vanishes (its sockets close) without ever all-reducing.
    auto g = train::DistGroup::join_store(store, 1, 2, 5);
  });
  {
    auto g = train::DistGroup::join_store(store, 0, 2, 5);
    t1.join();
    auto t = torch::ones({1000});
    auto start = std::chrono::steady_clock::now();
    try {
      g->allreduce_sum(t, "the gradient all-reduce");
    } catch (const Error& e) {
      error = e.what();
    }
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  EXPECT_NE(error.find("data-parallel: the gradient all-reduce failed"), std::string::npos) << error;
  EXPECT_NE(error.find("--resume"), std::string::npos) << error;
  EXPECT_LT(seconds, 5.0 + 10.0);  // the 5 s collective timeout, with slack for a loaded machine
}
