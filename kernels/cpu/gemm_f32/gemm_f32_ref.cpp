// fp32 C = A * B^T, scalar reference (double accumulation). Tested in test_kernels.cpp.
#include <cstring>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void gemm_f32_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                     int64_t ldb, float* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += double(A[m * lda + k]) * B[n * ldb + k];
      C[m * ldc + n] = float(s);
    }
  }
}

void gemm_bf16w_f32_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                           const uint16_t* B, int64_t ldb, float* C, int64_t ldc) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const uint32_t bits = uint32_t(B[n * ldb + k]) << 16;
        float w;
        std::memcpy(&w, &bits, sizeof w);
        s += double(A[m * lda + k]) * w;
      }
      C[m * ldc + n] = float(s);
    }
  }
}

}  // namespace shrink::kernels::cpu
