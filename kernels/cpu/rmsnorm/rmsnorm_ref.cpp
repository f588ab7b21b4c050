// RMSNorm, scalar reference (the definition the vector variants are tested against), and the
// fused RMSNorm + int8 quantization reference. The sum of squares is accumulated in double, so
// this is at least as accurate as HF's float32 mean. Tested in tests/runtime/test_kernels.cpp.
#include <cmath>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void rmsnorm_f32_ref(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* yr = y + r * n;
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(xr[i]) * xr[i];
    const float inv = float(1.0 / std::sqrt(double(float(ss / double(n))) + double(eps)));
    for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * inv);
  }
}

void rmsnorm_quant_s8_ref(const float* x, const float* w, int64_t rows, int64_t n, float eps,
                          const float* in_scale, int8_t* q, int64_t ldq, float* scales,
                          float* scratch) {
  for (int64_t r = 0; r < rows; ++r) {
    rmsnorm_f32_ref(x + r * n, w, scratch, 1, n, eps);
    quantize_s8_ref(scratch, 1, n, n, in_scale, q + r * ldq, ldq, scales + r);
  }
}

}  // namespace shrink::kernels::cpu
