// RoPE fused with the KV-cache append: one block per row rotates the query heads in place,
// rotates the key heads, and stores the rotated keys and the values into the cache at the row's
// (slot, position), which it reads from device memory (so a captured decode graph stays valid as
// positions advance). Each rotated value is two separate float products and a sum, like the CPU
// reference (kernels/cpu/rope/rope_ref.cpp): __fmul_rn/__fadd_rn keep nvcc from contracting
// them into an FMA, so both backends produce the same bits. Tested in tests/cuda/test_backend.cpp.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

namespace {

__global__ void rope_kv_kernel(float* __restrict__ x, int64_t ldx, int heads, int kv_heads,
                               int head_dim, const int32_t* __restrict__ slot,
                               const int32_t* __restrict__ pos, const float* __restrict__ cos,
                               const float* __restrict__ sin, float* __restrict__ kc,
                               float* __restrict__ vc, int64_t slot_stride) {
  const int64_t r = blockIdx.x;
  const int half = head_dim / 2;
  const int64_t p = pos[r];
  const float* cr = cos + p * half;
  const float* sr = sin + p * half;
  float* xr = x + r * ldx;
  const int64_t kv_dim = int64_t(kv_heads) * head_dim;
  float* kdst = kc ? kc + int64_t(slot[r]) * slot_stride + p * kv_dim : nullptr;
  float* vdst = vc ? vc + int64_t(slot[r]) * slot_stride + p * kv_dim : nullptr;
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
      kdst[o + j] = o1;
      kdst[o + j + half] = o2;
    }
  }
  if (vdst) {
    const float* v = xr + int64_t(heads + kv_heads) * head_dim;
    for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) vdst[i] = v[i];
  }
}

__global__ void kv_write_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                int64_t ld, const int32_t* __restrict__ slot,
                                const int32_t* __restrict__ pos, float* __restrict__ kc,
                                float* __restrict__ vc, int64_t slot_stride, int64_t kv_dim) {
  const int64_t r = blockIdx.x;
  const int64_t off = int64_t(slot[r]) * slot_stride + int64_t(pos[r]) * kv_dim;
  for (int64_t i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    kc[off + i] = k[r * ld + i];
    vc[off + i] = v[r * ld + i];
  }
}

}  // namespace

void rope_kv_f32(float* x, int64_t rows, int64_t ldx, int heads, int kv_heads, int head_dim,
                 const int32_t* slot, const int32_t* pos, const float* cos, const float* sin,
                 float* k_cache, float* v_cache, int64_t slot_stride, cudaStream_t s) {
  if (rows <= 0) return;
  rope_kv_kernel<<<unsigned(rows), 256, 0, s>>>(x, ldx, heads, kv_heads, head_dim, slot, pos, cos,
                                                sin, k_cache, v_cache, slot_stride);
}

void kv_write_f32(const float* k, const float* v, int64_t ld, int64_t rows, const int32_t* slot,
                  const int32_t* pos, float* k_cache, float* v_cache, int64_t slot_stride,
                  int64_t kv_dim, cudaStream_t s) {
  if (rows <= 0) return;
  kv_write_kernel<<<unsigned(rows), 256, 0, s>>>(k, v, ld, slot, pos, k_cache, v_cache,
                                                 slot_stride, kv_dim);
}

}  // namespace shrink::cuda
