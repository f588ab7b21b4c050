// `shrink prune`: unstructured and N:M sparsity (magnitude, Wanda, SparseGPT) and structured
// Minitron-style pruning (attention heads by whole GQA groups, MLP channels, hidden channels,
// whole layers) that yields a physically smaller dense model with a standard HF config.
//
// Why this way: calibration streams layer by layer. The calibration sequences' hidden states
// enter layer i, its linear inputs are observed through the model's LinearTap (Wanda column
// norms, SparseGPT Hessians), the layer is pruned, and the pruned layer's outputs feed layer
// i+1, so memory stays near one layer's activations and later layers see the errors of the
// earlier ones (as SparseGPT and Wanda do). Structured importance is activation-based, as in
// Minitron: mean |activation| per channel, per head (L2 of its context vector) and per hidden
// channel (the RMSNorm outputs). Removing hidden channels rescales every RMSNorm weight by
// sqrt(H/H') and its epsilon by H/H', so that when the removed channels carry zeros the
// pruned model computes exactly what the original did (tested), and otherwise keeps the
// normalized activations at their scale. The public API has no LibTorch types.
// Tested in tests/train/test_prune.cpp.
//
// Three paths: magnitude pruning (per matrix, N:M, or --scope global with one threshold found
// in two counting passes) is model-free (prune_model_free.cpp, tensor by tensor); Wanda,
// SparseGPT and structured pruning stream (only decoder layer i in memory, written once pruned);
// --depth-metric ppl and --load-model build the whole model. The streamed and
// model-free outputs equal the whole-model path's byte for byte (up to ties in bf16 magnitudes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fs.h"

namespace shrink::train {

struct PruneOptions {
  std::string model;  // input model directory
  std::string out;
  std::string method = "magnitude";  // magnitude | wanda | sparsegpt | structured
  // Unstructured / N:M.
  double sparsity = 0.5;
  std::string pattern;            // "2:4", "4:8" (keep N of every M along the input dim)
  std::string scope = "layer";    // magnitude: per-matrix ("layer") or one global threshold
  std::string targets = R"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)";  // module regex
  std::string ignore;             // module regex excluded from targets
  std::string sparsity_map;       // "regex=0.6,regex=0.3": per module type (first match wins)
  int64_t block_size = 128;       // SparseGPT column block
  double damp = 0.01;             // SparseGPT dampening, a fraction of mean(diag(H))
  // Structured: fractions to KEEP (1 = untouched), or a total parameter budget.
  double keep_heads = 1.0, keep_mlp = 1.0, keep_hidden = 1.0, keep_layers = 1.0;
  double target_params = 0;       // 0 = off; else keep this fraction of the parameters
  std::string depth_metric = "bi";  // bi (block influence) | ppl (perplexity drop)
  int64_t channel_multiple = 8;   // MLP/hidden widths are rounded to a multiple of this
  // Calibration and evaluation data.
  std::string data;
  std::string tokenizer;
  int64_t calib_samples = 64;
  int64_t calib_len = 256;
  uint64_t eval_tokens = 65536;   // validation tokens for the before/after perplexity (0: skip)
  int64_t eval_seq_len = 256;
  uint64_t seed = 0;
  bool progress = false;
  // Magnitude pruning per matrix (or N:M) needs no model: it runs tensor by tensor from the
  // memory-mapped input on `threads` threads (the model-free path). load_model forces the
  // LibTorch path.
  bool load_model = false;
  int threads = 1;
  // Budget for the calibration states of the layer-by-layer path (see QuantizeOptions).
  std::string max_memory = core::kDefaultStatesBudget;
};

struct PruneResult {
  nlohmann::json report;  // also written to <out>/prune.json
};

/// Prune opts.model into opts.out (atomically) and write <out>/prune.json. Throws shrink::Error
/// (kInvalidInput, naming the option) on bad options before any work.
PruneResult prune_run(const PruneOptions& opts);

/// Validate the options only (what prune_run checks first).
void prune_validate(const PruneOptions& opts);

/// The cubic sparsity schedule of Zhu & Gupta (2017): s_i at step `start`, rising to s_f at
/// `end`, s(t) = s_f + (s_i - s_f) * (1 - (t - start) / (end - start))^3, constant outside.
double sparsity_at(double s_initial, double s_final, int64_t start, int64_t end, int64_t step);

}  // namespace shrink::train
