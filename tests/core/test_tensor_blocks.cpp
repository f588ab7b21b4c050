// core/tensor_blocks.h: blocks cover every element once, and the pool runs each index once and
// stops at the first error.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "core/tensor_blocks.h"

namespace shrink::core {
namespace {

TEST(TensorBlocks, CoverEveryElementOnceTensorByTensor) {
  const std::vector<TensorView> ts = {{"a", DType::kF32, {5, 3}, nullptr, 60},
                                      {"b", DType::kF32, {4}, nullptr, 16},
                                      {"c", DType::kF32, {0}, nullptr, 0}};
  const std::vector<TensorBlock> b = tensor_blocks(ts, 4);
  // a: 15 elements -> [0,4) [4,8) [8,12) [12,15); b: [0,4); c: none.
  ASSERT_EQ(b.size(), 5u);
  EXPECT_EQ(b[3].tensor, 0u);
  EXPECT_EQ(b[3].begin, 12);
  EXPECT_EQ(b[3].end, 15);
  EXPECT_EQ(b[4].tensor, 1u);
  EXPECT_EQ(b[4].end, 4);
}

TEST(TensorBlocks, ParallelEachRunsEachIndexOnceAndStopsAtTheFirstError) {
  for (int threads : {1, 3}) {
    std::vector<std::atomic<int>> seen(1000);
    std::atomic<int> max_worker{0};
    Status st = parallel_each(seen.size(), threads, [&](size_t k, int w) {
      ++seen[k];
      int m = max_worker;
      while (w > m && !max_worker.compare_exchange_weak(m, w)) {
      }
      return Status::ok();
    });
    EXPECT_TRUE(st.is_ok());
    for (auto& s : seen) ASSERT_EQ(s.load(), 1);
    EXPECT_LT(max_worker.load(), threads);

    std::atomic<int> ran{0};
    st = parallel_each(1000, threads, [&](size_t k, int) {
      ++ran;
      return k == 10 ? invalid_input("block 10 is bad") : Status::ok();
    });
    EXPECT_EQ(st.message(), "block 10 is bad");
    EXPECT_LT(ran.load(), 1000);  // nothing new starts after the error (at most one per thread)
  }
}

}  // namespace
}  // namespace shrink::core
