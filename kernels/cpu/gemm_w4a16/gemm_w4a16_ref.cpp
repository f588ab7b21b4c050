// W4A16 C = A * dequant(B)^T, scalar reference: the 4-bit values (s4_value, kernels.h) widened
// to int8, then gemm_w8a16_nt_ref's arithmetic (per group the float dot product in double, times
// the group's scale), which the 4-bit kernels must reproduce. Tested in test_kernels.cpp.
#include <vector>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void gemm_w4a16_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const uint8_t* B, int64_t ldb, const float* scale, int64_t group, float* C,
                       int64_t ldc) {
  std::vector<int8_t> q(size_t(N * K));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) q[size_t(n * K + k)] = int8_t(s4_value(B + n * ldb, k));
  }
  gemm_w8a16_nt_ref(M, N, K, A, lda, q.data(), K, scale, group, C, ldc);
}

}  // namespace shrink::kernels::cpu
