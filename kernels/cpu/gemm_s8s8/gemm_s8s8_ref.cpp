// W8A8 C = a_scale * sum_g b_scale * dot_g(A, B), scalar reference: exact int32 dot products
// per group, then the float epilogue in group order. The vector variants compute the same int32
// values and run the same float epilogue, so they match this bit for bit.
// Tested in test_kernels.cpp.
#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void gemm_s8s8_f32_nt_ref(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                          const float* a_scale, const int8_t* B, int64_t ldb,
                          const float* b_scale, int64_t group, const int32_t* /*b_comp*/,
                          float* C, int64_t ldc) {
  const int64_t G = (K + group - 1) / group;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0;
      for (int64_t g = 0; g < G; ++g) {
        int32_t dot = 0;
        const int64_t k1 = (g + 1) * group < K ? (g + 1) * group : K;
        for (int64_t k = g * group; k < k1; ++k) dot += int32_t(A[m * lda + k]) * B[n * ldb + k];
        acc += float(dot) * b_scale[n * G + g];
      }
      C[m * ldc + n] = acc * a_scale[m];
    }
  }
}

}  // namespace shrink::kernels::cpu
