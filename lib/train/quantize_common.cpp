// See quantize_common.h.
#include "train/quantize_common.h"

#include <sys/resource.h>

#include <cstring>
#include <filesystem>
#include <regex>

#include "core/fs.h"
#include "core/status.h"

namespace shrink::train {

namespace fs = std::filesystem;

core::QuantScheme quant_scheme_for(const QuantizeOptions& o, const core::ModelConfig& cfg) {
  core::QuantScheme scheme;
  const int bits = o.scheme == "w4a16" || o.scheme == "w4a8" ? 4 : 8;
  const std::vector<int64_t> ks = {cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size};
  const int64_t group_size =
      bits == 4 && o.group_size == 0 ? core::int4_default_group(ks) : o.group_size;
  scheme.bits = bits;
  scheme.symmetric = !o.asym;
  // Per channel (a 4-bit width no group size divides) there are no groups to reorder.
  scheme.actorder = o.act_order ? (o.act_order_groups && group_size > 0 ? "group" : "static") : "";
  scheme.weight_strategy = group_size > 0 ? "group" : "channel";
  scheme.group_size = group_size;
  scheme.activations = o.scheme == "w8a8" ? o.activations : o.scheme == "w4a8" ? "dynamic" : "none";
  scheme.observer = o.observer;
  throw_if_error(core::quant_scheme_validate(scheme, ks));
  return scheme;
}

bool head_targeted(const QuantizeOptions& o) {
  const bool has_ignore = !o.ignore.empty();
  return std::regex_match("lm_head", std::regex(o.targets)) &&
         !(has_ignore && std::regex_match("lm_head", std::regex(o.ignore)));
}

core::ModelConfig output_config(const core::ModelConfig& in, bool head) {
  core::ModelConfig out = in;
  if (head && in.tie_word_embeddings) {
    out.tie_word_embeddings = false;
    out.raw["tie_word_embeddings"] = false;
  }
  return out;
}

std::string source_name(const core::ModelConfig& in, const std::string& name) {
  return name == "lm_head.weight" && in.tie_word_embeddings ? "model.embed_tokens.weight" : name;
}

std::vector<std::string> quant_heads(const QuantizeOptions& o, int64_t num_layers) {
  const std::regex targets(o.targets);
  const bool has_ignore = !o.ignore.empty();
  const std::regex ignore = has_ignore ? std::regex(o.ignore) : std::regex();
  std::vector<std::string> heads;
  for (int64_t i = 0; i < num_layers; ++i) {
    for (const char* g : kGroupHeads) {
      std::string head = "model.layers." + std::to_string(i) + "." + g;
      if (std::regex_match(head, targets) && !(has_ignore && std::regex_match(head, ignore))) {
        heads.push_back(head);
      }
    }
  }
  if (heads.empty() && !head_targeted(o)) {
    throw Error(StatusCode::kInvalidInput, "--targets '" + o.targets + "' selects no linear layer");
  }
  return heads;
}

std::string short_group(const std::string& head) {
  for (auto [a, b] : {std::pair{"q_proj", "qkv"}, {"o_proj", "o"}, {"gate_proj", "gate_up"}, {"down_proj", "down"}}) {
    size_t p = head.rfind(a);
    if (p != std::string::npos && p + std::strlen(a) == head.size()) return b;
  }
  return head;
}

std::vector<std::string> group_modules(const std::string& head) {
  std::string base = head.substr(0, head.rfind('.') + 1);
  std::string g = short_group(head);
  if (g == "qkv") return {base + "q_proj", base + "k_proj", base + "v_proj"};
  if (g == "gate_up") return {base + "gate_proj", base + "up_proj"};
  return {head};
}

ModuleSplit modules_split(const std::vector<std::string>& heads,
                          const std::set<std::string>& kept_float, bool head) {
  ModuleSplit split;
  if (head) {
    split.ignore.clear();
    split.quantized.insert("lm_head");
  }
  for (const auto& h : heads) {
    for (const auto& mod : group_modules(h)) {
      if (kept_float.count(h)) split.ignore.push_back(mod);
      else split.quantized.insert(mod);
    }
  }
  return split;
}

core::DType float_dtype(const core::ModelConfig& cfg) {
  const char* name = cfg.dtype == "float32" ? "F32" : cfg.dtype == "float16" ? "F16" : "BF16";
  return core::dtype_from_name(name).value();
}

std::vector<core::TensorView> quantized_plan(const core::ModelConfig& cfg,
                                             const core::QuantScheme& s,
                                             const std::set<std::string>& quantized) {
  std::vector<core::TensorView> plan;
  auto add = [&](const std::string& name, core::DType dt, std::vector<int64_t> shape) {
    uint64_t n = core::dtype_size(dt);
    for (int64_t d : shape) n *= uint64_t(d);
    plan.push_back({name, dt, std::move(shape), nullptr, n});
  };
  const core::DType fdt = float_dtype(cfg);
  for (const core::TensorSpec& spec : core::expected_tensors(cfg)) {
    const std::string& name = spec.name;
    const bool weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    const std::string mod = weight ? name.substr(0, name.size() - 7) : name;
    if (!(weight && quantized.count(mod))) {
      add(name, fdt, spec.shape);
      continue;
    }
    const int64_t rows = spec.shape[0], cols = spec.shape[1];
    const int64_t groups = s.group_size > 0 ? cols / s.group_size : 1;
    if (s.bits == 4) {
      add(mod + ".weight_packed", core::DType::kI32, {rows, core::int4_packed_cols(cols)});
      add(mod + ".weight_shape", core::DType::kI64, {2});
      if (!s.symmetric) {
        add(mod + ".weight_zero_point", core::DType::kI32, {core::int4_packed_cols(rows), groups});
      }
    } else {
      add(name, core::DType::kI8, {rows, cols});
    }
    add(mod + ".weight_scale", core::DType::kF32, {rows, groups});
    if (s.actorder == "group") add(mod + ".weight_g_idx", core::DType::kI32, {cols});
    if (s.activations == "static") add(mod + ".input_scale", core::DType::kF32, {1});
  }
  return plan;
}

uint64_t quantized_plan_bytes(const std::vector<core::TensorView>& plan) {
  uint64_t n = 0;
  for (const core::TensorView& t : plan) {
    const bool shape_record = t.name.size() > 13 &&
                              t.name.compare(t.name.size() - 13, 13, ".weight_shape") == 0;
    if (!shape_record) n += t.nbytes;
  }
  return n;
}

nlohmann::json quant_format_report(const QuantizeOptions& o, const core::QuantScheme& s) {
  const bool stat = s.activations == "static";
  return {{"scheme", o.scheme},
          {"activations", s.activations},
          {"weights", s.weight_strategy},
          {"group_size", s.group_size},
          {"bits", s.bits},
          {"symmetric", !o.asym},
          {"observer", stat ? nlohmann::json(o.observer) : nlohmann::json(nullptr)},
          {"smoothquant",
           o.smoothquant.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.smoothquant)},
          {"rounding", s.bits == 4 ? (o.asym ? "half-to-even, q = clamp(w / scale + zp, -8, 7)"
                                             : "half-to-even, clamp [-8, 7]")
                                   : "half-to-even, clamp [-127, 127]"},
          {"method", o.method}};
}

void quantized_sidecars_write(const QuantizeOptions& o, core::QuantScheme scheme,
                              const std::vector<std::string>& ignore, core::ModelConfig cfg,
                              const std::string& dir) {
  const std::string model_tokenizer = o.model + "/tokenizer.json";
  const std::string tokenizer =
      !o.tokenizer.empty() ? o.tokenizer : (fs::exists(model_tokenizer) ? model_tokenizer : "");
  scheme.ignore = ignore;
  cfg.raw["quantization_config"] = core::quant_config_to_json(scheme);
  throw_if_error(core::write_file_atomic(dir + "/config.json", core::config_to_json(cfg)));
  if (!tokenizer.empty()) {
    throw_if_error(core::write_file_atomic(dir + "/tokenizer.json",
                                           core::read_file(tokenizer).take_or_throw()));
  }
  throw_if_error(core::copy_model_sidecars(o.model, dir));
  nlohmann::json prov = {{"stage", "quantize"},    {"from", o.model},
                         {"scheme", o.scheme},     {"activations", scheme.activations},
                         {"observer", o.observer}, {"smoothquant", o.smoothquant},
                         {"method", o.method},     {"awq", o.awq},
                         {"asym", o.asym}};
  throw_if_error(core::write_file_atomic(dir + "/shrink.json", prov.dump(2) + "\n"));
}

core::ScratchBuffer calibration_states(const std::string& out, const std::string& max_memory,
                                       uint64_t bytes) {
  const uint64_t budget = core::bytes_parse(max_memory).take_or_throw();
  const std::string dir = fs::path(out).parent_path().string();
  return core::ScratchBuffer::create(bytes, bytes > budget, dir.empty() ? "." : dir).take_or_throw();
}

bool quantize_is_model_free(const QuantizeOptions& o) {
  return !o.load_model && o.method == "rtn" && !o.awq && o.smoothquant.empty() &&
         !(o.scheme == "w8a8" && o.activations == "static") && !o.sensitivity;
}

}  // namespace shrink::train
