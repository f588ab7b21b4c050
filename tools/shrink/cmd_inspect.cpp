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

}  // namespace

void register_inspect(CLI::App& app, Globals& g) {
  struct Opts {
    std::string model;
    bool tensors = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "inspect", "Show a model's architecture, parameters, dtypes, sparsity and quantization; "
                 "validate its checkpoint against config.json");
  sub->add_option("model", o->model, "Model directory")->required();
  sub->add_flag("--tensors", o->tensors, "List every tensor (always included with --json)");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("inspect", g, false, [&] {
      core::ModelConfig c = core::config_load(o->model).take_or_throw();
      core::Checkpoint ck = core::Checkpoint::open(o->model).take_or_throw();
      throw_if_error(core::checkpoint_check(c, ck));

      struct Row {
        uint64_t tensors = 0, params = 0, bytes = 0, zeros = 0;
        std::map<std::string, int> dtypes;
      };
      std::map<std::string, Row> by_module;
      nlohmann::json tensors = nlohmann::json::array();
      uint64_t total_params = 0, total_bytes = 0, total_zeros = 0;
      std::map<std::string, uint64_t> dtype_bytes;
      for (const core::TensorSpec& s : core::expected_tensors(c)) {
        const core::TensorInfo* t = ck.find(s.name);
        uint64_t z = count_zeros(ck, *t);
        // 4-bit weights are read as I8 but stored packed: report what is stored.
        const core::TensorInfo* packed = ck.packed_of(s.name);
        const std::string dt = packed ? "I4" : core::dtype_name(t->dtype);
        const uint64_t nbytes = packed ? packed->nbytes : t->nbytes;
        Row& r = by_module[core::tensor_role_name(s.role)];
        r.tensors++;
        r.params += uint64_t(t->numel());
        r.bytes += nbytes;
        r.zeros += z;
        r.dtypes[dt]++;
        total_params += uint64_t(t->numel());
        total_bytes += nbytes;
        total_zeros += z;
        dtype_bytes[dt] += nbytes;
        tensors.push_back({{"name", s.name},
                           {"shape", t->shape},
                           {"dtype", dt},
                           {"bytes", nbytes},
                           {"file", ck.file_of(s.name)},
                           {"sparsity", t->numel() ? double(z) / double(t->numel()) : 0.0}});
      }
      nlohmann::json quant = nullptr;
      if (c.has_quantization()) quant = c.raw["quantization_config"];
      nlohmann::json modules = nlohmann::json::object();
      for (const auto& [name, r] : by_module) {
        modules[name] = {{"tensors", r.tensors},
                         {"parameters", r.params},
                         {"bytes", r.bytes},
                         {"dtypes", r.dtypes},
                         {"sparsity", r.params ? double(r.zeros) / double(r.params) : 0.0}};
      }
      const char* rope = c.rope_scaling.type == core::RopeType::kDefault  ? "default"
                         : c.rope_scaling.type == core::RopeType::kLinear ? "linear"
                                                                           : "llama3";
      nlohmann::json arch = {{"architecture", core::arch_name(c.arch)},
                             {"layers", c.num_layers},
                             {"hidden_size", c.hidden_size},
                             {"intermediate_size", c.intermediate_size},
                             {"attention_heads", c.num_heads},
                             {"kv_heads", c.num_kv_heads},
                             {"head_dim", c.head_dim},
                             {"vocab_size", c.vocab_size},
                             {"max_position_embeddings", c.max_position_embeddings},
                             {"rope_theta", c.rope_theta},
                             {"rope_scaling", rope},
                             {"qkv_bias", c.qkv_bias},
                             {"tie_word_embeddings", c.tie_word_embeddings},
                             {"sliding_window", c.sliding_window ? nlohmann::json(*c.sliding_window)
                                                                 : nlohmann::json(nullptr)}};
      if (g.json) {
        print_json({{"model", o->model},
                    {"valid", true},
                    {"config", arch},
                    {"parameters", total_params},
                    {"bytes", total_bytes},
                    {"dtype_bytes", dtype_bytes},
                    {"files", ck.num_files()},
                    {"sparsity", total_params ? double(total_zeros) / double(total_params) : 0.0},
                    {"modules", modules},
                    {"quantization", quant},
                    {"tensors", tensors}});
        return 0;
      }
      const char* attn = c.num_kv_heads == c.num_heads ? "MHA"
                         : c.num_kv_heads == 1         ? "MQA"
                                                       : "GQA";
      std::printf("model         %s  (checkpoint valid: %zu file%s)\n", o->model.c_str(),
                  ck.num_files(), ck.num_files() == 1 ? "" : "s");
      std::printf("architecture  %s: %lld layers, hidden %lld, MLP %lld, vocab %lld\n",
                  core::arch_name(c.arch), (long long)c.num_layers, (long long)c.hidden_size,
                  (long long)c.intermediate_size, (long long)c.vocab_size);
      std::printf("attention     %s: %lld heads, %lld kv heads, head_dim %lld%s%s\n", attn,
                  (long long)c.num_heads, (long long)c.num_kv_heads, (long long)c.head_dim,
                  c.qkv_bias ? ", q/k/v bias" : "",
                  c.sliding_window ? (", sliding window " + std::to_string(*c.sliding_window)).c_str()
                                   : "");
      std::printf("rope          theta %g, scaling %s; max positions %lld\n", c.rope_theta, rope,
                  (long long)c.max_position_embeddings);
      std::printf("lm_head       %s\n", c.tie_word_embeddings ? "tied to embed_tokens" : "separate");
      std::printf("parameters    %s (%llu), %s",
                  core::human_count(double(total_params)).c_str(),
                  (unsigned long long)total_params, core::human_bytes(double(total_bytes)).c_str());
      for (const auto& [d, b] : dtype_bytes) {
        std::printf("; %s %s", d.c_str(), core::human_bytes(double(b)).c_str());
      }
      std::printf("\nsparsity      %.2f%% of all parameters are exactly zero\n",
                  total_params ? 100.0 * double(total_zeros) / double(total_params) : 0.0);
      std::printf("quantization  %s\n", quant.is_null() ? "none" : quant.dump().c_str());
      std::printf("\n%-26s %7s %12s %11s %9s  %s\n", "module", "tensors", "parameters", "bytes",
                  "sparsity", "dtypes");
      for (const auto& [name, r] : by_module) {
        std::string dts;
        for (const auto& [d, n] : r.dtypes) dts += (dts.empty() ? "" : ",") + d;
        std::printf("%-26s %7llu %12llu %11s %8.2f%%  %s\n", name.c_str(),
                    (unsigned long long)r.tensors, (unsigned long long)r.params,
                    core::human_bytes(double(r.bytes)).c_str(),
                    r.params ? 100.0 * double(r.zeros) / double(r.params) : 0.0, dts.c_str());
      }
      if (o->tensors) {
        std::printf("\n%-52s %-16s %-5s %11s %9s\n", "tensor", "shape", "dtype", "bytes",
                    "sparsity");
        for (const auto& t : tensors) {
          std::printf("%-52s %-16s %-5s %11s %8.2f%%\n", t["name"].get<std::string>().c_str(),
                      shape_str(t["shape"].get<std::vector<int64_t>>()).c_str(),
                      t["dtype"].get<std::string>().c_str(),
                      core::human_bytes(t["bytes"].get<double>()).c_str(),
                      100.0 * t["sparsity"].get<double>());
        }
      } else {
        std::printf("(per-tensor table: --tensors)\n");
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
