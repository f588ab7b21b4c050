// Device helpers shared by the kernels of kernels/cuda: warp and block reductions and the
// conversions between float and the 16-bit weight types. Header-only, included by .cu files only.
// Why: every fused kernel reduces a row (sum of squares, max |x|, argmax); one copy of the
// shuffle code keeps them consistent. Tested through every kernel in tests/cuda/test_backend.cpp.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/ops.h"  // CacheType

namespace shrink::cuda {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

/// Sum over the block; `sh` holds >= 32 values. Every thread gets the result.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous reduction
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T r = lane < nw ? sh[lane] : T(0);
  return warp_sum(r);
}

/// Maximum over the block (any sign: lanes past the last warp pad with -infinity); `sh` holds
/// >= 32 values. Every thread gets the result.
__device__ __forceinline__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(r);
}

/// q = clamp(round_half_even(v / s), -127, 127) (lib/core/quant.h; division as the CPU ref).
__device__ __forceinline__ int8_t quantize_one(float v, float s) {
  float r = rintf(__fdiv_rn(v, s));
  r = fminf(127.0f, fmaxf(-127.0f, r));
  return int8_t(r);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

/// f(C* null) with C the element type of a KV cache of type t (float, __half, int8_t): the one
/// dispatch from CacheType to the kernels' template argument.
template <typename F>
void with_cache_type(CacheType t, F&& f) {
  switch (t) {
    case CacheType::kF16: f(static_cast<__half*>(nullptr)); break;
    case CacheType::kS8: f(static_cast<int8_t*>(nullptr)); break;
    default: f(static_cast<float*>(nullptr)); break;
  }
}

/// A cache element widened to float (exact).
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

__device__ __forceinline__ float to_float(int8_t v) { return float(v); }

/// Four consecutive cache elements widened to float (p 16-byte aligned for floats, 8 for f16, 4
/// for int8).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const int8_t* p) {
  const char4 c = *reinterpret_cast<const char4*>(p);
  return make_float4(float(c.x), float(c.y), float(c.z), float(c.w));
}
__device__ __forceinline__ float4 load4(const __half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

/// Two packed 16-bit values widened to float (exact).
__device__ __forceinline__ float2 pair_to_float2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 pair_to_float2(__nv_bfloat162 v) {
  return __bfloat1622float2(v);
}

}  // namespace shrink::cuda
