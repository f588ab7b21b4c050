// What the two paths of `shrink prune` share: the LibTorch path (prune.cpp: Wanda, SparseGPT,
// structured, magnitude with one global threshold) and the model-free path
// (prune_model_free.cpp: magnitude per matrix or N:M, tensor by tensor from the memory-mapped
// input). No LibTorch in this header.
#pragma once

#include <cstdint>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

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

/// True when the options need no calibration and no model: magnitude pruning per matrix (or N:M),
/// and --load-model not given.
bool prune_is_model_free(const PruneOptions& o);
/// The model-free path (prune_model_free.cpp).
PruneResult prune_model_free(const PruneOptions& o);

/// In prune.cpp (LibTorch): perplexity on o.eval_tokens validation tokens of the input model and
/// of the pruned one in `pruned_dir`, into `report` (as prune_run reports them).
void prune_eval_dirs(const PruneOptions& o, const std::string& pruned_dir, nlohmann::json& report);

}  // namespace shrink::train
