// The pruning algorithms on single matrices and models (LibTorch side; see prune.h for the
// command). Masks are bool tensors shaped like the weight: true = keep.
//
//   magnitude   score |W|; per matrix the exact count round(s * numel) of the lowest goes
//   wanda       score |W_ij| * ||X_j||_2, compared within each output row (Sun et al. 2023):
//               exactly round(s * in) per row
//   N:M         in every group of M consecutive inputs of a row, keep the N best scores
//   sparsegpt   Frantar & Alistarh 2023: with H = X^T X (+ damp * mean diag * I) and the upper
//               Cholesky factor U of H^-1, columns are pruned left to right in blocks; the mask
//               of a block takes the lowest w^2 / U_jj^2 (exactly round(s * block numel)), and
//               each pruned weight's error is spread over the not-yet-visited columns
//               (OBS update), so the layer output changes least.
// Tested in tests/train/test_prune.cpp.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "train/model.h"
#include "train/obs.h"
#include "train/prune_common.h"

namespace shrink::train {

/// Keep-mask from scores [out, in]: per row the lowest round(s * in) are dropped, or N:M.
torch::Tensor mask_rows(const torch::Tensor& scores, double sparsity, NMPattern nm);
/// Keep-mask dropping exactly round(s * numel) lowest scores of the whole matrix, or N:M.
torch::Tensor mask_matrix(const torch::Tensor& scores, double sparsity, NMPattern nm);

torch::Tensor mask_magnitude(const torch::Tensor& w, double sparsity, NMPattern nm);
/// col_sq_sum [in]: sum over calibration tokens of x_j^2 (so ||X_j||_2 = sqrt of it).
torch::Tensor mask_wanda(const torch::Tensor& w, const torch::Tensor& col_sq_sum, double sparsity,
                         NMPattern nm);
/// Prune w [out, in] in place with SparseGPT given H [in, in] (float32 sum of x x^T over the
/// calibration tokens). Returns the keep-mask; pruned entries are exactly zero.
torch::Tensor sparsegpt_prune_(torch::Tensor& w, torch::Tensor H, double sparsity, NMPattern nm,
                               int64_t block_size, double damp);

/// Structured pruning plan: which heads' KV groups, MLP channels, hidden channels and layers
/// survive (sorted indices), per layer where it differs between layers.
struct StructuredPlan {
  std::vector<int64_t> layers;                     // kept layer indices
  std::vector<std::vector<int64_t>> kv_groups;     // per original layer
  std::vector<std::vector<int64_t>> mlp_channels;  // per original layer
  std::vector<int64_t> hidden;                     // kept hidden channels (all layers)
};
/// One tensor of the smaller model: tensor `from` of the original with the rows and columns it
/// keeps (empty: all; a 1-D tensor has rows only), times `scale`.
struct TensorSlice {
  std::string from, to;
  std::vector<int64_t> rows, cols;
  double scale = 1.0;
};
/// The smaller model's config and how each of its tensors comes from the original. Norm weights
/// are scaled by sqrt(H/H') and rms_norm_eps by H/H' (exact when the removed hidden channels are
/// zero).
std::pair<core::ModelConfig, std::vector<TensorSlice>> structured_slices(const core::ModelConfig& c,
                                                                         const StructuredPlan& plan);
/// Build the smaller model (structured_slices applied to a loaded model).
CausalLM structured_apply(CausalLM& m, const StructuredPlan& plan);
/// Parameters of the model that a plan with these sizes would make (for budget search).
int64_t structured_param_count(const core::ModelConfig& c, int64_t layers, int64_t kv_groups,
                               int64_t mlp, int64_t hidden);

}  // namespace shrink::train
