// compressed-tensors int8 scheme parsing and the reference weight quantizer (see quant.h).
#include "runtime/quant.h"

#include <algorithm>
#include <cmath>

#include "core/json_util.h"
#include "core/quant.h"

namespace shrink::runtime {

namespace {

using nlohmann::json;

Status check_int8_args(const json& a, const std::string& where, int64_t bits,
                       bool* symmetric = nullptr) {
  SHRINK_CHECK(a.is_object(), StatusCode::kInvalidInput, "%s: expected an object", where.c_str());
  SHRINK_ASSIGN_OR_RETURN(int64_t num_bits, core::json_int_or(a, "num_bits", 8, 1, 64, where));
  SHRINK_CHECK(num_bits == bits, StatusCode::kInvalidInput,
               "%s.num_bits: %lld is not supported here; expected %lld%s", where.c_str(),
               (long long)num_bits, (long long)bits,
               bits == 4 ? " (format pack-quantized)"
                         : " (format int-quantized; 4-bit weights "
                           "are format pack-quantized)");
  std::string type = a.contains("type") && a["type"].is_string() ? a["type"].get<std::string>() : "int";
  SHRINK_CHECK(type == "int", StatusCode::kInvalidInput,
               "%s.type: '%s' is not supported; expected 'int'", where.c_str(), type.c_str());
  SHRINK_ASSIGN_OR_RETURN(const bool sym, core::json_bool_or(a, "symmetric", true, where));
  SHRINK_CHECK(sym || (symmetric && bits == 4), StatusCode::kInvalidInput,
               "%s.symmetric: false is not supported here; expected true (zero points are "
               "supported for 4-bit weights only)",
               where.c_str());
  if (symmetric) *symmetric = sym;
  return Status::ok();
}

}  // namespace

Result<QuantScheme> quant_scheme_parse(const core::ModelConfig& cfg, const std::string& origin) {
  QuantScheme s;
  if (!cfg.has_quantization()) return s;
  const json& q = cfg.raw["quantization_config"];
  const std::string at = origin + ": quantization_config";
  SHRINK_CHECK(q.is_object(), StatusCode::kInvalidInput, "%s: expected an object", at.c_str());
  std::string method = q.contains("quant_method") && q["quant_method"].is_string()
                           ? q["quant_method"].get<std::string>() : "";
  SHRINK_CHECK(method == "compressed-tensors", StatusCode::kInvalidInput,
               "%s.quant_method: '%s' is not supported; expected 'compressed-tensors'",
               at.c_str(), method.c_str());
  std::string format = q.contains("format") && q["format"].is_string()
                           ? q["format"].get<std::string>() : "int-quantized";
  SHRINK_CHECK(format == "int-quantized" || format == "pack-quantized", StatusCode::kInvalidInput,
               "%s.format: '%s' is not supported; expected 'int-quantized' (8-bit) or "
               "'pack-quantized' (4-bit weights)",
               at.c_str(), format.c_str());
  s.bits = format == "pack-quantized" ? 4 : 8;
  SHRINK_CHECK(q.contains("config_groups") && q["config_groups"].is_object() &&
                   q["config_groups"].size() == 1,
               StatusCode::kInvalidInput,
               "%s.config_groups: expected exactly one group (mixed schemes are not supported)",
               at.c_str());
  const std::string gname = q["config_groups"].begin().key();
  const json& g = q["config_groups"].begin().value();
  const std::string gat = at + ".config_groups." + gname;
  SHRINK_CHECK(g.is_object(), StatusCode::kInvalidInput, "%s: expected an object", gat.c_str());
  if (g.contains("targets")) {
    bool linear = false;
    if (g["targets"].is_array()) {
      for (const auto& t : g["targets"]) linear |= t.is_string() && t.get<std::string>() == "Linear";
    }
    SHRINK_CHECK(linear, StatusCode::kInvalidInput,
                 "%s.targets: %s is not supported; expected [\"Linear\"]", gat.c_str(),
                 core::json_brief(g["targets"]).c_str());
  }
  SHRINK_CHECK(g.contains("weights") && g["weights"].is_object(), StatusCode::kInvalidInput,
               "%s.weights: missing; expected the int8 weight arguments", gat.c_str());
  const json& w = g["weights"];
  SHRINK_RETURN_IF_ERROR(check_int8_args(w, gat + ".weights", s.bits, &s.symmetric));
  SHRINK_CHECK(!(w.contains("dynamic") && w["dynamic"].is_boolean() && w["dynamic"].get<bool>()),
               StatusCode::kInvalidInput, "%s.weights.dynamic: true is not supported",
               gat.c_str());
  std::string strategy = w.contains("strategy") && w["strategy"].is_string()
                             ? w["strategy"].get<std::string>() : "";
  if (strategy == "channel") {
    s.strategy = WeightStrategy::kChannel;
  } else if (strategy == "tensor") {
    s.strategy = WeightStrategy::kTensor;
  } else if (strategy == "group") {
    s.strategy = WeightStrategy::kGroup;
    SHRINK_CHECK(w.contains("group_size") && w["group_size"].is_number_integer(),
                 StatusCode::kInvalidInput,
                 "%s.weights.group_size: %s; expected a positive integer for strategy 'group'",
                 gat.c_str(),
                 w.contains("group_size") ? core::json_brief(w["group_size"]).c_str() : "missing");
    SHRINK_ASSIGN_OR_RETURN(s.group_size, core::json_int_or(w, "group_size", 0, 1,
                                                            int64_t(1) << 30, gat + ".weights"));
  } else {
    return invalid_input(gat + ".weights.strategy: '" + strategy +
                         "' is not supported; expected 'channel', 'group' or 'tensor'");
  }
  SHRINK_CHECK(s.symmetric || s.strategy != WeightStrategy::kTensor, StatusCode::kInvalidInput,
               "%s.weights: symmetric false with strategy 'tensor' is not supported; expected "
               "'channel' or 'group' (a zero point per channel or group)",
               gat.c_str());
  if (g.contains("input_activations") && !g["input_activations"].is_null()) {
    const json& a = g["input_activations"];
    SHRINK_CHECK(s.bits == 8, StatusCode::kInvalidInput,
                 "%s.input_activations: 4-bit weights run with float activations (W4A16); "
                 "expected null",
                 gat.c_str());
    SHRINK_RETURN_IF_ERROR(check_int8_args(a, gat + ".input_activations", 8));
    std::string as = a.contains("strategy") && a["strategy"].is_string()
                         ? a["strategy"].get<std::string>() : "";
    bool dyn = a.contains("dynamic") && a["dynamic"].is_boolean() && a["dynamic"].get<bool>();
    if (as == "tensor" && !dyn) {
      s.act = ActQuant::kStatic;
    } else if (as == "token" && dyn) {
      s.act = ActQuant::kDynamic;
    } else {
      return invalid_input(gat + ".input_activations: strategy '" + as + "' with dynamic " +
                           (dyn ? "true" : "false") +
                           " is not supported; expected tensor/static or token/dynamic");
    }
  }
  if (q.contains("ignore")) {
    SHRINK_CHECK(q["ignore"].is_array(), StatusCode::kInvalidInput,
                 "%s.ignore: expected a list of module names", at.c_str());
    for (const auto& i : q["ignore"]) {
      if (i.is_string()) s.ignore.push_back(i.get<std::string>());
    }
  }
  s.quantized = true;
  return s;
}

std::string quant_scheme_name(const QuantScheme& s) {
  if (!s.quantized) return "f32";
  std::string n = s.act == ActQuant::kNone
                      ? (s.bits == 4 ? (s.symmetric ? "w4a16" : "w4a16-asym") : "w8a16")
                  : s.act == ActQuant::kStatic ? "w8a8-static"
                                               : "w8a8-dynamic";
  if (s.strategy == WeightStrategy::kGroup) n += "/g" + std::to_string(s.group_size);
  if (s.strategy == WeightStrategy::kTensor) n += "/tensor";
  return n;
}

nlohmann::json quant_scheme_to_json(const QuantScheme& s) {
  json w = {
      {"num_bits", s.bits},
      {"type", "int"},
      {"symmetric", s.symmetric},
      {"dynamic", false},
      {"strategy", s.strategy == WeightStrategy::kGroup    ? "group"
                   : s.strategy == WeightStrategy::kTensor ? "tensor"
                                                           : "channel"},
      {"group_size", s.strategy == WeightStrategy::kGroup ? json(s.group_size) : json(nullptr)}};
  json a = nullptr;
  if (s.act == ActQuant::kStatic) {
    a = {{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"strategy", "tensor"}, {"dynamic", false}};
  } else if (s.act == ActQuant::kDynamic) {
    a = {{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"strategy", "token"}, {"dynamic", true}};
  }
  return {{"quant_method", "compressed-tensors"},
          {"format", s.bits == 4 ? "pack-quantized" : "int-quantized"},
          {"config_groups",
           {{"group_0", {{"targets", {"Linear"}}, {"weights", w}, {"input_activations", a}}}}},
          {"ignore", s.ignore}};
}

namespace {
void quant_weight_sym(const float* w, int64_t out, int64_t in, int64_t group, float qmax,
                      float qmin, int8_t* q, float* scale) {
  const int64_t G = (in + group - 1) / group;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = std::min(in, k0 + group);
      float amax = 0;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[o * in + k]));
      const float s = amax > 0 ? amax / qmax : 1.0f;
      scale[o * G + g] = s;
      for (int64_t k = k0; k < k1; ++k) {
        float v = std::nearbyint(w[o * in + k] / s);
        q[o * in + k] = int8_t(std::min(qmax, std::max(qmin, v)));
      }
    }
  }
}
}  // namespace

void quant_weight_s8(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale) {
  quant_weight_sym(w, out, in, group, 127.0f, -127.0f, q, scale);
}

void quant_weight_s4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale) {
  quant_weight_sym(w, out, in, group, float(core::kQMax4), float(core::kQMin4), q, scale);
}

void quant_weight_u4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale, int8_t* zp) {
  const int64_t G = (in + group - 1) / group;
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = std::min(in, k0 + group);
      float lo = 0, hi = 0;  // the range always holds 0, so zero is exact
      for (int64_t k = k0; k < k1; ++k) {
        lo = std::min(lo, w[o * in + k]);
        hi = std::max(hi, w[o * in + k]);
      }
      const float s = hi > lo ? (hi - lo) / float(core::kQMax4 - core::kQMin4) : 1.0f;
      const float z =
          std::min(float(core::kQMax4),
                   std::max(float(core::kQMin4), std::nearbyint(float(core::kQMin4) - lo / s)));
      scale[o * G + g] = s;
      zp[o * G + g] = int8_t(z);
      for (int64_t k = k0; k < k1; ++k) {
        const float v = std::nearbyint(w[o * in + k] / s + z);
        q[o * in + k] = int8_t(std::min(float(core::kQMax4), std::max(float(core::kQMin4), v)));
      }
    }
  }
}

}  // namespace shrink::runtime
