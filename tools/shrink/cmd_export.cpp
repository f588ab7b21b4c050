// `shrink export MODEL_DIR --format gguf --out FILE.gguf [--type auto|f32|f16|bf16|q8_0|q4_0|q4_1]`:
// one GGUF v3 file for llama.cpp (lib/pipeline/gguf_export.h; shrink's own integer weights mapped
// exactly onto Q4_0/Q4_1/Q8_0 blocks).
// `shrink export MODEL_DIR --format onnx --out DIR [--external-data auto|always|never]`: writes
// DIR/model.onnx (+ model.onnx.data for weights over 2 GB) with config.json and tokenizer.json
// copied alongside, atomically (lib/export: onnx_export_dir). The graph is a decoder with a KV
// cache (Optimum names), float or QDQ int8 as the model directory is; see export/onnx_export.h.
// Built without ONNX (-DSHRINK_WITH_ONNX=OFF) the command exists and fails with exit 2, saying so.
// Tested by tests/export (library, ONNX Runtime peer check) and tests/cli/test_cli.sh.
#include <cstdio>

#include <memory>

#include "core/fs.h"
#include "core/progress.h"
#include "core/status.h"
#include "pipeline/gguf_export.h"
#include "tools/shrink/cli.h"
#ifdef SHRINK_HAVE_ONNX
#include "export/onnx_export.h"
#endif

namespace shrink::cli {

namespace {

struct ExportOpts {
  std::string model, out, format = "onnx", external = "auto", type = "auto";
};

int export_gguf(const ExportOpts& o, Globals& g) {
  throw_if_error(pipeline::gguf_type_check(o.type));
  if (g.validate_only) return 0;
  auto bar = std::make_shared<core::Progress>("gguf", 0, "tensors", g.progress());
  pipeline::GgufExportOptions go;
  go.type = o.type;
  go.progress = [bar](int64_t done, int64_t) { bar->update(uint64_t(done)); };
  pipeline::GgufExportResult r = pipeline::gguf_export(o.model, o.out, go).take_or_throw();
  bar->finish();
  if (g.json) {
    print_json({{"out", o.out},
                {"format", "gguf"},
                {"arch", r.arch},
                {"file_type", r.file_type},
                {"bytes", r.bytes},
                {"bytes_written", r.bytes},
                {"tensors", r.tensors},
                {"type_counts", r.type_counts},
                {"exact", r.exact},
                {"requantized", r.requantized},
                {"max_scale_rel_change", r.max_scale_rel_change},
                {"tokenizer", r.tokenizer},
                {"notes", r.notes},
                {"peak_rss_mb", core::peak_rss_mib()}});
  } else {
    std::printf("wrote %s: GGUF v3, %s, %s, %lld tensors, %.2f MiB; %lld mapped exactly (largest "
                "f16 scale change %.2e), %lld quantized here\n",
                o.out.c_str(), r.arch.c_str(), r.file_type.c_str(), (long long)r.tensors,
                double(r.bytes) / 1048576.0, (long long)r.exact, r.max_scale_rel_change,
                (long long)r.requantized);
    for (const std::string& n : r.notes) std::printf("note: %s\n", n.c_str());
  }
  return 0;
}

}  // namespace

void register_export(CLI::App& app, Globals& g) {
  auto o = std::make_shared<ExportOpts>();
  CLI::App* sub = app.add_subcommand(
      "export",
      "Export a model (float or quantized) to ONNX (a decoder with KV-cache inputs/outputs) or "
      "to GGUF for llama.cpp");
  sub->add_option("model", o->model, "Model directory (float or compressed-tensors int8)")
      ->required();
  sub->add_option("--format", o->format, "Export format: onnx or gguf")->capture_default_str();
  sub->add_option("--out", o->out, "Output directory (onnx) or file (gguf)")->required();
  sub->add_option("--type", o->type,
                  "gguf: tensor type: auto (a float model as stored; shrink's int8/4-bit weights "
                  "mapped exactly to Q8_0/Q4_0/Q4_1), f32, f16, bf16, q8_0, q4_0 or q4_1")
      ->capture_default_str();
  sub->add_option("--external-data", o->external,
                  "Weights in model.onnx.data: auto (over 1.8 GB), always or never")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("export", g, false, [&]() -> int {
      if (o->format == "gguf") return export_gguf(*o, g);
      if (o->format != "onnx") {
        throw Error(StatusCode::kInvalidInput,
                    "--format '" + o->format + "' is not supported; expected onnx or gguf");
      }
      if (o->type != "auto") {
        throw Error(StatusCode::kInvalidInput, "--type is an option of --format gguf");
      }
#ifdef SHRINK_HAVE_ONNX
      exporter::OnnxExportOptions eo;
      if (o->external == "auto") {
        eo.external_data = exporter::ExternalData::kAuto;
      } else if (o->external == "always") {
        eo.external_data = exporter::ExternalData::kAlways;
      } else if (o->external == "never") {
        eo.external_data = exporter::ExternalData::kNever;
      } else {
        throw Error(StatusCode::kInvalidInput, "--external-data '" + o->external +
                                                   "': expected auto, always or never");
      }
      if (g.validate_only) return 0;
      exporter::OnnxExportResult r = exporter::onnx_export_dir(o->model, o->out, eo);
      if (g.json) {
        print_json({{"out", o->out},
                    {"format", "onnx"},
                    {"opset", r.opset},
                    {"scheme", r.scheme},
                    {"nodes", r.nodes},
                    {"initializers", r.initializers},
                    {"initializer_bytes", r.initializer_bytes},
                    {"external_data", r.external},
                    {"files", r.files},
                    {"op_counts", r.op_counts}});
      } else {
        std::printf("wrote %s/model.onnx: opset %d, %s, %lld nodes, %lld initializers, %.2f MiB%s\n",
                    o->out.c_str(), r.opset, r.scheme.c_str(), (long long)r.nodes,
                    (long long)r.initializers, double(r.initializer_bytes) / 1048576.0,
                    r.external ? " (external data: model.onnx.data)" : "");
      }
      return 0;
#else
      throw Error(StatusCode::kInvalidInput,
                  "this shrink was built without ONNX support (SHRINK_WITH_ONNX=OFF); install "
                  "libonnx-dev libprotobuf-dev and reconfigure with -DSHRINK_WITH_ONNX=ON");
#endif
    });
  });
}

}  // namespace shrink::cli
