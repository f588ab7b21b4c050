// Row-wise and elementwise kernels of the CUDA runtime: embedding lookup, row gathers, residual
// add, SiLU * mul (+ 16-bit copy, + per-token int8), activation quantization, weight dequant
// for cuBLASLt prefill, the int32 -> float epilogue of the int8 GEMM, bias, argmax.
// Why one file: these are small memory-bound kernels; one nvcc translation unit keeps the build
// short on 2 cores. Numerics follow the CPU references (kernels/cpu/*_ref.cpp): expf for SiLU,
// division then round-half-even for int8. Tested in tests/cuda/test_backend.cpp against the
// CPU backend.
#include <cfloat>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

const char* wtype_name(WType t) {
  switch (t) {
    case WType::kF32: return "f32";
    case WType::kF16: return "f16";
    case WType::kBF16: return "bf16";
    case WType::kS8: return "s8";
    case WType::kS4: return "s4";
  }
  return "?";
}

namespace {

constexpr int kRowThreads = 256;

__global__ void embed_kernel(const float* __restrict__ table, int64_t dim,
                             const int32_t* __restrict__ ids, float* __restrict__ out) {
  const int64_t r = blockIdx.x;
  const float* src = table + int64_t(ids[r]) * dim;
  float* dst = out + r * dim;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
}

__global__ void add_kernel(float* __restrict__ x, const float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

template <typename H>
__global__ void silu_mul_kernel(const float* __restrict__ g, int64_t n, float* __restrict__ y,
                                H* __restrict__ y16, int8_t* __restrict__ yq,
                                float* __restrict__ ys) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const float* gr = g + r * 2 * n;
  float* yr = y + r * n;
  float amax = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float a = gr[i];
    const float v = a / (1.0f + expf(-a)) * gr[n + i];
    yr[i] = v;
    if (y16) y16[r * n + i] = from_float<H>(v);
    amax = fmaxf(amax, fabsf(v));
  }
  if (!yq) return;
  amax = block_max(amax, sh);
  const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
  if (threadIdx.x == 0) ys[r] = s;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yq[r * n + i] = quantize_one(yr[i], s);
}

__global__ void quantize_kernel(const float* __restrict__ x, int64_t n, int64_t ldx,
                                float static_scale, int8_t* __restrict__ q,
                                float* __restrict__ scales) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const float* xr = x + r * ldx;
  float s = static_scale;
  if (s <= 0.0f) {
    float amax = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) amax = fmaxf(amax, fabsf(xr[i]));
    amax = block_max(amax, sh);
    s = amax > 0.0f ? amax / 127.0f : 1.0f;
  }
  if (threadIdx.x == 0) scales[r] = s;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) q[r * n + i] = quantize_one(xr[i], s);
}

__global__ void row_absmax_kernel(const float* __restrict__ x, int64_t n, int64_t ldx,
                                  float* __restrict__ amax) {
  __shared__ float sh[32];
  const float* xr = x + int64_t(blockIdx.x) * ldx;
  float m = 0.0f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, fabsf(xr[i]));
  m = block_max(m, sh);
  if (threadIdx.x == 0) amax[blockIdx.x] = m;
}

// In place: every thread reads the row's maximum before thread 0 overwrites it with the scale.
__global__ void quantize_by_absmax_kernel(const float* __restrict__ x, int64_t n, int64_t ldx,
                                          int8_t* __restrict__ q, float* amax_then_scales) {
  const int64_t r = blockIdx.x;
  const float amax = amax_then_scales[r];
  const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) amax_then_scales[r] = s;
  const float* xr = x + r * ldx;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) q[r * n + i] = quantize_one(xr[i], s);
}

template <typename T>
__global__ void convert_kernel(const float* __restrict__ x, int64_t n, T* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    y[i] = from_float<T>(x[i]);
  }
}

// One byte (two weights: k = 2 j, 2 j + 1) per iteration.
template <typename T>
__global__ void dequant_s4_kernel(const uint8_t* __restrict__ q, const float* __restrict__ scale,
                                  int64_t N, int64_t K, int64_t group, T* __restrict__ w) {
  const int64_t G = (K + group - 1) / group, half = K / 2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * half;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / half, k = 2 * (i - n * half);
    const int b = q[i];
    w[n * K + k] = from_float<T>(float((b & 15) - 8) * scale[n * G + k / group]);
    w[n * K + k + 1] = from_float<T>(float((b >> 4) - 8) * scale[n * G + (k + 1) / group]);
  }
}

template <typename T>
__global__ void dequant_kernel(const int8_t* __restrict__ q, const float* __restrict__ scale,
                               int64_t N, int64_t K, int64_t group, T* __restrict__ w) {
  const int64_t G = (K + group - 1) / group;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * K;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / K, k = i - n * K;
    w[i] = from_float<T>(float(q[i]) * scale[n * G + k / group]);
  }
}

__global__ void epilogue_kernel(const int32_t* __restrict__ acc, int64_t M, int64_t N,
                                const float* __restrict__ sw, const float* __restrict__ sx,
                                const float* __restrict__ bias, float* __restrict__ y,
                                int64_t ldy) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * N;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / N, n = i - m * N;
    float v = float(acc[i]) * sw[n] * sx[m];
    if (bias) v += bias[n];
    y[m * ldy + n] = v;
  }
}

__global__ void bias_kernel(float* __restrict__ y, int64_t M, int64_t N, int64_t ldy,
                            const float* __restrict__ bias) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * N;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / N, n = i - m * N;
    y[m * ldy + n] += bias[n];
  }
}

__global__ void gather_cols_kernel(const float* __restrict__ x, int64_t M, int64_t K,
                                   const int32_t* __restrict__ perm, float* __restrict__ y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * K;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t m = i / K, j = i - m * K;
    y[i] = x[m * K + perm[j]];
  }
}

// One block per row; ties go to the lowest index (core::argmax).
__global__ void argmax_kernel(const float* __restrict__ x, int64_t n, int32_t* __restrict__ out) {
  __shared__ float sv[32];
  __shared__ int32_t si[32];
  const float* xr = x + int64_t(blockIdx.x) * n;
  float bv = -FLT_MAX;
  int32_t bi = INT32_MAX;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = xr[i];
    if (v > bv) { bv = v; bi = int32_t(i); }  // increasing i: first max kept
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, bv, o);
    const int32_t oi = __shfl_xor_sync(kFullMask, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
  __syncthreads();
  if (warp == 0) {
    const int nw = blockDim.x >> 5;
    bv = lane < nw ? sv[lane] : -FLT_MAX;
    bi = lane < nw ? si[lane] : INT32_MAX;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(kFullMask, bv, o);
      const int32_t oi = __shfl_xor_sync(kFullMask, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    if (lane == 0) out[blockIdx.x] = bi == INT32_MAX ? 0 : bi;
  }
}

int grid_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return int(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

}  // namespace

void embed_f32(const float* table, int64_t dim, const int32_t* ids, int64_t rows, float* out,
               cudaStream_t s) {
  if (rows > 0) embed_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(table, dim, ids, out);
}

void gather_rows_f32(const float* src, int64_t dim, const int32_t* idx, int64_t rows, float* dst,
                     cudaStream_t s) {
  embed_f32(src, dim, idx, rows, dst, s);  // the same row copy
}

void add_f32(float* x, const float* y, int64_t n, cudaStream_t s) {
  if (n > 0) add_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, y, n);
}

void silu_mul_f32(const float* g, int64_t rows, int64_t n, float* y, void* y16, WType h16,
                  int8_t* yq, float* ys, cudaStream_t s) {
  if (rows <= 0) return;
  if (h16 == WType::kBF16) {
    silu_mul_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(
        g, n, y, static_cast<__nv_bfloat16*>(y16), yq, ys);
  } else {
    silu_mul_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(g, n, y, static_cast<__half*>(y16),
                                                           yq, ys);
  }
}

void quantize_s8(const float* x, int64_t rows, int64_t n, int64_t ldx, float static_scale,
                 int8_t* q, float* scales, cudaStream_t s) {
  if (rows > 0) quantize_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(x, n, ldx, static_scale, q, scales);
}

void row_absmax(const float* x, int64_t rows, int64_t n, int64_t ldx, float* amax, cudaStream_t s) {
  if (rows > 0) row_absmax_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(x, n, ldx, amax);
}

void quantize_s8_by_absmax(const float* x, int64_t rows, int64_t n, int64_t ldx, int8_t* q,
                           float* amax_then_scales, cudaStream_t s) {
  if (rows > 0) {
    quantize_by_absmax_kernel<<<unsigned(rows), kRowThreads, 0, s>>>(x, n, ldx, q,
                                                                     amax_then_scales);
  }
}

void convert_f32(const float* x, int64_t n, void* y, WType t, cudaStream_t s) {
  if (n <= 0) return;
  if (t == WType::kF16) convert_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, n, static_cast<__half*>(y));
  else if (t == WType::kBF16)
    convert_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, n, static_cast<__nv_bfloat16*>(y));
  else cudaMemcpyAsync(y, x, size_t(n) * 4, cudaMemcpyDeviceToDevice, s);
}

void dequant_s8(const int8_t* q, const float* scale, int64_t N, int64_t K, int64_t group, void* w,
                WType t, cudaStream_t s) {
  const int g = grid_for(N * K, 256);
  if (t == WType::kF16) dequant_kernel<<<g, 256, 0, s>>>(q, scale, N, K, group, static_cast<__half*>(w));
  else if (t == WType::kBF16)
    dequant_kernel<<<g, 256, 0, s>>>(q, scale, N, K, group, static_cast<__nv_bfloat16*>(w));
  else dequant_kernel<<<g, 256, 0, s>>>(q, scale, N, K, group, static_cast<float*>(w));
}

void dequant_s4(const uint8_t* q, const float* scale, int64_t N, int64_t K, int64_t group, void* w,
                WType t, cudaStream_t s) {
  const int g = grid_for(N * (K / 2), 256);
  if (t == WType::kF16) {
    dequant_s4_kernel<<<g, 256, 0, s>>>(q, scale, N, K, group, static_cast<__half*>(w));
  } else if (t == WType::kBF16) {
    dequant_s4_kernel<<<g, 256, 0, s>>>(q, scale, N, K, group, static_cast<__nv_bfloat16*>(w));
  } else {
    dequant_s4_kernel<<<g, 256, 0, s>>>(q, scale, N, K, group, static_cast<float*>(w));
  }
}

void epilogue_s32(const int32_t* acc, int64_t M, int64_t N, const float* sw, const float* sx,
                  const float* bias, float* y, int64_t ldy, cudaStream_t s) {
  epilogue_kernel<<<grid_for(M * N, 256), 256, 0, s>>>(acc, M, N, sw, sx, bias, y, ldy);
}

void bias_add(float* y, int64_t M, int64_t N, int64_t ldy, const float* bias, cudaStream_t s) {
  bias_kernel<<<grid_for(M * N, 256), 256, 0, s>>>(y, M, N, ldy, bias);
}

void gather_cols(const float* x, int64_t M, int64_t K, const int32_t* perm, float* y,
                 cudaStream_t s) {
  if (M * K > 0) gather_cols_kernel<<<grid_for(M * K, 256), 256, 0, s>>>(x, M, K, perm, y);
}

void argmax_rows(const float* x, int64_t rows, int64_t n, int32_t* out, cudaStream_t s) {
  if (rows > 0) argmax_kernel<<<unsigned(rows), 512, 0, s>>>(x, n, out);
}

}  // namespace shrink::cuda
