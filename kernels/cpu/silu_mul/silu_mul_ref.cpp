// SiLU(g) * u, scalar reference (std::exp). Tested in test_kernels.cpp.
#include <cmath>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void silu_mul_f32_ref(const float* g, const float* u, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

}  // namespace shrink::kernels::cpu
