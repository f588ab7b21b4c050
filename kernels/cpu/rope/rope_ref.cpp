// Rotate-half RoPE, scalar reference. Each output is two separate float products and a sum (no
// fused multiply-add), the same float operations as HF's q*cos + rotate_half(q)*sin, so the
// result is bit-identical to transformers for the same cos/sin. Tested in test_kernels.cpp.
#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void rope_f32_ref(float* x, int64_t heads, int64_t d, const float* cos, const float* sin) {
  const int64_t h = d / 2;
  for (int64_t hd = 0; hd < heads; ++hd) {
    float* p = x + hd * d;
    for (int64_t i = 0; i < h; ++i) {
      const float x1 = p[i], x2 = p[i + h];
      const float a = x1 * cos[i], b = x2 * sin[i], c = x2 * cos[i], e = x1 * sin[i];
      p[i] = a - b;
      p[i + h] = c + e;
    }
  }
}

}  // namespace shrink::kernels::cpu
