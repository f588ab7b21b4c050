// Sampling by selection instead of sorting: the algorithm the CUDA sampler runs
// (kernels/cuda/sample.cu), with its plain C++ reference (core::sample_select, sampling.cpp).
//
// Why: the reference (core::sample_sorted) sorts the whole row (128k entries for a Llama-3
// vocabulary), which a GPU block cannot do in on-chip memory and which costs ~10 ms on a CPU
// core. The same pick can be found without sorting. The sorted
// order is (value descending, id ascending), so any prefix of it is the set
//   {key > cut.key} u {key == cut.key and id <= cut.id}
// for the (key, id) of its last element, where key is the order-preserving integer form of the
// float. Each of the three steps (top-k by count, top-p by probability mass, then the
// inverse-CDF draw) finds such a cut with a 4-digit radix select over the keys (8 bits per
// pass, histograms of count and mass), then resolves ties at the cut's key by id: all ties
// carry the same weight, so the j-th tie is arithmetic, and a last pass finds its id.
// Masses are fixed-point integers (exp(s - max) scaled by 2^43, rounded down) so that sums do
// not depend on summation order: the GPU's atomics give the same totals as this reference.
// The pick equals core::sample_sorted's for the same u except where u lands within rounding
// (about 1e-13 of the mass) of a boundary between two tokens' cumulative probabilities.
//
// The CPU's pick (core::sample_pick, sampling.cpp) finds the same cuts over the same integer
// masses by value buckets, so every backend and `shrink generate` pick the same token.
// This header holds the arithmetic both sides share (SHRINK_HD = host and device under nvcc).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define SHRINK_HD __host__ __device__ __forceinline__
#else
#define SHRINK_HD inline
#endif

namespace shrink::core {

/// Per-row sampling request as the samplers consume it (the engine fills one per picked row).
struct SampleRow {
  float temperature = 0.0f;  // <= 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off
  float pad_ = 0.0f;
  double u = 0.0;            // the uniform draw in [0, 1) for this row
};
static_assert(sizeof(SampleRow) == 24, "SampleRow is uploaded as bytes");

constexpr double kSampleFixedScale = 8796093022208.0;  // 2^43: room for 2^20 weights <= 1

/// The scaled logit s = x / T as the sampler orders it (IEEE division; -0 becomes +0 so that
/// the integer key orders it as the float comparison does).
SHRINK_HD float sample_scaled(float x, float temperature) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(x, temperature) + 0.0f;
#else
  return x / temperature + 0.0f;
#endif
}

/// Order-preserving key: a < b as floats (no NaN) iff key(a) < key(b) as unsigned.
SHRINK_HD uint32_t sample_key(float s) {
  uint32_t u;
  memcpy(&u, &s, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
SHRINK_HD float sample_unkey(uint32_t k) {
  const uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
  float s;
  memcpy(&s, &u, 4);
  return s;
}

/// Fixed-point weight of a value: floor(exp(s - mx) * 2^43), computed in double.
SHRINK_HD uint64_t sample_weight(float s, float mx) {
  return uint64_t(exp(double(s) - double(mx)) * kSampleFixedScale);
}

/// A cut of the sorted order (see above); the whole row is {0, INT32_MAX}.
struct SampleCut {
  uint32_t key = 0;
  int32_t id = 0x7fffffff;
};
SHRINK_HD bool sample_in(uint32_t key, int32_t id, SampleCut c) {
  return key > c.key || (key == c.key && id <= c.id);
}

/// What a select looks for: the first element (in sorted order) whose cumulative count reaches
/// the target (kCount, weights 1), whose cumulative mass reaches it (kMassGe) or exceeds it
/// (kMassGt).
enum class SampleCrit : int { kCount = 0, kMassGe = 1, kMassGt = 2 };

SHRINK_HD bool sample_crit_met(SampleCrit c, uint64_t cum, uint64_t target) {
  return c == SampleCrit::kMassGt ? cum > target : cum >= target;
}

/// The 0-based index, among `ties` equal-weight (`w`) elements that follow `above`, of the
/// first whose cumulative value meets the criterion; clamped to [0, ties - 1].
SHRINK_HD int64_t sample_tie_index(SampleCrit c, uint64_t above, uint64_t w, uint64_t target,
                                   int64_t ties) {
  if (w == 0) return ties - 1;
  if (target <= above) return 0;
  const uint64_t d = target - above;
  // kMassGt: the smallest j with above + (j+1) w > target; else with >= target.
  const uint64_t j = c == SampleCrit::kMassGt ? d / w : (d + w - 1) / w - 1;
  return j < uint64_t(ties) ? int64_t(j) : ties - 1;
}

/// Pick a token id from n logits with the given row parameters, by selection (see above).
/// The CPU reference of kernels/cuda/sample.cu; tested against core::Sampler.
int32_t sample_select(const float* logits, int64_t n, const SampleRow& p);

}  // namespace shrink::core
