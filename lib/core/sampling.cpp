// Sampler implementation and the two pick algorithms: sorted (the reference) and by
// selection (the CUDA sampler's algorithm). See sampling.h and sample_select.h.
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

double Sampler::draw() { return double(rng_() >> 11) * (1.0 / 9007199254740992.0); }

SampleRow Sampler::next_row() {
  SampleRow r;
  r.temperature = p_.temperature;
  r.top_k = p_.top_k;
  r.top_p = p_.top_p;
  if (p_.temperature > 0.0f) r.u = draw();
  return r;
}

int32_t Sampler::sample(const float* logits, int64_t n) {
  if (p_.temperature <= 0.0f) return argmax(logits, n);
  return sample_sorted(logits, n, next_row(), scratch_);
}

int32_t sample_sorted(const float* logits, int64_t n, const SampleRow& p,
                      std::vector<std::pair<float, int32_t>>& scratch) {
  if (p.temperature <= 0.0f) return argmax(logits, n);
  scratch.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) scratch[size_t(i)] = {logits[i] / p.temperature, int32_t(i)};
  // Sort by logit descending, ties by id, so the candidate order is fully determined.
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = size_t(n);
  if (p.top_k > 0 && size_t(p.top_k) < keep) {
    keep = size_t(p.top_k);
    std::partial_sort(scratch.begin(), scratch.begin() + long(keep), scratch.end(), by_logit);
  } else {
    std::sort(scratch.begin(), scratch.end(), by_logit);
  }
  // Softmax over the kept candidates (max-subtracted, accumulated in double).
  const double mx = scratch[0].first;
  std::vector<double> prob(keep);
  double sum = 0.0;
  for (size_t i = 0; i < keep; ++i) sum += prob[i] = std::exp(double(scratch[i].first) - mx);
  for (double& q : prob) q /= sum;
  if (p.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p (at least one token).
    double acc = 0.0;
    size_t k = 0;
    while (k < keep) {
      acc += prob[k++];
      if (acc >= double(p.top_p)) break;
    }
    keep = k;
    sum = 0.0;
    for (size_t i = 0; i < keep; ++i) sum += prob[i];
    for (size_t i = 0; i < keep; ++i) prob[i] /= sum;
  }
  // Inverse-CDF draw.
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += prob[i];
    if (p.u < acc) return scratch[i].second;
  }
  return scratch[keep - 1].second;
}

// ---- selection (sample_select.h) ----------------------------------------------------------------

namespace {

struct Selected {
  SampleCut cut;
  uint64_t cum = 0;  // cumulative count/mass up to and including the cut's element
};

// The first element of `within` (in sorted order) whose cumulative count or mass meets `crit`
// against `target`: 4 radix passes over the keys, then the tie arithmetic and the tie's id.
// Step for step what sample_kernel's select() does, one pass over the row per loop here.
Selected select(const float* x, int64_t n, float T, float mx, SampleCut within, SampleCrit crit,
                uint64_t target) {
  uint32_t prefix = 0;
  uint64_t above = 0;
  int64_t ties = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    uint64_t cnt[256] = {}, mass[256] = {};
    const uint32_t hi = shift == 24 ? 0u : ~0u << (shift + 8);
    for (int64_t i = 0; i < n; ++i) {
      const float s = sample_scaled(x[i], T);
      const uint32_t k = sample_key(s);
      if (!sample_in(k, int32_t(i), within) || (k & hi) != (prefix & hi)) continue;
      const uint32_t b = (k >> shift) & 255u;
      cnt[b]++;
      mass[b] += crit == SampleCrit::kCount ? 1 : sample_weight(s, mx);
    }
    int chosen = -1, last = -1;
    uint64_t acc = above;
    for (int b = 255; b >= 0; --b) {
      if (cnt[b] == 0) continue;
      if (sample_crit_met(crit, acc + mass[b], target)) {
        chosen = b;
        break;
      }
      acc += mass[b];
      last = b;
    }
    if (chosen < 0) {  // the target is past the total (rounding): the last element
      chosen = last;
      acc -= mass[last];
    }
    above = acc;
    prefix |= uint32_t(chosen) << shift;
    ties = int64_t(cnt[chosen]);
  }
  const uint64_t w = crit == SampleCrit::kCount ? 1 : sample_weight(sample_unkey(prefix), mx);
  const int64_t j = sample_tie_index(crit, above, w, target, ties);
  Selected r;
  r.cut.key = prefix;
  r.cum = above + uint64_t(j + 1) * w;
  int64_t seen = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t k = sample_key(sample_scaled(x[i], T));
    if (k == prefix && sample_in(k, int32_t(i), within) && seen++ == j) {
      r.cut.id = int32_t(i);
      break;
    }
  }
  return r;
}

}  // namespace

int32_t sample_select(const float* x, int64_t n, const SampleRow& p) {
  if (p.temperature <= 0.0f) return argmax(x, n);
  const float T = p.temperature;
  float mx = sample_scaled(x[0], T);
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, sample_scaled(x[i], T));
  SampleCut cut;
  if (p.top_k > 0 && p.top_k < n) {
    cut = select(x, n, T, mx, cut, SampleCrit::kCount, uint64_t(p.top_k)).cut;
  }
  uint64_t z = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float s = sample_scaled(x[i], T);
    if (sample_in(sample_key(s), int32_t(i), cut)) z += sample_weight(s, mx);
  }
  if (p.top_p < 1.0f) {
    uint64_t t = uint64_t(std::ceil(double(p.top_p) * double(z)));
    t = std::min(std::max<uint64_t>(t, 1), z);
    const Selected s = select(x, n, T, mx, cut, SampleCrit::kMassGe, t);
    cut = s.cut;
    z = s.cum;
  }
  uint64_t t = uint64_t(p.u * double(z));
  if (t >= z) t = z - 1;
  return select(x, n, T, mx, cut, SampleCrit::kMassGt, t).cut.id;
}

}  // namespace shrink::core
