// Llama-family model configuration (HF config.json) and the HF tensor naming, in one place.
//
// Reads config.json for LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM in both the
// transformers v4 form (rope_theta + rope_scaling, torch_dtype) and the v5 form
// (rope_parameters, dtype). Every field is type-checked and range-checked; an error names the
// file, the field, the value and what was expected. Unknown keys are kept verbatim, so a
// load -> save round trip preserves what other tools wrote.
//
// expected_tensors() is the single source of truth for the HF tensor names and shapes
// ("model.layers.N.self_attn.q_proj.weight", ...): the LibTorch model, the checkpoint checks,
// `shrink inspect` and the runtime all use it. rope_inv_freq() likewise is the one definition of
// the RoPE frequencies (default, linear, llama3). Tested in tests/core/test_model_config.cpp.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/safetensors.h"
#include "core/status.h"

namespace shrink::core {

enum class Arch { kLlama, kMistral, kQwen2 };
const char* arch_name(Arch a);  // "LlamaForCausalLM", ...

enum class RopeType { kDefault, kLinear, kLlama3 };

struct RopeScaling {
  RopeType type = RopeType::kDefault;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3 only
  double high_freq_factor = 4.0;  // llama3 only
  int64_t original_max_position_embeddings = 8192;  // llama3 only
};

struct ModelConfig {
  Arch arch = Arch::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_heads unless given
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool qkv_bias = false;  // Qwen2 always; Llama with attention_bias
  bool o_bias = false;    // Llama with attention_bias
  bool tie_word_embeddings = false;
  std::optional<int64_t> sliding_window;  // Mistral: attend to the last W positions only
  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;
  std::string dtype = "float32";  // torch_dtype / dtype as written
  /// The whole config.json as read; to_json() overwrites the fields above into a copy of it.
  nlohmann::json raw = nlohmann::json::object();

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  bool has_quantization() const { return raw.contains("quantization_config"); }
};

/// Parse config.json text; `origin` (a path) prefixes every error.
Result<ModelConfig> config_from_json(const std::string& text, const std::string& origin);
/// Read MODEL_DIR/config.json.
Result<ModelConfig> config_load(const std::string& model_dir);
/// Check internal consistency (divisibility, positive sizes, ...).
Status config_validate(const ModelConfig& c, const std::string& origin = "config");
/// Serialize to config.json text (HF v4 field names, which v4 and v5 both read; unknown keys
/// from the original file are preserved).
std::string config_to_json(const ModelConfig& c);

/// The config of a model that keeps only the decoder layers `keep` (strictly increasing indices
/// into c's layers): num_hidden_layers and per-layer lists in config.json (layer_types) follow.
Result<ModelConfig> config_keep_layers(const ModelConfig& c, const std::vector<int64_t>& keep);

/// Built-in Llama configs for models trained from scratch ("tiny", "small", "base"), with the
/// given vocabulary size. Errors list the known names.
Result<ModelConfig> config_preset(const std::string& name, int64_t vocab_size);
/// The preset names, comma-separated, for help texts.
const char* config_preset_names();

/// The token ids that end generation, in order, without repeats: config.json's eos_token_id
/// (a scalar or a list), then MODEL_DIR/generation_config.json's (Llama 3 Instruct lists
/// <|eot_id|> there), then, when neither names one, the tokenizer's guessed EOS
/// (`tokenizer_eos`, -1 for none). A malformed generation_config.json is an error that names it.
Result<std::vector<int64_t>> stop_token_ids(const std::string& model_dir, const ModelConfig& c,
                                            int64_t tokenizer_eos = -1);

/// Copy the small files that travel with a model besides config.json, the weights and
/// tokenizer.json (tokenizer_config.json, generation_config.json, special_tokens_map.json,
/// chat_template.jinja), from src_dir to dst_dir where present. Atomic per file.
Status copy_model_sidecars(const std::string& src_dir, const std::string& dst_dir);

/// RoPE inverse frequencies, head_dim/2 values, after rope scaling (HF semantics).
std::vector<double> rope_inv_freq(const ModelConfig& c);

/// What a tensor is, for per-module reporting (inspect, pruning, quantization targets).
enum class TensorRole {
  kEmbed, kFinalNorm, kLmHead,
  kAttnNorm, kMlpNorm, kQ, kK, kV, kO, kQBias, kKBias, kVBias, kOBias, kGate, kUp, kDown,
};
const char* tensor_role_name(TensorRole r);  // "q_proj", "input_layernorm", ...
bool tensor_role_is_linear(TensorRole r);

struct TensorSpec {
  std::string name;            // HF name
  std::vector<int64_t> shape;  // [out, in] for linear weights, as HF stores them
  TensorRole role;
  int layer = -1;  // -1 for non-block tensors
};

/// The tensors a float checkpoint of this config must hold, in HF order.
std::vector<TensorSpec> expected_tensors(const ModelConfig& c);

/// How the linears of a quantized checkpoint (compressed-tensors) are stored, as far as their
/// tensors' shapes go. Readers with their own scheme type (the runtime's) fill it in.
struct QuantLayout {
  std::string strategy = "channel";  // weight scales: channel [out, 1] | group | tensor [1]
  int64_t group_size = 0;            // group: scales [out, ceil(in / group_size)]
  bool symmetric = true;             // false: I8 zero points shaped like the scales
  bool static_input = false;         // W8A8 static: one float input_scale per linear
  std::vector<std::string> ignore;   // modules kept in float
};

/// The one validator of checkpoints against their config, which every reader (shrink inspect,
/// convert, the LibTorch loader, the ONNX exporter, the runtime) calls before reading weights:
/// every expected tensor present with the right shape and a float dtype; the block linears of a
/// quantized model (not in `ignore`) either float (they then run in float) or I8 with a float
/// weight_scale of the layout's shape, I8 zero points when asymmetric, an input_scale when
/// static and an optional I32/I64 weight_g_idx [in]; no unexpected tensors (a tied
/// lm_head.weight copy and rotary caches are tolerated). The error lists every problem by name.
/// This overload reads the layout from config.json's quantization_config.
Status checkpoint_check(const ModelConfig& c, const Checkpoint& ckpt);
/// The same with the layout given (nullptr: a float checkpoint).
Status checkpoint_check(const ModelConfig& c, const Checkpoint& ckpt, const QuantLayout* q);

}  // namespace shrink::core
