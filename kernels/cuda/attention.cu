// Attention over the KV cache (floats; f16 widened to float as it is read; int8 times its scale
// per (token, KV head): q.k in float over the int8 values, then the key's scale; each value row
// times its scale), two kernels:
//  - decode (one query per row): split-K / flash-decoding. Grid (splits, kv heads, rows): each
//    block scores kAttnSplitKeys keys of one kv head for all query heads of its GQA group (one
//    key per thread), takes the split's max and sum, accumulates P.V, and writes (m, l, o) to a
//    scratch buffer; a merge kernel combines the splits per (row, head). The number of splits
//    depends only on max_seq, so a captured CUDA graph stays valid while sequences grow; blocks
//    past a row's length exit at once.
//  - prefill: tiles of up to 64 consecutive query rows of one sequence and one head, two threads
//    per row (each holds half the head in registers), K/V tiles staged in shared memory (rows
//    padded between halves against bank conflicts), online softmax in registers.
// Numerics: scores = (q . k) * scale in float, softmax with the max subtracted, as the CPU
// reference (kernels/cpu/attention/attention_ref.cpp) up to the order of float additions.
// Tested in tests/cuda/test_backend.cpp (GQA, MQA, sliding window, odd lengths, head_dim 16..128).
#include <cfloat>
#include <type_traits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

namespace {

constexpr int kSplitKeys = 128;  // keys per split = threads per decode block

int64_t n_splits(int64_t max_seq) { return (max_seq + kSplitKeys - 1) / kSplitKeys; }

template <typename C>
__global__ void __launch_bounds__(kSplitKeys)
    decode_kernel(AttentionArgs a, int64_t splits, float* __restrict__ partial) {
  const C* k_cache = static_cast<const C*>(a.k_cache);
  const C* v_cache = static_cast<const C*>(a.v_cache);
  constexpr bool kS8 = std::is_same<C, int8_t>::value;
  extern __shared__ float sm[];
  const int G = a.n_heads / a.n_kv_heads, D = a.head_dim;
  float* qs = sm;                    // [G][D]
  float* ps = qs + G * D;            // [G][kSplitKeys]
  float* ml = ps + G * kSplitKeys;   // [G][2]
  float* vsc = ml + 2 * G;           // [kSplitKeys]: int8 value rows' scales
  const int64_t r = blockIdx.z;
  const int kvh = blockIdx.y;
  const int64_t sp = blockIdx.x;
  const int64_t p = a.pos[r];
  const int64_t lo = a.window > 0 ? max(int64_t(0), p - a.window + 1) : 0;
  const int64_t k0 = max(lo, sp * kSplitKeys), k1 = min(p + 1, (sp + 1) * kSplitKeys);
  const int tid = threadIdx.x;
  const int stride_part = D + 2;
  if (k0 >= k1) {
    for (int g = tid; g < G; g += blockDim.x) {
      float* dst = partial + ((r * a.n_heads + kvh * G + g) * splits + sp) * stride_part;
      dst[D] = -INFINITY;
      dst[D + 1] = 0.0f;
    }
    return;
  }
  const float* qr = a.q + r * a.ldq + int64_t(kvh) * G * D;
  for (int i = tid; i < G * D; i += blockDim.x) qs[i] = qr[i];
  __syncthreads();
  const int64_t base = int64_t(a.slot[r]) * a.slot_stride + int64_t(kvh) * D;
  const int n = int(k1 - k0);
  // int8: the scales of this split's keys (and values) of this KV head, [slot][pos][kv head].
  const int64_t sbase = (int64_t(a.slot[r]) * (a.slot_stride / a.kv_dim) + k0) * a.n_kv_heads + kvh;
  if (tid < n) {
    const C* kp = k_cache + base + (k0 + tid) * a.kv_dim;
    for (int g = 0; g < G; ++g) {
      const float* qg = qs + g * D;
      float acc = 0.0f;
      if ((D & 3) == 0) {
        for (int d = 0; d < D; d += 4) {
          const float4 kv = load4(kp + d);
          acc += qg[d] * kv.x + qg[d + 1] * kv.y + qg[d + 2] * kv.z + qg[d + 3] * kv.w;
        }
      } else {
        for (int d = 0; d < D; ++d) acc += qg[d] * to_float(kp[d]);
      }
      if constexpr (kS8) acc *= a.k_scale[sbase + int64_t(tid) * a.n_kv_heads];
      ps[g * kSplitKeys + tid] = acc * a.scale;
    }
    if constexpr (kS8) vsc[tid] = a.v_scale[sbase + int64_t(tid) * a.n_kv_heads];
  }
  __syncthreads();
  const int lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
  for (int g = warp; g < G; g += nw) {
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, ps[g * kSplitKeys + j]);
    m = warp_max(m);
    float l = 0.0f;
    for (int j = lane; j < n; j += 32) {
      const float e = expf(ps[g * kSplitKeys + j] - m);
      ps[g * kSplitKeys + j] = e;
      l += e;
    }
    l = warp_sum(l);
    if (lane == 0) {
      ml[2 * g] = m;
      ml[2 * g + 1] = l;
    }
  }
  __syncthreads();
  const C* vb = v_cache + base + k0 * a.kv_dim;
  for (int i = tid; i < G * D; i += blockDim.x) {
    const int g = i / D, d = i - g * D;
    float o = 0.0f;
    const float* pg = ps + g * kSplitKeys;
    if constexpr (kS8) {
      for (int j = 0; j < n; ++j) o += pg[j] * (to_float(vb[int64_t(j) * a.kv_dim + d]) * vsc[j]);
    } else {
      for (int j = 0; j < n; ++j) o += pg[j] * to_float(vb[int64_t(j) * a.kv_dim + d]);
    }
    float* dst = partial + ((r * a.n_heads + kvh * G + g) * splits + sp) * stride_part;
    dst[d] = o;
    if (d == 0) {
      dst[D] = ml[2 * g];
      dst[D + 1] = ml[2 * g + 1];
    }
  }
}

__global__ void merge_kernel(AttentionArgs a, int64_t splits, const float* __restrict__ partial) {
  const int64_t rh = blockIdx.x;  // row * n_heads + head
  const int D = a.head_dim;
  const float* pp = partial + rh * splits * (D + 2);
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, pp[s * (D + 2) + D]);
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float L = 0.0f, o = 0.0f;
    for (int64_t s = 0; s < splits; ++s) {
      const float m = pp[s * (D + 2) + D];
      if (m == -INFINITY) continue;
      const float f = expf(m - M);
      L += pp[s * (D + 2) + D + 1] * f;
      o += pp[s * (D + 2) + d] * f;
    }
    a.out[rh * D + d] = o / L;
  }
}

template <typename C, int DH, int BK>
__global__ void __launch_bounds__(2 * kAttnTileRows)
    prefill_kernel(AttentionArgs a, const int32_t* __restrict__ tiles) {
  const C* k_cache = static_cast<const C*>(a.k_cache);
  const C* v_cache = static_cast<const C*>(a.v_cache);
  constexpr bool kS8 = std::is_same<C, int8_t>::value;
  __shared__ float ks[BK][2 * DH + 2];
  __shared__ float vs[BK][2 * DH + 2];
  const int t = blockIdx.x, h = blockIdx.y;
  const int G = a.n_heads / a.n_kv_heads, kvh = h / G, D = a.head_dim, hd = D / 2;
  const int64_t row0 = tiles[2 * t], nr = tiles[2 * t + 1];
  const int i = threadIdx.x >> 1, half = threadIdx.x & 1;
  const bool active = i < nr;
  const int64_t r = row0 + (active ? i : 0);
  const int64_t p = a.pos[r];
  const int64_t lo = a.window > 0 ? max(int64_t(0), p - a.window + 1) : 0;
  const int64_t p_first = a.pos[row0], p_last = a.pos[row0 + nr - 1];
  const int64_t kmin = a.window > 0 ? max(int64_t(0), p_first - a.window + 1) : 0;
  const int64_t base = int64_t(a.slot[row0]) * a.slot_stride + int64_t(kvh) * D;
  float qv[DH], o[DH];
  const float* qr = a.q + r * a.ldq + int64_t(h) * D + half * hd;
#pragma unroll
  for (int e = 0; e < DH; ++e) {
    qv[e] = e < hd ? qr[e] : 0.0f;
    o[e] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const int off = half * (hd + 1);
  for (int64_t kb = kmin; kb <= p_last; kb += BK) {
    const int nk = int(min(int64_t(BK), p_last + 1 - kb));
    __syncthreads();
    for (int idx = threadIdx.x; idx < nk * D; idx += blockDim.x) {
      const int j = idx / D, d = idx - j * D;
      const int col = d < hd ? d : d + 1;
      const int64_t src = base + (kb + j) * a.kv_dim + d;
      float kx = to_float(k_cache[src]), vx = to_float(v_cache[src]);
      if constexpr (kS8) {  // the key's and value's scales, [slot][pos][kv head]
        const int64_t si =
            (int64_t(a.slot[row0]) * (a.slot_stride / a.kv_dim) + kb + j) * a.n_kv_heads + kvh;
        kx *= a.k_scale[si];
        vx *= a.v_scale[si];
      }
      ks[j][col] = kx;
      vs[j][col] = vx;
    }
    __syncthreads();
    for (int j = 0; j < nk; ++j) {
      float s = 0.0f;
#pragma unroll
      for (int e = 0; e < DH; ++e) {
        if (e < hd) s += qv[e] * ks[j][off + e];
      }
      s += __shfl_xor_sync(kFullMask, s, 1);
      s *= a.scale;
      const int64_t key = kb + j;
      if (active && key >= lo && key <= p) {
        if (s > m) {
          const float c = expf(m - s);
          l *= c;
#pragma unroll
          for (int e = 0; e < DH; ++e) o[e] *= c;
          m = s;
        }
        const float pe = expf(s - m);
        l += pe;
#pragma unroll
        for (int e = 0; e < DH; ++e) {
          if (e < hd) o[e] += pe * vs[j][off + e];
        }
      }
    }
  }
  if (!active) return;
  float* dst = a.out + r * int64_t(a.n_heads) * D + int64_t(h) * D + half * hd;
  const float inv = 1.0f / l;
#pragma unroll
  for (int e = 0; e < DH; ++e) {
    if (e < hd) dst[e] = o[e] * inv;
  }
}

template <typename C>
void prefill_for(const AttentionArgs& a, const int32_t* tiles, int hd, dim3 grid, int threads,
                 cudaStream_t s) {
  if (hd <= 8) prefill_kernel<C, 8, 64><<<grid, threads, 0, s>>>(a, tiles);
  else if (hd <= 16) prefill_kernel<C, 16, 64><<<grid, threads, 0, s>>>(a, tiles);
  else if (hd <= 32) prefill_kernel<C, 32, 64><<<grid, threads, 0, s>>>(a, tiles);
  else if (hd <= 64) prefill_kernel<C, 64, 32><<<grid, threads, 0, s>>>(a, tiles);
  else prefill_kernel<C, 128, 16><<<grid, threads, 0, s>>>(a, tiles);
}

}  // namespace

int64_t attention_decode_scratch(int64_t rows, int n_heads, int head_dim, int64_t max_seq) {
  return rows * n_heads * n_splits(max_seq) * (head_dim + 2);
}

void attention_decode(const AttentionArgs& a, int64_t max_seq, float* partial, cudaStream_t s) {
  if (a.rows <= 0) return;
  const int64_t splits = n_splits(max_seq);
  const int G = a.n_heads / a.n_kv_heads;
  const size_t smem = size_t(G * a.head_dim + G * kSplitKeys + 2 * G + kSplitKeys) * sizeof(float);
  dim3 grid(unsigned(splits), unsigned(a.n_kv_heads), unsigned(a.rows));
  with_cache_type(a.cache_type, [&](auto* tag) {
    auto kernel = decode_kernel<std::remove_pointer_t<decltype(tag)>>;
    if (smem > 48 * 1024) {  // many query heads per kv head: opt in to more shared memory
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    }
    kernel<<<grid, kSplitKeys, smem, s>>>(a, splits, partial);
  });
  merge_kernel<<<unsigned(a.rows * a.n_heads), a.head_dim < 128 ? 64 : 128, 0, s>>>(a, splits,
                                                                                   partial);
}

void attention_prefill(const AttentionArgs& a, const int32_t* tiles, int64_t n_tiles,
                       cudaStream_t s) {
  if (n_tiles <= 0) return;
  dim3 grid(unsigned(n_tiles), unsigned(a.n_heads));
  const int threads = 2 * kAttnTileRows;
  const int hd = a.head_dim / 2;
  with_cache_type(a.cache_type, [&](auto* tag) {
    prefill_for<std::remove_pointer_t<decltype(tag)>>(a, tiles, hd, grid, threads, s);
  });
}

}  // namespace shrink::cuda
