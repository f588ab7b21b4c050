// Evaluation without the whole model: a model directory read one decoder layer at a time
// (LayerStream), every evaluation window passed through layer i before layer i + 1 is read, and
// the logits taken over the vocabulary a block of lm_head rows at a time, so that neither the
// model in float32 nor the [tokens, vocab] logits are ever held whole. `shrink eval` and the
// accuracy reports of quantize and prune run this way; the whole-model path (nll_over_windows
// on a loaded CausalLM) stays as the reference, and tests compare the two.
//
// Memory: one decoder layer in float32, the windows' hidden states (tokens x hidden, float32; in
// memory up to --max-memory, else in an unlinked temporary file whose pages leave resident
// memory once used, core::ScratchBuffer), one block of lm_head rows (about 32 MiB) and its
// logits for one batch of windows.
// Arithmetic: each layer runs on the same batches of windows as the whole-model path, so the
// hidden states are those of CausalLMImpl::forward; the log-sum-exp over the vocabulary is
// combined block by block in float64 instead of one float32 log_softmax, so NLL and KL agree with
// the whole-model path to float rounding (tests/train/test_streamed.cpp: relative 1e-5).
// This header includes LibTorch: only lib/train and its tests may include it.
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "train/model.h"

namespace shrink::train {

struct FakeQuantTap;

/// A model directory (float, or compressed-tensors int8 / 4-bit, which model_load would
/// dequantize) read layer by layer from its memory-mapped checkpoint.
class LayerStream {
 public:
  /// Validates config and checkpoint (core::checkpoint_check); throws shrink::Error.
  explicit LayerStream(const std::string& dir);
  const core::ModelConfig& config() const { return cfg_; }
  /// Bytes of tensor data in the checkpoint (what a full pass reads).
  uint64_t bytes() const { return ck_.total_bytes(); }
  /// Decoder layer i in float32 (dequantized, with the fake-quant activations of a W8A8
  /// checkpoint installed), in eval mode.
  DecoderLayer layer(int64_t i) const;
  /// The embedding of ids [N, T] into out (contiguous float32 [N, T, H]).
  void embed(const torch::Tensor& ids, torch::Tensor out) const;
  /// The final RMSNorm of h.
  torch::Tensor final_norm(const torch::Tensor& h) const;
  /// Rows [r0, r0 + n) of the lm_head (the embedding when tied), float32 [n, H].
  torch::Tensor head_rows(int64_t r0, int64_t n) const;

 private:
  void param_load(const std::string& name, torch::Tensor& dst) const;
  core::ModelConfig cfg_;
  core::Checkpoint ck_;
  std::optional<core::QuantScheme> scheme_;
  std::shared_ptr<FakeQuantTap> tap_;
  mutable RMSNorm norm_{nullptr};
  std::string head_name_;
};

/// Per prediction, what the logits over the vocabulary give when they come a block of lm_head
/// rows at a time: the running log-sum-exp (max + log sum, combined in float64), the target's
/// logit and the argmax (the lowest index among equal maxima, as argmax).
struct RowStats {
  explicit RowStats(uint64_t n);
  /// Logits [R, nv] of predictions r0 .. r0 + R - 1 over vocabulary rows [v0, v0 + nv), with the
  /// predictions' target ids [R] (int64; targets outside the block are left as they are).
  void add(uint64_t r0, const torch::Tensor& logits, int64_t v0, const torch::Tensor& targets);
  double lse(uint64_t r) const { return max[r] + std::log(sum[r]); }
  std::vector<double> max, sum, target;
  std::vector<float> best;
  std::vector<int64_t> arg;
};

/// The embedding of calibration ids [N, T] into `states` (float32 [N, T, H] at the buffer's
/// start), returned as that tensor: a sequence at a time, and a spilled buffer's pages leave
/// resident memory as they are written (they stay in the file), so that 128 x 2048 tokens of a
/// 1B model (2 GiB) are never resident at once.
torch::Tensor states_embed(const core::ModelConfig& c, const core::Checkpoint& ck,
                           const torch::Tensor& ids, core::ScratchBuffer& states);

/// lm_head rows per block: `requested` when > 0, else as many as keep both the block's float32
/// rows and its logits for `rows` predictions within 32 MiB (at least 64). Larger blocks are
/// above the allocator's 64 MiB heap threshold (tools/cli_main.h): each would be a fresh mapping,
/// faulted in page by page (eval of the default teacher spent two thirds of its time so).
int64_t head_block_rows(int64_t hidden, int64_t rows, int64_t requested = 0);

struct StreamedEvalOptions {
  int64_t seq_len = 512;  // window length (core::eval_windows)
  int64_t batch = 8;      // windows per forward, as nll_over_windows batches them
  std::string max_memory = core::kDefaultStatesBudget;  // budget of the hidden states; beyond it they spill
  std::string spill_dir;          // where a spill file goes (empty: $TMPDIR, else /tmp)
  int64_t head_block = 0;  // lm_head rows per block (0: about 32 MiB of them)
  /// Called after each layer with (layers done, layers in all).
  std::function<void(int64_t, int64_t)> progress;
};

struct StreamedEval {
  double nll_sum = 0;  // of the model, nats over every prediction
  uint64_t scored = 0;
  // With a reference (compare_streamed):
  double ref_nll_sum = 0;
  double kl_sum = 0;      // sum over predictions of KL(reference || model)
  uint64_t top1_same = 0;  // predictions where both argmaxes agree
  uint64_t states_bytes = 0;
  bool states_spilled = false;
  uint64_t bytes_read = 0;  // of the checkpoints' tensor data
};

/// NLL of the model over the windows of tokens (what nll_over_windows gives), layer by layer.
StreamedEval nll_streamed(const std::string& model_dir, const int32_t* tokens, uint64_t n,
                          const StreamedEvalOptions& o);

/// The model against a reference of the same architecture and vocabulary: both NLLs,
/// KL(reference || model) and top-1 agreement per prediction (what quantize's accuracy report
/// measured on two loaded models), with the two models' layers streamed side by side.
StreamedEval compare_streamed(const std::string& model_dir, const std::string& reference_dir,
                              const int32_t* tokens, uint64_t n, const StreamedEvalOptions& o);

/// Sensitivity probes without the whole model (quantize --sensitivity, streamed): the float
/// model's states over the windows of `tokens` advance one decoder layer at a time, and at layer
/// i a changed copy of layer i (one group quantized) is scored by running the states through it
/// and the float layers after it: KL(float || changed) per prediction, as compare_streamed
/// measures it. The float model's final states and log-sum-exps are computed once up front.
/// Memory: three sets of states (tokens x hidden, float32; spilled beyond o.max_memory), one
/// decoder layer, one block of lm_head rows.
class LayerProbes {
 public:
  LayerProbes(const std::string& model_dir, std::vector<int32_t> tokens, const StreamedEvalOptions& o);
  ~LayerProbes();
  /// Mean KL(float || the float model with decoder layer `i` replaced by `layer`) per
  /// prediction. `i` is the layer the float states have reached (advance(0 .. i - 1) done).
  double kl_with(int64_t i, DecoderLayerImpl& layer);
  /// The float states through decoder layer i, as the checkpoint holds it.
  void advance(int64_t i);

 private:
  struct Impl;
  std::unique_ptr<Impl> p_;
};

}  // namespace shrink::train
