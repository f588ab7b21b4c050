// W4A16 C = A * dequant(B)^T, scalar reference: B holds 4-bit values in blocks of 32 (s4_value,
// kernels.h), otherwise as gemm_w8a16_nt_ref: per group the float dot product in double, times
// the group's scale. Tested in test_kernels.cpp.
#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void gemm_w4a16_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const uint8_t* B, int64_t ldb, const float* scale, int64_t group, float* C,
                       int64_t ldc) {
  const int64_t G = (K + group - 1) / group;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* b = B + n * ldb;
      double total = 0;
      for (int64_t g = 0; g < G; ++g) {
        double s = 0;
        const int64_t k1 = (g + 1) * group < K ? (g + 1) * group : K;
        for (int64_t k = g * group; k < k1; ++k) s += double(A[m * lda + k]) * s4_value(b, k);
        total += s * scale[n * G + g];
      }
      C[m * ldc + n] = float(total);
    }
  }
}

}  // namespace shrink::kernels::cpu
