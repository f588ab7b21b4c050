// W8A8 GEMM, AVX2 variant: int8 widened to int16 and multiplied pairwise into int32 with
// vpmaddwd (exact: |a*b + c*d| <= 2*127^2 fits easily; vpmaddubsw would saturate int16), 16 k
// per step, 4x4 tiles of accumulators, per-group horizontal sums, then the reference's float
// epilogue. Bit-identical to gemm_s8s8_f32_nt_ref; tested in test_kernels.cpp.
// How C is cut into tiles and decode blocks is gemm_s8s8_simd.inc, shared with the VNNI variant;
// this file holds the AVX2 integer micro-kernels it calls.
#include <immintrin.h>

#include <vector>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {
namespace {

inline int32_t hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

template <int MB, int NB>
void tile(int64_t K, const int8_t* A, int64_t lda, const float* a_scale, const int8_t* B,
          int64_t ldb, const float* b_scale, const int32_t* /*b_comp*/, int64_t G, int64_t group,
          float* C, int64_t ldc) {
  float tot[MB][NB] = {};
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K;
    __m256i acc[MB][NB];
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_si256();
    int64_t k = k0;
    for (; k + 16 <= k1; k += 16) {
      __m256i b[NB];
      for (int j = 0; j < NB; ++j) {
        b[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(B + j * ldb + k)));
      }
      for (int i = 0; i < MB; ++i) {
        const __m256i a =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(A + i * lda + k)));
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(a, b[j]));
      }
    }
    for (int i = 0; i < MB; ++i) {
      for (int j = 0; j < NB; ++j) {
        int32_t dot = hsum_i32(acc[i][j]);
        for (int64_t t = k; t < k1; ++t) dot += int32_t(A[i * lda + t]) * B[j * ldb + t];
        tot[i][j] += float(dot) * b_scale[j * G + g];
      }
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) C[i * ldc + j] = tot[i][j] * a_scale[i];
}

// 1 <= M <= kGemvMaxM (decode, batched decode, speculative verification), 8 rows of A at a time
// (see for_gemv_blocks): one weight row after another,
// a single sequential stream (4-row tiles interleave four short streams that the hardware
// prefetcher keeps restarting; see gemm_s8s8_avx512vnni.cpp), each weight vector widened once
// and used for all M rows of A. A is widened to int16 once per call (Aw, K16 values per row,
// zero-padded to a multiple of 16) so the inner loop widens only the weights.
template <int MR>
void gemv_multi(int64_t N, int64_t K, const int16_t* Aw, int64_t K16, const float* a_scale,
                const int8_t* B, int64_t ldb, const float* b_scale, const int32_t* /*b_comp*/,
                int64_t G, int64_t group, float* C, int64_t ldc) {
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* b = B + n * ldb;
    float tot[MR] = {};
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K;
      __m256i acc[MR];
      for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_si256();
      int64_t k = k0;
      for (; k + 16 <= k1; k += 16) {
        const __m256i w =
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k)));
        for (int i = 0; i < MR; ++i) {
          const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Aw + i * K16 + k));
          acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(a, w));
        }
      }
      const float s = b_scale[n * G + g];
      for (int i = 0; i < MR; ++i) {
        int32_t dot = hsum_i32(acc[i]);
        for (int64_t t = k; t < k1; ++t) dot += int32_t(Aw[i * K16 + t]) * b[t];
        tot[i] += float(dot) * s;
      }
    }
    for (int i = 0; i < MR; ++i) C[i * ldc + n] = tot[i] * a_scale[i];
  }
}

}  // namespace
}  // namespace shrink::kernels::cpu

#include "kernels/cpu/gemm_s8s8/gemm_s8s8_simd.inc"

namespace shrink::kernels::cpu {

void gemm_s8s8_f32_nt_avx2(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                           const float* a_scale, const int8_t* B, int64_t ldb,
                           const float* b_scale, int64_t group, const int32_t* /*b_comp*/,
                           float* C, int64_t ldc) {
  const int64_t G = (K + group - 1) / group;
  if (M <= kGemvMaxM) {
    const int64_t K16 = (K + 15) / 16 * 16;
    thread_local std::vector<int16_t> aw;
    aw.assign(size_t(M * K16), 0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) aw[size_t(m * K16 + k)] = A[m * lda + k];
    gemv_blocks(M, N, K, aw.data(), K16, a_scale, B, ldb, b_scale, nullptr, G, group, C, ldc);
    return;
  }
  gemm_tiles(M, N, K, A, lda, a_scale, B, ldb, b_scale, nullptr, G, group, C, ldc);
}

}  // namespace shrink::kernels::cpu
