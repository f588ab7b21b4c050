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

// The panel's weight scales as float, one per (row, block): the micro-kernel's epilogue then
// broadcasts each from memory instead of converting an f16 through three instructions.
void panel_scales(const uint16_t* scale, int64_t rows, int64_t nblocks, const ScaleMap& sm,
                  float* S) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nblocks; ++b)
      S[r * nblocks + b] = h2f(scale[r * sm.G + (sm.G == 1 ? 0 : sm.index(b))]);
}

// C[m, n] += for MT tiles of 16 rows x NB weight rows over blocks [b0, b1): NB x MT integer
// accumulators per block (each broadcast weight quad feeds MT products, each activation vector
// NB), then the block's epilogue into NB x MT float sums, which start from and return to acc_out
// (the panel's partial sums, [NB][16 MT] at a stride of ostride floats per weight row).
template <int NB, int MT>
void micro(int64_t b0, int64_t b1, const uint8_t* t0, int64_t tstride, const uint8_t* W,
           int64_t wstride, const float* S, int64_t nblocks, float* acc_out, int64_t ostride) {
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* a = t0 + b * kTileBytes;
    __m512i acc[NB][MT];
    for (int t = 0; t < MT; ++t) {
      const __m512i c = _mm512_loadu_si512(a + t * tstride + 512);
      for (int j = 0; j < NB; ++j) acc[j][t] = c;
    }
#pragma GCC unroll 8
    for (int q = 0; q < 8; ++q) {
      __m512i x[MT];
      for (int t = 0; t < MT; ++t) {
        x[t] = _mm512_loadu_si512(a + t * tstride + 64 * q);
        // Keep x in a register: GCC otherwise folds the load into each of the NB vpdpbusd,
        // and the loads, not the products, then bound the kernel (half the speed here).
        asm("" : "+v"(x[t]));
      }
      for (int j = 0; j < NB; ++j) {
        int32_t wq;
        std::memcpy(&wq, W + j * wstride + b * 32 + 4 * q, 4);
        const __m512i w = _mm512_set1_epi32(wq);
        for (int t = 0; t < MT; ++t) acc[j][t] = _mm512_dpbusd_epi32(acc[j][t], w, x[t]);
      }
    }
    for (int t = 0; t < MT; ++t) {
      const __m512 st = _mm512_loadu_ps(reinterpret_cast<const float*>(a + t * tstride + 576));
      for (int j = 0; j < NB; ++j) {
        float* o = acc_out + ostride * j + 16 * t;
        _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j][t]),
                                            _mm512_mul_ps(st, _mm512_set1_ps(S[j * nblocks + b])),
                                            _mm512_loadu_ps(o)));
      }
    }
  }
}

template <int MT>
void micro_cols(int nb, int64_t b0, int64_t b1, const uint8_t* t0, int64_t tstride,
                const uint8_t* W, int64_t wstride, const float* S, int64_t nblocks, float* o,
                int64_t ostride) {
  switch (nb) {
    case 4: micro<4, MT>(b0, b1, t0, tstride, W, wstride, S, nblocks, o, ostride); break;
    case 3: micro<3, MT>(b0, b1, t0, tstride, W, wstride, S, nblocks, o, ostride); break;
    case 2: micro<2, MT>(b0, b1, t0, tstride, W, wstride, S, nblocks, o, ostride); break;
    default: micro<1, MT>(b0, b1, t0, tstride, W, wstride, S, nblocks, o, ostride); break;
  }
}

// Loops: panels of kPanel weight rows (unpacked once), then groups of up to 3 activation tiles,
// then chunks of kChunkBlocks blocks (the group's chunk, about 15 KiB, and the panel's, 8 KiB,
// stay in L1 while every 4 weight rows of the panel pass), the float sums kept in a panel
// buffer between chunks.
void prefill(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda, const uint8_t* B,
             int64_t ldb, const uint16_t* scale, const ScaleMap& sm, float* C, int64_t ldc) {
  constexpr int64_t kChunkBlocks = 8, kRowsPer = 48;
  const int64_t nblocks = (K + 31) / 32, tiles = (M + 15) / 16, wstride = nblocks * 32;
  const int64_t tstride = nblocks * kTileBytes;
  thread_local std::vector<uint8_t> T, W;
  thread_local std::vector<float> S;
  T.resize(size_t(tiles * tstride));
  W.resize(size_t(kPanel * wstride));
  S.resize(size_t(kPanel * nblocks));
  pack_tiles(M, nblocks, A, lda, T.data());
  alignas(64) float out[kPanel * kRowsPer];
  for (int64_t p0 = 0; p0 < N; p0 += kPanel) {
    const int64_t pn = std::min(kPanel, N - p0);
    unpack_panel(B, ldb, p0, pn, nblocks, W.data());
    panel_scales(scale + p0 * sm.G, pn, nblocks, sm, S.data());
    for (int64_t t = 0; t < tiles; t += 3) {
      const int mt = int(std::min<int64_t>(3, tiles - t));
      const uint8_t* t0 = T.data() + t * tstride;
      std::fill(out, out + kPanel * kRowsPer, 0.0f);
      for (int64_t b0 = 0; b0 < nblocks; b0 += kChunkBlocks) {
        const int64_t b1 = std::min(nblocks, b0 + kChunkBlocks);
        for (int64_t j0 = 0; j0 < pn; j0 += 4) {
          const int nb = int(std::min<int64_t>(4, pn - j0));
          const uint8_t* w = W.data() + j0 * wstride;
          const float* s = S.data() + j0 * nblocks;
          float* o = out + j0 * kRowsPer;
          switch (mt) {
            case 3: micro_cols<3>(nb, b0, b1, t0, tstride, w, wstride, s, nblocks, o, kRowsPer); break;
            case 2: micro_cols<2>(nb, b0, b1, t0, tstride, w, wstride, s, nblocks, o, kRowsPer); break;
            default: micro_cols<1>(nb, b0, b1, t0, tstride, w, wstride, s, nblocks, o, kRowsPer); break;
          }
        }
      }
      const int64_t rows = std::min<int64_t>(16 * mt, M - t * 16);
      for (int64_t r = 0; r < rows; ++r) {
        float* c = C + (t * 16 + r) * ldc + p0;
        for (int64_t j = 0; j < pn; ++j) c[j] = out[j * kRowsPer + r];
      }
    }
  }
}

}  // namespace
}  // namespace shrink::kernels::cpu
