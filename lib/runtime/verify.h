// Verification of a compact model against its reference (the teacher) in the runtime, one model
// loaded at a time (the compact model's logits are kept for the reference's pass, spilled to a
// temporary file beyond a budget), so that it needs the memory of the larger model only: the
// perplexity of both, top-1 agreement and mean KL(reference || compact) per predicted token over
// the same evaluation windows (core::eval_windows), and both models' speeds from the same
// benchmark. Beyond the means, the distribution over scored tokens as llama.cpp's
// `perplexity --kl-divergence` gives it: KL percentiles and maximum, and delta-p (the compact
// model's probability of the actual next token minus the reference's) percentiles and RMS, plus
// standard errors and a 95% interval for the perplexity ratio (tokens taken as independent, as
// llama.cpp does), so that a CI gate can tell a real change from noise.
// With a multiple-choice task (core/choice_task.h), both models' accuracy on it, how often they
// pick the same choice, and the paired standard error of the accuracy drop.
// Gates: maximum relative perplexity increase, maximum mean KL, minimum top-1 agreement, maximum
// task accuracy drop and minimum decode speed-up; a failed gate is reported (callers exit 3),
// not an error.
// Tested in tests/runtime/test_verify.cpp and tests/cli/test_rt_cli.sh.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "core/tokens.h"
#include "runtime/api.h"

namespace shrink::runtime {

struct VerifyOptions {
  core::TokenSource source;      // evaluation data (tokenized with the reference's tokenizer)
  int64_t seq_len = 256;
  double max_ppl_increase = -1;  // e.g. 0.05 = at most +5% perplexity; < 0: no gate
  double min_speedup = -1;       // compact decode tok/s / reference decode tok/s; < 0: no gate
  double max_kl = -1;            // mean KL(reference || compact) per token; < 0: no gate
  double min_top1 = -1;          // top-1 agreement in [0, 1]; < 0: no gate
  std::string task;              // multiple-choice task (core/choice_task.h); "" = none
  double max_acc_drop = -1;      // task acc_norm, reference minus compact; < 0: no gate
  int64_t bench_prompt_len = 128, bench_gen_len = 32;  // each model: the median of >= 3 runs and >= 1 s
  bool bench = true;
  // Budget for the compact model's logits, kept for the reference's pass (scored positions x
  // vocab x 4 bytes); beyond it they spill to a temporary file in $TMPDIR (else /tmp).
  std::string max_memory = "512M";
  EngineOptions engine;
};

struct VerifyResult {
  double ppl_reference = 0, ppl_compact = 0, ppl_increase = 0;
  double kl = 0, top1_agreement = 0;
  uint64_t tokens_scored = 0;
  // Standard errors of the means; the 95% interval of ppl_increase.
  double kl_stderr = 0, top1_stderr = 0, ln_ppl_ratio = 0, ln_ppl_ratio_stderr = 0;
  double ppl_increase_lo = 0, ppl_increase_hi = 0;
  // Percentiles over the scored tokens (nearest rank).
  struct Dist {
    double min = 0, p01 = 0, p05 = 0, p50 = 0, p90 = 0, p95 = 0, p99 = 0, p999 = 0, max = 0;
  };
  Dist kl_dist, delta_p;      // KL per token; p_compact(next) - p_reference(next)
  double delta_p_mean = 0, delta_p_rms = 0;
  // Multiple-choice accuracy of both models on opts.task (items scored the same way), when given.
  struct Task {
    std::string path;
    int64_t items = 0;
    double acc_reference = 0, acc_compact = 0, acc_norm_reference = 0, acc_norm_compact = 0;
    double acc_norm_stderr_reference = 0, acc_norm_stderr_compact = 0;
    double agreement = 0;           // items where both pick the same choice (acc_norm's pick)
    double acc_norm_drop = 0;       // reference minus compact
    double acc_norm_drop_stderr = 0;  // of the paired per-item differences
  };
  std::optional<Task> task;
  BenchResult bench_reference, bench_compact;
  double decode_speedup = 0, prefill_speedup = 0;
  uint64_t bytes_reference = 0, bytes_compact = 0;  // weight bytes read per decode step
  uint64_t logits_bytes = 0;  // the compact model's stored logits
  bool logits_spilled = false;  // ... in a temporary file (beyond VerifyOptions::max_memory)
  std::string engine_reference, engine_compact;   // Engine::describe(): how each model ran
  bool passed = true;
  std::string verdict;  // "pass", or which gates failed
  nlohmann::json to_json() const;
};

/// Nearest-rank percentiles of `v` (sorted in place).
VerifyResult::Dist distribution(std::vector<double>& v);

Result<VerifyResult> verify(const std::string& compact_dir, const std::string& reference_dir,
                            const VerifyOptions& opts);

}  // namespace shrink::runtime
