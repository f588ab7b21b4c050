// config.json parsing/validation, HF tensor naming and RoPE frequencies. See model_config.h.
#include "core/model_config.h"

#include <algorithm>

#include <cmath>
#include <set>
#include <sstream>

#include "core/checked_math.h"
#include "core/fs.h"
#include "core/json_util.h"
#include "core/quant.h"

namespace shrink::core {

using nlohmann::json;

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::kLlama: return "LlamaForCausalLM";
    case Arch::kMistral: return "MistralForCausalLM";
    case Arch::kQwen2: return "Qwen2ForCausalLM";
  }
  return "?";
}

namespace {

const char* kSupported = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM";

// Upper bounds on config.json dimensions: far above any released model (Llama 3.1 405B has
// hidden 16384, 126 layers, 128 heads, head_dim 128, vocab 128256; Llama 4 a 10M context), and
// low enough that products of them (tensor sizes, a whole KV cache in bytes) fit in int64.
constexpr int64_t kMaxVocab = int64_t(1) << 24;            // = the tokenizer's id space
constexpr int64_t kMaxConfigTokenId = (int64_t(1) << 31) - 1;
constexpr int64_t kMaxHidden = int64_t(1) << 17;
constexpr int64_t kMaxIntermediate = int64_t(1) << 20;
constexpr int64_t kMaxLayers = int64_t(1) << 12;
constexpr int64_t kMaxHeads = int64_t(1) << 12;
constexpr int64_t kMaxHeadDim = int64_t(1) << 12;
constexpr int64_t kMaxPositions = int64_t(1) << 28;

// Field readers: absent -> keep default (or error if required); wrong type -> error.
class Reader {
 public:
  Reader(const json& j, std::string origin) : j_(j), origin_(std::move(origin)) {}

  /// An integer field in [min_value, max_value]; an integral float (4096.0) counts, 1e300
  /// does not.
  Status int_field(const char* key, int64_t* out, bool required, int64_t min_value,
                   int64_t max_value) {
    auto it = j_.find(key);
    const std::string range =
        "[" + std::to_string(min_value) + ", " + std::to_string(max_value) + "]";
    if (it == j_.end() || it->is_null()) {
      if (required) return invalid_input(where(key) + "missing; expected an integer in " + range);
      return Status::ok();
    }
    const std::optional<int64_t> v = json_as_int64(*it);
    if (!v) {
      return invalid_input(where(key) + "expected an integer in " + range + ", got " +
                           json_brief(*it));
    }
    if (*v < min_value || *v > max_value) {
      return invalid_input(where(key) + std::to_string(*v) + " is out of range; expected " + range);
    }
    *out = *v;
    return Status::ok();
  }

  Status num_field(const json& obj, const char* key, double* out, bool positive) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return Status::ok();
    if (!it->is_number()) {
      return invalid_input(where(key) + "expected a number, got " + json_brief(*it));
    }
    double v = it->get<double>();
    if (positive && !(v > 0)) {
      return invalid_input(where(key) + json_brief(*it) + " is out of range; expected > 0");
    }
    *out = v;
    return Status::ok();
  }

  Status bool_field(const char* key, bool* out) {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return Status::ok();
    if (!it->is_boolean()) {
      return invalid_input(where(key) + "expected true or false, got " + json_brief(*it));
    }
    *out = it->get<bool>();
    return Status::ok();
  }

  // bos/eos may be an int or a list of ints (HF allows both); the first is used.
  Status token_id_field(const char* key, std::optional<int64_t>* out) {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return Status::ok();
    const json* v = &*it;
    if (v->is_array()) {
      if (v->empty()) return Status::ok();
      v = &(*v)[0];
    }
    const std::optional<int64_t> id = v->is_number_integer() ? json_as_int64(*v) : std::nullopt;
    if (!id || *id < 0 || *id > kMaxConfigTokenId) {
      return invalid_input(where(key) + "expected a token id (integer in [0, " +
                           std::to_string(kMaxConfigTokenId) + "]), got " + json_brief(*it));
    }
    *out = *id;
    return Status::ok();
  }

  std::string where(const char* key) const { return origin_ + ": field '" + key + "': "; }

 private:
  const json& j_;
  std::string origin_;
};

Status parse_rope(const json& j, const std::string& origin, ModelConfig* c) {
  Reader r(j, origin);
  // v5: rope_parameters {rope_type, rope_theta, factor, ...}; v4: rope_theta + rope_scaling.
  const json* params = nullptr;
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    params = &j["rope_parameters"];
  } else if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    params = &j["rope_scaling"];
  }
  SHRINK_RETURN_IF_ERROR(r.num_field(j, "rope_theta", &c->rope_theta, true));
  if (!params) return Status::ok();
  const char* pkey = j.contains("rope_parameters") && !j["rope_parameters"].is_null()
                         ? "rope_parameters"
                         : "rope_scaling";
  if (!params->is_object()) {
    return invalid_input(r.where(pkey) + "expected an object, got " + json_type_name(*params));
  }
  if (params->contains("rope_theta")) {
    SHRINK_RETURN_IF_ERROR(r.num_field(*params, "rope_theta", &c->rope_theta, true)
                               .with_context(std::string("in ") + pkey));
  }
  std::string type = "default";
  for (const char* k : {"rope_type", "type"}) {
    if (params->contains(k)) {
      if (!(*params)[k].is_string()) {
        return invalid_input(r.where(pkey) + std::string(k) + " must be a string");
      }
      type = (*params)[k].get<std::string>();
      break;
    }
  }
  RopeScaling& s = c->rope_scaling;
  if (type == "default") {
    s.type = RopeType::kDefault;
    return Status::ok();
  }
  if (type != "linear" && type != "llama3") {
    return invalid_input(r.where(pkey) + "rope type '" + type +
                         "' is not supported; expected one of default, linear, llama3");
  }
  s.type = type == "linear" ? RopeType::kLinear : RopeType::kLlama3;
  if (!params->contains("factor")) {
    return invalid_input(r.where(pkey) + "rope type '" + type + "' needs 'factor'");
  }
  SHRINK_RETURN_IF_ERROR(r.num_field(*params, "factor", &s.factor, true));
  if (s.type == RopeType::kLlama3) {
    SHRINK_RETURN_IF_ERROR(r.num_field(*params, "low_freq_factor", &s.low_freq_factor, true));
    SHRINK_RETURN_IF_ERROR(r.num_field(*params, "high_freq_factor", &s.high_freq_factor, true));
    Reader pr(*params, origin + ": " + pkey);
    SHRINK_RETURN_IF_ERROR(pr.int_field("original_max_position_embeddings",
                                        &s.original_max_position_embeddings, false, 1,
                                        kMaxPositions));
    if (!(s.high_freq_factor > s.low_freq_factor)) {
      return invalid_input(r.where(pkey) + "llama3 needs high_freq_factor > low_freq_factor");
    }
  }
  return Status::ok();
}

}  // namespace

Result<ModelConfig> config_from_json(const std::string& text, const std::string& origin) {
  SHRINK_ASSIGN_OR_RETURN(json j, json_parse_untrusted(text, origin));
  if (!j.is_object()) return invalid_input(origin + ": expected a JSON object at the top level");
  ModelConfig c;
  Reader r(j, origin);

  // Architecture: "architectures"[0], else model_type.
  std::string arch;
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const json& a = j["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string()) {
      return invalid_input(r.where("architectures") + "expected a non-empty list of strings");
    }
    arch = a[0].get<std::string>();
  } else if (j.contains("model_type") && j["model_type"].is_string()) {
    std::string mt = j["model_type"].get<std::string>();
    arch = mt == "llama" ? "LlamaForCausalLM"
           : mt == "mistral" ? "MistralForCausalLM"
           : mt == "qwen2" ? "Qwen2ForCausalLM"
                           : mt;
  } else {
    return invalid_input(origin + ": neither 'architectures' nor 'model_type' is given; "
                                  "expected one of " + kSupported);
  }
  if (arch == "LlamaForCausalLM") c.arch = Arch::kLlama;
  else if (arch == "MistralForCausalLM") c.arch = Arch::kMistral;
  else if (arch == "Qwen2ForCausalLM") c.arch = Arch::kQwen2;
  else {
    return invalid_input(origin + ": architecture '" + arch + "' is not supported; expected one of " +
                         kSupported);
  }

  SHRINK_RETURN_IF_ERROR(r.int_field("vocab_size", &c.vocab_size, true, 1, kMaxVocab));
  SHRINK_RETURN_IF_ERROR(r.int_field("hidden_size", &c.hidden_size, true, 1, kMaxHidden));
  SHRINK_RETURN_IF_ERROR(r.int_field("intermediate_size", &c.intermediate_size, true, 1,
                                     kMaxIntermediate));
  SHRINK_RETURN_IF_ERROR(r.int_field("num_hidden_layers", &c.num_layers, true, 1, kMaxLayers));
  SHRINK_RETURN_IF_ERROR(r.int_field("num_attention_heads", &c.num_heads, true, 1, kMaxHeads));
  c.num_kv_heads = c.num_heads;
  SHRINK_RETURN_IF_ERROR(r.int_field("num_key_value_heads", &c.num_kv_heads, false, 1, kMaxHeads));
  c.head_dim = 0;
  SHRINK_RETURN_IF_ERROR(r.int_field("head_dim", &c.head_dim, false, 1, kMaxHeadDim));
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0) {
      return invalid_input(r.where("num_attention_heads") + std::to_string(c.num_heads) +
                           " does not divide hidden_size " + std::to_string(c.hidden_size) +
                           " and no head_dim is given");
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  SHRINK_RETURN_IF_ERROR(
      r.int_field("max_position_embeddings", &c.max_position_embeddings, false, 1,
                  kMaxPositions));
  SHRINK_RETURN_IF_ERROR(r.num_field(j, "rms_norm_eps", &c.rms_norm_eps, true));
  SHRINK_RETURN_IF_ERROR(parse_rope(j, origin, &c));
  SHRINK_RETURN_IF_ERROR(r.bool_field("tie_word_embeddings", &c.tie_word_embeddings));
  SHRINK_RETURN_IF_ERROR(r.token_id_field("bos_token_id", &c.bos_token_id));
  SHRINK_RETURN_IF_ERROR(r.token_id_field("eos_token_id", &c.eos_token_id));
  for (const char* k : {"torch_dtype", "dtype"}) {
    if (j.contains(k) && j[k].is_string()) c.dtype = j[k].get<std::string>();
  }

  if (j.contains("hidden_act") && !j["hidden_act"].is_null()) {
    if (!j["hidden_act"].is_string() || j["hidden_act"].get<std::string>() != "silu") {
      return invalid_input(r.where("hidden_act") + json_brief(j["hidden_act"]) +
                           " is not supported; expected \"silu\" (SwiGLU)");
    }
  }
  bool mlp_bias = false;
  SHRINK_RETURN_IF_ERROR(r.bool_field("mlp_bias", &mlp_bias));
  if (mlp_bias) return invalid_input(r.where("mlp_bias") + "true is not supported; expected false");
  if (c.arch == Arch::kQwen2) {
    c.qkv_bias = true;  // Qwen2 hard-codes bias on q/k/v and none on o
  } else {
    bool attention_bias = false;
    SHRINK_RETURN_IF_ERROR(r.bool_field("attention_bias", &attention_bias));
    c.qkv_bias = c.o_bias = attention_bias;
  }

  // Sliding windows. Mistral's single window is supported (a banded causal mask); Qwen2's
  // per-layer windows (use_sliding_window + max_window_layers) are refused.
  if (c.arch == Arch::kQwen2) {
    bool use_sw = false;
    SHRINK_RETURN_IF_ERROR(r.bool_field("use_sliding_window", &use_sw));
    bool sliding_layers = false;
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
      for (const auto& t : j["layer_types"]) {
        if (t.is_string() && t.get<std::string>() == "sliding_attention") sliding_layers = true;
      }
    }
    if (use_sw || sliding_layers) {
      return invalid_input(r.where("use_sliding_window") +
                           "Qwen2 per-layer sliding-window attention is not supported; "
                           "expected use_sliding_window false");
    }
  } else if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    int64_t w = 0;
    SHRINK_RETURN_IF_ERROR(r.int_field("sliding_window", &w, false, 1, kMaxPositions));
    if (c.arch == Arch::kLlama) {
      return invalid_input(r.where("sliding_window") + "is not a Llama field; expected null");
    }
    if (w < c.max_position_embeddings) c.sliding_window = w;
  }
  SHRINK_RETURN_IF_ERROR(config_validate(c, origin));
  c.raw = std::move(j);  // depth-capped by json_parse_untrusted, so safe to keep and copy
  return c;
}

Result<ModelConfig> config_load(const std::string& model_dir) {
  std::string path = model_dir + "/config.json";
  if (!path_exists(model_dir)) return not_found(model_dir + ": no such model directory");
  if (!path_exists(path)) {
    return not_found(path + ": not found; a model directory holds config.json and "
                            "model.safetensors (Hugging Face layout)");
  }
  SHRINK_ASSIGN_OR_RETURN(std::string text, read_file(path));
  return config_from_json(text, path);
}

Status config_validate(const ModelConfig& c, const std::string& origin) {
  auto bad = [&](const std::string& m) { return invalid_input(origin + ": " + m); };
  // The same bounds as config.json's fields, for configs built in code (presets, pruning).
  struct Bound {
    const char* name;
    int64_t value, max;
  };
  for (const Bound& b : {Bound{"vocab_size", c.vocab_size, kMaxVocab},
                         Bound{"hidden_size", c.hidden_size, kMaxHidden},
                         Bound{"intermediate_size", c.intermediate_size, kMaxIntermediate},
                         Bound{"num_hidden_layers", c.num_layers, kMaxLayers},
                         Bound{"num_attention_heads", c.num_heads, kMaxHeads},
                         Bound{"num_key_value_heads", c.num_kv_heads, kMaxHeads},
                         Bound{"head_dim", c.head_dim, kMaxHeadDim},
                         Bound{"max_position_embeddings", c.max_position_embeddings,
                               kMaxPositions}}) {
    if (b.value < 1 || b.value > b.max) {
      return bad(std::string(b.name) + " " + std::to_string(b.value) +
                 " is out of range; expected [1, " + std::to_string(b.max) + "]");
    }
  }
  // Every weight, and one token's K and V over the whole context and all layers in f32, must
  // have a byte size that fits in int64 (the bounds above keep each factor small, not products).
  for (auto n : {checked_mul({c.vocab_size, c.hidden_size, 4}),
                 checked_mul({c.q_dim(), c.hidden_size, 4}),
                 checked_mul({c.intermediate_size, c.hidden_size, 4}),
                 checked_mul({c.num_layers, c.max_position_embeddings, c.kv_dim(), 2 * 4})}) {
    if (!n) return bad("the sizes overflow 64 bits; expected a model of realistic size");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return bad("num_key_value_heads " + std::to_string(c.num_kv_heads) +
               " must divide num_attention_heads " + std::to_string(c.num_heads));
  }
  if (c.head_dim % 2 != 0) {
    return bad("head_dim " + std::to_string(c.head_dim) + " must be even for RoPE");
  }
  if (!(c.rms_norm_eps > 0 && c.rms_norm_eps < 1)) {
    return bad("rms_norm_eps " + std::to_string(c.rms_norm_eps) + " must be in (0, 1)");
  }
  return Status::ok();
}

std::string config_to_json(const ModelConfig& c) {
  json j = c.raw.is_object() ? c.raw : json::object();
  j["architectures"] = json::array({arch_name(c.arch)});
  j["model_type"] = c.arch == Arch::kLlama ? "llama" : c.arch == Arch::kMistral ? "mistral" : "qwen2";
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.arch == Arch::kLlama) {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = false;
  }
  // Write the v4 form, which both transformers v4 and v5 read; drop a v5 block so the two never
  // disagree.
  j.erase("rope_parameters");
  j["rope_theta"] = c.rope_theta;
  const RopeScaling& s = c.rope_scaling;
  if (s.type == RopeType::kDefault) {
    j["rope_scaling"] = nullptr;
  } else if (s.type == RopeType::kLinear) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", s.factor}};
  } else {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", s.factor},
                         {"low_freq_factor", s.low_freq_factor},
                         {"high_freq_factor", s.high_freq_factor},
                         {"original_max_position_embeddings",
                          s.original_max_position_embeddings}};
  }
  if (c.arch == Arch::kMistral) {
    j["sliding_window"] = c.sliding_window ? json(*c.sliding_window) : json(nullptr);
  }
  if (c.bos_token_id) j["bos_token_id"] = *c.bos_token_id;
  if (c.eos_token_id && !(j.contains("eos_token_id") && j["eos_token_id"].is_array())) {
    j["eos_token_id"] = *c.eos_token_id;
  }
  j.erase("dtype");
  j["torch_dtype"] = c.dtype;
  return j.dump(2) + "\n";
}

const char* config_preset_names() { return "tiny, small, base"; }

Result<ModelConfig> config_keep_layers(const ModelConfig& c, const std::vector<int64_t>& keep) {
  if (keep.empty()) return invalid_input("layer list is empty: keep at least one layer");
  for (size_t i = 0; i < keep.size(); ++i) {
    if (keep[i] < 0 || keep[i] >= c.num_layers) {
      return invalid_input("layer " + std::to_string(keep[i]) + " is out of range: the model has " +
                             std::to_string(c.num_layers) + " layers (0.." +
                             std::to_string(c.num_layers - 1) + ")");
    }
    if (i > 0 && keep[i] <= keep[i - 1]) {
      return invalid_input("layer list must be strictly increasing, got " +
                             std::to_string(keep[i - 1]) + " then " + std::to_string(keep[i]));
    }
  }
  ModelConfig out = c;
  out.num_layers = int64_t(keep.size());
  for (const char* key : {"layer_types"}) {
    if (out.raw.contains(key) && out.raw[key].is_array() &&
        int64_t(out.raw[key].size()) == c.num_layers) {
      nlohmann::json sub = nlohmann::json::array();
      for (int64_t k : keep) sub.push_back(out.raw[key][size_t(k)]);
      out.raw[key] = sub;
    }
  }
  if (out.raw.contains("max_window_layers") && out.raw["max_window_layers"].is_number_integer()) {
    out.raw["max_window_layers"] =
        std::min<int64_t>(out.raw["max_window_layers"].get<int64_t>(), out.num_layers);
  }
  return out;
}

Result<ModelConfig> config_preset(const std::string& name, int64_t vocab_size) {
  // Sizes chosen for 2-core CPU training: tiny ~1M non-embedding params trains in minutes,
  // small ~7M in an hour or so, base ~25M for longer runs.
  struct P {
    const char* name;
    int64_t hidden, inter, layers, heads, kv;
  };
  static const P kPresets[] = {
      {"tiny", 128, 352, 4, 4, 2}, {"small", 256, 704, 8, 8, 4}, {"base", 512, 1408, 8, 8, 4}};
  for (const P& p : kPresets) {
    if (name != p.name) continue;
    if (vocab_size < 1) return invalid_input("preset '" + name + "': vocab_size must be >= 1");
    ModelConfig c;
    c.arch = Arch::kLlama;
    c.vocab_size = vocab_size;
    c.hidden_size = p.hidden;
    c.intermediate_size = p.inter;
    c.num_layers = p.layers;
    c.num_heads = p.heads;
    c.num_kv_heads = p.kv;
    c.head_dim = p.hidden / p.heads;
    c.max_position_embeddings = 1024;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.tie_word_embeddings = true;
    c.raw = {{"initializer_range", 0.02}};
    return c;
  }
  return invalid_input("unknown model preset '" + name + "'; expected one of " +
                       config_preset_names());
}

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<double> f(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    f[size_t(i)] = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
  }
  const RopeScaling& s = c.rope_scaling;
  if (s.type == RopeType::kLinear) {
    for (double& x : f) x /= s.factor;
  } else if (s.type == RopeType::kLlama3) {
    // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth blend between.
    const double old_ctx = double(s.original_max_position_embeddings);
    const double low_wavelen = old_ctx / s.low_freq_factor;
    const double high_wavelen = old_ctx / s.high_freq_factor;
    for (double& x : f) {
      const double wavelen = 2.0 * M_PI / x;
      if (wavelen > low_wavelen) {
        x = x / s.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (old_ctx / wavelen - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
        x = (1.0 - smooth) * x / s.factor + smooth * x;
      }
    }
  }
  return f;
}

const char* tensor_role_name(TensorRole r) {
  switch (r) {
    case TensorRole::kEmbed: return "embed_tokens";
    case TensorRole::kFinalNorm: return "norm";
    case TensorRole::kLmHead: return "lm_head";
    case TensorRole::kAttnNorm: return "input_layernorm";
    case TensorRole::kMlpNorm: return "post_attention_layernorm";
    case TensorRole::kQ: return "q_proj";
    case TensorRole::kK: return "k_proj";
    case TensorRole::kV: return "v_proj";
    case TensorRole::kO: return "o_proj";
    case TensorRole::kQBias: return "q_proj.bias";
    case TensorRole::kKBias: return "k_proj.bias";
    case TensorRole::kVBias: return "v_proj.bias";
    case TensorRole::kOBias: return "o_proj.bias";
    case TensorRole::kGate: return "gate_proj";
    case TensorRole::kUp: return "up_proj";
    case TensorRole::kDown: return "down_proj";
  }
  return "?";
}

bool tensor_role_is_linear(TensorRole r) {
  switch (r) {
    case TensorRole::kQ: case TensorRole::kK: case TensorRole::kV: case TensorRole::kO:
    case TensorRole::kGate: case TensorRole::kUp: case TensorRole::kDown:
    case TensorRole::kLmHead:
      return true;
    default:
      return false;
  }
}

std::vector<TensorSpec> expected_tensors(const ModelConfig& c) {
  std::vector<TensorSpec> t;
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.q_dim(), KV = c.kv_dim();
  t.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, TensorRole::kEmbed, -1});
  for (int l = 0; l < int(c.num_layers); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {H}, TensorRole::kAttnNorm, l});
    t.push_back({p + "self_attn.q_proj.weight", {Q, H}, TensorRole::kQ, l});
    t.push_back({p + "self_attn.k_proj.weight", {KV, H}, TensorRole::kK, l});
    t.push_back({p + "self_attn.v_proj.weight", {KV, H}, TensorRole::kV, l});
    if (c.qkv_bias) {
      t.push_back({p + "self_attn.q_proj.bias", {Q}, TensorRole::kQBias, l});
      t.push_back({p + "self_attn.k_proj.bias", {KV}, TensorRole::kKBias, l});
      t.push_back({p + "self_attn.v_proj.bias", {KV}, TensorRole::kVBias, l});
    }
    t.push_back({p + "self_attn.o_proj.weight", {H, Q}, TensorRole::kO, l});
    if (c.o_bias) t.push_back({p + "self_attn.o_proj.bias", {H}, TensorRole::kOBias, l});
    t.push_back({p + "post_attention_layernorm.weight", {H}, TensorRole::kMlpNorm, l});
    t.push_back({p + "mlp.gate_proj.weight", {I, H}, TensorRole::kGate, l});
    t.push_back({p + "mlp.up_proj.weight", {I, H}, TensorRole::kUp, l});
    t.push_back({p + "mlp.down_proj.weight", {H, I}, TensorRole::kDown, l});
  }
  t.push_back({"model.norm.weight", {H}, TensorRole::kFinalNorm, -1});
  if (!c.tie_word_embeddings) {
    t.push_back({"lm_head.weight", {c.vocab_size, H}, TensorRole::kLmHead, -1});
  }
  return t;
}

namespace {
std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}
}  // namespace

Status checkpoint_check(const ModelConfig& c, const Checkpoint& ckpt) {
  if (!c.has_quantization()) return checkpoint_check(c, ckpt, nullptr);
  auto r = quant_config_from_json(c.raw["quantization_config"]);
  if (!r.is_ok()) return r.status().with_context(ckpt.dir() + "/config.json");
  const QuantScheme& qs = r.value();
  QuantLayout q;
  q.strategy = qs.weight_strategy;
  q.group_size = qs.group_size;
  q.symmetric = qs.symmetric;
  q.static_input = qs.activations == "static";
  q.ignore = qs.ignore;
  return checkpoint_check(c, ckpt, &q);
}

Status checkpoint_check(const ModelConfig& c, const Checkpoint& ckpt, const QuantLayout* q) {
  std::vector<std::string> missing, bad_shape, bad_dtype, unexpected;
  std::set<std::string> expected;
  if (q && q->strategy == "group" && q->group_size <= 0) {
    return invalid_input(ckpt.dir() + "/config.json: quantization_config: group size " +
                         std::to_string(q->group_size) + "; expected a positive integer");
  }
  auto is_quantized_linear = [&](const TensorSpec& s) {
    // The decoder layers' linears, and the lm_head unless `ignore` names it (compressed-tensors
    // targets every Linear but those ignored; shrink quantize --targets can include lm_head).
    const bool linear = s.role == TensorRole::kLmHead || (s.layer >= 0 && tensor_role_is_linear(s.role));
    if (!q || !linear ||
        s.name.compare(s.name.size() - 7, 7, ".weight") != 0) {
      return false;
    }
    const std::string mod = s.name.substr(0, s.name.size() - 7);
    return std::find(q->ignore.begin(), q->ignore.end(), mod) == q->ignore.end();
  };
  for (const TensorSpec& s : expected_tensors(c)) {
    expected.insert(s.name);
    const TensorInfo* t = ckpt.find(s.name);
    if (!t) {
      missing.push_back(s.name);
      continue;
    }
    if (t->shape != s.shape) {
      bad_shape.push_back(s.name + " has shape " + shape_str(t->shape) + ", expected " +
                          shape_str(s.shape));
    }
    if (is_quantized_linear(s)) {
      const std::string mod = s.name.substr(0, s.name.size() - 7);
      // Its side tensors (zero points under symmetric: true are zeros, and ignored).
      for (const char* suf : {".weight_scale", ".weight_zero_point", ".weight_g_idx",
                              ".input_scale", ".input_zero_point"}) {
        expected.insert(mod + suf);
      }
      if (dtype_is_float(t->dtype)) continue;  // a float linear in a quantized model: runs in float
      if (t->dtype != DType::kI8) {
        bad_dtype.push_back(s.name + " is " + dtype_name(t->dtype) +
                            ", expected I8 (quantized) or a float dtype");
        continue;
      }
      const int64_t out = s.shape[0], in = s.shape[1];
      // Scales: one per output channel, per group of inputs (the last group may be partial,
      // so ceil), or one for the tensor.
      const int64_t groups = q->strategy == "group" ? in / q->group_size + (in % q->group_size != 0)
                                                    : 1;
      const std::vector<int64_t> want_scale =
          q->strategy == "tensor" ? std::vector<int64_t>{1} : std::vector<int64_t>{out, groups};
      const TensorInfo* sc = ckpt.find(mod + ".weight_scale");
      if (!sc) {
        missing.push_back(mod + ".weight_scale (an I8 weight needs a scale)");
      } else {
        const bool shape_ok =
            q->strategy == "tensor" ? sc->numel() == 1
                                    : sc->shape == want_scale ||
                                          (q->strategy == "channel" &&
                                           sc->shape == std::vector<int64_t>{out});
        if (!shape_ok || !dtype_is_float(sc->dtype)) {
          bad_shape.push_back(mod + ".weight_scale is " + dtype_name(sc->dtype) + " " +
                              shape_str(sc->shape) + ", expected float " + shape_str(want_scale));
        }
      }
      if (q->static_input) {
        const TensorInfo* is = ckpt.find(mod + ".input_scale");
        if (!is) missing.push_back(mod + ".input_scale (static activation quantization)");
        else if (is->numel() != 1 || !dtype_is_float(is->dtype)) {
          bad_shape.push_back(mod + ".input_scale has " + std::to_string(is->numel()) +
                              " elements, expected one float");
        }
      }
      if (!q->symmetric) {  // 4-bit zero points, [out, groups] as presented (unpacked)
        const TensorInfo* zp = ckpt.find(mod + ".weight_zero_point");
        const std::vector<int64_t> want_zp = {out, groups};
        if (!zp)
          missing.push_back(mod + ".weight_zero_point (symmetric: false needs zero points)");
        else if (zp->shape != want_zp || zp->dtype != DType::kI8) {
          bad_shape.push_back(mod + ".weight_zero_point is " + dtype_name(zp->dtype) + " " +
                              shape_str(zp->shape) + ", expected I8 " + shape_str(want_zp) +
                              " (or I32 packed along the outputs)");
        }
      }
      if (const TensorInfo* gi = ckpt.find(mod + ".weight_g_idx")) {  // GPTQ act-order groups
        if ((gi->dtype != DType::kI32 && gi->dtype != DType::kI64) ||
            gi->shape != std::vector<int64_t>{in}) {
          bad_shape.push_back(mod + ".weight_g_idx is " + dtype_name(gi->dtype) + " " +
                              shape_str(gi->shape) + ", expected I32 [" + std::to_string(in) + "]");
        }
      }
    } else if (!dtype_is_float(t->dtype)) {
      bad_dtype.push_back(s.name + " is " + dtype_name(t->dtype) +
                          ", expected F32, F16 or BF16");
    }
  }
  for (const std::string& n : ckpt.names()) {
    if (expected.count(n)) continue;
    // A tied model may still carry a copy of lm_head.weight; rotary caches are harmless.
    if (c.tie_word_embeddings && n == "lm_head.weight") continue;
    if (n.find("rotary_emb.inv_freq") != std::string::npos) continue;
    unexpected.push_back(n);
  }
  if (missing.empty() && bad_shape.empty() && bad_dtype.empty() && unexpected.empty()) {
    return Status::ok();
  }
  std::ostringstream o;
  o << ckpt.dir() << ": checkpoint does not match config.json (" << arch_name(c.arch) << ", "
    << c.num_layers << " layers, hidden " << c.hidden_size << ")";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    o << "\n  " << what << " (" << v.size() << "):";
    for (size_t i = 0; i < v.size() && i < 20; ++i) o << "\n    " << v[i];
    if (v.size() > 20) o << "\n    ... and " << (v.size() - 20) << " more";
  };
  list("missing tensors", missing);
  list("wrong shapes", bad_shape);
  list("wrong dtypes", bad_dtype);
  list("unexpected tensors", unexpected);
  return invalid_input(o.str());
}

namespace {
/// Appends the ids of an eos_token_id value (an integer or a list of them) to `out`.
Status append_ids(const json& v, const std::string& where, std::vector<int64_t>* out) {
  auto one = [&](const json& x) -> Status {
    const std::optional<int64_t> id = x.is_number_integer() ? json_as_int64(x) : std::nullopt;
    if (!id || *id < 0 || *id > kMaxConfigTokenId) {
      return invalid_input(where + "expected a token id (integer in [0, " +
                           std::to_string(kMaxConfigTokenId) + "]) or a list of them, got " +
                           json_brief(x));
    }
    if (std::find(out->begin(), out->end(), *id) == out->end()) out->push_back(*id);
    return Status::ok();
  };
  if (v.is_null()) return Status::ok();
  if (!v.is_array()) return one(v);
  for (const json& x : v) SHRINK_RETURN_IF_ERROR(one(x));
  return Status::ok();
}
}  // namespace

Result<std::vector<int64_t>> stop_token_ids(const std::string& model_dir, const ModelConfig& c,
                                            int64_t tokenizer_eos) {
  std::vector<int64_t> ids;
  if (c.raw.contains("eos_token_id")) {
    SHRINK_RETURN_IF_ERROR(
        append_ids(c.raw["eos_token_id"], model_dir + "/config.json: field 'eos_token_id': ", &ids));
  } else if (c.eos_token_id) {
    ids.push_back(*c.eos_token_id);
  }
  const std::string gen = model_dir + "/generation_config.json";
  if (!model_dir.empty() && path_exists(gen)) {
    SHRINK_ASSIGN_OR_RETURN(std::string text, read_file(gen));
    SHRINK_ASSIGN_OR_RETURN(json g, json_parse_untrusted(text, gen));
    if (!g.is_object()) {
      return invalid_input(gen + ": " + json_type_name(g) + " at the top level; expected an object");
    }
    if (g.contains("eos_token_id")) {
      SHRINK_RETURN_IF_ERROR(append_ids(g["eos_token_id"], gen + ": field 'eos_token_id': ", &ids));
    }
  }
  if (ids.empty() && tokenizer_eos >= 0) ids.push_back(tokenizer_eos);
  return ids;
}

Status copy_model_sidecars(const std::string& src_dir, const std::string& dst_dir) {
  for (const char* name : {"tokenizer_config.json", "generation_config.json",
                           "special_tokens_map.json", "chat_template.jinja"}) {
    const std::string src = src_dir + "/" + name;
    if (!path_exists(src)) continue;
    SHRINK_ASSIGN_OR_RETURN(std::string text, read_file(src));
    SHRINK_RETURN_IF_ERROR(write_file_atomic(dst_dir + "/" + name, text));
  }
  return Status::ok();
}

}  // namespace shrink::core
