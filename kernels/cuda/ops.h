// Host-callable launchers of the CUDA kernels (kernels/cuda/*.cu), one plain C++ function per
// fused op, so the runtime's CUDA backend (lib/runtime/backend_cuda.cpp) is ordinary C++.
// Every pointer is device memory unless named *_host. Activations are float32 row-major; rows
// are tokens. All launches go to `stream` and are capturable in a CUDA graph (no allocation,
// no synchronisation). Each launcher's CPU reference is the matching kernels/cpu op; the tests
// in tests/cuda/test_backend.cpp compare them over shapes that include odd sizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace shrink::core {
struct SampleRow;
}

namespace shrink::cuda {

/// Storage type of weights and of the 16-bit copies of activations fed to cuBLASLt. kS4: 4-bit
/// weights, two per byte ([N, K / 2] bytes: byte j of a row holds k = 2 j in its low nibble and
/// 2 j + 1 in its high one, each as q + 8), scaled like kS8.
enum class WType { kF32, kF16, kBF16, kS8, kS4 };
const char* wtype_name(WType t);
/// Bytes per element of the byte-addressed types (kS4: see its bytes as N * K / 2).
inline int64_t wtype_bytes(WType t) {
  return t == WType::kF32 ? 4 : (t == WType::kS8 || t == WType::kS4 ? 1 : 2);
}

// ---- elementwise.cu ----------------------------------------------------------------------------
/// out[r, :] = table[ids[r], :].
void embed_f32(const float* table, int64_t dim, const int32_t* ids, int64_t rows, float* out,
               cudaStream_t s);
/// dst[r, :] = src[idx[r], :].
void gather_rows_f32(const float* src, int64_t dim, const int32_t* idx, int64_t rows, float* dst,
                     cudaStream_t s);
/// x[i] += y[i].
void add_f32(float* x, const float* y, int64_t n, cudaStream_t s);
/// y[r, i] = silu(g[r, i]) * g[r, n + i]; optionally also a 16-bit copy y16 (type h16, [rows, n])
/// and the dynamic per-token int8 quantization (yq [rows, n], ys [rows]).
void silu_mul_f32(const float* g, int64_t rows, int64_t n, float* y, void* y16, WType h16,
                  int8_t* yq, float* ys, cudaStream_t s);
/// Per-token int8: scale = static_scale when > 0, else max|x_r| / 127 (1 for a zero row).
void quantize_s8(const float* x, int64_t rows, int64_t n, int64_t ldx, float static_scale,
                 int8_t* q, float* scales, cudaStream_t s);
/// amax[r] = max |x_r| (the first half of a dynamic quantize_s8, for rows split over --tp ranks,
/// whose maxima are reduced over the ranks between the two halves).
void row_absmax(const float* x, int64_t rows, int64_t n, int64_t ldx, float* amax, cudaStream_t s);
/// The second half: scales[r] = amax[r] / 127 (1 for a zero row) and q as quantize_s8's. The
/// maxima and the scales may be one array (each row's is read before it is written).
void quantize_s8_by_absmax(const float* x, int64_t rows, int64_t n, int64_t ldx, int8_t* q,
                           float* amax_then_scales, cudaStream_t s);
/// y = x converted to `t` (kF16 / kBF16 / kF32), n values.
void convert_f32(const float* x, int64_t n, void* y, WType t, cudaStream_t s);
/// w[n, k] = q[n, k] * scale[n, k / group] in type `t` (kF32 / kF16 / kBF16).
void dequant_s8(const int8_t* q, const float* scale, int64_t N, int64_t K, int64_t group, void* w,
                WType t, cudaStream_t s);
/// The same from packed 4-bit weights (WType::kS4; K even).
void dequant_s4(const uint8_t* q, const float* scale, int64_t N, int64_t K, int64_t group, void* w,
                WType t, cudaStream_t s);
/// y[m, n] = float(acc[m, n]) * sw[n] * sx[m] (+ bias[n]); acc is [M, N] int32.
void epilogue_s32(const int32_t* acc, int64_t M, int64_t N, const float* sw, const float* sx,
                  const float* bias, float* y, int64_t ldy, cudaStream_t s);
/// y[m, n] += bias[n].
void bias_add(float* y, int64_t M, int64_t N, int64_t ldy, const float* bias, cudaStream_t s);
/// y[m, j] = x[m, perm[j]] for [M, K] rows (GPTQ act-order groups: inputs into q's order).
void gather_cols(const float* x, int64_t M, int64_t K, const int32_t* perm, float* y,
                 cudaStream_t s);
/// out[r] = the lowest index of the maximum of x[r, 0:n] (core::argmax).
void argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* out, cudaStream_t s);

// ---- rmsnorm.cu --------------------------------------------------------------------------------
/// With d: x += d first (the residual add, written back). Then y = w * (x * rsqrt(mean(x^2) +
/// eps)) (sum of squares in double, as the CPU ref), plus the optional 16-bit copy and dynamic
/// int8 quantization of y as in silu_mul_f32. y may equal x.
void rmsnorm_f32(float* x, const float* d, const float* w, float* y, int64_t rows, int64_t n,
                 float eps, void* y16, WType h16, int8_t* yq, float* ys, cudaStream_t s);

// ---- rope_kv.cu --------------------------------------------------------------------------------
/// Rotate-half RoPE of rows of x (stride ldx): `heads` heads at x, and `kv_heads` more heads right
/// after them. When k_cache is given, those kv heads (rotated) and the v heads after them are
/// also stored at cache[slot[r], pos[r], :] (kv_dim = kv_heads * head_dim values) in the cache's
/// type (CacheView).
/// The KV cache's element type: float32; f16 (round to nearest even); or int8 with one float
/// scale per (slot, position, KV head), laid out [slot][pos][kv_heads] (symmetric, amax / 127,
/// round half to even: the CPU's int8 cache, kernels/cpu quantize_s8).
enum class CacheType { kF32, kF16, kS8 };
struct CacheView {
  void* k = nullptr;  // null: no cache (RoPE only)
  void* v = nullptr;
  float* k_scale = nullptr;  // kS8 only
  float* v_scale = nullptr;
  int64_t slot_stride = 0;  // max_seq * kv_dim (elements)
  CacheType type = CacheType::kF32;
};
void rope_kv_f32(float* x, int64_t rows, int64_t ldx, int heads, int kv_heads, int head_dim,
                 const int32_t* slot, const int32_t* pos, const float* cos, const float* sin,
                 const CacheView& cache, cudaStream_t s);
/// cache[slot[r], pos[r], :] = k[r, :] and v[r, :] (kv_dim values, row stride ld), in the cache's
/// type (head_dim values per scale for int8).
void kv_write_f32(const float* k, const float* v, int64_t ld, int64_t rows, const int32_t* slot,
                  const int32_t* pos, const CacheView& cache, int64_t kv_dim, int head_dim,
                  cudaStream_t s);

// ---- attention.cu ------------------------------------------------------------------------------
struct AttentionArgs {
  const float* q = nullptr;  // [rows, ldq], n_heads heads of head_dim
  int64_t ldq = 0, rows = 0;
  const int32_t* slot = nullptr;  // device [rows]
  const int32_t* pos = nullptr;   // device [rows]
  const void* k_cache = nullptr;  // of cache_type (slot_stride and kv_dim count elements)
  const void* v_cache = nullptr;
  const float* k_scale = nullptr;  // kS8: [slot][pos][n_kv_heads]
  const float* v_scale = nullptr;
  CacheType cache_type = CacheType::kF32;
  int64_t slot_stride = 0, kv_dim = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int64_t window = 0;  // 0 = none
  float scale = 0;
  float* out = nullptr;  // [rows, n_heads * head_dim]
};
/// Split-K (flash-decoding) attention, one query per row over keys [lo, pos]: a grid of
/// (splits of kAttnSplitKeys keys up to max_seq, kv heads, rows); a second kernel merges the
/// splits. The grid depends only on rows and max_seq, so a captured graph stays valid as the
/// sequences grow. `partial` holds attention_decode_scratch(rows, ...) floats.
int64_t attention_decode_scratch(int64_t rows, int n_heads, int head_dim, int64_t max_seq);
void attention_decode(const AttentionArgs& a, int64_t max_seq, float* partial, cudaStream_t s);
/// Tiled causal attention for prefill: each tile is up to kAttnTileRows consecutive rows of one
/// sequence (same slot, consecutive positions); tiles = [row0, nrows] pairs (device). head_dim
/// <= 256.
constexpr int kAttnTileRows = 64;
void attention_prefill(const AttentionArgs& a, const int32_t* tiles, int64_t n_tiles,
                       cudaStream_t s);

// ---- gemv.cu -----------------------------------------------------------------------------------
/// Skinny GEMM for decode: y[m, n] = sum_k x[m, k] * W[n, k] (+ bias), M <= kGemvMaxRows.
/// W is f32/f16/bf16 [N, K], or int8 [N, K] with scales [N, ceil(K / group)] dequantised in
/// registers (W8A16; x float). For W8A8 pass xq (int8 [M, K]) and xs ([M]) instead of x: the
/// products are int8 x int8 -> int32 (dp4a), scaled per group and per token.
constexpr int64_t kGemvMaxRows = 16;
struct GemvArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* x = nullptr;
  const int8_t* xq = nullptr;
  const float* xs = nullptr;
  const void* w = nullptr;
  WType wt = WType::kF32;
  const float* scale = nullptr;  // int8 and 4-bit weights
  int64_t group = 0;
  const float* bias = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
};
/// True when the vectorised kernel handles these shapes/alignments; else gemv_generic does.
bool gemv_vector_ok(const GemvArgs& a);
void gemv(const GemvArgs& a, cudaStream_t s);
/// Any shape and M: one warp per output. Slow; the fallback and the odd-shape path.
void gemv_generic(const GemvArgs& a, cudaStream_t s);

// ---- sample.cu ---------------------------------------------------------------------------------
/// out[r] = the token sampled from row r of x ([rows, ld], n logits) with the device-resident
/// parameters and draw p[r] (core::sample_select: temperature, top-k, top-p, inverse CDF; argmax
/// for temperature <= 0). One block per row; no sorting, no host copy.
void sample_rows(const float* x, int64_t rows, int64_t n, int64_t ld, const core::SampleRow* p,
                 int32_t* out, cudaStream_t s);

}  // namespace shrink::cuda
