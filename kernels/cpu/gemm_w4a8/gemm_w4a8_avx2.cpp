// W4A8 GEMM, AVX2 variant (also the AVX-512 level without VNNI): 32 weight bytes (2 blocks) per
// step; vpmaddubsw multiplies the unsigned nibbles by the int8 activations into int16 pairs
// (at most 2 * 15 * 127: no saturation) and vpmaddwd by ones sums them into int32 lanes of 4,
// the lanes of vpdpbusd. The driver is gemm_w4a8_simd.inc. Tested against gemm_w4a8_nt_ref.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace shrink::kernels::cpu {
namespace {

using vi = __m256i;
using vf = __m256;
constexpr int64_t kVB = 32;

inline vi load_w(const uint8_t* p, int64_t nbytes) {
  if (nbytes >= 32) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  alignas(32) uint8_t buf[32] = {};
  if (nbytes > 0) std::memcpy(buf, p, size_t(nbytes));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
}
inline void unpack(vi w, vi& lo, vi& hi) {
  const vi m = _mm256_set1_epi8(0x0F);
  lo = _mm256_and_si256(w, m);
  hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m);
}
inline vi load_i(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline vi dot(vi acc, vi u, vi s) {
  const vi p16 = _mm256_maddubs_epi16(u, s);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}
inline vf cvt(vi x) { return _mm256_cvtepi32_ps(x); }
inline vf load_f(const float* p) { return _mm256_loadu_ps(p); }
inline vf fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf fzero() { return _mm256_setzero_ps(); }
inline __m128 fold(vf x) {
  return _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
}
inline void hsum4(vf a, vf b, vf c, vf d, float* out) {
  const __m128 ab = _mm_hadd_ps(fold(a), fold(b)), cd = _mm_hadd_ps(fold(c), fold(d));
  _mm_storeu_ps(out, _mm_hadd_ps(ab, cd));
}
inline vf bcast(float s) { return _mm256_set1_ps(s); }
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
inline vf expand4h(const uint16_t* s, int64_t n) {
  const float s0 = _cvtsh_ss(s[0]), s1 = n >= 2 ? _cvtsh_ss(s[1]) : 0.0f;
  return _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1);
}
inline vf expand4(const float* s, int64_t n) {
  const float s1 = n >= 2 ? s[1] : 0.0f;
  return _mm256_setr_ps(s[0], s[0], s[0], s[0], s1, s1, s1, s1);
}

}  // namespace
}  // namespace shrink::kernels::cpu

#define KNAME_W4A8 gemm_w4a8_nt_avx2
#include "kernels/cpu/gemm_w4a8/gemm_w4a8_simd.inc"

namespace shrink::kernels::cpu {
namespace {

void prefill(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda, const uint8_t* B,
             int64_t ldb, const uint16_t* scale, const ScaleMap& sm, float* C, int64_t ldc) {
  gemm_tiles(M, N, K, A, lda, B, ldb, scale, sm, C, ldc);
}

}  // namespace
}  // namespace shrink::kernels::cpu
