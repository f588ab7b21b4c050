// RoPE fused with the KV-cache append: one block per row rotates the query heads in place,
// rotates the key heads, and stores the rotated keys and the values into the cache at the row's
// (slot, position), which it reads from device memory (so a captured decode graph stays valid as
// positions advance). Each rotated value is two separate float products and a sum, like the CPU
// reference (kernels/cpu/rope/rope_ref.cpp): __fmul_rn/__fadd_rn keep nvcc from contracting
// them into an FMA, so both backends produce the same bits. The cache holds floats or f16 (round
// to nearest even, the bits of the CPU's f16 cache, core::f32_to_f16). Tested in
// tests/cuda/test_backend.cpp.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

namespace {

template <typename C>
__global__ void rope_kv_kernel(float* __restrict__ x, int64_t ldx, int heads, int kv_heads,
                               int head_dim, const int32_t* __restrict__ slot,
                               const int32_t* __restrict__ pos, const float* __restrict__ cos,
                               const float* __restrict__ sin, C* __restrict__ kc,
                               C* __restrict__ vc, int64_t slot_stride) {
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
    if (kdst && h >= heads) {
      const int64_t o = int64_t(h - heads) * head_dim;
      kdst[o + j] = from_float<C>(o1);
      kdst[o + j + half] = from_float<C>(o2);
    }
  }
  if (vdst) {
    const float* v = xr + int64_t(heads + kv_heads) * head_dim;
    for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) vdst[i] = from_float<C>(v[i]);
  }
}

template <typename C>
__global__ void kv_write_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                int64_t ld, const int32_t* __restrict__ slot,
                                const int32_t* __restrict__ pos, C* __restrict__ kc,
                                C* __restrict__ vc, int64_t slot_stride, int64_t kv_dim) {
  const int64_t r = blockIdx.x;
  const int64_t off = int64_t(slot[r]) * slot_stride + int64_t(pos[r]) * kv_dim;
  for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    kc[off + i] = from_float<C>(k[r * ld + i]);
    vc[off + i] = from_float<C>(v[r * ld + i]);
  }
}

}  // namespace

void rope_kv_f32(float* x, int64_t rows, int64_t ldx, int heads, int kv_heads, int head_dim,
                 const int32_t* slot, const int32_t* pos, const float* cos, const float* sin,
                 void* k_cache, void* v_cache, int64_t slot_stride, bool f16_cache,
                 cudaStream_t s) {
  if (rows <= 0) return;
  if (f16_cache) {
    rope_kv_kernel<__half><<<unsigned(rows), 256, 0, s>>>(
        x, ldx, heads, kv_heads, head_dim, slot, pos, cos, sin, static_cast<__half*>(k_cache),
        static_cast<__half*>(v_cache), slot_stride);
  } else {
    rope_kv_kernel<float><<<unsigned(rows), 256, 0, s>>>(
        x, ldx, heads, kv_heads, head_dim, slot, pos, cos, sin, static_cast<float*>(k_cache),
        static_cast<float*>(v_cache), slot_stride);
  }
}

void kv_write_f32(const float* k, const float* v, int64_t ld, int64_t rows, const int32_t* slot,
                  const int32_t* pos, void* k_cache, void* v_cache, int64_t slot_stride,
                  int64_t kv_dim, bool f16_cache, cudaStream_t s) {
  if (rows <= 0) return;
  if (f16_cache) {
    kv_write_kernel<__half><<<unsigned(rows), 256, 0, s>>>(k, v, ld, slot, pos,
                                                           static_cast<__half*>(k_cache),
                                                           static_cast<__half*>(v_cache),
                                                           slot_stride, kv_dim);
  } else {
    kv_write_kernel<float><<<unsigned(rows), 256, 0, s>>>(k, v, ld, slot, pos,
                                                          static_cast<float*>(k_cache),
                                                          static_cast<float*>(v_cache),
                                                          slot_stride, kv_dim);
  }
}

}  // namespace shrink::cuda
