// Verification of a compact model against its reference (the teacher) in the runtime: the
// perplexity of both, top-1 agreement and mean KL(reference || compact) per predicted token over
// the same evaluation windows (core::eval_windows), and both models' speeds from the same
// benchmark. Gates: a maximum relative perplexity increase and a minimum decode speed-up; a
// failed gate is reported (callers exit 3), not an error.
// Tested in tests/runtime/test_verify.cpp and tests/cli/test_rt_cli.sh.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "runtime/api.h"

namespace shrink::runtime {

struct VerifyOptions {
  TokenSource source;            // evaluation data (tokenized with the reference's tokenizer)
  int64_t seq_len = 256;
  double max_ppl_increase = -1;  // e.g. 0.05 = at most +5% perplexity; < 0: no gate
  double min_speedup = -1;       // compact decode tok/s / reference decode tok/s; < 0: no gate
  int64_t bench_prompt_len = 128, bench_gen_len = 32;
  bool bench = true;
  EngineOptions engine;
};

struct VerifyResult {
  double ppl_reference = 0, ppl_compact = 0, ppl_increase = 0;
  double kl = 0, top1_agreement = 0;
  uint64_t tokens_scored = 0;
  BenchResult bench_reference, bench_compact;
  double decode_speedup = 0, prefill_speedup = 0;
  uint64_t bytes_reference = 0, bytes_compact = 0;  // weight bytes read per decode step
  std::string engine_reference, engine_compact;   // Engine::describe(): how each model ran
  bool passed = true;
  std::string verdict;  // "pass", or which gates failed
  nlohmann::json to_json() const;
};

Result<VerifyResult> verify(const std::string& compact_dir, const std::string& reference_dir,
                            const VerifyOptions& opts);

}  // namespace shrink::runtime
