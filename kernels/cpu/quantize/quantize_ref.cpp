// Symmetric int8 activation quantization, scalar reference. Rounding is half-to-even
// (std::nearbyint in the default mode), as torch.round, so fake-quant perplexities computed in
// LibTorch and the runtime's int8 path quantize identically. Tested in test_kernels.cpp.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void quantize_s8_ref(const float* x, int64_t rows, int64_t n, int64_t ldx, const float* in_scale,
                     int8_t* q, int64_t ldq, float* scales) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float s;
    if (in_scale) {
      s = *in_scale;
    } else {
      float amax = 0;
      for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(xr[i]));
      s = amax > 0 ? amax / 127.0f : 1.0f;
    }
    scales[r] = s;
    for (int64_t i = 0; i < n; ++i) {
      float v = std::nearbyint(xr[i] / s);
      q[r * ldq + i] = int8_t(std::min(127.0f, std::max(-127.0f, v)));
    }
  }
}

}  // namespace shrink::kernels::cpu
