// The Llama-family decoder in LibTorch (Llama, Mistral, Qwen2): token embedding, RMSNorm,
// RoPE (default / linear / llama3), multi-head, grouped-query and multi-query attention with
// optional q/k/v(/o) bias and an optional sliding window, SwiGLU MLP, tied or separate lm_head.
//
// Why this way: submodules are registered under the Hugging Face names, so named_parameters()
// yields exactly "model.layers.N.self_attn.q_proj.weight" and loading/saving is a name lookup
// against core::expected_tensors(), the single naming table. The math follows transformers'
// eager implementation (RMSNorm in float32, rotate-half RoPE with frequencies from
// core::rope_inv_freq, softmax in float32) so logits match HF within float rounding; the
// fixtures in tests/fixtures/hf (written by transformers) check that. Packed batches use plain
// causal attention. An optional KV cache serves generation.
// This header includes LibTorch: only lib/train and its tests may include it.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/safetensors.h"

namespace shrink::train {

/// Observer of linear-layer inputs during a forward pass: the calibration hook of pruning
/// (Wanda norms, SparseGPT Hessians, structured importance) and quantization (activation
/// ranges, SmoothQuant). `module` is the HF module path ("model.layers.3.mlp.down_proj"); `x`
/// is that linear's input [..., in_features]. q/k/v (and gate/up) report the same tensor.
struct LinearTap {
  virtual ~LinearTap() = default;
  virtual void on_input(const std::string& module, const torch::Tensor& x) = 0;
  /// What the linear actually consumes (fake-quantized activations); called once per input
  /// group with the first module's name (q_proj for q/k/v, gate_proj for gate/up).
  virtual torch::Tensor transform(const std::string& module, const torch::Tensor& x) { return x; }
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

/// Per-layer key/value cache for generation: k and v are [B, kv_heads, S, head_dim].
struct KVCache {
  std::vector<torch::Tensor> k, v;
  int64_t length = 0;  // positions cached
};

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const core::ModelConfig& c);
  /// x [B,T,H]; cos/sin [T, head_dim] for the T positions; start = first position (cache len).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        int64_t start, torch::Tensor* k_cache, torch::Tensor* v_cache);
  torch::nn::Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t n_heads, n_kv_heads, head_dim;
  std::optional<int64_t> window;
  LinearTap* tap = nullptr;
  std::string prefix;  // module path prefix, e.g. model.layers.3.self_attn.
  /// Without autograd, the attention scores (B x heads x queries x keys floats) are computed a
  /// block of queries at a time, each block's scores at most this many bytes: calibration over
  /// 2048-token sequences then holds 32 MiB of scores instead of B x 32 x 2048^2 floats, and the
  /// blocks stay under the allocator's 64 MiB heap threshold (tools/cli_main.h), so they are
  /// not mapped and faulted in afresh each time. Small products (and training, which keeps them
  /// for the backward pass) run in one piece.
  int64_t score_block_bytes = int64_t(32) << 20;

 private:
  torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                       int64_t start) const;
};
TORCH_MODULE(Attention);

class MLPImpl : public torch::nn::Module {
 public:
  explicit MLPImpl(const core::ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
  LinearTap* tap = nullptr;
  std::string prefix;  // module path prefix, e.g. model.layers.3.mlp.
};
TORCH_MODULE(MLP);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  explicit DecoderLayerImpl(const core::ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        int64_t start, torch::Tensor* k_cache, torch::Tensor* v_cache);
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const core::ModelConfig& c);
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(Decoder);

struct ForwardOutput {
  torch::Tensor logits;  // [B, T, V] float32
  /// With want_hidden: L+1 tensors [B,T,H] as transformers' output_hidden_states returns them:
  /// the embedding output, the outputs of layers 0..L-2, and the final-normed output of the
  /// last layer.
  std::vector<torch::Tensor> hidden_states;
};

/// LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM.
class CausalLMImpl : public torch::nn::Module {
 public:
  explicit CausalLMImpl(core::ModelConfig c);
  /// input_ids [B,T] int64. With a cache, positions continue from cache->length and the cache
  /// is extended. Logits are float32.
  ForwardOutput forward(const torch::Tensor& input_ids, bool want_hidden = false,
                        KVCache* cache = nullptr);
  /// The final hidden states [B,T,H] (after the final norm) without the lm_head.
  torch::Tensor lm_head_weight();
  const core::ModelConfig& config() const { return config_; }
  /// cos/sin tables [T, head_dim] for positions [start, start+T).
  std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t start, int64_t len);
  /// Number of parameters (tied weights counted once).
  int64_t num_parameters();
  /// Report every linear input of the blocks (and lm_head's) to `tap` (nullptr: stop).
  void set_tap(LinearTap* tap);
  LinearTap* tap() const { return tap_; }
  /// A tap the model owns: the fake-quant activations of a loaded int8 model (model_load).
  std::shared_ptr<LinearTap> owned_tap;

  Decoder model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // null when tied

 private:
  core::ModelConfig config_;
  torch::Tensor inv_freq_;  // [head_dim/2] float32
  LinearTap* tap_ = nullptr;
};
TORCH_MODULE(CausalLM);

/// cos/sin tables [len, head_dim] for positions [start, start + len) of a model of config c:
/// what CausalLMImpl::rope_tables gives, without a model.
std::pair<torch::Tensor, torch::Tensor> rope_tables_for(const core::ModelConfig& c, int64_t start,
                                                        int64_t len);

/// Decoder layer i alone, its weights read as float32 from a float checkpoint (and the pages
/// read released): for the streaming stages, which hold one layer at a time. Its attention and
/// MLP carry their module prefixes ("model.layers.<i>.self_attn."), as CausalLMImpl::set_tap
/// gives them, so taps see the full module names.
DecoderLayer layer_load(const core::ModelConfig& c, const core::Checkpoint& ck, int64_t i);

/// The embedding of ids [N, T] (int64), [N, T, H] float32 as embed_tokens gives it, gathered
/// row by row from the checkpoint's table without loading it whole; into `out` when given (a
/// contiguous float32 [N, T, H], such as a spilled buffer), else a new tensor.
torch::Tensor embed_rows(const core::ModelConfig& c, const core::Checkpoint& ck,
                         const torch::Tensor& ids, torch::Tensor out = {});

/// Fresh model with transformers' default init: normal(0, initializer_range) for linear and
/// embedding weights (initializer_range from config.json, else 0.02), ones for norms, zeros
/// for biases. Deterministic for a seed.
CausalLM model_create(const core::ModelConfig& c, uint64_t seed);

/// Load a model directory (config.json + safetensors), validating the checkpoint against the
/// config first (core::checkpoint_check). Weights are converted to float32. Throws
/// shrink::Error (kInvalidInput / kNotFound) naming the problem.
CausalLM model_load(const std::string& model_dir);

struct SaveOptions {
  std::string dtype = "";  // "float32", "float16", "bfloat16"; empty = the config's dtype
  uint64_t max_shard_bytes = 0;
  /// A tokenizer.json file to copy in (its sibling tokenizer_config.json too, if present).
  std::string tokenizer_json;
  nlohmann::json provenance = nlohmann::json::object();  // goes into shrink.json
};
/// Write config.json, model.safetensors (or shards) and shrink.json atomically into out_dir.
void model_save(CausalLM& m, const std::string& out_dir, const SaveOptions& opts = {});
/// The same files written into an existing directory (the caller makes it atomic).
void model_write(CausalLM& m, const std::string& dir, const SaveOptions& opts = {});

/// Sum of next-token NLL (nats, double) and the number of predictions over non-overlapping
/// windows of seq_len (core::eval_windows) of `tokens`, batching equal-length windows.
std::pair<double, uint64_t> nll_over_windows(CausalLM& m, const int32_t* tokens, uint64_t n,
                                             int64_t seq_len, int64_t batch,
                                             const std::function<void(uint64_t)>& progress = {});

}  // namespace shrink::train
