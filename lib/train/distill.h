// Distillation building blocks (LibTorch side, used by the trainer for `shrink distill`):
// the KD losses, the hidden-state loss with its learned projections, student initialization
// from a subset of the teacher's layers, sparsity masks that training must keep, and the
// on-disk cache of the teacher's top-k logits.
//
// Loss conventions (all means over token positions; logits are [..., V]):
//   forward KL  T^2 * KL(p_t || p_s), p = softmax(logits / T)   (Hinton et al.)
//   reverse KL  T^2 * KL(p_s || p_t)                             (mode-seeking, MiniLLM-style)
//   top-k KL    T^2 * sum_k p~_t,k (log p~_t,k - log p_s,k): the teacher restricted to its k
//               largest logits and renormalized, against the student's full-vocabulary
//               log-probabilities at those ids. It is >= 0 and 0 only when the student puts
//               exactly the teacher's top-k distribution there and nothing elsewhere.
//   hidden      MSE or (1 - cosine) between proj(student hidden) and teacher hidden, averaged
//               over the mapped pairs.
// Tested in tests/train/test_distill.cpp against hand-computed values.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dataset.h"
#include "core/safetensors.h"
#include "train/model.h"

namespace shrink::train {

torch::Tensor kd_forward_kl(const torch::Tensor& student_logits,
                            const torch::Tensor& teacher_logits, double temperature);
torch::Tensor kd_reverse_kl(const torch::Tensor& student_logits,
                            const torch::Tensor& teacher_logits, double temperature);
/// topk_ids [..., k] int64 and topk_logits [..., k] float: the teacher's largest logits.
torch::Tensor kd_topk_forward_kl(const torch::Tensor& student_logits, const torch::Tensor& topk_ids,
                                 const torch::Tensor& topk_logits, double temperature);
/// Mean squared error over all elements, or mean (1 - cosine similarity) over the last dim.
torch::Tensor hidden_mse(const torch::Tensor& a, const torch::Tensor& b);
torch::Tensor hidden_cosine(const torch::Tensor& a, const torch::Tensor& b);

/// A student that is the teacher's embedding, final norm, head and decoder layers `keep`
/// (strictly increasing). Weights are copied (independent of the teacher).
CausalLM student_from_layers(CausalLM& teacher, const std::vector<int64_t>& keep);

/// Parse "0,2,4" (also ranges "0-3" and "::2" for every other layer) for a model of n layers.
std::vector<int64_t> parse_layer_list(const std::string& spec, int64_t n_layers);

/// Pairs (student hidden index, teacher hidden index) in ForwardOutput::hidden_states
/// numbering (0 = embeddings, L = final normed output). `spec` "s:t,s:t" gives them
/// explicitly; empty means the default: when the student was made from teacher layers `keep`,
/// each kept layer's output maps to the same layer's output in the teacher; otherwise student
/// output i maps to teacher output round(i * Lt / Ls). The final normed outputs always pair.
std::vector<std::pair<int64_t, int64_t>> hidden_layer_map(const std::string& spec,
                                                          int64_t student_layers,
                                                          int64_t teacher_layers,
                                                          const std::vector<int64_t>& keep);

/// Learned linear maps from student to teacher width, one per mapped pair (identity when the
/// widths match, and then there are no parameters). Lives in the distillation checkpoint only.
class HiddenProjectionImpl : public torch::nn::Module {
 public:
  HiddenProjectionImpl(int64_t pairs, int64_t student_width, int64_t teacher_width);
  torch::Tensor forward(int64_t pair, const torch::Tensor& h);
  bool identity() const { return identity_; }

 private:
  bool identity_;
  torch::nn::ModuleList maps{nullptr};
};
TORCH_MODULE(HiddenProjection);

/// Sparsity masks over the student's decoder-layer matrices: a weight that is exactly zero at
/// the start stays exactly zero (gradients are masked before the optimizer step and weights
/// after it, so AdamW's moments and weight decay never revive it).
struct SparsityMasks {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> entries;  // (parameter, 0/1 mask)
  int64_t masked = 0, total = 0;                                 // zeros kept / elements covered
  void mask_grads();
  void mask_weights();
  bool empty() const { return entries.empty(); }
};
/// Masks for every 2-D decoder-layer weight whose fraction of exact zeros is >= min_fraction.
SparsityMasks masks_from_zeros(CausalLM& m, double min_fraction);

/// The teacher's top-k logits for every training window, computed once and reused by later
/// runs with the same teacher, data, window length and k. Layout: cache.json (the key and the
/// shape) and topk.bin with, per window w and position t, k token ids (uint16, or uint32 for
/// vocabularies over 65536) followed by k logits (float16): (2 or 4 + 2) * k bytes per token.
class TeacherCache {
 public:
  /// Open `dir` if its key matches, else build it from the teacher over all `windows` of the
  /// packer's numbering (window w = tokens [w*L, w*L+L+1) of `data`), in batches.
  static TeacherCache open_or_build(const std::string& dir, CausalLM& teacher,
                                    const std::string& teacher_dir, const core::TokenDataset& data,
                                    const std::string& data_key, int64_t seq_len, int64_t k,
                                    bool progress);
  /// ids [B, L, k] int64 and logits [B, L, k] float32 for the given windows.
  std::pair<torch::Tensor, torch::Tensor> lookup(const std::vector<uint64_t>& windows) const;
  int64_t k() const { return k_; }
  bool built_now() const { return built_now_; }
  uint64_t bytes() const { return file_ ? file_->size() : 0; }
  double build_seconds() const { return build_seconds_; }

 private:
  std::shared_ptr<core::MappedFile> file_;
  int64_t k_ = 0, seq_len_ = 0, id_bytes_ = 2;
  uint64_t windows_ = 0;
  bool built_now_ = false;
  double build_seconds_ = 0;
};


}  // namespace shrink::train
