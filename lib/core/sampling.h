// Token sampling from a row of logits: greedy, temperature, top-k and top-p (nucleus).
//
// Why in core: `shrink generate` (LibTorch) and `shrink-rt generate` (runtime) must pick the
// same token from the same logits with the same seed, so the sampler is one plain-C++ function
// with its own RNG (a std::mt19937_64 seeded by the caller and drawn explicitly, never the
// global or library RNG). Tested in tests/core/test_sampling.cpp.
#pragma once

#include <cstdint>
#include <random>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/sample_select.h"

namespace shrink::core {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax, lowest id on ties)
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off
};

/// One candidate of the CPU pick: `ord` orders like the sorted reference (larger = earlier:
/// key << 32 | ~id), `w` its fixed-point weight (sample_weight).
struct SampleItem {
  uint64_t ord;
  uint64_t w;
};

/// sample_pick's buffers, reused between calls (a row's worth of items at most).
struct SampleScratch {
  std::vector<SampleItem> v, tmp;
  std::vector<uint16_t> bucket;
  std::vector<uint32_t> count, off, at;
  std::vector<uint64_t> mass;
};

class Sampler {
 public:
  Sampler(SamplingParams p, uint64_t seed) : p_(p), rng_(seed) {}
  /// Pick a token id from n logits: argmax when greedy, else sample_pick with u = draw().
  int32_t sample(const float* logits, int64_t n);
  /// The next uniform draw in [0, 1) (53 random bits): one per sampled (non-greedy) token.
  double draw();
  /// The row a backend samples with: these parameters and, unless greedy, u = draw(). Drawing
  /// here before the forward and sampling after it consume the RNG identically.
  SampleRow next_row();
  const SamplingParams& params() const { return p_; }

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  SampleScratch scratch_;
};

/// The reference pick for one row: sort (value descending, id ascending), keep top-k, softmax
/// in double, keep the smallest prefix reaching top-p, inverse-CDF draw with p.u. Greedy rows
/// (temperature <= 0) take argmax. `scratch` is reused between calls.
int32_t sample_sorted(const float* logits, int64_t n, const SampleRow& p,
                      std::vector<std::pair<float, int32_t>>& scratch);

/// The CPU pick: exactly core::sample_select's token (the same cuts over the same integer
/// masses, hence the CUDA sampler's token), in about one pass with one exp per item. Items
/// that carry weight are counted into 4,096 value buckets below the maximum (ordered like the
/// sorted order), so each cut (top-k, top-p, the draw) finds its bucket from the totals and
/// resolves inside it. Top-k up to 4,096 keeps a heap of the k best instead and takes exp on
/// those alone. `scratch` is reused between calls.
int32_t sample_pick(const float* logits, int64_t n, const SampleRow& p, SampleScratch& scratch);

/// OpenAI's logit adjustments of one request (presence_penalty, frequency_penalty, logit_bias):
/// x[j] -= frequency * c[j] + presence * (c[j] > 0) over the counts c of the tokens generated so
/// far (the output's, as vLLM counts them; the prompt's do not count), then x[j] += bias[j].
struct LogitAdjust {
  float presence = 0.0f, frequency = 0.0f;
  std::vector<std::pair<int32_t, float>> bias;  // token id, value added to its logit
  bool on() const { return presence != 0.0f || frequency != 0.0f || !bias.empty(); }
};

/// Apply `a` to the n logits x in place; `counts` maps each generated token id to its count.
void logits_adjust(float* x, int64_t n, const LogitAdjust& a,
                   const std::unordered_map<int32_t, int32_t>& counts);

/// Index of the largest value (lowest index on ties).
int32_t argmax(const float* x, int64_t n);

}  // namespace shrink::core
