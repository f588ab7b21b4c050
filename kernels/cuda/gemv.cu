// Skinny GEMM ("GEMV") for decode, M = 1..16 token rows: y[m, n] = sum_k x[m, k] W[n, k].
// Memory-bound: each weight is read from HBM exactly once, so the design is about keeping many
// 16-byte weight loads in flight and reusing each activation load across several columns.
// A block of 256 threads owns kCols = 4 output columns and splits K across all its threads
// (each thread handles VEC consecutive k per step; the block walks K in steps of 256 * VEC).
// Per step a thread first issues the loads of its kCols weight vectors (the HBM traffic), then,
// for each token row, loads that row's x vector (L1/L2-resident) and does kCols * VEC FMAs.
// Partial sums are reduced with warp shuffles and then across the 8 warps in shared memory.
//   f32 / f16 / bf16 weights: converted to float in registers.
//   W8A16: int8 weights dequantised in registers, w = q * scale (per channel or per group),
//          the same dequantised value the CPU reference multiplies with.
//   W4A16: 4-bit weights read packed (16 per 8-byte load, half W8A16's bytes), widened to
//          q - 8 in registers and scaled the same way.
//   W8A8:  int8 activations (quantised per token by the preceding fused kernel) x int8 weights
//          with dp4a into int32; per channel the int32 dot is exact, then float(dot) * s_w * s_x
//          as the CPU reference; per group, float(group dot) * s_w[g] summed, then * s_x.
// Odd shapes (K not a multiple of VEC, unaligned pointers, M > 16) go to gemv_generic, one warp
// per output. Tested in tests/cuda/test_backend.cpp against the CPU backend over odd shapes.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

namespace {

constexpr int kCols = 4;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <WType W>
struct WTraits;
template <>
struct WTraits<WType::kF32> {
  static constexpr int kVec = 4;
  __device__ static void load(const void* w, int64_t i, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(static_cast<const float*>(w) + i);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
  }
};
// f16 and bf16: 8 weights in one 16-byte load, widened to float a pair at a time.
template <typename Pair>
struct Pair16Traits {
  static constexpr int kVec = 8;
  __device__ static void load(const void* w, int64_t i, float* out) {
    const uint4 v = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(w) + i);
    const Pair* h = reinterpret_cast<const Pair*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = pair_to_float2(h[j]);
      out[2 * j] = f.x;
      out[2 * j + 1] = f.y;
    }
  }
};
template <>
struct WTraits<WType::kF16> : Pair16Traits<__half2> {};
template <>
struct WTraits<WType::kBF16> : Pair16Traits<__nv_bfloat162> {};
template <>
struct WTraits<WType::kS8> {
  static constexpr int kVec = 8;
  __device__ static void load(const void* w, int64_t i, float* out) {
    const uint2 v = *reinterpret_cast<const uint2*>(static_cast<const int8_t*>(w) + i);
    const int8_t* q = reinterpret_cast<const int8_t*>(&v);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = float(q[j]);
  }
};

// 4-bit: 16 weights (8 bytes at element i / 2) per load, low nibble first.
template <>
struct WTraits<WType::kS4> {
  static constexpr int kVec = 16;
  __device__ static void load(const void* w, int64_t i, float* out) {
    const uint2 v = *reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(w) + i / 2);
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&v);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      out[2 * j] = float(int(b[j] & 15) - 8);
      out[2 * j + 1] = float(int(b[j] >> 4) - 8);
    }
  }
};

template <WType W, int MT>
__global__ void __launch_bounds__(kThreads) gemv_float_kernel(GemvArgs a) {
  constexpr int VEC = WTraits<W>::kVec;
  __shared__ float red[kWarps][kCols * MT];
  const int64_t n0 = int64_t(blockIdx.x) * kCols;
  const int M = int(a.M);
  const int64_t K = a.K, N = a.N;
  const bool int8 = W == WType::kS8 || W == WType::kS4;  // scaled integer weights
  const int64_t G = int8 ? (K + a.group - 1) / a.group : 1;
  const bool grouped = int8 && a.group < K;
  float sc[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int64_t n = n0 + c;
    sc[c] = int8 && n < N ? a.scale[n * G] : 1.0f;
  }
  float acc[kCols][MT];
#pragma unroll
  for (int c = 0; c < kCols; ++c)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[c][m] = 0.0f;

#pragma unroll 2
  for (int64_t k = int64_t(threadIdx.x) * VEC; k < K; k += int64_t(kThreads) * VEC) {
    float wv[kCols][VEC];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t n = n0 + c;
      if (n < N) {
        WTraits<W>::load(a.w, n * K + k, wv[c]);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) wv[c][v] = 0.0f;
      }
    }
    if (int8) {
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        const int64_t n = n0 + c;
        const float s = grouped && n < N ? a.scale[n * G + k / a.group] : sc[c];
#pragma unroll
        for (int v = 0; v < VEC; ++v) wv[c][v] *= s;
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < M) {
        float xv[VEC];
        const float4* xp = reinterpret_cast<const float4*>(a.x + int64_t(m) * K + k);
#pragma unroll
        for (int v = 0; v < VEC / 4; ++v) {
          const float4 t = xp[v];
          xv[4 * v] = t.x; xv[4 * v + 1] = t.y; xv[4 * v + 2] = t.z; xv[4 * v + 3] = t.w;
        }
#pragma unroll
        for (int c = 0; c < kCols; ++c)
#pragma unroll
          for (int v = 0; v < VEC; ++v) acc[c][m] += xv[v] * wv[c][v];
      }
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int c = 0; c < kCols; ++c)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float v = warp_sum(acc[c][m]);
      if (lane == 0) red[warp][c * MT + m] = v;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < kCols * MT; i += kThreads) {
    const int c = i / MT, m = i - c * MT;
    const int64_t n = n0 + c;
    if (m >= M || n >= N) continue;
    float v = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += red[w][i];
    if (a.bias) v += a.bias[n];
    a.y[int64_t(m) * a.ldy + n] = v;
  }
}

__device__ __forceinline__ int dot16(const int4& x, const int4& w) {
  int s = __dp4a(x.x, w.x, 0);
  s = __dp4a(x.y, w.y, s);
  s = __dp4a(x.z, w.z, s);
  return __dp4a(x.w, w.w, s);
}

// W8A8: 16 int8 per thread and step. GROUPED: float accumulation of per-group int dots.
template <bool GROUPED, int MT>
__global__ void __launch_bounds__(kThreads) gemv_s8s8_kernel(GemvArgs a) {
  constexpr int VEC = 16;
  using Acc = typename std::conditional<GROUPED, float, int>::type;
  __shared__ Acc red[kWarps][kCols * MT];
  const int64_t n0 = int64_t(blockIdx.x) * kCols;
  const int M = int(a.M);
  const int64_t K = a.K, N = a.N;
  const int64_t G = (K + a.group - 1) / a.group;
  const int8_t* wq = static_cast<const int8_t*>(a.w);
  Acc acc[kCols][MT];
#pragma unroll
  for (int c = 0; c < kCols; ++c)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[c][m] = Acc(0);
#pragma unroll 2
  for (int64_t k = int64_t(threadIdx.x) * VEC; k < K; k += int64_t(kThreads) * VEC) {
    int4 wv[kCols];
    float sg[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int64_t n = n0 + c;
      wv[c] = n < N ? *reinterpret_cast<const int4*>(wq + n * K + k) : make_int4(0, 0, 0, 0);
      sg[c] = GROUPED && n < N ? a.scale[n * G + k / a.group] : 0.0f;
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < M) {
        const int4 xv = *reinterpret_cast<const int4*>(a.xq + int64_t(m) * K + k);
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const int d = dot16(xv, wv[c]);
          if (GROUPED) acc[c][m] += float(d) * sg[c];
          else acc[c][m] += d;
        }
      }
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int c = 0; c < kCols; ++c)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const Acc v = warp_sum(acc[c][m]);
      if (lane == 0) red[warp][c * MT + m] = v;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < kCols * MT; i += kThreads) {
    const int c = i / MT, m = i - c * MT;
    const int64_t n = n0 + c;
    if (m >= M || n >= N) continue;
    Acc v = Acc(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) v += red[w][i];
    float y = GROUPED ? float(v) * a.xs[m] : float(v) * a.scale[n * G] * a.xs[m];
    if (a.bias) y += a.bias[n];
    a.y[int64_t(m) * a.ldy + n] = y;
  }
}

// One warp per output element; any shape, alignment and M.
__global__ void gemv_generic_kernel(GemvArgs a) {
  const int64_t warp_id = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp_id >= a.M * a.N) return;
  const int64_t m = warp_id / a.N, n = warp_id - m * a.N;
  const int64_t K = a.K;
  const int64_t G =
      a.wt == WType::kS8 || a.wt == WType::kS4 ? (K + a.group - 1) / a.group : 1;
  float acc = 0.0f;
  int iacc = 0;
  const bool s8s8 = a.xq != nullptr;
  for (int64_t k = lane; k < K; k += 32) {
    const int64_t i = n * K + k;
    if (s8s8) {
      const int prod = int(a.xq[m * K + k]) * int(static_cast<const int8_t*>(a.w)[i]);
      if (a.group < K) acc += float(prod) * a.scale[n * G + k / a.group];
      else iacc += prod;
      continue;
    }
    float w;
    switch (a.wt) {
      case WType::kF32: w = static_cast<const float*>(a.w)[i]; break;
      case WType::kF16: w = __half2float(static_cast<const __half*>(a.w)[i]); break;
      case WType::kBF16: w = __bfloat162float(static_cast<const __nv_bfloat16*>(a.w)[i]); break;
      case WType::kS4: {
        const int b = static_cast<const uint8_t*>(a.w)[i / 2];
        w = float(((i & 1) ? (b >> 4) : (b & 15)) - 8) * a.scale[n * G + k / a.group];
        break;
      }
      default:
        w = float(static_cast<const int8_t*>(a.w)[i]) * a.scale[n * G + k / a.group];
        break;
    }
    acc += a.x[m * K + k] * w;
  }
  acc = warp_sum(acc);
  iacc = warp_sum(iacc);
  if (lane != 0) return;
  float y;
  if (s8s8) y = (a.group < K ? acc : float(iacc) * a.scale[n * G]) * a.xs[m];
  else y = acc;
  if (a.bias) y += a.bias[n];
  a.y[m * a.ldy + n] = y;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <WType W>
void launch_float(const GemvArgs& a, cudaStream_t s) {
  const unsigned grid = unsigned((a.N + kCols - 1) / kCols);
  if (a.M <= 1) gemv_float_kernel<W, 1><<<grid, kThreads, 0, s>>>(a);
  else if (a.M <= 2) gemv_float_kernel<W, 2><<<grid, kThreads, 0, s>>>(a);
  else if (a.M <= 4) gemv_float_kernel<W, 4><<<grid, kThreads, 0, s>>>(a);
  else if (a.M <= 8) gemv_float_kernel<W, 8><<<grid, kThreads, 0, s>>>(a);
  else gemv_float_kernel<W, 16><<<grid, kThreads, 0, s>>>(a);
}

template <bool GROUPED>
void launch_s8s8(const GemvArgs& a, cudaStream_t s) {
  const unsigned grid = unsigned((a.N + kCols - 1) / kCols);
  if (a.M <= 1) gemv_s8s8_kernel<GROUPED, 1><<<grid, kThreads, 0, s>>>(a);
  else if (a.M <= 2) gemv_s8s8_kernel<GROUPED, 2><<<grid, kThreads, 0, s>>>(a);
  else if (a.M <= 4) gemv_s8s8_kernel<GROUPED, 4><<<grid, kThreads, 0, s>>>(a);
  else if (a.M <= 8) gemv_s8s8_kernel<GROUPED, 8><<<grid, kThreads, 0, s>>>(a);
  else gemv_s8s8_kernel<GROUPED, 16><<<grid, kThreads, 0, s>>>(a);
}

}  // namespace

bool gemv_vector_ok(const GemvArgs& a) {
  if (a.M < 1 || a.M > kGemvMaxRows || a.N < 1 || !aligned16(a.w)) return false;
  if (a.xq) {
    return a.wt == WType::kS8 && a.K % 16 == 0 && aligned16(a.xq) &&
           (a.group >= a.K || a.group % 16 == 0);
  }
  const int vec = a.wt == WType::kF32 ? 4 : a.wt == WType::kS4 ? 16 : 8;
  if (a.K % vec != 0 || !aligned16(a.x)) return false;
  if (a.wt == WType::kS4) return a.group >= a.K || a.group % 16 == 0;
  return a.wt != WType::kS8 || a.group >= a.K || a.group % 8 == 0;
}

void gemv(const GemvArgs& a, cudaStream_t s) {
  if (!gemv_vector_ok(a)) {
    gemv_generic(a, s);
    return;
  }
  if (a.xq) {
    if (a.group < a.K) launch_s8s8<true>(a, s);
    else launch_s8s8<false>(a, s);
    return;
  }
  switch (a.wt) {
    case WType::kF32: launch_float<WType::kF32>(a, s); break;
    case WType::kF16: launch_float<WType::kF16>(a, s); break;
    case WType::kBF16: launch_float<WType::kBF16>(a, s); break;
    case WType::kS8: launch_float<WType::kS8>(a, s); break;
    case WType::kS4: launch_float<WType::kS4>(a, s); break;
  }
}

void gemv_generic(const GemvArgs& a, cudaStream_t s) {
  const int64_t warps = a.M * a.N;
  if (warps <= 0) return;
  gemv_generic_kernel<<<unsigned((warps + 7) / 8), 256, 0, s>>>(a);
}

}  // namespace shrink::cuda
