// W8A16 C = A * dequant(B)^T, scalar reference: per group, the float dot product of A with the
// int8 weights (double accumulation), times the group's scale, summed over groups. Mathematically
// x . (q * s) as the fake-quant reference computes it. Tested in test_kernels.cpp.
#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void gemm_w8a16_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const int8_t* B, int64_t ldb, const float* scale, int64_t group, float* C,
                       int64_t ldc) {
  const int64_t G = (K + group - 1) / group;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double total = 0;
      for (int64_t g = 0; g < G; ++g) {
        double s = 0;
        const int64_t k1 = (g + 1) * group < K ? (g + 1) * group : K;
        for (int64_t k = g * group; k < k1; ++k) s += double(A[m * lda + k]) * B[n * ldb + k];
        total += s * scale[n * G + g];
      }
      C[m * ldc + n] = float(total);
    }
  }
}

}  // namespace shrink::kernels::cpu
