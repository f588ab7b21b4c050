// What the two paths of `shrink prune` share: the LibTorch path (prune.cpp: Wanda, SparseGPT,
// structured, magnitude with one global threshold) and the model-free path
// (prune_model_free.cpp: magnitude per matrix or N:M, tensor by tensor from the memory-mapped
// input). No LibTorch in this header.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "train/prune.h"

namespace shrink::train {

struct NMPattern {
  int64_t n = 0, m = 0;  // keep n of every m; m == 0: unstructured
  bool on() const { return m > 0; }
};
/// Parse "2:4"; empty gives an off pattern. Throws kInvalidInput naming the problem.
NMPattern nm_parse(const std::string& s);

/// What unstructured pruning removes: the matrices of the modules that --targets matches and
/// --ignore does not, each at its --sparsity-map sparsity (else --sparsity), in the N:M --pattern
/// when one is given.
struct PruneTargets {
  explicit PruneTargets(const PruneOptions& o);
  bool has(const std::string& mod) const {
    return std::regex_match(mod, targets) && !(has_ignore && std::regex_match(mod, ignore));
  }
  double sparsity_of(const std::string& mod) const {
    for (auto& [re, s] : map) {
      if (std::regex_search(mod, re)) return s;
    }
    return sparsity;
  }
  NMPattern nm;
  double sparsity;
  std::regex targets;
  bool has_ignore;
  std::regex ignore;
  std::vector<std::pair<std::regex, double>> map;
};

/// round(s * n), clamped to [0, n]: how many of n weights sparsity s removes.
int64_t prune_count(double s, int64_t n);

/// Magnitude pruning of one float32 matrix [rows, cols] in place: the exactly prune_count(s,
/// rows * cols) smallest |w| of the whole matrix set to zero, or with an N:M pattern the M - N
/// smallest of every M consecutive inputs of a row. Equal magnitudes go in index order (the
/// lowest index first), so the result is deterministic. A pruned weight becomes w * 0 (-0 for a
/// negative one, as the LibTorch path's mask multiply gives). A non-finite weight fails
/// (kInvalidInput, naming its row and column).
Status magnitude_prune_matrix(float* w, int64_t rows, int64_t cols, double sparsity, NMPattern nm);

/// One threshold over many matrices (--scope global): every |w| < t goes, and of the weights
/// with |w| == t the first `ties` in index order.
struct MagnitudeCut {
  float t = 0;
  int64_t ties = 0;
};
/// Apply a cut to n float32 weights in place (a pruned weight becomes w * 0).
void magnitude_cut_apply(float* w, int64_t n, MagnitudeCut cut);

/// What the writers of a pruned checkpoint count: zeros per module and nonzeros overall, as the
/// LibTorch path's report counts them on its float32 parameters.
struct PruneCounts {
  std::mutex mu;
  std::map<std::string, int64_t> zeros;  // per module
  int64_t nonzero = 0;
  uint64_t read = 0;
};

/// Nonzero values among n floats of dtype dt (a float is zero when every bit but the sign is).
int64_t float_nonzeros(const uint8_t* data, core::DType dt, int64_t n);

/// Finish a streamed pruning: the writer's shards, prune.json's account (parameters, bytes, the
/// sparsity of every 2-D module in `reported` from `counts`, or from the input for those not
/// counted, nonzeros, bytes read and written), config.json, tokenizer and provenance, the
/// evaluation if asked; then commit `dir`.
PruneResult prune_output_finish(const PruneOptions& o, const core::ModelConfig& cfg,
                                const core::Checkpoint& ck, core::CheckpointWriter& w,
                                core::AtomicDir& dir, const PruneCounts& counts,
                                const std::vector<std::string>& reported, nlohmann::json report,
                                std::chrono::steady_clock::time_point t0);

/// True when the options need no calibration and no model: magnitude pruning per matrix (or N:M),
/// and --load-model not given.
bool prune_is_model_free(const PruneOptions& o);
/// The end of a streamed prune: perplexity before and after (with --eval-tokens), peak RSS and
/// time into the report, prune.json written, the output directory committed.
PruneResult prune_report_commit(const PruneOptions& o, core::AtomicDir& dir, nlohmann::json report,
                                std::chrono::steady_clock::time_point t0);
/// The tokenizer.json a pruned model carries: --tokenizer, else the model's own (empty: none).
std::string prune_tokenizer(const PruneOptions& o);
/// The model-free path (prune_model_free.cpp).
PruneResult prune_model_free(const PruneOptions& o);

/// In prune.cpp (LibTorch): perplexity on o.eval_tokens validation tokens of the input model and
/// of the pruned one in `pruned_dir`, into `report` (as prune_run reports them).
void prune_eval_dirs(const PruneOptions& o, const std::string& pruned_dir, nlohmann::json& report);

}  // namespace shrink::train
