// Attention references (scalar). One query head over a run of cached keys/values: scores in
// float32 (dot products accumulated in double, then rounded), softmax with the max subtracted,
// probabilities normalised, then the weighted sum of values. Tested in test_kernels.cpp.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/dtype.h"
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

// Split-K partial, reference: each head's scores in float32 (dot products in double), the max,
// exp, the sum and the weighted values accumulated in double.
void attention_partial_f32_ref(const float* q, int64_t G, int64_t d, const float* k,
                               const float* v, int64_t kv_stride, int64_t n_keys, float scale,
                               float* o, float* m, float* l, float* scratch) {
  for (int64_t g = 0; g < G; ++g) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n_keys; ++j) {
      double s = 0;
      for (int64_t i = 0; i < d; ++i) s += double(q[g * d + i]) * k[j * kv_stride + i];
      scratch[j] = float(s) * scale;
      mx = std::max(mx, scratch[j]);
    }
    double z = 0;
    std::vector<double> acc(static_cast<size_t>(d), 0.0);
    for (int64_t j = 0; j < n_keys; ++j) {
      const double p = std::exp(double(scratch[j]) - mx);
      z += p;
      for (int64_t i = 0; i < d; ++i) acc[size_t(i)] += p * v[j * kv_stride + i];
    }
    for (int64_t i = 0; i < d; ++i) o[g * d + i] = float(acc[size_t(i)]);
    m[g] = mx;
    l[g] = float(z);
  }
}

void attention_merge_f32(int64_t C, int64_t G, int64_t d, const float* o, const float* m,
                         const float* l, float* out) {
  for (int64_t g = 0; g < G; ++g) {
    float mx = -INFINITY;
    for (int64_t c = 0; c < C; ++c) mx = std::max(mx, m[c * G + g]);
    float z = 0;
    float* y = out + g * d;
    for (int64_t i = 0; i < d; ++i) y[i] = 0;
    for (int64_t c = 0; c < C; ++c) {
      const float e = std::exp(m[c * G + g] - mx);
      z += e * l[c * G + g];
      const float* x = o + (c * G + g) * d;
      for (int64_t i = 0; i < d; ++i) y[i] += e * x[i];
    }
    const float inv = 1.0f / z;
    for (int64_t i = 0; i < d; ++i) y[i] *= inv;
  }
}


// f16 and int8 KV cache references: rows [0, n) of the cache (d values each at kv_stride)
// widened to float (f16 by core's exact conversion; int8 times its key's scale), then the float
// references above (which accumulate in double, so the order of scaling does not matter).
namespace {
template <typename Widen>
std::vector<float> widen_rows(int64_t n, int64_t d, int64_t stride, Widen widen) {
  std::vector<float> y(static_cast<size_t>(n * stride), 0.0f);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < d; ++i) y[size_t(j * stride + i)] = widen(j, j * stride + i);
  return y;
}
std::vector<float> widen_rows(const uint16_t* x, int64_t n, int64_t d, int64_t stride) {
  return widen_rows(n, d, stride, [&](int64_t, int64_t at) { return core::f16_to_f32(x[at]); });
}
std::vector<float> widen_rows(const int8_t* x, const float* sc, int64_t ss, int64_t n, int64_t d,
                              int64_t stride) {
  return widen_rows(n, d, stride, [&](int64_t j, int64_t at) { return float(x[at]) * sc[j * ss]; });
}
}  // namespace

void attention_block_f16kv_ref(const float* q, int64_t M, int64_t d, const int64_t* lo,
                               const int64_t* hi, const uint16_t* k, const uint16_t* v,
                               int64_t kv_stride, float scale, float* out, float* scratch) {
  const int64_t n = *std::max_element(hi, hi + M);
  const std::vector<float> kf = widen_rows(k, n, d, kv_stride), vf = widen_rows(v, n, d, kv_stride);
  attention_block_f32_ref(q, M, d, lo, hi, kf.data(), vf.data(), kv_stride, scale, out, scratch);
}

void attention_partial_f16kv_ref(const float* q, int64_t G, int64_t d, const uint16_t* k,
                                 const uint16_t* v, int64_t kv_stride, int64_t n_keys, float scale,
                                 float* o, float* m, float* l, float* scratch) {
  const std::vector<float> kf = widen_rows(k, n_keys, d, kv_stride),
                           vf = widen_rows(v, n_keys, d, kv_stride);
  attention_partial_f32_ref(q, G, d, kf.data(), vf.data(), kv_stride, n_keys, scale, o, m, l,
                            scratch);
}

void attention_block_s8kv_ref(const float* q, int64_t M, int64_t d, const int64_t* lo,
                              const int64_t* hi, const int8_t* k, const int8_t* v,
                              int64_t kv_stride, const float* ks, const float* vs, int64_t ss,
                              float scale, float* out, float* scratch) {
  const int64_t n = *std::max_element(hi, hi + M);
  const std::vector<float> kf = widen_rows(k, ks, ss, n, d, kv_stride),
                           vf = widen_rows(v, vs, ss, n, d, kv_stride);
  attention_block_f32_ref(q, M, d, lo, hi, kf.data(), vf.data(), kv_stride, scale, out, scratch);
}

void attention_partial_s8kv_ref(const float* q, int64_t G, int64_t d, const int8_t* k,
                                const int8_t* v, int64_t kv_stride, const float* ks,
                                const float* vs, int64_t ss, int64_t n_keys, float scale, float* o,
                                float* m, float* l, float* scratch) {
  const std::vector<float> kf = widen_rows(k, ks, ss, n_keys, d, kv_stride),
                           vf = widen_rows(v, vs, ss, n_keys, d, kv_stride);
  attention_partial_f32_ref(q, G, d, kf.data(), vf.data(), kv_stride, n_keys, scale, o, m, l,
                            scratch);
}

void convert_f32_f16_ref(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = core::f32_to_f16(x[i]);
}

}  // namespace shrink::kernels::cpu
