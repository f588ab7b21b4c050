// W8A8 GEMM, AVX-512 VNNI variant. vpdpbusd multiplies unsigned by signed bytes, so activations
// are shifted into u8 (a + 128, an XOR of the sign bit) and the shift is removed afterwards:
// dot(a, b) = dot(a + 128, b) - 128 * sum(b), with 128 * sum(b) per (row, group) precomputed at
// load (b_comp). 64 k per instruction, 4x4 tiles of accumulators, masked loads for tails (the
// masked-off lanes load 0 for b, so they add nothing). Exact int32, then the reference's float
// epilogue: bit-identical to gemm_s8s8_f32_nt_ref. Tested in test_kernels.cpp.
// Decode (M = 1) takes its own path, gemv_rows: one weight row after another, so the weights
// stream from memory as one sequential stream. The 4-row tiles over rows of K bytes interleave
// four short streams that the hardware prefetcher keeps restarting: at K = 2048 they read
// 12.6 GB/s from DRAM on this machine, one row at a time 21.7 (the f32 GEMV: 21.0).
// How C is cut into tiles and decode blocks is gemm_s8s8_simd.inc, shared with the AVX2 variant;
// this file holds the VNNI integer micro-kernels it calls.
#include <immintrin.h>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {
namespace {

inline __mmask64 bmask(int64_t n) { return n >= 64 ? ~__mmask64(0) : ((__mmask64(1) << n) - 1); }

template <int MB, int NB>
void tile(int64_t K, const int8_t* A, int64_t lda, const float* a_scale, const int8_t* B,
          int64_t ldb, const float* b_scale, const int32_t* b_comp, int64_t G, int64_t group,
          float* C, int64_t ldc) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  float tot[MB][NB] = {};
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K;
    __m512i acc[MB][NB];
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_setzero_si512();
    for (int64_t k = k0; k < k1; k += 64) {
      const __mmask64 mk = bmask(k1 - k);
      __m512i b[NB];
      for (int j = 0; j < NB; ++j) b[j] = _mm512_maskz_loadu_epi8(mk, B + j * ldb + k);
      for (int i = 0; i < MB; ++i) {
        const __m512i a = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, A + i * lda + k), flip);
        for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, b[j]);
      }
    }
    for (int j = 0; j < NB; ++j) {
      const float s = b_scale[j * G + g];
      const int32_t comp = b_comp[j * G + g];
      for (int i = 0; i < MB; ++i) {
        const int32_t dot = _mm512_reduce_add_epi32(acc[i][j]) - comp;
        tot[i][j] += float(dot) * s;
      }
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) C[i * ldc + j] = tot[i][j] * a_scale[i];
}

// M = 1: per row and group, two accumulators over alternate 64-byte blocks (half the vpdpbusd
// latency chain), then the reference epilogue. Integer sums are exact, so the order is free.
void gemv_rows(int64_t N, int64_t K, const int8_t* A, float a_scale, const int8_t* B,
               int64_t ldb, const float* b_scale, const int32_t* b_comp, int64_t G,
               int64_t group, float* C) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* b = B + n * ldb;
    float tot = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K;
      __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
      int64_t k = k0;
      for (; k + 128 <= k1; k += 128) {
        const __m512i a0 = _mm512_xor_si512(_mm512_loadu_si512(A + k), flip);
        const __m512i a1 = _mm512_xor_si512(_mm512_loadu_si512(A + k + 64), flip);
        acc0 = _mm512_dpbusd_epi32(acc0, a0, _mm512_loadu_si512(b + k));
        acc1 = _mm512_dpbusd_epi32(acc1, a1, _mm512_loadu_si512(b + k + 64));
      }
      for (; k < k1; k += 64) {
        const __mmask64 mk = bmask(k1 - k);
        const __m512i a = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, A + k), flip);
        acc0 = _mm512_dpbusd_epi32(acc0, a, _mm512_maskz_loadu_epi8(mk, b + k));
      }
      const int32_t dot = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1)) - b_comp[n * G + g];
      tot += float(dot) * b_scale[n * G + g];
    }
    C[n] = tot * a_scale;
  }
}

// 2 <= M <= kGemvMaxM (batched decode, speculative verification), 8 rows of A at a time (see
// for_gemv_blocks): still one weight row after another,
// each 64-byte weight block loaded once and multiplied into all M rows of A (which stay in L1).
// The 4x4 tiles interleave four weight rows, and two rows cost about as much as two separate
// GEMVs. One accumulator per row: the M rows' vpdpbusd chains are independent.
template <int MR>
void gemv_multi(int64_t N, int64_t K, const int8_t* A, int64_t lda, const float* a_scale,
                const int8_t* B, int64_t ldb, const float* b_scale, const int32_t* b_comp,
                int64_t G, int64_t group, float* C, int64_t ldc) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  for (int64_t n = 0; n < N; ++n) {
    const int8_t* b = B + n * ldb;
    float tot[MR] = {};
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K;
      __m512i acc[MR];
      for (int i = 0; i < MR; ++i) acc[i] = _mm512_setzero_si512();
      int64_t k = k0;
      for (; k + 64 <= k1; k += 64) {
        const __m512i w = _mm512_loadu_si512(b + k);
        for (int i = 0; i < MR; ++i) {
          const __m512i a = _mm512_xor_si512(_mm512_loadu_si512(A + i * lda + k), flip);
          acc[i] = _mm512_dpbusd_epi32(acc[i], a, w);
        }
      }
      if (k < k1) {
        const __mmask64 mk = bmask(k1 - k);
        const __m512i w = _mm512_maskz_loadu_epi8(mk, b + k);
        for (int i = 0; i < MR; ++i) {
          const __m512i a = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mk, A + i * lda + k), flip);
          acc[i] = _mm512_dpbusd_epi32(acc[i], a, w);
        }
      }
      const float s = b_scale[n * G + g];
      const int32_t comp = b_comp[n * G + g];
      for (int i = 0; i < MR; ++i) tot[i] += float(_mm512_reduce_add_epi32(acc[i]) - comp) * s;
    }
    for (int i = 0; i < MR; ++i) C[i * ldc + n] = tot[i] * a_scale[i];
  }
}

}  // namespace
}  // namespace shrink::kernels::cpu

#include "kernels/cpu/gemm_s8s8/gemm_s8s8_simd.inc"

namespace shrink::kernels::cpu {

void gemm_s8s8_f32_nt_avx512vnni(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                                 const float* a_scale, const int8_t* B, int64_t ldb,
                                 const float* b_scale, int64_t group, const int32_t* b_comp,
                                 float* C, int64_t ldc) {
  const int64_t G = (K + group - 1) / group;
  if (M == 1) {
    gemv_rows(N, K, A, a_scale[0], B, ldb, b_scale, b_comp, G, group, C);
    return;
  }
  if (M <= kGemvMaxM) {
    gemv_blocks(M, N, K, A, lda, a_scale, B, ldb, b_scale, b_comp, G, group, C, ldc);
    return;
  }
  gemm_tiles(M, N, K, A, lda, a_scale, B, ldb, b_scale, b_comp, G, group, C, ldc);
}

}  // namespace shrink::kernels::cpu
