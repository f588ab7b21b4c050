// `shrink convert MODEL_DIR --dtype float32|float16|bfloat16 --out DIR [--max-shard-mb N]`:
// rewrites a model's floating-point weights in another dtype (and optionally resharded), with
// config.json's dtype updated and the tokenizer and provenance carried along. Written
// atomically; the input is never modified. No LibTorch, and no tensor held whole: the input is
// memory-mapped, and each tensor is converted in blocks of 1 Mi elements, one per thread, and
// written in place through core::CheckpointWriter, so memory stays a few MiB per thread whatever
// the model's size.
#include <cstdio>
#include <filesystem>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "core/tensor_blocks.h"
#include "core/threads.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kBlockElements = int64_t(1) << 20;

struct ConvertArgs {
  std::string model, out, dtype = "bfloat16";
  uint64_t max_shard_mb = 0;
};

// The dtype named by --dtype (with its short names), and its config.json spelling.
core::DType dtype_parse(const std::string& flag, std::string& name) {
  name = flag;
  if (name == "f32" || name == "fp32") name = "float32";
  if (name == "f16" || name == "fp16" || name == "half") name = "float16";
  if (name == "bf16") name = "bfloat16";
  if (name == "float32") return core::DType::kF32;
  if (name == "float16") return core::DType::kF16;
  if (name == "bfloat16") return core::DType::kBF16;
  throw Error(StatusCode::kInvalidInput,
              "--dtype '" + flag + "': expected float32, float16 or bfloat16");
}

// Float tensors take the new dtype; integer tensors pass through unchanged.
std::vector<core::TensorView> output_plan(const core::Checkpoint& ck, core::DType dt) {
  std::vector<core::TensorView> plan;
  for (const std::string& name : ck.names()) {
    const core::TensorInfo* t = ck.find(name);
    const core::DType out = core::dtype_is_float(t->dtype) ? dt : t->dtype;
    plan.push_back({name, out, t->shape, nullptr, uint64_t(t->numel()) * core::dtype_size(out)});
  }
  return plan;
}

// config.json with the new dtype, and the tokenizer and provenance files as they are.
void sidecars_write(const std::string& model, const std::string& dir, core::ModelConfig cfg,
                    const std::string& dtype) {
  cfg.dtype = dtype;
  throw_if_error(core::write_file_atomic(dir + "/config.json", core::config_to_json(cfg)));
  for (const char* extra :
       {"tokenizer.json", "tokenizer_config.json", "shrink.json", "generation_config.json"}) {
    const std::string src = model + "/" + extra;
    if (fs::exists(src)) {
      throw_if_error(core::write_file_atomic(dir + "/" + extra, core::read_file(src).take_or_throw()));
    }
  }
}

int run_convert(const ConvertArgs& o, const Globals& g) {
  std::string dname;
  const core::DType dt = dtype_parse(o.dtype, dname);
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  if (cfg.has_quantization()) {
    throw Error(StatusCode::kInvalidInput,
                o.model + ": the model is quantized (quantization_config in config.json); "
                          "convert works on float models");
  }
  const core::Checkpoint ck = core::Checkpoint::open(o.model).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ck));
  const std::vector<core::TensorView> plan = output_plan(ck, dt);
  auto dir = core::AtomicDir::create(o.out).take_or_throw();
  auto w = core::CheckpointWriter::create(dir.path(), plan, {{"format", "pt"}}, o.max_shard_mb << 20)
               .take_or_throw();
  throw_if_error(core::tensors_convert_write(ck, plan, *w,
                                             core::threads_resolve(g.threads).take_or_throw(),
                                             kBlockElements));
  throw_if_error(w->finish());
  sidecars_write(o.model, dir.path(), cfg, dname);
  throw_if_error(dir.commit());
  const uint64_t in_bytes = ck.total_bytes(), out_bytes = w->bytes_written();
  if (g.json) {
    print_json({{"out", o.out}, {"dtype", dname}, {"bytes_in", in_bytes}, {"bytes_out", out_bytes}});
  } else {
    std::printf("wrote %s: %zu tensors in %s, %.2f MiB -> %.2f MiB\n", o.out.c_str(), plan.size(),
                dname.c_str(), double(in_bytes) / 1048576.0, double(out_bytes) / 1048576.0);
  }
  return 0;
}

}  // namespace

void register_convert(CLI::App& app, Globals& g) {
  auto o = std::make_shared<ConvertArgs>();
  CLI::App* sub = app.add_subcommand(
      "convert", "Rewrite a model's float weights in another dtype (float32, float16, bfloat16)");
  sub->add_option("model", o->model, "Model directory")->required();
  sub->add_option("--dtype", o->dtype, "float32, float16 or bfloat16 (also f32, f16, bf16)")
      ->capture_default_str();
  sub->add_option("--out", o->out, "Output model directory")->required();
  sub->add_option("--max-shard-mb", o->max_shard_mb, "Shard size in MiB (0: one file)")
      ->capture_default_str();
  sub->callback([o, &g] { g.exit_code = run_guarded("convert", g, false, [&] { return run_convert(*o, g); }); });
}

}  // namespace shrink::cli
