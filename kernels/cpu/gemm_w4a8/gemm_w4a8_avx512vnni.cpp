// W4A8 GEMM, AVX-512 VNNI variant: 64 weight bytes (128 4-bit values, 4 blocks) per step, their
// low and high nibbles as the unsigned operand of two vpdpbusd against the packed int8
// activations (kernels.h), the + 8 offset of the stored values removed by the packed
// correction lanes. The decode GEMVs are gemm_w4a8_simd.inc's; prefill (M > kGemvMaxM) is a
// GEMM of its own below. Tested against gemm_w4a8_nt_ref in test_kernels.cpp.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace shrink::kernels::cpu {
namespace {

using vi = __m512i;
using vf = __m512;
constexpr int64_t kVB = 64;

inline vi load_w(const uint8_t* p, int64_t nbytes) {
  if (nbytes >= 64) return _mm512_loadu_si512(p);
  if (nbytes <= 0) return _mm512_setzero_si512();
  return _mm512_maskz_loadu_epi8((__mmask64(1) << nbytes) - 1, p);
}
inline void unpack(vi w, vi& lo, vi& hi) {
  const vi m = _mm512_set1_epi8(0x0F);
  lo = _mm512_and_si512(w, m);
  hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), m);
}
inline vi load_i(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline vi dot(vi acc, vi u, vi s) { return _mm512_dpbusd_epi32(acc, u, s); }
inline vf cvt(vi x) { return _mm512_cvtepi32_ps(x); }
inline vf load_f(const float* p) { return _mm512_loadu_ps(p); }
inline vf fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf fzero() { return _mm512_setzero_ps(); }
inline __m128 fold(vf x) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(x),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}
inline void hsum4(vf a, vf b, vf c, vf d, float* out) {
  const __m128 ab = _mm_hadd_ps(fold(a), fold(b)), cd = _mm_hadd_ps(fold(c), fold(d));
  _mm_storeu_ps(out, _mm_hadd_ps(ab, cd));
}
inline vf bcast(float s) { return _mm512_set1_ps(s); }
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
inline vf expand4h(const uint16_t* s, int64_t n) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m128i h = n >= 4 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s))
                           : _mm_maskz_loadu_epi16(__mmask8((1u << n) - 1), s);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_cvtph_ps(h)));
}
inline vf expand4(const float* s, int64_t n) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m128 v = n >= 4 ? _mm_loadu_ps(s) : _mm_maskz_loadu_ps(__mmask8((1u << n) - 1), s);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

}  // namespace
}  // namespace shrink::kernels::cpu

#define KNAME_W4A8 gemm_w4a8_nt_avx512vnni
#include "kernels/cpu/gemm_w4a8/gemm_w4a8_simd.inc"

// ---- Prefill: a VNNI GEMM over 16-row activation tiles ----------------------------------------
// The GEMV's steps multiply one weight row by one activation row and reduce across lanes at the
// end; at prefill sizes that costs a float epilogue per 128 products and row pair. This GEMM
// instead keeps 16 activation rows in the lanes of a vector (C transposed: lane = row m):
// vpdpbusd multiplies a broadcast quad of 4 unpacked weights (u8, the stored q + 8) by the quads
// of the same 4 inputs of 16 rows, so every instruction does 64 useful products and a block of
// 32 inputs needs 8 of them per (weight row, 16 rows), then one epilogue (+ correction, to
// float, times both scales). Per call, it repacks:
//   the activations, from the GEMV rows (kernels.h) into tiles of 16 rows per block of 32
//   inputs: 8 quads x [16 rows x 4 bytes], then the 16 rows' corrections and scales (kTileBytes);
//   a panel of kPanel weight rows, unpacked to one u8 per weight in input order (L2-resident).
// Both are O(M K) and O(N K) against the product's O(M N K). Each output is the blocks' terms
// summed in block order in float, as the reference sums them (in double).
namespace shrink::kernels::cpu {
namespace {

constexpr int64_t kTileBytes = 8 * 64 + 64 + 64;
constexpr int64_t kPanel = 32;

// Activation tiles of rows [m0, m0 + 16) (rows past M are zero): tile (t, b) at
// T + (t * nblocks + b) * kTileBytes.
void pack_tiles(int64_t M, int64_t nblocks, const uint8_t* A, int64_t lda, uint8_t* T) {
  const int64_t tiles = (M + 15) / 16;
  const __m512i off = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(int32_t(lda)));  // the 16 rows' byte offsets
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t rows = std::min<int64_t>(16, M - t * 16);
    const __mmask16 live = __mmask16((1u << rows) - 1);
    const uint8_t* a = A + t * 16 * lda;
    for (int64_t b = 0; b < nblocks; ++b) {
      uint8_t* dst = T + (t * nblocks + b) * kTileBytes;
      // Block b in the GEMV layout: chunk b / 4, inputs 0..15 at 16 j, 16..31 at 64 + 16 j.
      const uint8_t* src = a + (b / 4) * kW4a8ChunkBytes + 16 * (b % 4);
      for (int q = 0; q < 8; ++q) {
        const uint8_t* p = src + (q < 4 ? 4 * q : 64 + 4 * (q - 4));
        _mm512_storeu_si512(dst + 64 * q,
                            _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, off, p, 1));
      }
      const uint8_t* cs = a + (b / 4) * kW4a8ChunkBytes + 128 + 16 * (b % 4);  // lane 4 j
      _mm512_storeu_si512(dst + 512,
                          _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, off, cs, 1));
      const uint8_t* ss = a + (b / 4) * kW4a8ChunkBytes + 192 + 16 * (b % 4);
      _mm512_storeu_ps(dst + 576, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, off, ss, 1));
    }
  }
}

// Weight rows [n0, n0 + rows) unpacked to one u8 (q + 8) per input, nblocks * 32 per row.
void unpack_panel(const uint8_t* B, int64_t ldb, int64_t n0, int64_t rows, int64_t nblocks,
                  uint8_t* W) {
  const int64_t row_bytes = nblocks * 16, stride = nblocks * 32;
  const __m512i m = _mm512_set1_epi8(0x0F);
  const __m512i lo_idx = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i hi_idx = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* b = B + (n0 + r) * ldb;
    uint8_t* w = W + r * stride;
    for (int64_t off = 0; off < row_bytes; off += 64) {  // 4 blocks: 64 bytes in, 128 out
      const int64_t n = std::min<int64_t>(64, row_bytes - off);
      const __m512i v = _mm512_maskz_loadu_epi8((__mmask64)(n >= 64 ? ~0ull : (1ull << n) - 1),
                                                b + off);
      const __m512i lo = _mm512_and_si512(v, m);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
      const __m512i o0 = _mm512_permutex2var_epi64(lo, lo_idx, hi);  // blocks 0, 1 in order
      const __m512i o1 = _mm512_permutex2var_epi64(lo, hi_idx, hi);  // blocks 2, 3
      const int64_t outn = 2 * n;
      _mm512_mask_storeu_epi8(w + 2 * off, (__mmask64)(outn >= 64 ? ~0ull : (1ull << outn) - 1), o0);
      if (outn > 64)
        _mm512_mask_storeu_epi8(w + 2 * off + 64,
                                (__mmask64)(outn >= 128 ? ~0ull : (1ull << (outn - 64)) - 1), o1);
    }
  }
}

// C[m, n] for 32 rows (two tiles; t1 may be null) x NB weight rows over every block.
template <int NB>
void micro(int64_t nblocks, const uint8_t* t0, const uint8_t* t1, const uint8_t* W,
           int64_t wstride, const uint16_t* scale, const ScaleMap& sm, float* out /*[NB][32]*/) {
  __m512 f[NB][2];
  for (int j = 0; j < NB; ++j) f[j][0] = f[j][1] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nblocks; ++b) {
    const uint8_t* a0 = t0 + b * kTileBytes;
    const uint8_t* a1 = t1 ? t1 + b * kTileBytes : a0;
    __m512i acc[NB][2];
    const __m512i c0 = _mm512_loadu_si512(a0 + 512), c1 = _mm512_loadu_si512(a1 + 512);
    for (int j = 0; j < NB; ++j) {
      acc[j][0] = c0;
      acc[j][1] = c1;
    }
    for (int q = 0; q < 8; ++q) {
      const __m512i x0 = _mm512_loadu_si512(a0 + 64 * q), x1 = _mm512_loadu_si512(a1 + 64 * q);
      for (int j = 0; j < NB; ++j) {
        int32_t wq;
        std::memcpy(&wq, W + j * wstride + b * 32 + 4 * q, 4);
        const __m512i w = _mm512_set1_epi32(wq);
        acc[j][0] = _mm512_dpbusd_epi32(acc[j][0], w, x0);
        acc[j][1] = _mm512_dpbusd_epi32(acc[j][1], w, x1);
      }
    }
    const __m512 s0 = _mm512_loadu_ps(reinterpret_cast<const float*>(a0 + 576));
    const __m512 s1 = _mm512_loadu_ps(reinterpret_cast<const float*>(a1 + 576));
    const int64_t g = sm.G == 1 ? 0 : sm.index(b);
    for (int j = 0; j < NB; ++j) {
      const __m512 ws = _mm512_set1_ps(_cvtsh_ss(scale[j * sm.G + g]));
      f[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j][0]), _mm512_mul_ps(s0, ws), f[j][0]);
      f[j][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j][1]), _mm512_mul_ps(s1, ws), f[j][1]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    _mm512_storeu_ps(out + 32 * j, f[j][0]);
    _mm512_storeu_ps(out + 32 * j + 16, f[j][1]);
  }
}

void prefill(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda, const uint8_t* B,
             int64_t ldb, const uint16_t* scale, const ScaleMap& sm, float* C, int64_t ldc) {
  const int64_t nblocks = (K + 31) / 32, tiles = (M + 15) / 16, wstride = nblocks * 32;
  thread_local std::vector<uint8_t> T, W;
  T.resize(size_t(tiles * nblocks * kTileBytes));
  W.resize(size_t(kPanel * wstride));
  pack_tiles(M, nblocks, A, lda, T.data());
  alignas(64) float out[4 * 32];
  for (int64_t p0 = 0; p0 < N; p0 += kPanel) {
    const int64_t pn = std::min(kPanel, N - p0);
    unpack_panel(B, ldb, p0, pn, nblocks, W.data());
    for (int64_t t = 0; t < tiles; t += 2) {
      const uint8_t* t0 = T.data() + t * nblocks * kTileBytes;
      const uint8_t* t1 = t + 1 < tiles ? t0 + nblocks * kTileBytes : nullptr;
      const int64_t rows = std::min<int64_t>(32, M - t * 16);
      for (int64_t j0 = 0; j0 < pn; j0 += 4) {
        const int nb = int(std::min<int64_t>(4, pn - j0));
        const uint8_t* w = W.data() + j0 * wstride;
        const uint16_t* s = scale + (p0 + j0) * sm.G;
        switch (nb) {
          case 4: micro<4>(nblocks, t0, t1, w, wstride, s, sm, out); break;
          case 3: micro<3>(nblocks, t0, t1, w, wstride, s, sm, out); break;
          case 2: micro<2>(nblocks, t0, t1, w, wstride, s, sm, out); break;
          default: micro<1>(nblocks, t0, t1, w, wstride, s, sm, out); break;
        }
        for (int64_t r = 0; r < rows; ++r) {
          float* c = C + (t * 16 + r) * ldc + p0 + j0;
          for (int j = 0; j < nb; ++j) c[j] = out[32 * j + r];
        }
      }
    }
  }
}

}  // namespace
}  // namespace shrink::kernels::cpu
