// Fused residual add + RMSNorm + (16-bit copy) + (per-token int8 quantization), one block per
// row. Why fused: in decode every step reads and writes the hidden state several times; one
// kernel does the residual add, the norm, and produces every form the next linear needs (the
// float row for the GEMV, the f16/bf16 row for cuBLASLt, the int8 row and its scale for W8A8),
// so the row is read from memory once. The sum of squares is accumulated in double like the
// CPU reference (kernels/cpu/rmsnorm/rmsnorm_ref.cpp), so both backends normalise identically
// up to the order of float additions. Tested in tests/cuda/test_backend.cpp.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

namespace {

template <typename H>
// x, d and y are not __restrict__: the engine normalises in place (y == x, the final norm).
__global__ void rmsnorm_kernel(float* x, const float* d, const float* __restrict__ w, float* y,
                               int64_t n, float eps,
                               H* __restrict__ y16, int8_t* __restrict__ yq,
                               float* __restrict__ ys) {
  __shared__ double shd[32];
  __shared__ float shf[32];
  const int64_t r = blockIdx.x;
  float* xr = x + r * n;
  float* yr = y + r * n;
  double ss = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float v = xr[i];
    if (d) {
      v += d[r * n + i];
      xr[i] = v;
    }
    ss += double(v) * double(v);
  }
  ss = block_sum(ss, shd);
  const float inv = float(1.0 / sqrt(double(float(ss / double(n))) + double(eps)));
  float amax = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = w[i] * (xr[i] * inv);
    yr[i] = v;
    if (y16) y16[r * n + i] = from_float<H>(v);
    amax = fmaxf(amax, fabsf(v));
  }
  if (!yq) return;
  amax = block_max(amax, shf);
  const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
  if (threadIdx.x == 0) ys[r] = s;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yq[r * n + i] = quantize_one(yr[i], s);
}

}  // namespace

void rmsnorm_f32(float* x, const float* d, const float* w, float* y, int64_t rows, int64_t n,
                 float eps, void* y16, WType h16, int8_t* yq, float* ys, cudaStream_t s) {
  if (rows <= 0) return;
  const int threads = n >= 2048 ? 512 : 256;
  if (h16 == WType::kBF16) {
    rmsnorm_kernel<<<unsigned(rows), threads, 0, s>>>(x, d, w, y, n, eps,
                                                      static_cast<__nv_bfloat16*>(y16), yq, ys);
  } else {
    rmsnorm_kernel<<<unsigned(rows), threads, 0, s>>>(x, d, w, y, n, eps,
                                                      static_cast<__half*>(y16), yq, ys);
  }
}

}  // namespace shrink::cuda
