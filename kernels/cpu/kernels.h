// The CPU kernels of the runtime: one table of function pointers per ISA level, each op with a
// scalar reference (`_ref`) and AVX2 / AVX-512 variants (`_avx2`, `_avx512`, and
// `_avx512vnni` for the int8 dot products).
//
// Why this shape: the runtime picks the table once (kernels_for(isa_active())) and calls
// through it, so the engine never branches on the ISA. All kernels are single-threaded and work
// on a caller-given range; the backend splits rows/columns over threads (parallel.h), so every
// output element is computed by one thread in one fixed order: results do not depend on the
// thread count. Layouts are plain row-major; "nt" GEMMs compute C = A * B^T with B stored
// [N, K] exactly as HF stores linear weights ([out, in]), so weights need no transpose.
//
// Numerics (documented per op below): float32 everywhere; int8 dot products are exact in int32,
// so every int8 variant matches the reference bit for bit (the float epilogue runs in the same
// order). Float variants differ from ref only by summation order (~1e-6 relative).
// Tested in tests/runtime/test_kernels.cpp: every variant this CPU supports against ref over a
// sweep of odd shapes.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cpu/isa.h"

namespace shrink::kernels::cpu {

// ---- RMSNorm ------------------------------------------------------------------------------
/// y[r, :] = w * (x[r, :] * rsqrt(mean(x[r, :]^2) + eps)) for `rows` rows of n floats, as HF
/// (the product x * rsqrt is formed before the weight multiply). y may alias x.
using RmsnormF32Fn = void (*)(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                              float eps);
void rmsnorm_f32_ref(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps);
void rmsnorm_f32_avx2(const float* x, const float* w, float* y, int64_t rows, int64_t n, float eps);
void rmsnorm_f32_avx512(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                        float eps);

// ---- RoPE (rotate-half, HF convention) ------------------------------------------------------
/// In place on `heads` consecutive heads of d floats: with h = d/2 and i < h,
/// x[i] <- x[i]*cos[i] - x[i+h]*sin[i];  x[i+h] <- x[i+h]*cos[i] + x[i]*sin[i].
/// cos/sin hold d/2 values for this token's position.
using RopeF32Fn = void (*)(float* x, int64_t heads, int64_t d, const float* cos, const float* sin);
void rope_f32_ref(float* x, int64_t heads, int64_t d, const float* cos, const float* sin);
void rope_f32_avx2(float* x, int64_t heads, int64_t d, const float* cos, const float* sin);
void rope_f32_avx512(float* x, int64_t heads, int64_t d, const float* cos, const float* sin);

// ---- SiLU * mul ---------------------------------------------------------------------------
/// y[i] = silu(g[i]) * u[i], silu(g) = g / (1 + exp(-g)). y may alias g or u.
using SiluMulF32Fn = void (*)(const float* g, const float* u, float* y, int64_t n);
void silu_mul_f32_ref(const float* g, const float* u, float* y, int64_t n);
void silu_mul_f32_avx2(const float* g, const float* u, float* y, int64_t n);
void silu_mul_f32_avx512(const float* g, const float* u, float* y, int64_t n);

// ---- Attention over a KV cache: the reference (one query, one head) -------------------------
/// out[0:d] = softmax_j(scale * q.k_j) . v_j over n_keys keys (n_keys >= 1); key j is at
/// k + j*kv_stride (and v + j*kv_stride). The caller applies causality and the sliding window
/// by choosing the key range. scratch holds n_keys floats. Softmax in float32 with the max
/// subtracted, probabilities normalised before the weighted sum (as torch.softmax then @ v).
/// Scalar only: the reference of the blocked (prefill) and split-K (decode) kernels below.
void attention_f32_ref(const float* q, const float* k, const float* v, int64_t kv_stride,
                       int64_t n_keys, int64_t d, float scale, float* out, float* scratch);

// ---- Blocked attention (many queries of one sequence, one KV head group) ----------------------
/// Keys per block of the blocked kernel (a multiple of every vector width).
constexpr int64_t kAttnBlockKeys = 64;
/// out[m, 0:d] = softmax_j(scale * q_m.k_j) . v_j for M query rows (q and out [M, d],
/// contiguous), row m over keys j in [lo[m], hi[m]) (hi > lo), key j at k + j*kv_stride (and
/// v + j*kv_stride). Why: prefill attends every query to hundreds or thousands of keys, and the
/// one-query kernel above reduces a dot product per key; this one runs flash attention's loop:
/// key blocks of kAttnBlockKeys, S = Q K^T and O += P V as register-tiled outer products (K
/// transposed once per block, shared by all M rows), softmax with a running max and sum, and
/// one normalisation at the end. Differs from attention_f32_ref by rounding only (~1e-6 relative).
/// scratch: attention_block_scratch(M, d) floats.
using AttentionBlockF32Fn = void (*)(const float* q, int64_t M, int64_t d, const int64_t* lo,
                                     const int64_t* hi, const float* k, const float* v,
                                     int64_t kv_stride, float scale, float* out, float* scratch);
inline int64_t attention_block_scratch(int64_t M, int64_t d) {
  return (d + M) * kAttnBlockKeys + 2 * M;
}
void attention_block_f32_ref(const float* q, int64_t M, int64_t d, const int64_t* lo,
                             const int64_t* hi, const float* k, const float* v, int64_t kv_stride,
                             float scale, float* out, float* scratch);
void attention_block_f32_avx2(const float* q, int64_t M, int64_t d, const int64_t* lo,
                              const int64_t* hi, const float* k, const float* v, int64_t kv_stride,
                              float scale, float* out, float* scratch);
void attention_block_f32_avx512(const float* q, int64_t M, int64_t d, const int64_t* lo,
                                const int64_t* hi, const float* k, const float* v,
                                int64_t kv_stride, float scale, float* out, float* scratch);
/// The same over an f16 KV cache (IEEE binary16 bit patterns, converted to float on load).
using AttentionBlockF16kvFn = void (*)(const float* q, int64_t M, int64_t d, const int64_t* lo,
                                       const int64_t* hi, const uint16_t* k, const uint16_t* v,
                                       int64_t kv_stride, float scale, float* out, float* scratch);
void attention_block_f16kv_ref(const float* q, int64_t M, int64_t d, const int64_t* lo,
                               const int64_t* hi, const uint16_t* k, const uint16_t* v,
                               int64_t kv_stride, float scale, float* out, float* scratch);
void attention_block_f16kv_avx2(const float* q, int64_t M, int64_t d, const int64_t* lo,
                                const int64_t* hi, const uint16_t* k, const uint16_t* v,
                                int64_t kv_stride, float scale, float* out, float* scratch);
void attention_block_f16kv_avx512(const float* q, int64_t M, int64_t d, const int64_t* lo,
                                  const int64_t* hi, const uint16_t* k, const uint16_t* v,
                                  int64_t kv_stride, float scale, float* out, float* scratch);
/// The same over an int8 KV cache: key j's keys are ks[j*ss] times its int8 values (values:
/// vs[j*ss]), one scale per (token, KV head), as quantize_s8 writes them.
using AttentionBlockS8kvFn = void (*)(const float* q, int64_t M, int64_t d, const int64_t* lo,
                                      const int64_t* hi, const int8_t* k, const int8_t* v,
                                      int64_t kv_stride, const float* ks, const float* vs,
                                      int64_t ss, float scale, float* out, float* scratch);
void attention_block_s8kv_ref(const float* q, int64_t M, int64_t d, const int64_t* lo,
                              const int64_t* hi, const int8_t* k, const int8_t* v,
                              int64_t kv_stride, const float* ks, const float* vs, int64_t ss,
                              float scale, float* out, float* scratch);
void attention_block_s8kv_avx2(const float* q, int64_t M, int64_t d, const int64_t* lo,
                               const int64_t* hi, const int8_t* k, const int8_t* v,
                               int64_t kv_stride, const float* ks, const float* vs, int64_t ss,
                               float scale, float* out, float* scratch);
void attention_block_s8kv_avx512(const float* q, int64_t M, int64_t d, const int64_t* lo,
                                 const int64_t* hi, const int8_t* k, const int8_t* v,
                                 int64_t kv_stride, const float* ks, const float* vs, int64_t ss,
                                 float scale, float* out, float* scratch);

// ---- Split-K decode attention (one query row, one KV head group, one chunk of keys) ---------
/// Keys per chunk of split-K decode attention below a cache of kAttnSplitKeys * kAttnSplitMax
/// keys; longer caches take kAttnSplitMax chunks (attention_split_chunk).
constexpr int64_t kAttnSplitKeys = 64;
constexpr int64_t kAttnSplitMax = 64;
/// The chunk length for n_keys keys: a function of n_keys only (not of the thread count or the
/// batch), so a row's result is the same however it is scheduled.
inline int64_t attention_split_chunk(int64_t n_keys) {
  const int64_t c = (n_keys + kAttnSplitMax - 1) / kAttnSplitMax;
  return c <= kAttnSplitKeys ? kAttnSplitKeys : (c + 15) / 16 * 16;
}
/// The unnormalised attention of G query heads (q [G, d], contiguous) that share one KV head,
/// over n_keys >= 1 keys (key j at k + j*kv_stride, value at v + j*kv_stride):
/// s_gj = scale * q_g.k_j, m[g] = max_j s_gj, l[g] = sum_j exp(s_gj - m[g]) and
/// o[g, 0:d] = sum_j exp(s_gj - m[g]) v_j. Why: a decode step's attention reads the whole cache
/// for one query row; the one-query kernel reads each KV head once per query head (G times under
/// GQA) and parallelises over heads only (9 heads do not split evenly over 2 threads, and one
/// long sequence is one task per head). Chunks of keys per KV head read K and V once for the
/// group, make as many tasks as the cache is long, and merge exactly (attention_merge_f32).
/// Scores by kW keys at a time: kW dot products reduced together by one transpose-add.
/// scratch: attention_partial_scratch(G, n_keys) floats.
using AttentionPartialF32Fn = void (*)(const float* q, int64_t G, int64_t d, const float* k,
                                       const float* v, int64_t kv_stride, int64_t n_keys,
                                       float scale, float* o, float* m, float* l, float* scratch);
inline int64_t attention_partial_scratch(int64_t G, int64_t n_keys) { return G * (n_keys + 16); }
void attention_partial_f32_ref(const float* q, int64_t G, int64_t d, const float* k,
                               const float* v, int64_t kv_stride, int64_t n_keys, float scale,
                               float* o, float* m, float* l, float* scratch);
void attention_partial_f32_avx2(const float* q, int64_t G, int64_t d, const float* k,
                                const float* v, int64_t kv_stride, int64_t n_keys, float scale,
                                float* o, float* m, float* l, float* scratch);
void attention_partial_f32_avx512(const float* q, int64_t G, int64_t d, const float* k,
                                  const float* v, int64_t kv_stride, int64_t n_keys, float scale,
                                  float* o, float* m, float* l, float* scratch);
/// The same over an f16 KV cache (half the bytes a decode step reads from the cache).
using AttentionPartialF16kvFn = void (*)(const float* q, int64_t G, int64_t d, const uint16_t* k,
                                         const uint16_t* v, int64_t kv_stride, int64_t n_keys,
                                         float scale, float* o, float* m, float* l,
                                         float* scratch);
void attention_partial_f16kv_ref(const float* q, int64_t G, int64_t d, const uint16_t* k,
                                 const uint16_t* v, int64_t kv_stride, int64_t n_keys, float scale,
                                 float* o, float* m, float* l, float* scratch);
void attention_partial_f16kv_avx2(const float* q, int64_t G, int64_t d, const uint16_t* k,
                                  const uint16_t* v, int64_t kv_stride, int64_t n_keys,
                                  float scale, float* o, float* m, float* l, float* scratch);
void attention_partial_f16kv_avx512(const float* q, int64_t G, int64_t d, const uint16_t* k,
                                    const uint16_t* v, int64_t kv_stride, int64_t n_keys,
                                    float scale, float* o, float* m, float* l, float* scratch);
/// The same over an int8 KV cache (scales as attention_block_s8kv): a quarter of f32's bytes.
using AttentionPartialS8kvFn = void (*)(const float* q, int64_t G, int64_t d, const int8_t* k,
                                        const int8_t* v, int64_t kv_stride, const float* ks,
                                        const float* vs, int64_t ss, int64_t n_keys, float scale,
                                        float* o, float* m, float* l, float* scratch);
void attention_partial_s8kv_ref(const float* q, int64_t G, int64_t d, const int8_t* k,
                                const int8_t* v, int64_t kv_stride, const float* ks,
                                const float* vs, int64_t ss, int64_t n_keys, float scale, float* o,
                                float* m, float* l, float* scratch);
void attention_partial_s8kv_avx2(const float* q, int64_t G, int64_t d, const int8_t* k,
                                 const int8_t* v, int64_t kv_stride, const float* ks,
                                 const float* vs, int64_t ss, int64_t n_keys, float scale,
                                 float* o, float* m, float* l, float* scratch);
void attention_partial_s8kv_avx512(const float* q, int64_t G, int64_t d, const int8_t* k,
                                   const int8_t* v, int64_t kv_stride, const float* ks,
                                   const float* vs, int64_t ss, int64_t n_keys, float scale,
                                   float* o, float* m, float* l, float* scratch);
/// y[0:n] = x[0:n] rounded to f16 (nearest even; beyond 65504 to infinity): the f16 KV cache's
/// writes. Equal to core::f32_to_f16 for every non-NaN input.
using ConvertF32F16Fn = void (*)(const float* x, uint16_t* y, int64_t n);
void convert_f32_f16_ref(const float* x, uint16_t* y, int64_t n);
void convert_f32_f16_avx2(const float* x, uint16_t* y, int64_t n);
void convert_f32_f16_avx512(const float* x, uint16_t* y, int64_t n);
/// out[g, 0:d] = softmax attention of head g from C chunk partials of attention_partial_f32
/// (o [C][G][d], m and l [C][G], chunk-major): sum_c e_c o_c / sum_c e_c l_c with
/// e_c = exp(m_c - max_c m_c). out must not overlap o. One implementation (a few hundred flops
/// per row and head).
void attention_merge_f32(int64_t C, int64_t G, int64_t d, const float* o, const float* m,
                         const float* l, float* out);

// ---- Decode-sized GEMMs ----------------------------------------------------------------------
/// Up to this many rows of A the GEMMs below run as multi-row GEMVs, which the runtime prefers
/// to a library GEMM (gemm_library.h): each weight row is read once from memory and used for
/// every row of A from registers (8 rows at a time) while it sits in L1. A row's result does
/// not depend on M (2 <= M <= kGemvMaxM), so batched decode and speculative verification score
/// each sequence exactly as they would alone in a batch of two.
inline constexpr int64_t kGemvMaxM = 64;

/// Calls f(m0, mr, n0, nb) over blocks of at most 8 rows of A (mr) and kGemvBlockN rows of B
/// (nb), weight blocks outermost: a block of B (16 rows of K values) stays in L1/L2 while every
/// chunk of A passes over it.
inline constexpr int64_t kGemvBlockN = 16;
template <typename F>
inline void for_gemv_blocks(int64_t M, int64_t N, F&& f) {
  for (int64_t n0 = 0; n0 < N; n0 += kGemvBlockN) {
    const int64_t nb = N - n0 < kGemvBlockN ? N - n0 : kGemvBlockN;
    for (int64_t m0 = 0; m0 < M; m0 += 8) f(m0, M - m0 < 8 ? M - m0 : 8, n0, nb);
  }
}
/// Calls f(std::integral_constant<int, mr>{}) for 1 <= mr <= 8, so a kernel templated on its
/// row count is instantiated once per count:
/// with_rows(mr, [&](auto R) { k<decltype(R)::value>(...); }).
template <typename F>
inline void with_rows(int64_t mr, F&& f) {
  switch (mr) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

// ---- fp32 GEMM, C = A * B^T ---------------------------------------------------------------
/// C[m, n] = sum_k A[m*lda + k] * B[n*ldb + k], for m < M, n < N. Register-blocked 4x4 dot
/// products: the decode GEMV (M <= kGemvMaxM) and the portable fallback GEMM when no library is
/// built.
using GemmF32NtFn = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                             const float* B, int64_t ldb, float* C, int64_t ldc);
void gemm_f32_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                     int64_t ldb, float* C, int64_t ldc);
void gemm_f32_nt_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                      const float* B, int64_t ldb, float* C, int64_t ldc);
void gemm_f32_nt_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const float* B, int64_t ldb, float* C, int64_t ldc);

// ---- bf16-weight GEMM: float activations x bf16 weights, fp32 arithmetic -------------------
/// gemm_f32_nt with B given as bf16 bit patterns (the top 16 bits of each float): every weight
/// is widened exactly, so only the bytes streamed halve. Decode GEMV of --cpu-weights bf16.
using GemmBf16wF32NtFn = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                                  const uint16_t* B, int64_t ldb, float* C, int64_t ldc);
void gemm_bf16w_f32_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                           const uint16_t* B, int64_t ldb, float* C, int64_t ldc);
void gemm_bf16w_f32_nt_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                            const uint16_t* B, int64_t ldb, float* C, int64_t ldc);
void gemm_bf16w_f32_nt_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                              const uint16_t* B, int64_t ldb, float* C, int64_t ldc);

// ---- W8A16 GEMM: float activations x int8 weights, dequantised in the kernel -----------------
/// C[m, n] = sum_g scale[n*G + g] * sum_{k in group g} A[m, k] * Bq[n, k], where groups are
/// `group` consecutive k (group == K: per-channel scales, G = 1; else G = ceil(K / group)).
using GemmW8a16NtFn = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                               const int8_t* B, int64_t ldb, const float* scale, int64_t group,
                               float* C, int64_t ldc);
void gemm_w8a16_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const int8_t* B, int64_t ldb, const float* scale, int64_t group, float* C,
                       int64_t ldc);
void gemm_w8a16_nt_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const int8_t* B, int64_t ldb, const float* scale, int64_t group,
                        float* C, int64_t ldc);
void gemm_w8a16_nt_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                          const int8_t* B, int64_t ldb, const float* scale, int64_t group,
                          float* C, int64_t ldc);

// ---- W4A16 GEMM: float activations x 4-bit weights, dequantised in registers ----------------
/// As W8A16 with Bq[n, k] = s4_value(B + n*ldb, k): each row of B is ceil(K / 32) blocks of 16
/// bytes, byte j of a block holding its value j (+ 8) in the low nibble and value j + 16 (+ 8) in
/// the high nibble, so one 16-byte load and two masks give 32 values in order (compressed-
/// tensors' pack-quantized order, two neighbours per byte, needs a shuffle instead). Padding
/// holds 8 (zero). ldb >= 16 * ceil(K / 32) bytes; group is K or a multiple of 32.
inline int64_t s4_row_bytes(int64_t K) {
  return (K + 31) / 32 * 16;
}
inline int s4_value(const uint8_t* row, int64_t k) {
  const uint8_t b = row[k / 32 * 16 + (k & 15)];
  return ((k & 16) ? (b >> 4) : (b & 15)) - 8;
}
/// One row of q (values in [-8, 7]) into that layout (s4_row_bytes(K) bytes).
inline void s4_pack_row(const int8_t* q, int64_t K, uint8_t* row) {
  for (int64_t i = 0; i < s4_row_bytes(K); ++i) row[i] = 0x88;
  for (int64_t k = 0; k < K; ++k) {
    uint8_t& b = row[k / 32 * 16 + (k & 15)];
    const uint8_t v = uint8_t(q[k] + 8);
    b = (k & 16) ? uint8_t((b & 0x0F) | (v << 4)) : uint8_t((b & 0xF0) | v);
  }
}
using GemmW4a16NtFn = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                               const uint8_t* B, int64_t ldb, const float* scale, int64_t group,
                               float* C, int64_t ldc);
void gemm_w4a16_nt_ref(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const uint8_t* B, int64_t ldb, const float* scale, int64_t group, float* C,
                       int64_t ldc);
void gemm_w4a16_nt_avx2(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const uint8_t* B, int64_t ldb, const float* scale, int64_t group, float* C,
                        int64_t ldc);
void gemm_w4a16_nt_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                          const uint8_t* B, int64_t ldb, const float* scale, int64_t group,
                          float* C, int64_t ldc);

// ---- W4A8 GEMM: int8 activations x 4-bit weights -> int32 per 32-block, float epilogue ----
/// Why: the W4A16 kernel widens every 4-bit weight to float and multiplies in fp32 (16 products
/// per instruction); int8 activations let vpdpbusd (VNNI) or vpmaddubsw (AVX2) multiply the
/// 4-bit values as they are unpacked, 64 products per instruction, as llama.cpp's Q4_0 x Q8_0.
/// Activations are quantized once per call into a packed row (quantize_w4a8_act) laid out for
/// the weights' 16-byte blocks (s4_row_bytes), so no shuffle is needed at multiply time:
///   per chunk of kW4a8Chunk = 128 inputs (4 blocks of 32), kW4a8ChunkBytes bytes:
///   [0, 64)    int8: block j's inputs 0..15 at 16 j (they meet the low nibbles of 64 weight bytes)
///   [64, 128)  int8: block j's inputs 16..31 at 64 + 16 j (the high nibbles)
///   [128, 192) int32[16]: lane 4 j = -8 * (sum of block j's int8 inputs), other lanes 0: the
///              weights are multiplied as stored (q + 8, unsigned), and this removes the + 8
///   [192, 256) float[16]: lanes 4 j .. 4 j + 3 = block j's activation scale
/// Inputs past K are 0 (and add 0). The quantization: per row (block == 0: s = max|x_r| / 127)
/// or per 32 inputs (block == 32: s = max|x_block| / 127, as llama.cpp's Q8_0), s = 1 where
/// the block is all zero, q = clamp(round_half_even(x / s), -127, 127) (quantize_s8's rule).
inline constexpr int64_t kW4a8Chunk = 128;
inline constexpr int64_t kW4a8ChunkBytes = 256;
inline int64_t w4a8_act_row_bytes(int64_t K) {
  return (K + kW4a8Chunk - 1) / kW4a8Chunk * kW4a8ChunkBytes;
}
/// Quantize `rows` rows of K floats (row r at x + r*ldx) into packed rows (r at P + r*ldp,
/// ldp >= w4a8_act_row_bytes(K)). block: 0 (per row) or 32. One implementation for every ISA
/// (O(K) per row, against O(N K) for the product); deterministic. row_scale (per row only): row
/// r's scale given, not computed from its K values (tensor parallelism: the whole row's, when
/// these K inputs are a rank's slice of it). q8: the quantize_s8 to use (any ISA's: they give
/// the same bits; the kernel table's vector one is several times faster than the reference's
/// scalar rounding, which made this step a fifth of a W4A8 prefill).
using QuantizeS8Fn = void (*)(const float* x, int64_t rows, int64_t n, int64_t ldx,
                              const float* in_scale, int8_t* q, int64_t ldq, float* scales);
void quantize_w4a8_act(const float* x, int64_t rows, int64_t K, int64_t ldx, int64_t block,
                       uint8_t* P, int64_t ldp, const float* row_scale = nullptr,
                       QuantizeS8Fn q8 = nullptr);
/// The int8 value and the scale of input k of a packed row (for the reference and tests).
inline int w4a8_act_value(const uint8_t* row, int64_t k) {
  const uint8_t* c = row + k / kW4a8Chunk * kW4a8ChunkBytes;
  const int64_t j = (k % kW4a8Chunk) / 32, i = k % 32;
  return int8_t(c[(i < 16 ? 0 : 64) + 16 * j + (i & 15)]);
}
float w4a8_act_scale(const uint8_t* row, int64_t k);
/// C[m, n] = sum_b as[m, b] * ws[n, b] * sum_{k in block b} a[m, k] * q[n, k] over the 32-input
/// blocks b, with a and as from the packed row m (A + m*lda), q = s4_value(B + n*ldb, k) and
/// ws[n, b] = scale[n*G + 32 b / group] (group: K, or a multiple of 32), the weight scales as
/// IEEE f16 bit patterns (as Q4_0 stores them: 4.5 bits per weight with groups of 32, where
/// float32 scales make 5, and decode streams those bytes). Each block's integer sum
/// is exact; variants differ from the reference (which sums the float terms in double) by float
/// rounding and summation order only (~1e-6 relative to sum_b |term_b|). M <= kW4a8GemvMaxM runs
/// as multi-row GEMVs (decode; a row's result does not depend on M there), larger M as a GEMM
/// (prefill; VNNI: 16 rows per vector, faster than the GEMV from 8 rows on: 2048 x 2048 at
/// M = 16, 804 against 1409 us; at M = 64, 1628 against 3839).
inline constexpr int64_t kW4a8GemvMaxM = 8;
using GemmW4a8NtFn = void (*)(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda,
                              const uint8_t* B, int64_t ldb, const uint16_t* scale, int64_t group,
                              float* C, int64_t ldc);
void gemm_w4a8_nt_ref(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda,
                      const uint8_t* B, int64_t ldb, const uint16_t* scale, int64_t group,
                      float* C, int64_t ldc);
void gemm_w4a8_nt_avx2(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda,
                       const uint8_t* B, int64_t ldb, const uint16_t* scale, int64_t group,
                       float* C, int64_t ldc);
void gemm_w4a8_nt_avx512vnni(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda,
                             const uint8_t* B, int64_t ldb, const uint16_t* scale, int64_t group,
                             float* C, int64_t ldc);

// ---- W8A8 GEMM: int8 x int8 -> int32 per group, float epilogue --------------------------------
/// C[m, n] = a_scale[m] * sum_g b_scale[n*G + g] * float(dot_g(A[m], B[n])), with dot_g the exact
/// int32 dot product over group g (group as in W8A16). Values must lie in [-127, 127]
/// (symmetric quantization). b_comp[n*G + g] = 128 * sum_{k in g} B[n, k]: the u8 x s8 VNNI
/// variant computes dot((A + 128), B) - b_comp; the others ignore it (may be null for them).
using GemmS8s8NtFn = void (*)(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                              const float* a_scale, const int8_t* B, int64_t ldb,
                              const float* b_scale, int64_t group, const int32_t* b_comp,
                              float* C, int64_t ldc);
void gemm_s8s8_f32_nt_ref(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                          const float* a_scale, const int8_t* B, int64_t ldb,
                          const float* b_scale, int64_t group, const int32_t* b_comp, float* C,
                          int64_t ldc);
void gemm_s8s8_f32_nt_avx2(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                           const float* a_scale, const int8_t* B, int64_t ldb,
                           const float* b_scale, int64_t group, const int32_t* b_comp, float* C,
                           int64_t ldc);
void gemm_s8s8_f32_nt_avx512vnni(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                                 const float* a_scale, const int8_t* B, int64_t ldb,
                                 const float* b_scale, int64_t group, const int32_t* b_comp,
                                 float* C, int64_t ldc);

// ---- Activation quantization ----------------------------------------------------------------
/// Symmetric int8 quantization of `rows` rows of n floats (row r at x + r*ldx, q + r*ldq):
/// static (in_scale != null): s = *in_scale; dynamic per token (null): s = max|x_r| / 127, and
/// s = 1 for an all-zero row. q = clamp(round_half_even(x / s), -127, 127) (the symmetric range:
/// -128 is never produced, so s8 x s8 products can use the u8 + compensation trick). Writes s
/// per row to scales.
void quantize_s8_ref(const float* x, int64_t rows, int64_t n, int64_t ldx, const float* in_scale,
                     int8_t* q, int64_t ldq, float* scales);
void quantize_s8_avx2(const float* x, int64_t rows, int64_t n, int64_t ldx,
                      const float* in_scale, int8_t* q, int64_t ldq, float* scales);
void quantize_s8_avx512(const float* x, int64_t rows, int64_t n, int64_t ldx,
                        const float* in_scale, int8_t* q, int64_t ldq, float* scales);

/// Fused RMSNorm + per-token int8 quantization: q, scales = quantize_s8(rmsnorm_f32(x, w)) without
/// writing the normalised floats to memory. scratch holds n floats.
using RmsnormQuantS8Fn = void (*)(const float* x, const float* w, int64_t rows, int64_t n,
                                  float eps, const float* in_scale, int8_t* q, int64_t ldq,
                                  float* scales, float* scratch);
void rmsnorm_quant_s8_ref(const float* x, const float* w, int64_t rows, int64_t n, float eps,
                          const float* in_scale, int8_t* q, int64_t ldq, float* scales,
                          float* scratch);
void rmsnorm_quant_s8_avx2(const float* x, const float* w, int64_t rows, int64_t n, float eps,
                           const float* in_scale, int8_t* q, int64_t ldq, float* scales,
                           float* scratch);
void rmsnorm_quant_s8_avx512(const float* x, const float* w, int64_t rows, int64_t n, float eps,
                             const float* in_scale, int8_t* q, int64_t ldq, float* scales,
                             float* scratch);

/// One ISA level's kernels. Levels without their own variant of an op use the next lower one
/// (e.g. kAvx512 has no VNNI, so its s8s8 GEMM is the AVX2 one).
struct KernelTable {
  Isa isa;
  RmsnormF32Fn rmsnorm_f32;
  RopeF32Fn rope_f32;
  SiluMulF32Fn silu_mul_f32;
  AttentionBlockF32Fn attention_block_f32;
  AttentionPartialF32Fn attention_partial_f32;
  AttentionBlockF16kvFn attention_block_f16kv;
  AttentionPartialF16kvFn attention_partial_f16kv;
  ConvertF32F16Fn convert_f32_f16;
  AttentionBlockS8kvFn attention_block_s8kv;
  AttentionPartialS8kvFn attention_partial_s8kv;
  GemmF32NtFn gemm_f32_nt;
  GemmW8a16NtFn gemm_w8a16_nt;
  GemmS8s8NtFn gemm_s8s8_f32_nt;
  QuantizeS8Fn quantize_s8;
  RmsnormQuantS8Fn rmsnorm_quant_s8;
  GemmBf16wF32NtFn gemm_bf16w_f32_nt;
  GemmW4a16NtFn gemm_w4a16_nt;
  GemmW4a8NtFn gemm_w4a8_nt;
};

/// The table for a level (which must be supported: see isa_supported).
const KernelTable& kernels_for(Isa isa);

}  // namespace shrink::kernels::cpu
