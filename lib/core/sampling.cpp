// Sampler implementation and the three pick algorithms: sorted (the reference), by radix
// selection (the CUDA sampler's algorithm) and bucketed (the CPU's, the same picks as the
// radix selection). See sampling.h and sample_select.h.
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
  return sample_pick(logits, n, next_row(), scratch_);
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

// ---- the CPU pick (sample_pick) ----------------------------------------------------------------

namespace {

constexpr int kPickBuckets = 4096;       // value buckets over the 30 nats that carry weight
constexpr int32_t kPickHeapTopK = 4096;  // top-k up to this: a heap of the k best instead

uint64_t item_ord(float s, int64_t id) {
  return uint64_t(sample_key(s)) << 32 | uint32_t(~uint32_t(id));
}
int32_t item_id(uint64_t ord) { return int32_t(~uint32_t(ord)); }
float item_value(uint64_t ord) { return sample_unkey(uint32_t(ord >> 32)); }
bool item_before(const SampleItem& a, const SampleItem& b) { return a.ord > b.ord; }

// The first item of the sorted range v[lo, hi) whose cumulative mass meets `crit` against
// `target` (the last item if none does); `cum` gets the mass up to and including it.
size_t scan_mass(const std::vector<SampleItem>& v, size_t lo, size_t hi, SampleCrit crit,
                 uint64_t target, uint64_t* cum) {
  uint64_t c = 0;
  for (size_t i = lo; i < hi; ++i) {
    c += v[i].w;
    if (sample_crit_met(crit, c, target) || i + 1 == hi) {
      *cum = c;
      return i;
    }
  }
  *cum = c;
  return hi - 1;
}

// As scan_mass over v[lo, hi) in any order. Each step splits the
// range at its median (nth_element) and keeps the half that holds the answer, so the work is
// linear in hi - lo, and on return v[lo, index) holds exactly the items before the answer in
// sorted order (each discarded upper half precedes it, each discarded lower half follows it).
// Requires the answer to exist in the range (target <= the range's mass for kMassGe, < for
// kMassGt), which the callers' clamps guarantee; else it returns the last item.
size_t select_mass(std::vector<SampleItem>& v, size_t lo, size_t hi, SampleCrit crit,
                   uint64_t target, uint64_t* cum) {
  uint64_t above = 0;
  while (hi - lo > 32) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(v.begin() + long(lo), v.begin() + long(mid), v.begin() + long(hi),
                     item_before);
    uint64_t m = 0;
    for (size_t i = lo; i < mid; ++i) m += v[i].w;
    if (sample_crit_met(crit, above + m, target)) {
      hi = mid;
    } else {
      above += m;
      lo = mid;
    }
  }
  std::sort(v.begin() + long(lo), v.begin() + long(hi), item_before);
  const size_t i = scan_mass(v, lo, hi, crit, target - above, cum);
  *cum += above;
  return i;
}

// Small top-k: the k best items by a min-heap over one pass of keys (no exp), then their
// weights, sorted; top-p and the draw are prefix scans.
int32_t pick_top_k(const float* x, int64_t n, float T, float mx, const SampleRow& p,
                   std::vector<SampleItem>& v) {
  const size_t k = size_t(p.top_k);
  v.clear();
  for (int64_t i = 0; i < int64_t(k); ++i) v.push_back({item_ord(sample_scaled(x[i], T), i), 0});
  std::make_heap(v.begin(), v.end(), item_before);  // front = the worst kept
  for (int64_t i = int64_t(k); i < n; ++i) {
    const uint64_t o = item_ord(sample_scaled(x[i], T), i);
    if (o <= v.front().ord) continue;
    std::pop_heap(v.begin(), v.end(), item_before);
    v.back() = {o, 0};
    std::push_heap(v.begin(), v.end(), item_before);
  }
  std::sort(v.begin(), v.end(), item_before);
  uint64_t z = 0;
  for (SampleItem& it : v) z += it.w = sample_weight(item_value(it.ord), mx);
  size_t end = v.size();
  if (p.top_p < 1.0f) {
    uint64_t t = uint64_t(std::ceil(double(p.top_p) * double(z)));
    t = std::min(std::max<uint64_t>(t, 1), z);
    end = scan_mass(v, 0, end, SampleCrit::kMassGe, t, &z) + 1;
  }
  uint64_t t = uint64_t(p.u * double(z));
  if (t >= z) t = z - 1;
  uint64_t cum = 0;
  return item_id(v[scan_mass(v, 0, end, SampleCrit::kMassGt, t, &cum)].ord);
}

}  // namespace

int32_t sample_pick(const float* x, int64_t n, const SampleRow& p, SampleScratch& sc) {
  if (p.temperature <= 0.0f) return argmax(x, n);
  const float T = p.temperature;
  // Rounded division by T > 0 is monotone, so the largest scaled value is the scaled maximum.
  // Eight running maxima keep the pass from waiting on one max chain.
  float m8[8];
  for (int j = 0; j < 8; ++j) m8[j] = x[0];
  int64_t i0 = 0;
  for (; i0 + 8 <= n; i0 += 8) {
    for (int j = 0; j < 8; ++j) m8[j] = x[i0 + j] > m8[j] ? x[i0 + j] : m8[j];
  }
  for (; i0 < n; ++i0) m8[0] = x[i0] > m8[0] ? x[i0] : m8[0];
  for (int j = 1; j < 8; ++j) m8[0] = m8[j] > m8[0] ? m8[j] : m8[0];
  const float mx = sample_scaled(m8[0], T);
  const bool cut_k = p.top_k > 0 && p.top_k < n;
  if (cut_k && p.top_k <= kPickHeapTopK) return pick_top_k(x, n, T, mx, p, sc.v);

  // Bucket every item that carries weight by its distance below the maximum. The bucket index
  // never decreases as the value decreases (and ties share one), so buckets partition the
  // sorted order into runs: every select finds its bucket from the bucket totals, then
  // resolves inside that one bucket. Items of weight 0 (more than ~29.8 nats down) only count,
  // in the overflow bucket kPickBuckets: no mass criterion can stop at them.
  constexpr int B = kPickBuckets;
  const double scale = double(B) / 30.0;
  sc.count.assign(B + 1, 0);
  sc.mass.assign(B, 0);
  sc.tmp.resize(size_t(n));
  sc.bucket.resize(size_t(n));
  size_t c = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float s = sample_scaled(x[i], T);
    const double d = double(mx) - double(s);
    const uint64_t w = d < 31.0 ? sample_weight(s, mx) : 0;
    if (w == 0) {
      sc.count[B]++;
      continue;
    }
    const int b = std::min(B - 1, int(d * scale));
    sc.count[size_t(b)]++;
    sc.mass[size_t(b)] += w;
    sc.tmp[c].ord = item_ord(s, i);  // field by field: no 16-byte reload of two 8-byte stores
    sc.tmp[c].w = w;
    sc.bucket[c++] = uint16_t(b);
  }
  // Group the items by bucket (a counting sort): bucket b is v[off[b], off[b + 1]).
  std::vector<uint32_t>& off = sc.off;
  off.assign(B + 1, 0);
  for (int b = 0; b < B; ++b) off[size_t(b) + 1] = off[size_t(b)] + sc.count[size_t(b)];
  sc.v.resize(c);
  {
    std::vector<uint32_t>& at = sc.at;
    at.assign(off.begin(), off.end() - 1);
    for (size_t j = 0; j < c; ++j) sc.v[at[sc.bucket[j]]++] = sc.tmp[j];
  }
  std::vector<SampleItem>& v = sc.v;
  // The kept set is always a prefix of the sorted order: buckets [0, nb), the last one only up
  // to v index `end` (its mass in mass[nb - 1]).
  int nb = B;
  while (nb > 0 && sc.count[size_t(nb) - 1] == 0) --nb;  // nb >= 1: the maximum weighs 2^43
  size_t end = v.size();
  if (cut_k) {
    // Top-k by count, zero-weight items included (they sit after every bucketed item).
    uint64_t above = 0;
    for (int b = 0; b < nb; ++b) {
      if (above + sc.count[size_t(b)] >= uint64_t(p.top_k)) {
        const size_t r = size_t(uint64_t(p.top_k) - above);
        auto lo = v.begin() + off[size_t(b)];
        std::nth_element(lo, lo + long(r) - 1, v.begin() + off[size_t(b) + 1], item_before);
        end = off[size_t(b)] + r;
        nb = b + 1;
        sc.mass[size_t(b)] = 0;
        for (size_t i = off[size_t(b)]; i < end; ++i) sc.mass[size_t(b)] += v[i].w;
        break;
      }
      above += sc.count[size_t(b)];
    }
  }
  // The first kept item (sorted order) whose cumulative mass meets crit against t; returns its
  // v index, and leaves its bucket and the mass before and within it.
  struct Hit {
    size_t i;
    int b;
    uint64_t above, local;
  };
  auto select = [&](SampleCrit crit, uint64_t t) {
    Hit h{0, 0, 0, 0};
    while (h.b < nb - 1 && !sample_crit_met(crit, h.above + sc.mass[size_t(h.b)], t)) {
      h.above += sc.mass[size_t(h.b)];
      ++h.b;
    }
    const size_t lo = off[size_t(h.b)], hi = std::min<size_t>(off[size_t(h.b) + 1], end);
    h.i = select_mass(v, lo, hi, crit, t - h.above, &h.local);
    return h;
  };
  uint64_t z = 0;
  for (int b = 0; b < nb; ++b) z += sc.mass[size_t(b)];
  if (p.top_p < 1.0f) {
    uint64_t t = uint64_t(std::ceil(double(p.top_p) * double(z)));
    t = std::min(std::max<uint64_t>(t, 1), z);
    const Hit h = select(SampleCrit::kMassGe, t);
    end = h.i + 1;  // select_mass left the items before it (sorted order) at [off[b], i)
    nb = h.b + 1;
    sc.mass[size_t(h.b)] = h.local;
    z = h.above + h.local;
  }
  uint64_t t = uint64_t(p.u * double(z));
  if (t >= z) t = z - 1;
  return item_id(v[select(SampleCrit::kMassGt, t).i].ord);
}

void logits_adjust(float* x, int64_t n, const LogitAdjust& a,
                   const std::unordered_map<int32_t, int32_t>& counts) {
  if (a.presence != 0.0f || a.frequency != 0.0f) {
    for (const auto& [id, c] : counts) {
      if (id >= 0 && id < n && c > 0) x[id] -= a.frequency * float(c) + a.presence;
    }
  }
  for (const auto& [id, b] : a.bias) {
    if (id >= 0 && id < n) x[id] += b;
  }
}

}  // namespace shrink::core
