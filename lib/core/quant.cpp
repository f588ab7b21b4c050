// Int8 scheme <-> quantization_config, histograms and observers. See quant.h.
#include "core/quant.h"

#include <algorithm>
#include <limits>

#include "core/json_util.h"

namespace shrink::core {

using json = nlohmann::json;

json quant_config_to_json(const QuantScheme& s) {
  json weights = {{"num_bits", s.bits},
                  {"type", "int"},
                  {"symmetric", s.symmetric},
                  {"strategy", s.weight_strategy},
                  {"group_size", s.weight_strategy == "group" ? json(s.group_size) : json(nullptr)},
                  {"dynamic", false},
                  {"actorder", s.actorder.empty() ? json(nullptr) : json(s.actorder)},
                  {"observer", "minmax"},
                  {"observer_kwargs", json::object()}};
  json acts = nullptr;
  if (s.activations == "static") {
    acts = {{"num_bits", 8},     {"type", "int"},          {"symmetric", true},
            {"strategy", "tensor"}, {"group_size", nullptr}, {"dynamic", false},
            {"observer", s.observer}, {"observer_kwargs", json::object()}};
  } else if (s.activations == "dynamic") {
    acts = {{"num_bits", 8},    {"type", "int"},          {"symmetric", true},
            {"strategy", "token"}, {"group_size", nullptr}, {"dynamic", true},
            {"observer", nullptr}, {"observer_kwargs", json::object()}};
  }
  return {{"quant_method", "compressed-tensors"},
          {"format", s.bits == 4 ? "pack-quantized" : "int-quantized"},
          {"quantization_status", "compressed"},
          {"global_compression_ratio", nullptr},
          {"kv_cache_scheme", nullptr},
          {"ignore", s.ignore},
          {"config_groups",
           {{"group_0",
             {{"targets", {"Linear"}},
              {"weights", weights},
              {"input_activations", acts},
              {"output_activations", nullptr}}}}}};
}

namespace {

// The int arguments of `weights` or `input_activations` at `where`: num_bits must be `bits`
// (the format's), type int, and symmetric unless `asym_ok` (4-bit weights take zero points).
Result<bool> int_args_symmetric(const json& a, const std::string& where, int64_t bits,
                                bool asym_ok) {
  if (!a.is_object()) return invalid_input(where + ": expected an object, got " + json_brief(a));
  SHRINK_ASSIGN_OR_RETURN(const int64_t num_bits, json_int_or(a, "num_bits", 8, 1, 64, where));
  if (num_bits != bits) {
    return invalid_input(where + ".num_bits: " + std::to_string(num_bits) +
                         " is not supported here; expected " + std::to_string(bits) +
                         (bits == 4 ? " (format pack-quantized)"
                                    : " (format int-quantized; 4-bit weights are format "
                                      "pack-quantized)"));
  }
  SHRINK_ASSIGN_OR_RETURN(const std::string type, json_string_or(a, "type", "int", where));
  if (type != "int") {
    return invalid_input(where + ".type: '" + type + "' is not supported; expected 'int'");
  }
  SHRINK_ASSIGN_OR_RETURN(const bool sym, json_bool_or(a, "symmetric", true, where));
  if (!sym && !asym_ok) {
    return invalid_input(where +
                         ".symmetric: false is not supported here; expected true (zero points "
                         "are supported for 4-bit weights only)");
  }
  return sym;
}

// quant_method and format: the weight bits the format stores.
Result<int> weight_bits_of_format(const json& q, const std::string& at) {
  SHRINK_ASSIGN_OR_RETURN(const std::string method, json_string_or(q, "quant_method", "", at));
  if (method != "compressed-tensors") {
    return invalid_input(at + ".quant_method: '" + method +
                         "' is not supported; expected 'compressed-tensors'");
  }
  SHRINK_ASSIGN_OR_RETURN(const std::string format,
                          json_string_or(q, "format", "int-quantized", at));
  if (format == "pack-quantized") return 4;
  if (format == "int-quantized" || format == "naive-quantized") return 8;
  return invalid_input(at + ".format: '" + format +
                       "' is not supported; expected 'int-quantized' (8-bit) or "
                       "'pack-quantized' (4-bit weights)");
}

// config_groups: exactly one group, targeting Linear; its path is written to *gat.
Result<const json*> the_config_group(const json& q, const std::string& at, std::string* gat) {
  const json* groups = q.contains("config_groups") ? &q["config_groups"] : nullptr;
  if (!groups || !groups->is_object() || groups->size() != 1) {
    return invalid_input(at +
                         ".config_groups: expected exactly one group (mixed schemes are not "
                         "supported)");
  }
  *gat = at + ".config_groups." + groups->begin().key();
  const json& g = groups->begin().value();
  if (!g.is_object()) return invalid_input(*gat + ": expected an object, got " + json_brief(g));
  if (g.contains("targets")) {
    const json& t = g["targets"];
    const bool linear = t.is_array() && std::any_of(t.begin(), t.end(), [](const json& x) {
                          return x.is_string() && x.get<std::string>() == "Linear";
                        });
    if (!linear) {
      return invalid_input(*gat + ".targets: " + json_brief(t) +
                           " is not supported; expected [\"Linear\"]");
    }
  }
  return &g;
}

// The group's `weights`: symmetry, strategy (and group size) and GPTQ's actorder.
Status read_weights(const json& g, const std::string& gat, QuantScheme* s) {
  const std::string wat = gat + ".weights";
  if (!g.contains("weights") || !g["weights"].is_object()) {
    return invalid_input(wat + ": missing; expected the int weight arguments");
  }
  const json& w = g["weights"];
  SHRINK_ASSIGN_OR_RETURN(s->symmetric, int_args_symmetric(w, wat, s->bits, s->bits == 4));
  SHRINK_ASSIGN_OR_RETURN(const bool dynamic, json_bool_or(w, "dynamic", false, wat));
  if (dynamic) return invalid_input(wat + ".dynamic: true is not supported");
  if (w.contains("actorder") && w["actorder"].is_string()) s->actorder = w["actorder"];
  SHRINK_ASSIGN_OR_RETURN(s->weight_strategy, json_string_or(w, "strategy", "channel", wat));
  if (s->weight_strategy == "group") {
    if (!w.contains("group_size") || !w["group_size"].is_number_integer()) {
      const std::string got = w.contains("group_size") ? json_brief(w["group_size"]) : "missing";
      return invalid_input(wat + ".group_size: " + got +
                           "; expected a positive integer for strategy 'group'");
    }
    SHRINK_ASSIGN_OR_RETURN(s->group_size,
                            json_int_or(w, "group_size", 0, 1, int64_t(1) << 30, wat));
  } else if (s->weight_strategy != "channel" && s->weight_strategy != "tensor") {
    return invalid_input(wat + ".strategy: '" + s->weight_strategy +
                         "' is not supported; expected 'channel', 'group' or 'tensor'");
  }
  if (!s->symmetric && s->weight_strategy == "tensor") {
    return invalid_input(wat +
                         ": symmetric false with strategy 'tensor' is not supported; expected "
                         "'channel' or 'group' (a zero point per channel or group)");
  }
  return Status::ok();
}

// The group's `input_activations`: none (null), static per tensor or dynamic per token.
Status read_input_activations(const json& g, const std::string& gat, QuantScheme* s) {
  if (!g.contains("input_activations") || g["input_activations"].is_null()) return Status::ok();
  const json& a = g["input_activations"];
  const std::string aat = gat + ".input_activations";
  SHRINK_RETURN_IF_ERROR(int_args_symmetric(a, aat, 8, false).status());
  SHRINK_ASSIGN_OR_RETURN(const std::string st, json_string_or(a, "strategy", "tensor", aat));
  SHRINK_ASSIGN_OR_RETURN(const bool dyn, json_bool_or(a, "dynamic", false, aat));
  if (s->bits == 4 && !(st == "token" && dyn)) {
    return invalid_input(aat + ": strategy '" + st + "' with dynamic " + (dyn ? "true" : "false") +
                         " is not supported with 4-bit weights; expected null (W4A16) or "
                         "token/dynamic (W4A8)");
  }
  if (st == "tensor" && !dyn) {
    s->activations = "static";
  } else if (st == "token" && dyn) {
    s->activations = "dynamic";
  } else {
    return invalid_input(aat + ": strategy '" + st + "' with dynamic " + (dyn ? "true" : "false") +
                         " is not supported; expected tensor/static or token/dynamic");
  }
  if (a.contains("observer") && a["observer"].is_string()) s->observer = a["observer"];
  return Status::ok();
}

// `ignore`: the module names (or "re:<regex>") kept in float.
Result<std::vector<std::string>> read_ignore(const json& q, const std::string& at) {
  std::vector<std::string> ignore;
  if (!q.contains("ignore") || q["ignore"].is_null()) return ignore;
  if (!q["ignore"].is_array()) {
    return invalid_input(at + ".ignore: expected a list of module names, got " +
                         json_brief(q["ignore"]));
  }
  for (const json& x : q["ignore"]) {
    if (x.is_string()) ignore.push_back(x.get<std::string>());
  }
  return ignore;
}

}  // namespace

Result<QuantScheme> quant_config_from_json(const json& j) {
  const std::string at = "quantization_config";
  if (!j.is_object()) return invalid_input(at + ": expected an object, got " + json_brief(j));
  QuantScheme s;
  SHRINK_ASSIGN_OR_RETURN(s.bits, weight_bits_of_format(j, at));
  std::string gat;
  SHRINK_ASSIGN_OR_RETURN(const json* g, the_config_group(j, at, &gat));
  SHRINK_RETURN_IF_ERROR(read_weights(*g, gat, &s));
  SHRINK_RETURN_IF_ERROR(read_input_activations(*g, gat, &s));
  SHRINK_ASSIGN_OR_RETURN(s.ignore, read_ignore(j, at));
  return s;
}

std::string quant_scheme_name(const QuantScheme& s) {
  std::string n = s.bits == 4 ? std::string(s.activations == "none" ? "w4a16" : "w4a8") +
                                    (s.symmetric ? "" : "-asym")
                  : s.activations != "none" ? "w8a8-" + s.activations
                                            : "w8a16";
  if (s.weight_strategy == "group") n += "/g" + std::to_string(s.group_size);
  if (s.weight_strategy == "tensor") n += "/tensor";
  return n;
}

Status quant_scheme_check_channel_or_group(const QuantScheme& s) {
  if (s.weight_strategy == "channel" || s.weight_strategy == "group") return Status::ok();
  return invalid_input("quantization_config: weights.strategy '" + s.weight_strategy +
                       "' is not supported here; expected 'channel' or 'group' (per-tensor "
                       "scales are read by the runtime only)");
}

Status quant_scheme_validate(const QuantScheme& s, const std::vector<int64_t>& in_features) {
  if (s.bits != 8 && s.bits != 4) {
    return invalid_input("bits " + std::to_string(s.bits) + " is not supported; expected 8 or 4");
  }
  if (s.bits == 4 && s.activations == "static") {
    return invalid_input("4-bit weights run with float activations (W4A16) or int8 activations "
                         "per token (W4A8, dynamic); static activation scales are not supported");
  }
  if (!s.symmetric && s.bits != 4) {
    return invalid_input(
        "asymmetric weights (zero points) need 4 bits (W4A16, W4A8); 8-bit weights "
        "are symmetric");
  }
  if (s.weight_strategy == "group") {
    if (s.group_size != 32 && s.group_size != 64 && s.group_size != 128) {
      return invalid_input("group size " + std::to_string(s.group_size) + " is not supported; "
                           "expected 32, 64 or 128");
    }
    for (int64_t k : in_features) {
      if (k % s.group_size != 0) {
        return invalid_input("group size " + std::to_string(s.group_size) +
                             " does not divide the input width K = " + std::to_string(k) +
                             " of a layer; choose a group size that divides every K");
      }
    }
  }
  if (s.activations != "none" && s.activations != "static" && s.activations != "dynamic") {
    return invalid_input("activations '" + s.activations + "': expected none, static or dynamic");
  }
  const std::string& o = s.observer;
  if (o != "minmax" && o != "ema" && o != "percentile" && o != "mse" && o != "entropy") {
    return invalid_input("observer '" + o + "' is unknown; expected minmax, ema, percentile, mse "
                         "or entropy");
  }
  return Status::ok();
}

// ---- Histogram ----------------------------------------------------------------------------------

void AbsHistogram::grow_to(double v) {
  const size_t B = counts_.size();
  if (width_ == 0) {
    width_ = v > 0 ? v * (1.0 + 1e-6) / double(B) : 0.0;
    return;
  }
  while (v >= width_ * double(B)) {  // merge pairs of bins: the range doubles
    for (size_t i = 0; i < B / 2; ++i) counts_[i] = counts_[2 * i] + counts_[2 * i + 1];
    std::fill(counts_.begin() + long(B / 2), counts_.end(), 0.0);
    width_ *= 2;
  }
}

void AbsHistogram::add(const float* x, int64_t n) {
  float mx = 0;
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, std::fabs(x[i]));
  if (mx > 0) grow_to(mx);
  max_ = std::max(max_, double(mx));
  const size_t B = counts_.size();
  if (width_ == 0) {  // all zeros so far
    counts_[0] += double(n);
  } else {
    const double inv = 1.0 / width_;
    for (int64_t i = 0; i < n; ++i) {
      size_t b = size_t(std::fabs(x[i]) * inv);
      counts_[std::min(b, B - 1)] += 1.0;
    }
  }
  total_ += double(n);
}

double observer_percentile(const AbsHistogram& h, double p) {
  if (h.total() == 0 || h.bin_width() == 0) return h.max();
  const double want = p / 100.0 * h.total();
  double cum = 0;
  const auto& c = h.counts();
  for (size_t i = 0; i < c.size(); ++i) {
    if (cum + c[i] >= want) {
      // Linear interpolation inside the bin.
      double frac = c[i] > 0 ? (want - cum) / c[i] : 1.0;
      return std::min(h.max(), (double(i) + frac) * h.bin_width());
    }
    cum += c[i];
  }
  return h.max();
}

double observer_mse(const AbsHistogram& h) {
  if (h.total() == 0 || h.bin_width() == 0) return h.max();
  const auto& c = h.counts();
  const double w = h.bin_width();
  size_t used = c.size();
  while (used > 1 && c[used - 1] == 0) --used;
  double best_t = h.max(), best_e = std::numeric_limits<double>::infinity();
  // Candidate thresholds at bin edges from 1/64 of the range to the max.
  for (size_t k = std::max<size_t>(1, used / 64); k <= used; ++k) {
    const double t = std::min(double(k) * w, h.max());
    const double step = t / kQMax;
    double e = 0;
    for (size_t i = 0; i < used; ++i) {
      if (c[i] == 0) continue;
      const double x = (double(i) + 0.5) * w;
      if (x > t) {
        e += c[i] * (x - t) * (x - t);  // clipped
      } else if (w >= step) {
        e += c[i] * step * step / 12.0;  // a bin spans several steps: uniform rounding error
      } else {
        const double r = x - step * std::nearbyint(x / step);  // the bin center's own error
        e += c[i] * r * r;
      }
    }
    if (e < best_e) {
      best_e = e;
      best_t = t;
    }
  }
  return best_t;
}

double observer_entropy(const AbsHistogram& h) {
  if (h.total() == 0 || h.bin_width() == 0) return h.max();
  const auto& c = h.counts();
  const size_t B = c.size();
  const size_t levels = kQMax + 1;  // 128 quantization bins for |x|
  size_t used = B;
  while (used > levels && c[used - 1] == 0) --used;
  double best_kl = std::numeric_limits<double>::infinity();
  size_t best_i = used;
  std::vector<double> p, q;
  for (size_t i = levels; i <= used; ++i) {
    // Reference: the first i bins with the clipped tail folded into the last.
    p.assign(c.begin(), c.begin() + long(i));
    for (size_t k = i; k < B; ++k) p[i - 1] += c[k];
    // Candidate: the unclipped first i bins merged into 128 levels, each level's mass spread
    // evenly over the bins where P is nonzero. The clipped tail is in P only: that is what
    // makes clipping cost KL.
    q.assign(i, 0.0);
    for (size_t lv = 0; lv < levels; ++lv) {
      size_t a = lv * i / levels, b = (lv + 1) * i / levels;
      double mass = 0;
      size_t nz = 0;
      for (size_t k = a; k < b; ++k) {
        mass += c[k];
        nz += p[k] != 0;
      }
      for (size_t k = a; k < b; ++k) {
        if (p[k] != 0) q[k] = mass / double(nz);
      }
    }
    double sp = 0, sq = 0;
    for (size_t k = 0; k < i; ++k) {
      sp += p[k];
      sq += q[k];
    }
    double kl = 0;
    for (size_t k = 0; k < i; ++k) {
      if (p[k] == 0) continue;
      double pk = p[k] / sp, qk = q[k] / sq;
      // q is 0 where only the folded tail lives: a large finite penalty, as for no support.
      kl += qk > 0 ? pk * std::log(pk / qk) : pk * 50.0;
    }
    if (kl < best_kl) {
      best_kl = kl;
      best_i = i;
    }
  }
  return std::min(h.max(), double(best_i) * h.bin_width());
}

int64_t int4_default_group(const std::vector<int64_t>& in_features) {
  int64_t g = 128;
  while (g > 32 &&
         std::any_of(in_features.begin(), in_features.end(), [&](int64_t k) { return k % g != 0; }))
    g /= 2;
  return g;
}

namespace {

// Round half to even for |v| <= 2^22, as nearbyint under the default rounding mode: adding
// 1.5 * 2^23 leaves no fraction bits, so the addition itself rounds. Exact here (the scaled
// weights lie within a few steps of [-127, 127]) and, unlike nearbyint without SSE4.1, it
// vectorizes.
inline float round_small(float v) {
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// Symmetric: one group's scale and values.
float rtn_group_symmetric(const float* w, int64_t n, int qmin, int qmax, int8_t* q) {
  float amax = 0.f;
  for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(w[k]));
  const float scale = amax > 0.f ? amax / float(qmax) : 1.f;
  const float inv = 1.f / scale;
  for (int64_t k = 0; k < n; ++k) {
    const float r = round_small(w[k] * inv);
    q[k] = int8_t(std::min(std::max(r, float(qmin)), float(qmax)));
  }
  return scale;
}

// Asymmetric 4-bit: one group's scale, zero point and values.
float rtn_group_asymmetric(const float* w, int64_t n, int8_t* q, int8_t* zp) {
  float lo = 0.f, hi = 0.f;  // min(w, 0) and max(w, 0)
  for (int64_t k = 0; k < n; ++k) {
    lo = std::min(lo, w[k]);
    hi = std::max(hi, w[k]);
  }
  const float range = hi - lo;
  const float scale = range > 0.f ? range / float(kQMax4 - kQMin4) : 1.f;
  const float z = std::min(std::max(std::nearbyint(float(kQMin4) - lo / scale), float(kQMin4)),
                           float(kQMax4));
  *zp = int8_t(z);
  const float inv = 1.f / scale;
  for (int64_t k = 0; k < n; ++k) {
    const float r = round_small(w[k] * inv + z);
    q[k] = int8_t(std::min(std::max(r, float(kQMin4)), float(kQMax4)));
  }
  return scale;
}

}  // namespace

Status rtn_quantize_rows(const float* w, int64_t rows, int64_t cols, int64_t group, int bits,
                         bool asym, int8_t* q, float* scale, int8_t* zp) {
  if (bits != 8 && bits != 4) return invalid_input("rtn: bits must be 8 or 4");
  if (asym && bits != 4) return invalid_input("rtn: asymmetric weights need 4 bits");
  const int64_t gs = group > 0 ? group : cols;
  if (gs <= 0 || cols % gs != 0) return invalid_input("rtn: group size does not divide the inputs");
  const int64_t groups = cols / gs;
  const int qmax = bits == 4 ? kQMax4 : kQMax, qmin = bits == 4 ? kQMin4 : -kQMax;
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      if (!std::isfinite(wr[c])) {
        return invalid_input("non-finite weight " + std::to_string(wr[c]) + " at row " +
                               std::to_string(r) + ", column " + std::to_string(c));
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t at = r * cols + g * gs;
      scale[r * groups + g] = asym ? rtn_group_asymmetric(w + at, gs, q + at, zp + r * groups + g)
                                   : rtn_group_symmetric(w + at, gs, qmin, qmax, q + at);
    }
  }
  return Status::ok();
}

void int4_pack(const int8_t* q, int64_t rows, int64_t cols, uint8_t* out) {
  const int64_t bytes = int4_packed_cols(cols) * 4;
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* o = out + r * bytes;
    for (int64_t j = 0; j < bytes; ++j) {
      const int64_t k = 2 * j;
      const int lo = k < cols ? q[r * cols + k] + 8 : 8;
      const int hi = k + 1 < cols ? q[r * cols + k + 1] + 8 : 8;
      o[j] = uint8_t(lo | (hi << 4));
    }
  }
}

void int4_unpack(const uint8_t* packed, int64_t rows, int64_t cols, int8_t* q) {
  const int64_t bytes = int4_packed_cols(cols) * 4;
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* p = packed + r * bytes;
    for (int64_t k = 0; k < cols; ++k) {
      const uint8_t b = p[k / 2];
      q[r * cols + k] = int8_t(((k & 1) ? (b >> 4) : (b & 15)) - 8);
    }
  }
}

Result<std::vector<int32_t>> group_order_from_g_idx(const std::vector<int64_t>& g_idx,
                                                    int64_t group, const std::string& where) {
  const int64_t in = int64_t(g_idx.size());
  if (group <= 0) return invalid_input(where + ": g_idx needs group-wise weights (strategy group)");
  const int64_t G = (in + group - 1) / group;
  std::vector<int64_t> count(size_t(G), 0);
  bool identity = true;
  for (int64_t k = 0; k < in; ++k) {
    const int64_t g = g_idx[size_t(k)];
    if (g < 0 || g >= G) {
      return invalid_input(where + "[" + std::to_string(k) + "] is " + std::to_string(g) +
                           "; expected a group index in [0, " + std::to_string(G) + ")");
    }
    count[size_t(g)]++;
    identity &= g == k / group;
  }
  for (int64_t g = 0; g < G; ++g) {
    const int64_t want = std::min(group, in - g * group);
    if (count[size_t(g)] != want) {
      return invalid_input(where + ": group " + std::to_string(g) + " has " +
                           std::to_string(count[size_t(g)]) + " columns; expected " +
                           std::to_string(want) + " (group_size " + std::to_string(group) + ")");
    }
  }
  std::vector<int32_t> order;
  if (identity) return order;
  order.resize(size_t(in));
  std::vector<int64_t> pos(static_cast<size_t>(G));
  for (int64_t g = 0; g < G; ++g) pos[size_t(g)] = g * group;
  for (int64_t k = 0; k < in; ++k) order[size_t(pos[size_t(g_idx[size_t(k)])]++)] = int32_t(k);
  return order;
}

void int4_pack_rows(const int8_t* v, int64_t rows, int64_t cols, uint8_t* out) {
  const int64_t words = int4_packed_cols(rows);
  for (int64_t w = 0; w < words; ++w) {
    for (int64_t c = 0; c < cols; ++c) {
      uint32_t word = 0;
      for (int i = 0; i < 8; ++i) {
        const int64_t r = w * 8 + i;
        const uint32_t nib = r < rows ? uint32_t(v[r * cols + c] + 8) : 8u;
        word |= (nib & 15u) << (4 * i);
      }
      uint8_t* o = out + (w * cols + c) * 4;  // little-endian int32
      for (int b = 0; b < 4; ++b) o[b] = uint8_t(word >> (8 * b));
    }
  }
}

void int4_unpack_rows(const uint8_t* packed, int64_t rows, int64_t cols, int8_t* v) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t* p = packed + ((r / 8) * cols + c) * 4;
      const uint32_t word =
          uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
      v[r * cols + c] = int8_t(int((word >> (4 * (r % 8))) & 15u) - 8);
    }
  }
}

}  // namespace shrink::core
