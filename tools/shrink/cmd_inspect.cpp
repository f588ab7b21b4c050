// `shrink inspect MODEL_DIR`: architecture, parameters per module type, dtypes and bytes,
// per-tensor sparsity and quantization info. It validates the checkpoint against config.json
// first (exit 2 with the list of missing / unexpected / mis-shaped tensors).
#include <cstdio>
#include <map>
#include <vector>

#include "core/model_config.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace {

// Exact zeros in a tensor (float dtypes compare after conversion, so -0.0 counts as zero).
uint64_t count_zeros(const core::Checkpoint& ck, const core::TensorInfo& t) {
  const uint8_t* p = ck.data(t);
  const int64_t n = t.numel();
  uint64_t z = 0;
  if (core::dtype_is_float(t.dtype)) {
    std::vector<float> buf(size_t(std::min<int64_t>(n, 1 << 16)));
    const size_t es = core::dtype_size(t.dtype);
    for (int64_t i = 0; i < n; i += int64_t(buf.size())) {
      int64_t m = std::min<int64_t>(int64_t(buf.size()), n - i);
      core::convert_to_f32(t.dtype, p + size_t(i) * es, buf.data(), m);
      for (int64_t k = 0; k < m; ++k) z += buf[size_t(k)] == 0.0f;
      ck.release(t, uint64_t(i) * es, uint64_t(m) * es);  // read once: memory stays flat
    }
  } else {
    const size_t es = core::dtype_size(t.dtype);
    for (int64_t i = 0; i < n; ++i) {
      bool zero = true;
      for (size_t b = 0; b < es; ++b) zero &= p[size_t(i) * es + b] == 0;
      z += zero;
    }
  }
  return z;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

double fraction(uint64_t part, uint64_t whole) {
  return whole ? double(part) / double(whole) : 0.0;
}
double percent(uint64_t part, uint64_t whole) {
  return whole ? 100.0 * double(part) / double(whole) : 0.0;
}

struct InspectArgs {
  std::string model;
  bool tensors = false;
};

// The tensors of one module type (q_proj, embed_tokens, ...), summed.
struct ModuleRow {
  uint64_t tensors = 0, params = 0, bytes = 0, zeros = 0;
  std::map<std::string, int> dtypes;
};

// What inspect reports about a checkpoint's tensors: per module type, per dtype, in total, and
// one JSON row per tensor.
struct Tally {
  std::map<std::string, ModuleRow> by_module;
  std::map<std::string, uint64_t> dtype_bytes;
  uint64_t params = 0, bytes = 0, zeros = 0;
  nlohmann::json tensors = nlohmann::json::array();
};

// Every tensor config.json expects (core::checkpoint_check has found them all), counted.
Tally tensors_tally(const core::ModelConfig& c, const core::Checkpoint& ck) {
  Tally t;
  for (const core::TensorSpec& s : core::expected_tensors(c)) {
    const core::TensorInfo* info = ck.find(s.name);
    const uint64_t z = count_zeros(ck, *info);
    ck.release(*info, 0, info->nbytes);  // integer tensors are counted whole
    const uint64_t n = uint64_t(info->numel());
    // 4-bit weights are read as I8 but stored packed: report what is stored.
    const core::TensorInfo* packed = ck.packed_of(s.name);
    const std::string dt = packed ? "I4" : core::dtype_name(info->dtype);
    const uint64_t nbytes = packed ? packed->nbytes : info->nbytes;
    ModuleRow& r = t.by_module[core::tensor_role_name(s.role)];
    r.tensors++;
    r.params += n;
    r.bytes += nbytes;
    r.zeros += z;
    r.dtypes[dt]++;
    t.params += n;
    t.bytes += nbytes;
    t.zeros += z;
    t.dtype_bytes[dt] += nbytes;
    t.tensors.push_back({{"name", s.name},
                         {"shape", info->shape},
                         {"dtype", dt},
                         {"bytes", nbytes},
                         {"file", ck.file_of(s.name)},
                         {"sparsity", fraction(z, n)}});
  }
  return t;
}

const char* rope_name(const core::ModelConfig& c) {
  return c.rope_scaling.type == core::RopeType::kDefault  ? "default"
         : c.rope_scaling.type == core::RopeType::kLinear ? "linear"
                                                           : "llama3";
}

nlohmann::json quantization_json(const core::ModelConfig& c) {
  return c.has_quantization() ? c.raw["quantization_config"] : nlohmann::json(nullptr);
}

nlohmann::json config_json(const core::ModelConfig& c) {
  return {{"architecture", core::arch_name(c.arch)},
          {"layers", c.num_layers},
          {"hidden_size", c.hidden_size},
          {"intermediate_size", c.intermediate_size},
          {"attention_heads", c.num_heads},
          {"kv_heads", c.num_kv_heads},
          {"head_dim", c.head_dim},
          {"vocab_size", c.vocab_size},
          {"max_position_embeddings", c.max_position_embeddings},
          {"rope_theta", c.rope_theta},
          {"rope_scaling", rope_name(c)},
          {"qkv_bias", c.qkv_bias},
          {"tie_word_embeddings", c.tie_word_embeddings},
          {"sliding_window",
           c.sliding_window ? nlohmann::json(*c.sliding_window) : nlohmann::json(nullptr)}};
}

nlohmann::json inspect_json(const std::string& model, const core::ModelConfig& c,
                            const core::Checkpoint& ck, const Tally& t) {
  nlohmann::json modules = nlohmann::json::object();
  for (const auto& [name, r] : t.by_module) {
    modules[name] = {{"tensors", r.tensors},
                     {"parameters", r.params},
                     {"bytes", r.bytes},
                     {"dtypes", r.dtypes},
                     {"sparsity", fraction(r.zeros, r.params)}};
  }
  return {{"model", model},
          {"valid", true},
          {"config", config_json(c)},
          {"parameters", t.params},
          {"bytes", t.bytes},
          {"dtype_bytes", t.dtype_bytes},
          {"files", ck.num_files()},
          {"sparsity", fraction(t.zeros, t.params)},
          {"modules", modules},
          {"quantization", quantization_json(c)},
          {"tensors", t.tensors}};
}

// The model's architecture, sizes, sparsity and quantization, one line each.
void print_summary(const std::string& model, const core::ModelConfig& c, const core::Checkpoint& ck,
                   const Tally& t) {
  const char* attn = c.num_kv_heads == c.num_heads ? "MHA"
                     : c.num_kv_heads == 1         ? "MQA"
                                                   : "GQA";
  std::printf("model         %s  (checkpoint valid: %zu file%s)\n", model.c_str(), ck.num_files(),
              ck.num_files() == 1 ? "" : "s");
  std::printf("architecture  %s: %lld layers, hidden %lld, MLP %lld, vocab %lld\n",
              core::arch_name(c.arch), (long long)c.num_layers, (long long)c.hidden_size,
              (long long)c.intermediate_size, (long long)c.vocab_size);
  std::printf("attention     %s: %lld heads, %lld kv heads, head_dim %lld%s%s\n", attn,
              (long long)c.num_heads, (long long)c.num_kv_heads, (long long)c.head_dim,
              c.qkv_bias ? ", q/k/v bias" : "",
              c.sliding_window ? (", sliding window " + std::to_string(*c.sliding_window)).c_str()
                               : "");
  std::printf("rope          theta %g, scaling %s; max positions %lld\n", c.rope_theta,
              rope_name(c), (long long)c.max_position_embeddings);
  std::printf("lm_head       %s\n", c.tie_word_embeddings ? "tied to embed_tokens" : "separate");
  std::printf("parameters    %s (%llu), %s", core::human_count(double(t.params)).c_str(),
              (unsigned long long)t.params, core::human_bytes(double(t.bytes)).c_str());
  for (const auto& [d, b] : t.dtype_bytes) {
    std::printf("; %s %s", d.c_str(), core::human_bytes(double(b)).c_str());
  }
  std::printf("\nsparsity      %.2f%% of all parameters are exactly zero\n",
              percent(t.zeros, t.params));
  const nlohmann::json quant = quantization_json(c);
  std::printf("quantization  %s\n", quant.is_null() ? "none" : quant.dump().c_str());
}

void print_module_table(const Tally& t) {
  std::printf("\n%-26s %7s %12s %11s %9s  %s\n", "module", "tensors", "parameters", "bytes",
              "sparsity", "dtypes");
  for (const auto& [name, r] : t.by_module) {
    std::string dts;
    for (const auto& [d, n] : r.dtypes) dts += (dts.empty() ? "" : ",") + d;
    std::printf("%-26s %7llu %12llu %11s %8.2f%%  %s\n", name.c_str(),
                (unsigned long long)r.tensors, (unsigned long long)r.params,
                core::human_bytes(double(r.bytes)).c_str(), percent(r.zeros, r.params),
                dts.c_str());
  }
}

void print_tensor_table(const Tally& t) {
  std::printf("\n%-52s %-16s %-5s %11s %9s\n", "tensor", "shape", "dtype", "bytes", "sparsity");
  for (const auto& row : t.tensors) {
    std::printf("%-52s %-16s %-5s %11s %8.2f%%\n", row["name"].get<std::string>().c_str(),
                shape_str(row["shape"].get<std::vector<int64_t>>()).c_str(),
                row["dtype"].get<std::string>().c_str(),
                core::human_bytes(row["bytes"].get<double>()).c_str(),
                100.0 * row["sparsity"].get<double>());
  }
}

// Validate the checkpoint against config.json, then report: JSON, or the summary and tables.
int run_inspect(const InspectArgs& a, const Globals& g) {
  const core::ModelConfig c = core::config_load(a.model).take_or_throw();
  const core::Checkpoint ck = core::Checkpoint::open(a.model).take_or_throw();
  throw_if_error(core::checkpoint_check(c, ck));
  const Tally t = tensors_tally(c, ck);
  if (g.json) {
    print_json(inspect_json(a.model, c, ck, t));
    return 0;
  }
  print_summary(a.model, c, ck, t);
  print_module_table(t);
  if (a.tensors) {
    print_tensor_table(t);
  } else {
    std::printf("(per-tensor table: --tensors)\n");
  }
  return 0;
}

}  // namespace

void register_inspect(CLI::App& app, Globals& g) {
  auto a = std::make_shared<InspectArgs>();
  CLI::App* sub = app.add_subcommand(
      "inspect", "Show a model's architecture, parameters, dtypes, sparsity and quantization; "
                 "validate its checkpoint against config.json");
  sub->add_option("model", a->model, "Model directory")->required();
  sub->add_flag("--tensors", a->tensors, "List every tensor (always included with --json)");
  sub->callback([a, &g] {
    g.exit_code = run_guarded("inspect", g, false, [&] { return run_inspect(*a, g); });
  });
}

}  // namespace shrink::cli
