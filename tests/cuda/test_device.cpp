// GPU tests: skipped (GTEST_SKIP) when no CUDA device is present, as on CI machines.
#include <gtest/gtest.h>

#include "kernels/cuda/device.h"

using namespace shrink;

TEST(CudaDevice, SaxpyMatchesCpu) {
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device present";
  std::printf("device 0: %s\n", cuda::device_summary(0).c_str());
  const int n = 100003;  // not a multiple of the block size
  std::vector<float> x(n), y(n), want(n);
  for (int i = 0; i < n; ++i) {
    x[size_t(i)] = float(i % 97) * 0.5f;
    y[size_t(i)] = float(i % 13) - 6.0f;
    want[size_t(i)] = 1.5f * x[size_t(i)] + y[size_t(i)];
  }
  ASSERT_TRUE(cuda::saxpy_check(1.5f, x, y).is_ok());
  for (int i = 0; i < n; ++i) ASSERT_FLOAT_EQ(y[size_t(i)], want[size_t(i)]) << i;
}
