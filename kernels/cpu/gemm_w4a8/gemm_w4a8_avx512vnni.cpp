// W4A8 GEMM, AVX-512 VNNI variant: 64 weight bytes (128 4-bit values, 4 blocks) per step, their
// low and high nibbles as the unsigned operand of two vpdpbusd against the packed int8
// activations (kernels.h), the + 8 offset of the stored values removed by the packed
// correction lanes. The driver (decode GEMVs, prefill tiles) is gemm_w4a8_simd.inc.
// Tested against gemm_w4a8_nt_ref in test_kernels.cpp.
#include <immintrin.h>

#include <cstdint>

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
inline vf expand4(const float* s, int64_t n) {
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m128 v = n >= 4 ? _mm_loadu_ps(s) : _mm_maskz_loadu_ps(__mmask8((1u << n) - 1), s);
  return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
}

}  // namespace
}  // namespace shrink::kernels::cpu

#define KNAME_W4A8 gemm_w4a8_nt_avx512vnni
#include "kernels/cpu/gemm_w4a8/gemm_w4a8_simd.inc"
