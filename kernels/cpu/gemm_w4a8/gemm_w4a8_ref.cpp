// W4A8: the activation quantizer (one implementation for every ISA) and the scalar reference of
// the GEMM, both over the packed activation rows described in kernels.h. The reference reads
// every value through w4a8_act_value / s4_value, so it checks the packing as well as the SIMD
// variants' arithmetic. Tested in tests/runtime/test_kernels.cpp.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void quantize_w4a8_act(const float* x, int64_t rows, int64_t K, int64_t ldx, int64_t block,
                       uint8_t* P, int64_t ldp, const float* row_scale, QuantizeS8Fn q8) {
  if (!q8) q8 = quantize_s8_ref;
  const int64_t chunks = (K + kW4a8Chunk - 1) / kW4a8Chunk, nblocks = (K + 31) / 32;
  // quantize_s8's rule, applied per row or per block of 32 (its rows: the blocks, ldx 32), into
  // natural order; then laid out for the 4-bit blocks.
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> s;
  q.resize(size_t(K));
  s.resize(size_t(nblocks));
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    if (block == 0) {
      q8(xr, 1, K, K, row_scale ? row_scale + r : nullptr, q.data(), K, s.data());
      std::fill(s.begin() + 1, s.end(), s[0]);
    } else {
      q8(xr, K / 32, 32, 32, nullptr, q.data(), 32, s.data());
      if (K % 32) {
        q8(xr + K / 32 * 32, 1, K % 32, K % 32, nullptr, q.data() + K / 32 * 32, K % 32,
           s.data() + K / 32);
      }
    }
    uint8_t* pr = P + r * ldp;
    std::memset(pr, 0, size_t(chunks * kW4a8ChunkBytes));
    for (int64_t b = 0; b < nblocks; ++b) {
      uint8_t* pc = pr + b / 4 * kW4a8ChunkBytes;
      const int64_t j = b % 4, k0 = 32 * b, n = std::min<int64_t>(32, K - k0);
      const int8_t* qb = q.data() + k0;
      int32_t sum = 0;
      for (int64_t i = 0; i < n; ++i) sum += qb[i];
      // Inputs 0..15 meet the low nibbles (at 16 j), 16..31 the high ones (at 64 + 16 j).
      std::memcpy(pc + 16 * j, qb, size_t(std::min<int64_t>(n, 16)));
      if (n > 16) std::memcpy(pc + 64 + 16 * j, qb + 16, size_t(n - 16));
      reinterpret_cast<int32_t*>(pc + 128)[4 * j] = -8 * sum;
      for (int l = 0; l < 4; ++l) reinterpret_cast<float*>(pc + 192)[4 * j + l] = s[size_t(b)];
    }
  }
}

float w4a8_act_scale(const uint8_t* row, int64_t k) {
  const uint8_t* c = row + k / kW4a8Chunk * kW4a8ChunkBytes;
  float s;
  std::memcpy(&s, c + 192 + 16 * ((k % kW4a8Chunk) / 32), sizeof s);
  return s;
}

void gemm_w4a8_nt_ref(int64_t M, int64_t N, int64_t K, const uint8_t* A, int64_t lda,
                      const uint8_t* B, int64_t ldb, const uint16_t* scale, int64_t group, float* C,
                      int64_t ldc) {
  const int64_t G = (K + group - 1) / group;
  for (int64_t m = 0; m < M; ++m) {
    const uint8_t* a = A + m * lda;
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* b = B + n * ldb;
      double tot = 0;
      for (int64_t k0 = 0; k0 < K; k0 += 32) {
        int32_t dot = 0;
        for (int64_t k = k0; k < std::min(K, k0 + 32); ++k)
          dot += w4a8_act_value(a, k) * s4_value(b, k);
        const float ws = core::f16_to_f32(scale[n * G + k0 / group]);
        tot += double(dot) * double(ws) * double(w4a8_act_scale(a, k0));
      }
      C[m * ldc + n] = float(tot);
    }
  }
}

}  // namespace shrink::kernels::cpu
