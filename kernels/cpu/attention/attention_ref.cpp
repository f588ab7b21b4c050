// Attention of one query head over a run of cached keys/values, scalar reference: scores in
// float32 (dot products accumulated in double, then rounded), softmax with the max subtracted,
// probabilities normalised, then the weighted sum of values. Tested in test_kernels.cpp.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

void attention_f32_ref(const float* q, const float* k, const float* v, int64_t kv_stride,
                       int64_t n_keys, int64_t d, float scale, float* out, float* scratch) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n_keys; ++j) {
    double s = 0;
    for (int64_t i = 0; i < d; ++i) s += double(q[i]) * k[j * kv_stride + i];
    scratch[j] = float(s) * scale;
    mx = std::max(mx, scratch[j]);
  }
  double z = 0;
  for (int64_t j = 0; j < n_keys; ++j) z += (scratch[j] = std::exp(scratch[j] - mx));
  const float inv = float(1.0 / z);
  for (int64_t i = 0; i < d; ++i) out[i] = 0;
  for (int64_t j = 0; j < n_keys; ++j) {
    const float p = scratch[j] * inv;
    for (int64_t i = 0; i < d; ++i) out[i] += p * v[j * kv_stride + i];
  }
}

// The blocked kernel's reference: each row by attention_f32_ref over its own key range (no
// blocking, so it checks the blocked variants' online softmax and tiling).
void attention_block_f32_ref(const float* q, int64_t M, int64_t d, const int64_t* lo,
                             const int64_t* hi, const float* k, const float* v, int64_t kv_stride,
                             float scale, float* out, float* /*scratch*/) {
  for (int64_t m = 0; m < M; ++m) {
    std::vector<float> s(static_cast<size_t>(hi[m] - lo[m]));  // may exceed the block scratch
    attention_f32_ref(q + m * d, k + lo[m] * kv_stride, v + lo[m] * kv_stride, kv_stride,
                      hi[m] - lo[m], d, scale, out + m * d, s.data());
  }
}

}  // namespace shrink::kernels::cpu
