// A minimal float-vector vocabulary over AVX2 (8 lanes) or AVX-512 (16 lanes), chosen by the
// flags of the translation unit that includes it.
//
// Why: the AVX2 and AVX-512 variant of an element-wise or dot-product kernel are the same
// algorithm at two vector widths, so each op has one body (<op>_simd.inc) that is compiled twice,
// in <op>_avx2.cpp and <op>_avx512.cpp with their own per-file flags. Everything here has
// internal linkage (anonymous namespace), so the two compilations never collide at link time
// (no ODR merging of functions compiled for different ISAs). Tested through every kernel that
// uses it (tests/runtime/test_kernels.cpp).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#if !defined(__AVX2__)
#error "simd.h needs AVX2 or AVX-512 flags on this translation unit"
#endif

#define SHRINK_KCAT2(a, b) a##_##b
#define SHRINK_KCAT(a, b) SHRINK_KCAT2(a, b)
/// KNAME(gemm_f32_nt) -> gemm_f32_nt_avx2 or gemm_f32_nt_avx512 (SHRINK_ISA_SUFFIX per file).
#define KNAME(op) SHRINK_KCAT(op, SHRINK_ISA_SUFFIX)

namespace shrink::kernels::cpu {
namespace {

#if defined(__AVX512F__)
constexpr int kW = 16;
using vf = __m512;
inline __mmask16 vmask(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(vmask(n), p); }
inline void vstore(float* p, vf v) { _mm512_storeu_ps(p, v); }
inline void vstore_n(float* p, vf v, int64_t n) { _mm512_mask_storeu_ps(p, vmask(n), v); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset(float x) { return _mm512_set1_ps(x); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline vf vabs(vf a) { return _mm512_abs_ps(a); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }  // a*b + c
inline float vsum(vf v) { return _mm512_reduce_add_ps(v); }
inline float vhmax(vf v) { return _mm512_reduce_max_ps(v); }
/// Lane t = the sum of the lanes of a[t], for kW vectors: a transpose-add tree (45 shuffles and
/// adds for 16 sums, against ~8 dependent ops per vsum).
inline vf vsum_each(const vf* a) {
  vf b[8], c[4], e[2];
  for (int p = 0; p < 8; ++p)  // 128-bit quarters: [a0 q0+q2, a0 q1+q3, a1 q0+q2, a1 q1+q3]
    b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xEE));
  for (int p = 0; p < 4; ++p)  // quarter i: the 4-lane partial sums of a[4p + i]
    c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * p], b[2 * p + 1], 0xDD));
  for (int p = 0; p < 2; ++p)
    e[p] = _mm512_add_ps(_mm512_unpacklo_ps(c[2 * p], c[2 * p + 1]),
                         _mm512_unpackhi_ps(c[2 * p], c[2 * p + 1]));
  // Lane 4i + (0, 1, 2, 3) now holds the sum of a[i], a[8 + i], a[4 + i], a[12 + i].
  const vf f = _mm512_add_ps(_mm512_unpacklo_ps(e[0], e[1]), _mm512_unpackhi_ps(e[0], e[1]));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, f);
}
inline vf vround(vf v) { return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vpow2i(vf n) {  // 2^n for integral n in [-126, 127]
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n),
                                                                 _mm512_set1_epi32(127)), 23));
}
/// kW int8 -> float.
inline vf vload_s8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline vf vload_s8_n(const int8_t* p, int64_t n) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(vmask(n), p)));
}
/// 4-bit weights (16 bytes per block of 32: byte j holds value j + 8 in its low nibble and value
/// j + 16, + 8, in its high nibble), dequantized to q * scale in registers. AVX-512: the group's
/// 16 possible weights sit in one register (S4Group), and each byte widened to a lane picks two
/// of them by `vpermps` (which reads only an index's low 4 bits, so the high nibble needs a
/// shift but no mask): 4 instructions per 32 weights, the scale included.
struct S4Group {
  vf lut;
};
inline vf s4_values() {
  return _mm512_setr_ps(-8.f, -7.f, -6.f, -5.f, -4.f, -3.f, -2.f, -1.f, 0.f, 1.f, 2.f, 3.f, 4.f,
                        5.f, 6.f, 7.f);
}
inline S4Group s4_group(float scale) {
  return {_mm512_mul_ps(s4_values(), _mm512_set1_ps(scale))};
}
inline void s4_lookup(const uint8_t* p, vf lut, vf* out) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  out[0] = _mm512_permutexvar_ps(b, lut);
  out[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut);
}
inline void vload_s4_block(const uint8_t* p, const S4Group& g, vf* out) {
  s4_lookup(p, g.lut, out);
}
/// The same without a scale: q itself.
inline void vload_s4_block(const uint8_t* p, vf* out) {
  s4_lookup(p, s4_values(), out);
}
/// kW bf16 (raw bit patterns) -> float: the 16 bits become the top half of a float (exact).
inline vf vload_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
inline vf vload_bf16_n(const uint16_t* p, int64_t n) {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(vmask(n), p)), 16));
}
/// Round (half to even), saturate to int8 (caller clamps to [-127, 127] first) and store n.
inline void vstore_s8_n(int8_t* p, vf v, int64_t n) {
  __m128i b = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(v));
  _mm_mask_storeu_epi8(p, vmask(n), b);
}
/// kW f16 (IEEE binary16 bit patterns) -> float (exact), and float -> f16 (nearest even).
inline vf vload_f16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline vf vload_f16_n(const uint16_t* p, int64_t n) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(vmask(n), p));
}
inline void vstore_f16_n(uint16_t* p, vf v, int64_t n) {
  const __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm256_mask_storeu_epi16(p, vmask(n), h);
}
#else
constexpr int kW = 8;
using vf = __m256;
inline __m256i vmask(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vload_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, vmask(n)); }
inline void vstore(float* p, vf v) { _mm256_storeu_ps(p, v); }
inline void vstore_n(float* p, vf v, int64_t n) { _mm256_maskstore_ps(p, vmask(n), v); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset(float x) { return _mm256_set1_ps(x); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline vf vabs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vf v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float vhmax(vf v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
/// Lane t = the sum of the lanes of a[t], for kW vectors (a transpose-add tree).
inline vf vsum_each(const vf* a) {
  vf b[4], c[2];
  for (int p = 0; p < 4; ++p)  // halves: the 4-lane partial sums of a[2p], a[2p + 1]
    b[p] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * p], a[2 * p + 1], 0x20),
                         _mm256_permute2f128_ps(a[2 * p], a[2 * p + 1], 0x31));
  for (int p = 0; p < 2; ++p)
    c[p] = _mm256_add_ps(_mm256_unpacklo_ps(b[2 * p], b[2 * p + 1]),
                         _mm256_unpackhi_ps(b[2 * p], b[2 * p + 1]));
  // Lane 4h + (0, 1, 2, 3) now holds the sum of a[h], a[4 + h], a[2 + h], a[6 + h].
  const vf f = _mm256_add_ps(_mm256_unpacklo_ps(c[0], c[1]), _mm256_unpackhi_ps(c[0], c[1]));
  return _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 2, 6, 1, 5, 3, 7));
}
inline vf vround(vf v) { return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf vpow2i(vf n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n),
                                                                 _mm256_set1_epi32(127)), 23));
}
inline vf vload_s8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline vf vload_s8_n(const int8_t* p, int64_t n) {
  int8_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, size_t(n < 8 ? n : 8));
  return vload_s8(buf);
}
struct S4Group {
  vf scale;
};
inline S4Group s4_group(float scale) { return {_mm256_set1_ps(scale)}; }
inline void vload_s4_block(const uint8_t* p, vf* out) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
  const __m128i lo = _mm_sub_epi8(_mm_and_si128(b, m), eight);
  const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), eight);
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
inline void vload_s4_block(const uint8_t* p, const S4Group& g, vf* out) {
  vload_s4_block(p, out);
  for (int j = 0; j < 4; ++j) out[j] = _mm256_mul_ps(out[j], g.scale);
}
inline vf vload_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline vf vload_bf16_n(const uint16_t* p, int64_t n) {
  uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, size_t(n < 8 ? n : 8) * sizeof(uint16_t));
  return vload_bf16(buf);
}
inline vf vload_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline vf vload_f16_n(const uint16_t* p, int64_t n) {
  uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, p, size_t(n < 8 ? n : 8) * sizeof(uint16_t));
  return vload_f16(buf);
}
inline void vstore_f16_n(uint16_t* p, vf v, int64_t n) {
  alignas(16) uint16_t t[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(t),
                  _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  std::memcpy(p, t, size_t(n < 8 ? n : 8) * sizeof(uint16_t));
}
inline void vstore_s8_n(int8_t* p, vf v, int64_t n) {
  alignas(32) int32_t t[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), _mm256_cvtps_epi32(v));
  for (int64_t i = 0; i < n && i < 8; ++i) p[i] = int8_t(t[i]);
}
#endif

/// Vectors per block of 32 4-bit weights (vload_s4_block).
constexpr int kS4Vecs = 32 / kW;

/// exp(x) for float lanes: x = n*ln2 + r, |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial
/// (truncation error r^7/7! < 4e-8 relative), times 2^n built from the exponent bits. Inputs are
/// clamped to [-87, 88] (the normal float range), so exp of a very negative number is ~1e-38,
/// not 0; callers (softmax, sigmoid) are insensitive to that.
inline vf vexp(vf x) {
  x = vmin(vmax(x, vset(-87.0f)), vset(88.0f));
  vf n = vround(vmul(x, vset(1.44269504088896341f)));
  vf r = vfma(n, vset(-0.693145751953125f), x);  // ln2 split in a high part ...
  r = vfma(n, vset(-1.4286068203094172e-06f), r);  // ... and a low part (Cody-Waite)
  vf p = vset(1.0f / 720.0f);
  p = vfma(p, r, vset(1.0f / 120.0f));
  p = vfma(p, r, vset(1.0f / 24.0f));
  p = vfma(p, r, vset(1.0f / 6.0f));
  p = vfma(p, r, vset(0.5f));
  p = vfma(p, r, vset(1.0f));
  p = vfma(p, r, vset(1.0f));
  return vmul(p, vpow2i(n));
}

}  // namespace
}  // namespace shrink::kernels::cpu
