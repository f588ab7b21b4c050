// The CPU backend's bf16 float weights (LinearDesc::wb, as a bf16 checkpoint stores them) against
// the same weights widened to float32, through the three paths of a product: the hand-written
// kernel (up to 511 rows), the path of many rows that widens a panel of weight rows at a time into
// the fp32 GEMM (here three panels, the last one short), and borrowed weights (a tied head).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/dtype.h"
#include "runtime/backend.h"

using namespace shrink;
using namespace shrink::runtime;

namespace {

std::unique_ptr<Backend> cpu(const std::string& weights, bool bf16_gemm) {
  CpuBackendOptions o;
  o.threads = 2;
  o.float_weights = weights;
  o.bf16_gemm = bf16_gemm;
  auto r = backend_cpu_create(o);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return std::move(r).value();
}

std::vector<float> product(Backend& be, LinearDesc&& d, const std::vector<float>& x, int64_t M) {
  const int64_t N = d.out;
  auto l = be.linear_create(std::move(d));
  EXPECT_TRUE(l.is_ok()) << l.status().message();
  auto xt = be.tensor_from_host(std::vector<float>(x));
  auto yt = be.tensor_zeros(M * N);
  be.linear(**l, xt->data(), M, yt->data(), N);
  std::vector<float> y(size_t(M * N));
  be.to_host(yt->data(), M * N, y.data());
  return y;
}

}  // namespace

TEST(CpuBackend, Bf16WeightsEqualTheirWidenedFloat32) {
  // 1024-row panels at K = 2048 (8 MiB of float32 each): N = 2500 makes 1024 + 1024 + 452.
  const int64_t N = 2500, K = 2048;
  std::mt19937 rng(7);
  std::normal_distribution<float> g(0.0f, 0.05f);
  std::vector<uint16_t> wb(size_t(N * K));
  std::vector<float> wf(wb.size());
  for (size_t i = 0; i < wb.size(); ++i) {
    wb[i] = core::f32_to_bf16(g(rng));
    wf[i] = core::bf16_to_f32(wb[i]);
  }
  auto f32 = cpu("f32", true), bf16 = cpu("bf16", false);
  EXPECT_TRUE(bf16->float_weights_bf16());
  EXPECT_FALSE(f32->float_weights_bf16());
  // Rows for the GEMV, for the hand-written kernel past the GEMV limit (8), and from 512 on for
  // the widened panels into the library GEMM.
  for (int64_t M : {1, 3, 20, 520}) {
    std::vector<float> x(size_t(M * K));
    for (float& v : x) v = g(rng);
    LinearDesc df;
    df.name = "f32";
    df.out = N;
    df.in = K;
    df.w = wf;
    const std::vector<float> want = product(*f32, std::move(df), x, M);
    LinearDesc db;
    db.name = "bf16";
    db.out = N;
    db.in = K;
    db.wb = wb;
    const std::vector<float> got = product(*bf16, std::move(db), x, M);
    LinearDesc dr;  // borrowed, as a tied head reads the embedding
    dr.name = "bf16 borrowed";
    dr.out = N;
    dr.in = K;
    dr.wb_borrowed = wb.data();
    const std::vector<float> borrowed = product(*bf16, std::move(dr), x, M);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      worst = std::max(worst, double(std::fabs(got[i] - want[i])));
      scale = std::max(scale, double(std::fabs(want[i])));
    }
    EXPECT_GT(scale, 0.1) << M;
    EXPECT_LT(worst, 1e-5 * scale) << "M " << M;  // the same products, summed in another order
    EXPECT_EQ(borrowed, got) << "M " << M;
  }
}

TEST(CpuBackend, Bf16WeightsRefusedByAFloat32Backend) {
  auto f32 = cpu("f32", true);
  LinearDesc d;
  d.name = "w";
  d.out = 2;
  d.in = 2;
  d.wb = {0, 0, 0, 0};
  auto l = f32->linear_create(std::move(d));
  ASSERT_FALSE(l.is_ok());
  EXPECT_NE(l.status().message().find("bf16 weights given to a backend that keeps float32"),
            std::string::npos)
      << l.status().message();
}
