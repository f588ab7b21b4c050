// Sampler implementation. See sampling.h.
#include "core/sampling.h"

#include <algorithm>
#include <cmath>

namespace shrink::core {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (x[i] > x[best]) best = i;
  }
  return int32_t(best);
}

int32_t Sampler::sample(const float* logits, int64_t n) {
  if (p_.temperature <= 0.0f) return argmax(logits, n);
  scratch_.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) scratch_[size_t(i)] = {logits[i] / p_.temperature, int32_t(i)};
  // Sort by logit descending, ties by id, so the candidate order is fully determined.
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = size_t(n);
  if (p_.top_k > 0 && size_t(p_.top_k) < keep) {
    keep = size_t(p_.top_k);
    std::partial_sort(scratch_.begin(), scratch_.begin() + long(keep), scratch_.end(), by_logit);
  } else {
    std::sort(scratch_.begin(), scratch_.end(), by_logit);
  }
  // Softmax over the kept candidates (max-subtracted, accumulated in double).
  const double mx = scratch_[0].first;
  std::vector<double> prob(keep);
  double sum = 0.0;
  for (size_t i = 0; i < keep; ++i) sum += prob[i] = std::exp(double(scratch_[i].first) - mx);
  for (double& q : prob) q /= sum;
  if (p_.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p (at least one token).
    double acc = 0.0;
    size_t k = 0;
    while (k < keep) {
      acc += prob[k++];
      if (acc >= double(p_.top_p)) break;
    }
    keep = k;
    sum = 0.0;
    for (size_t i = 0; i < keep; ++i) sum += prob[i];
    for (size_t i = 0; i < keep; ++i) prob[i] /= sum;
  }
  // Inverse-CDF draw with 53 random bits.
  double u = double(rng_() >> 11) * (1.0 / 9007199254740992.0);
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (u < acc) return scratch_[i].second;
  }
  return scratch_[keep - 1].second;
}

}  // namespace shrink::core
