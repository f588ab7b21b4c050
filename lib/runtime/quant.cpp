// A scheme's activation quantization and the reference weight quantizers (see quant.h).
#include "runtime/quant.h"

#include <algorithm>
#include <cmath>

#include "core/quant.h"

namespace shrink::runtime {

ActQuant act_quant_of(const core::QuantScheme& s) {
  if (s.activations == "static") return ActQuant::kStatic;
  if (s.activations == "dynamic") return ActQuant::kDynamic;
  return ActQuant::kNone;
}

namespace {
void quant_weight_sym(const float* w, int64_t out, int64_t in, int64_t group, float qmax,
                      float qmin, int8_t* q, float* scale) {
  const int64_t G = (in + group - 1) / group;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = std::min(in, k0 + group);
      float amax = 0;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[o * in + k]));
      const float s = amax > 0 ? amax / qmax : 1.0f, inv = 1.0f / s;
      scale[o * G + g] = s;
      for (int64_t k = k0; k < k1; ++k) {
        float v = std::nearbyint(w[o * in + k] * inv);
        q[o * in + k] = int8_t(std::min(qmax, std::max(qmin, v)));
      }
    }
  }
}
}  // namespace

void quant_weight_s8(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale) {
  quant_weight_sym(w, out, in, group, 127.0f, -127.0f, q, scale);
}

void quant_weight_s4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale) {
  quant_weight_sym(w, out, in, group, float(core::kQMax4), float(core::kQMin4), q, scale);
}

void quant_weight_u4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale, int8_t* zp) {
  const int64_t G = (in + group - 1) / group;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = std::min(in, k0 + group);
      float lo = 0, hi = 0;  // the range always holds 0, so zero is exact
      for (int64_t k = k0; k < k1; ++k) {
        lo = std::min(lo, w[o * in + k]);
        hi = std::max(hi, w[o * in + k]);
      }
      const float s = hi > lo ? (hi - lo) / float(core::kQMax4 - core::kQMin4) : 1.0f;
      const float z =
          std::min(float(core::kQMax4),
                   std::max(float(core::kQMin4), std::nearbyint(float(core::kQMin4) - lo / s)));
      scale[o * G + g] = s;
      zp[o * G + g] = int8_t(z);
      const float inv = 1.0f / s;
      for (int64_t k = k0; k < k1; ++k) {
        const float v = std::nearbyint(w[o * in + k] * inv + z);
        q[o * in + k] = int8_t(std::min(float(core::kQMax4), std::max(float(core::kQMin4), v)));
      }
    }
  }
}

}  // namespace shrink::runtime
