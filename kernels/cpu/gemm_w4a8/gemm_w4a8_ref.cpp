// W4A8: the activation quantizer (one implementation for every ISA) and the scalar reference of
// the GEMM, both over the packed activation rows described in kernels.h. The reference reads
// every value through w4a8_act_value / s4_value, so it checks the packing as well as the SIMD
// variants' arithmetic. Tested in tests/runtime/test_kernels.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

namespace {

// The scale of n values: max|x| / 127, or 1 where all are zero (quantize_s8's rule).
float absmax_scale(const float* x, int64_t n) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax > 0 ? amax / 127.0f : 1.0f;
}

int8_t quant(float x, float s) {
  const float v = std::nearbyint(x / s);
  return int8_t(std::min(127.0f, std::max(-127.0f, v)));
}

}  // namespace

void quantize_w4a8_act(const float* x, int64_t rows, int64_t K, int64_t ldx, int64_t block,
                       uint8_t* P, int64_t ldp) {
  const int64_t chunks = (K + kW4a8Chunk - 1) / kW4a8Chunk;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    uint8_t* pr = P + r * ldp;
    std::memset(pr, 0, size_t(chunks * kW4a8ChunkBytes));
    const float row_scale = block == 0 ? absmax_scale(xr, K) : 0.0f;
    for (int64_t c = 0; c < chunks; ++c) {
      uint8_t* pc = pr + c * kW4a8ChunkBytes;
      int32_t* corr = reinterpret_cast<int32_t*>(pc + 128);
      float* sc = reinterpret_cast<float*>(pc + 192);
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t k0 = c * kW4a8Chunk + 32 * j;
        const int64_t n = std::max<int64_t>(0, std::min<int64_t>(32, K - k0));
        const float s = block == 0 ? row_scale : n > 0 ? absmax_scale(xr + k0, n) : 1.0f;
        int32_t sum = 0;
        for (int64_t i = 0; i < n; ++i) {
          const int8_t q = quant(xr[k0 + i], s);
          pc[(i < 16 ? 0 : 64) + 16 * j + (i & 15)] = uint8_t(q);
          sum += q;
        }
        corr[4 * j] = -8 * sum;
        for (int l = 0; l < 4; ++l) sc[4 * j + l] = s;
      }
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
