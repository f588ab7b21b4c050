// What shrink-rt does with an engine: perplexity (the definition of `shrink eval`, through
// core::eval_windows), generation (that of `shrink generate`: prefill, then one token at a time,
// core::Sampler, stop at EOS), and the throughput benchmark. Tokens come from core::tokens_load
// (core/tokens.h), the loader `shrink eval` uses too.
// Tested in tests/runtime/test_engine.cpp and tests/cli/test_rt_cli.sh.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/choice_task.h"
#include "core/sampling.h"
#include "core/status.h"
#include "runtime/engine.h"

namespace shrink::runtime {

struct PerplexityResult {
  double perplexity = 0, mean_nll = 0;
  uint64_t tokens = 0, tokens_scored = 0, windows = 0;
  int64_t seq_len = 0;
  double seconds = 0, tokens_per_second = 0;
};
/// exp(mean NLL) over the windows of core::eval_windows(n, seq_len); each window is one
/// sequence (positions 0..len-1, no BOS added), scoring len-1 predictions; NLL summed in
/// double; up to `batch` windows run per forward pass (the engine needs max_batch >= batch and
/// max_seq_len >= seq_len). Log-softmax per row: x_t - max - log(sum exp(x - max)), in double.
/// The logits of one forward stay within `logit_rows` rows (0: logit_rows_per_forward): fewer
/// windows per pass, and a window longer than that is prefilled in chunks through the KV cache.
Result<PerplexityResult> perplexity(Engine& e, const int32_t* tokens, uint64_t n, int64_t seq_len,
                                    int64_t batch,
                                    const std::function<void(uint64_t)>& progress = nullptr,
                                    int64_t logit_rows = 0);

/// Positions per forward pass where every position's logits are read (perplexity, verify):
/// [rows, vocab] float32 within about 64 MiB, at least 16 rows (a 128k vocabulary: 130 rows,
/// where a window of 512 positions would hold 262 MB of logits, and the engine's copy as much).
int64_t logit_rows_per_forward(int64_t vocab);

/// Multiple-choice accuracy (core/choice_task.h), as lm-evaluation-harness scores HellaSwag-style
/// tasks: each choice's log-likelihood given the context (sum of log-softmax over its scored
/// tokens, in double; a choice's own context, `ChoiceItem::given`, conditions only); acc takes the
/// highest, acc_norm the highest per character of the choice (per token for id items). Standard
/// errors are sqrt(p (1 - p) / (n - 1)), as lm-eval reports them.
struct ChoiceResult {
  int64_t items = 0;
  int64_t truncated = 0;  // contexts cut from the left to fit max_seq_len (lm-eval does too)
  double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
  std::vector<int64_t> pred, pred_norm;     // per item
  std::vector<std::vector<double>> loglik;  // per item and choice
  double seconds = 0;
};
/// log(sum_v exp(x[v])) of one row of V logits, in double: the log-softmax normalizer that
/// perplexity, score_choices and verify subtract.
double log_sum_exp(const float* x, int64_t V);
/// Positions an engine needs to score every item unshortened: the longest context + choice.
int64_t choice_task_positions(const std::vector<core::ChoiceItem>& items);
/// Loads a task file for MODEL_DIR: text items are tokenized with `tokenizer` (a tokenizer.json),
/// else MODEL_DIR's tokenizer.json when it has one; id items need neither.
Result<std::vector<core::ChoiceItem>> choice_task_for(const std::string& model_dir,
                                                      const std::string& tokenizer,
                                                      const std::string& task_path,
                                                      int64_t vocab_size);
/// Runs up to max_batch() items at once (one slot each): the contexts in one forward, then each
/// choice in one forward per choice index, truncating every slot back to its context. Errors:
/// kInvalidInput when a choice alone does not fit max_seq_len, or an id is outside the vocabulary.
Result<ChoiceResult> score_choices(Engine& e, const std::vector<core::ChoiceItem>& items,
                                   const std::function<void(uint64_t)>& progress = nullptr);

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  core::SamplingParams sampling;
  uint64_t seed = 0;
  bool stop_at_eos = true;
  std::vector<int64_t> eos;  // any of these ends generation (core::stop_token_ids)
};
struct GenerateResult {
  std::vector<int32_t> ids;  // prompt + new tokens
  int64_t prompt_len = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  // Speculative decoding only: verification rounds, draft tokens proposed and accepted.
  int64_t rounds = 0, drafted = 0, accepted = 0;
};
/// Generate in slot 0 (reset first).
Result<GenerateResult> generate(Engine& e, const std::vector<int32_t>& prompt,
                                const GenerateOptions& opts);
/// Greedy speculative decoding (Leviathan et al. 2023; Chen et al. 2023) in slot 0 of both
/// engines: each round the draft (a distilled or pruned student) proposes up to `k` tokens one
/// at a time, the target scores them all in one forward of k + 1 rows, keeps the longest prefix
/// that equals its own argmax and adds its own next token; both caches drop what was rejected
/// (Engine::truncate). The tokens are the target's greedy tokens, as generate() gives them, up
/// to rounding differences between a multi-row forward and single steps. Greedy only
/// (temperature 0); the two models need the same vocabulary.
Result<GenerateResult> generate_speculative(Engine& target, Engine& draft,
                                            const std::vector<int32_t>& prompt,
                                            const GenerateOptions& opts, int64_t k);

struct BenchOptions {
  int64_t prompt_len = 512;
  int64_t gen_len = 128;
  int batch = 1;
  uint64_t seed = 0;
  /// Untimed runs first: one prefill and this many decode steps (which also fill a GPU
  /// backend's graph and GEMM-plan caches). 0 = none, the timed runs start cold.
  int64_t warmup = 0;
  /// How each next token is picked: greedy (temperature 0, the default) or sampled on the
  /// backend (Engine::forward_sample; one core::Sampler seeded with `seed` draws for all rows).
  core::SamplingParams sampling;
};
struct BenchResult {
  int batch = 1;
  int64_t prompt_len = 0, gen_len = 0;
  double prefill_seconds = 0, prefill_tokens_per_second = 0;
  double ttft_seconds = 0;  // prefill + sampling the first token
  double decode_tokens_per_second = 0;  // batch * steps / decode time
  double latency_p50_ms = 0, latency_p99_ms = 0;  // per decode step (one token per sequence)
  double weight_gb_per_second = 0;  // weight bytes * steps / decode time
  uint64_t weight_bytes = 0;
  double peak_rss_mib = 0;
  /// --tp: the collectives of one decode step (all-reduces of the hidden state, the gather of
  /// the logits), bytes each rank sends in and microseconds spent, per step.
  double tp_allreduce_bytes_per_step = 0, tp_allreduce_us_per_step = 0;
  double tp_allgather_bytes_per_step = 0, tp_allgather_us_per_step = 0;
  /// The backend's event counts after the run (Engine::backend_counters; empty on the CPU).
  std::vector<std::pair<std::string, uint64_t>> backend_counters;
};
/// Prefill `batch` random prompts of prompt_len tokens together, then decode gen_len greedy
/// steps for all of them (argmax on the backend: Engine::forward_argmax). Needs max_batch >=
/// batch, max_seq_len >= prompt_len + gen_len (+ warmup).
Result<BenchResult> bench(Engine& e, const BenchOptions& opts);


/// Named shapes for random-weight speed work: "smollm-135m", "llama-1b". Errors list them.
Result<core::ModelConfig> bench_shape(const std::string& name);

}  // namespace shrink::runtime
