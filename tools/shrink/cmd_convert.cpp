// `shrink convert MODEL_DIR --dtype float32|float16|bfloat16 --out DIR [--max-shard-mb N]`:
// rewrites a model's floating-point weights in another dtype (and optionally resharded), with
// config.json's dtype updated and the tokenizer and provenance carried along. Written
// atomically; the input is never modified. No LibTorch: it streams one tensor at a time.
#include <cstdio>
#include <filesystem>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace fs = std::filesystem;

void register_convert(CLI::App& app, Globals& g) {
  struct Opts {
    std::string model, out, dtype = "bfloat16";
    uint64_t max_shard_mb = 0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "convert", "Rewrite a model's float weights in another dtype (float32, float16, bfloat16)");
  sub->add_option("model", o->model, "Model directory")->required();
  sub->add_option("--dtype", o->dtype, "float32, float16 or bfloat16 (also f32, f16, bf16)")
      ->capture_default_str();
  sub->add_option("--out", o->out, "Output model directory")->required();
  sub->add_option("--max-shard-mb", o->max_shard_mb, "Shard size in MiB (0: one file)")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("convert", g, false, [&] {
      std::string d = o->dtype;
      if (d == "f32" || d == "fp32") d = "float32";
      if (d == "f16" || d == "fp16" || d == "half") d = "float16";
      if (d == "bf16") d = "bfloat16";
      core::DType dt = d == "float32"   ? core::DType::kF32
                       : d == "float16" ? core::DType::kF16
                       : d == "bfloat16"
                           ? core::DType::kBF16
                           : throw Error(StatusCode::kInvalidInput,
                                         "--dtype '" + o->dtype +
                                             "': expected float32, float16 or bfloat16");
      core::ModelConfig cfg = core::config_load(o->model).take_or_throw();
      if (cfg.has_quantization()) {
        throw Error(StatusCode::kInvalidInput,
                    o->model + ": the model is quantized (quantization_config in config.json); "
                               "convert works on float models");
      }
      core::Checkpoint ck = core::Checkpoint::open(o->model).take_or_throw();
      throw_if_error(core::checkpoint_check(cfg, ck));
      std::vector<std::vector<uint8_t>> bufs;
      std::vector<core::TensorView> views;
      uint64_t in_bytes = 0, out_bytes = 0;
      for (const std::string& name : ck.names()) {
        const core::TensorInfo* t = ck.find(name);
        in_bytes += t->nbytes;
        if (!core::dtype_is_float(t->dtype)) {  // integer tensors pass through unchanged
          bufs.emplace_back(ck.data(*t), ck.data(*t) + t->nbytes);
          views.push_back({name, t->dtype, t->shape, bufs.back().data(), bufs.back().size()});
          out_bytes += t->nbytes;
          continue;
        }
        std::vector<float> f(size_t(t->numel()));
        core::convert_to_f32(t->dtype, ck.data(*t), f.data(), t->numel());
        bufs.emplace_back(size_t(t->numel()) * core::dtype_size(dt));
        core::convert_from_f32(f.data(), dt, bufs.back().data(), t->numel());
        views.push_back({name, dt, t->shape, bufs.back().data(), bufs.back().size()});
        out_bytes += bufs.back().size();
      }
      auto dir = core::AtomicDir::create(o->out).take_or_throw();
      throw_if_error(core::checkpoint_write(dir.path(), views, {{"format", "pt"}},
                                            o->max_shard_mb << 20));
      cfg.dtype = d;
      throw_if_error(core::write_file_atomic(dir.path() + "/config.json", core::config_to_json(cfg)));
      for (const char* extra : {"tokenizer.json", "tokenizer_config.json", "shrink.json",
                                "generation_config.json"}) {
        std::string src = o->model + "/" + extra;
        if (fs::exists(src)) {
          throw_if_error(core::write_file_atomic(dir.path() + "/" + extra,
                                                 core::read_file(src).take_or_throw()));
        }
      }
      throw_if_error(dir.commit());
      if (g.json) {
        print_json({{"out", o->out}, {"dtype", d}, {"bytes_in", in_bytes}, {"bytes_out", out_bytes}});
      } else {
        std::printf("wrote %s: %zu tensors in %s, %.2f MiB -> %.2f MiB\n", o->out.c_str(),
                    views.size(), d.c_str(), double(in_bytes) / 1048576.0,
                    double(out_bytes) / 1048576.0);
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
