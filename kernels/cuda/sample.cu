// Token sampling on the device: temperature, top-k, top-p and the inverse-CDF draw for each
// picked row of logits, without sorting and without copying logits to the host.
//
// The algorithm is core::sample_select (lib/core/sample_select.h, which explains it); this
// kernel runs it with one block per row. Each radix pass reads the row once (strided, so the
// loads coalesce) into 8 shared histograms (one per pair of warps, to spread the atomics) of
// counts and fixed-point masses; a thread then walks the 256 bins exactly as the C++ reference
// does. Integer masses make the totals independent of atomic order, so the pick is
// deterministic and equals the reference's. The tie pass gives each thread a contiguous slice
// of ids and an exclusive scan of the slices' tie counts finds the j-th tie.
// Greedy rows (temperature <= 0) take the argmax (lowest id on ties), as argmax_rows does.
// Per-row parameters and draws come from device memory, so a captured graph samples afresh on
// every replay. Tested in tests/cuda/test_backend.cpp against core::sample_select.
#include <cfloat>

#include "core/sample_select.h"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

namespace {

using core::SampleCrit;
using core::SampleCut;
using core::SampleRow;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kHists = 8;  // histograms; warps 2h and 2h+1 share histogram h

struct Shared {
  unsigned int cnt[kHists][256];
  unsigned long long mass[kHists][256];
  unsigned long long red[kWarps];
  int scan[kWarps];
  float fred[kWarps];
  int32_t ired[kWarps];
  uint32_t prefix;
  unsigned long long above;
  long long ties;
  int32_t id;
};

__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long v, Shared& sh) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.red[warp] = v;
  __syncthreads();
  unsigned long long t = 0;
  for (int w = 0; w < kWarps; ++w) t += sh.red[w];  // same order in every thread
  return t;
}

__device__ __forceinline__ float block_max_f(float v, Shared& sh) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) sh.fred[warp] = v;
  __syncthreads();
  float m = sh.fred[0];
  for (int w = 1; w < kWarps; ++w) m = fmaxf(m, sh.fred[w]);
  return m;
}

// Exclusive prefix sum over the block of one int per thread.
__device__ __forceinline__ int block_exclusive_scan(int v, Shared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(kFullMask, inc, o);
    if (lane >= o) inc += y;
  }
  __syncthreads();
  if (lane == 31) sh.scan[warp] = inc;
  __syncthreads();
  int base = 0;
  for (int w = 0; w < warp; ++w) base += sh.scan[w];
  return base + inc - v;
}

// Lowest index of the row's maximum (core::argmax).
__device__ int32_t block_argmax(const float* __restrict__ x, int64_t n, Shared& sh) {
  float bv = -FLT_MAX;
  int32_t bi = INT32_MAX;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float v = x[i];
    if (v > bv || bi == INT32_MAX) { bv = v; bi = int32_t(i); }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, bv, o);
    const int32_t oi = __shfl_xor_sync(kFullMask, bi, o);
    if (oi != INT32_MAX && (bi == INT32_MAX || ov > bv || (ov == bv && oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) { sh.fred[warp] = bv; sh.ired[warp] = bi; }
  __syncthreads();
  bv = sh.fred[0];
  bi = sh.ired[0];
  for (int w = 1; w < kWarps; ++w) {
    const float ov = sh.fred[w];
    const int32_t oi = sh.ired[w];
    if (oi != INT32_MAX && (bi == INT32_MAX || ov > bv || (ov == bv && oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  return bi == INT32_MAX ? 0 : bi;
}

struct Selected {
  SampleCut cut;
  unsigned long long cum;
};

// core::sample_select's select(), one block.
__device__ Selected select(const float* __restrict__ x, int64_t n, float T, float mx,
                           SampleCut within, SampleCrit crit, unsigned long long target,
                           Shared& sh) {
  const int hist = (threadIdx.x >> 5) / (kWarps / kHists);
  uint32_t prefix = 0;
  unsigned long long above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kHists * 256; b += kThreads) {
      (&sh.cnt[0][0])[b] = 0;
      (&sh.mass[0][0])[b] = 0;
    }
    __syncthreads();
    const uint32_t hi = shift == 24 ? 0u : ~0u << (shift + 8);
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const float s = core::sample_scaled(x[i], T);
      const uint32_t k = core::sample_key(s);
      if (!core::sample_in(k, int32_t(i), within) || (k & hi) != (prefix & hi)) continue;
      const uint32_t b = (k >> shift) & 255u;
      atomicAdd(&sh.cnt[hist][b], 1u);
      atomicAdd(&sh.mass[hist][b], crit == SampleCrit::kCount
                                        ? 1ull
                                        : (unsigned long long)core::sample_weight(s, mx));
    }
    __syncthreads();
    // Fold the histograms into histogram 0 (one thread per bin).
    for (int b = threadIdx.x; b < 256; b += kThreads) {
      unsigned int c = sh.cnt[0][b];
      unsigned long long m = sh.mass[0][b];
      for (int h = 1; h < kHists; ++h) {
        c += sh.cnt[h][b];
        m += sh.mass[h][b];
      }
      sh.cnt[0][b] = c;
      sh.mass[0][b] = m;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int chosen = -1, last = -1;
      unsigned long long acc = above;
      for (int b = 255; b >= 0; --b) {
        if (sh.cnt[0][b] == 0) continue;
        if (core::sample_crit_met(crit, acc + sh.mass[0][b], target)) {
          chosen = b;
          break;
        }
        acc += sh.mass[0][b];
        last = b;
      }
      if (chosen < 0) {
        chosen = last < 0 ? 0 : last;
        if (last >= 0) acc -= sh.mass[0][last];
      }
      sh.prefix = prefix | (uint32_t(chosen) << shift);
      sh.above = acc;
      sh.ties = (long long)sh.cnt[0][chosen];
    }
    __syncthreads();
    prefix = sh.prefix;
    above = sh.above;
  }
  const long long ties = sh.ties;
  const unsigned long long w =
      crit == SampleCrit::kCount ? 1ull : core::sample_weight(core::sample_unkey(prefix), mx);
  const long long j = core::sample_tie_index(crit, above, w, target, ties);
  // The j-th tie by id: contiguous slices, an exclusive scan of their tie counts.
  const int64_t per = (n + kThreads - 1) / kThreads;
  const int64_t lo = int64_t(threadIdx.x) * per, hi_i = lo + per < n ? lo + per : n;
  int c = 0;
  for (int64_t i = lo; i < hi_i; ++i) {
    const uint32_t k = core::sample_key(core::sample_scaled(x[i], T));
    c += k == prefix && core::sample_in(k, int32_t(i), within);
  }
  const int before = block_exclusive_scan(c, sh);
  if (threadIdx.x == 0) sh.id = -1;
  __syncthreads();
  if (j >= before && j < before + c) {
    long long seen = before;
    for (int64_t i = lo; i < hi_i; ++i) {
      const uint32_t k = core::sample_key(core::sample_scaled(x[i], T));
      if (k == prefix && core::sample_in(k, int32_t(i), within) && seen++ == j) {
        sh.id = int32_t(i);
        break;
      }
    }
  }
  __syncthreads();
  Selected r;
  r.cut.key = prefix;
  r.cut.id = sh.id;
  r.cum = above + (unsigned long long)(j + 1) * w;
  __syncthreads();
  return r;
}

__global__ void __launch_bounds__(kThreads)
sample_kernel(const float* __restrict__ x, int64_t n, int64_t ld,
              const SampleRow* __restrict__ rows, int32_t* __restrict__ out) {
  __shared__ Shared sh;
  const float* xr = x + int64_t(blockIdx.x) * ld;
  const SampleRow p = rows[blockIdx.x];
  if (!(p.temperature > 0.0f)) {
    const int32_t id = block_argmax(xr, n, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = id;
    return;
  }
  const float T = p.temperature;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) m = fmaxf(m, core::sample_scaled(xr[i], T));
  const float mx = block_max_f(m, sh);
  SampleCut cut;
  if (p.top_k > 0 && p.top_k < n) {
    cut = select(xr, n, T, mx, cut, SampleCrit::kCount, (unsigned long long)p.top_k, sh).cut;
  }
  unsigned long long z = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float s = core::sample_scaled(xr[i], T);
    if (core::sample_in(core::sample_key(s), int32_t(i), cut)) z += core::sample_weight(s, mx);
  }
  z = block_sum_u64(z, sh);
  if (p.top_p < 1.0f) {
    unsigned long long t = (unsigned long long)ceil(double(p.top_p) * double(z));
    t = t < 1 ? 1 : (t > z ? z : t);
    const Selected s = select(xr, n, T, mx, cut, SampleCrit::kMassGe, t, sh);
    cut = s.cut;
    z = s.cum;
  }
  unsigned long long t = (unsigned long long)(p.u * double(z));
  if (t >= z) t = z - 1;
  const Selected s = select(xr, n, T, mx, cut, SampleCrit::kMassGt, t, sh);
  if (threadIdx.x == 0) out[blockIdx.x] = s.cut.id;
}

}  // namespace

void sample_rows(const float* x, int64_t rows, int64_t n, int64_t ld, const core::SampleRow* p,
                 int32_t* out, cudaStream_t s) {
  if (rows > 0 && n > 0) sample_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, n, ld, p, out);
}

}  // namespace shrink::cuda
