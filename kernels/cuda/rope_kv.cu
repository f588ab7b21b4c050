// RoPE fused with the KV-cache append: one block per row rotates the query heads in place,
// rotates the key heads, and stores the rotated keys and the values into the cache at the row's
// (slot, position), which it reads from device memory (so a captured decode graph stays valid as
// positions advance). Each rotated value is two separate float products and a sum, like the CPU
// reference (kernels/cpu/rope/rope_ref.cpp): __fmul_rn/__fadd_rn keep nvcc from contracting
// them into an FMA, so both backends produce the same bits. The cache holds floats, f16 (round
// to nearest even, the bits of the CPU's f16 cache, core::f32_to_f16) or int8 with a scale per
// (token, KV head): a warp per head takes its absolute maximum and quantizes it as the CPU's
// quantize_s8 does. Tested in tests/cuda/test_backend.cpp.
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

namespace {

// Rows of `n` heads of head_dim floats (src, head stride head_dim) quantized into dst with one
// scale each (scales[h]): a warp per head. Needs blockDim.x a multiple of 32.
__device__ void quantize_heads(const float* src, int n, int head_dim, int8_t* dst,
                               float* scales) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int h = warp; h < n; h += nw) {
    const float* hs = src + int64_t(h) * head_dim;
    float amax = 0.0f;
    for (int i = lane; i < head_dim; i += 32) amax = fmaxf(amax, fabsf(hs[i]));
    amax = warp_max(amax);
    const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
    int8_t* hd = dst + int64_t(h) * head_dim;
    for (int i = lane; i < head_dim; i += 32) hd[i] = quantize_one(hs[i], s);
    if (lane == 0) scales[h] = s;
  }
}

template <typename C>
__global__ void rope_kv_kernel(float* __restrict__ x, int64_t ldx, int heads, int kv_heads,
                               int head_dim, const int32_t* __restrict__ slot,
                               const int32_t* __restrict__ pos, const float* __restrict__ cos,
                               const float* __restrict__ sin, C* __restrict__ kc,
                               C* __restrict__ vc, float* __restrict__ ksc,
                               float* __restrict__ vsc, int64_t slot_stride) {
  constexpr bool kS8 = std::is_same<C, int8_t>::value;
  const int64_t r = blockIdx.x;
  const int half = head_dim / 2;
  const int64_t p = pos[r];
  const float* cr = cos + p * half;
  const float* sr = sin + p * half;
  float* xr = x + r * ldx;
  const int64_t kv_dim = int64_t(kv_heads) * head_dim;
  C* kdst = kc ? kc + int64_t(slot[r]) * slot_stride + p * kv_dim : nullptr;
  C* vdst = vc ? vc + int64_t(slot[r]) * slot_stride + p * kv_dim : nullptr;
  const int pairs = (heads + kv_heads) * half;
  for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
    const int h = i / half, j = i - h * half;
    float* ph = xr + int64_t(h) * head_dim;
    const float x1 = ph[j], x2 = ph[j + half];
    const float c = cr[j], sn = sr[j];
    const float o1 = __fadd_rn(__fmul_rn(x1, c), -__fmul_rn(x2, sn));
    const float o2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, sn));
    ph[j] = o1;
    ph[j + half] = o2;
    if constexpr (!kS8) {
      if (kdst && h >= heads) {
        const int64_t o = int64_t(h - heads) * head_dim;
        kdst[o + j] = from_float<C>(o1);
        kdst[o + j + half] = from_float<C>(o2);
      }
    }
  }
  const float* v = xr + int64_t(heads + kv_heads) * head_dim;
  if constexpr (kS8) {
    if (!kdst) return;
    __syncthreads();  // the rotated keys, written in place above, read back by other threads
    const int64_t so = (int64_t(slot[r]) * (slot_stride / kv_dim) + p) * kv_heads;
    quantize_heads(xr + int64_t(heads) * head_dim, kv_heads, head_dim, kdst, ksc + so);
    quantize_heads(v, kv_heads, head_dim, vdst, vsc + so);
  } else {
    if (vdst) {
      for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) vdst[i] = from_float<C>(v[i]);
    }
  }
}

template <typename C>
__global__ void kv_write_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                int64_t ld, const int32_t* __restrict__ slot,
                                const int32_t* __restrict__ pos, C* __restrict__ kc,
                                C* __restrict__ vc, float* __restrict__ ksc,
                                float* __restrict__ vsc, int64_t slot_stride, int64_t kv_dim,
                                int head_dim) {
  const int64_t r = blockIdx.x;
  const int64_t off = int64_t(slot[r]) * slot_stride + int64_t(pos[r]) * kv_dim;
  if constexpr (std::is_same<C, int8_t>::value) {
    const int nkv = int(kv_dim / head_dim);
    const int64_t so = (int64_t(slot[r]) * (slot_stride / kv_dim) + pos[r]) * nkv;
    quantize_heads(k + r * ld, nkv, head_dim, kc + off, ksc + so);
    quantize_heads(v + r * ld, nkv, head_dim, vc + off, vsc + so);
  } else {
    for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
      kc[off + i] = from_float<C>(k[r * ld + i]);
      vc[off + i] = from_float<C>(v[r * ld + i]);
    }
  }
}

}  // namespace

void rope_kv_f32(float* x, int64_t rows, int64_t ldx, int heads, int kv_heads, int head_dim,
                 const int32_t* slot, const int32_t* pos, const float* cos, const float* sin,
                 const CacheView& c, cudaStream_t s) {
  if (rows <= 0) return;
  auto launch = [&](auto* tag) {
    using C = std::remove_pointer_t<decltype(tag)>;
    rope_kv_kernel<C><<<unsigned(rows), 256, 0, s>>>(
        x, ldx, heads, kv_heads, head_dim, slot, pos, cos, sin, static_cast<C*>(c.k),
        static_cast<C*>(c.v), c.k_scale, c.v_scale, c.slot_stride);
  };
  with_cache_type(c.type, launch);
}

void kv_write_f32(const float* k, const float* v, int64_t ld, int64_t rows, const int32_t* slot,
                  const int32_t* pos, const CacheView& c, int64_t kv_dim, int head_dim,
                  cudaStream_t s) {
  if (rows <= 0) return;
  auto launch = [&](auto* tag) {
    using C = std::remove_pointer_t<decltype(tag)>;
    kv_write_kernel<C><<<unsigned(rows), 256, 0, s>>>(
        k, v, ld, slot, pos, static_cast<C*>(c.k), static_cast<C*>(c.v), c.k_scale, c.v_scale,
        c.slot_stride, kv_dim, head_dim);
  };
  with_cache_type(c.type, launch);
}

}  // namespace shrink::cuda
