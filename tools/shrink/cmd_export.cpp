// `shrink export MODEL_DIR --format onnx --out DIR [--external-data auto|always|never]`: writes
// DIR/model.onnx (+ model.onnx.data for weights over 2 GB) with config.json and tokenizer.json
// copied alongside, atomically (lib/export: onnx_export_dir). The graph is a decoder with a KV
// cache (Optimum names), float or QDQ int8 as the model directory is; see export/onnx_export.h.
// Built without ONNX (-DSHRINK_WITH_ONNX=OFF) the command exists and fails with exit 2, saying so.
// Tested by tests/export (library, ONNX Runtime peer check) and tests/cli/test_cli.sh.
#include <cstdio>

#include "core/status.h"
#include "tools/shrink/cli.h"
#ifdef SHRINK_HAVE_ONNX
#include "export/onnx_export.h"
#endif

namespace shrink::cli {

void register_export(CLI::App& app, Globals& g) {
  struct Opts {
    std::string model, out, format = "onnx", external = "auto";
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "export", "Export a model (float or int8) to ONNX: a decoder with KV-cache inputs/outputs");
  sub->add_option("model", o->model, "Model directory (float or compressed-tensors int8)")
      ->required();
  sub->add_option("--format", o->format, "Export format (onnx)")->capture_default_str();
  sub->add_option("--out", o->out, "Output directory")->required();
  sub->add_option("--external-data", o->external,
                  "Weights in model.onnx.data: auto (over 1.8 GB), always or never")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("export", g, false, [&]() -> int {
      if (o->format != "onnx") {
        throw Error(StatusCode::kInvalidInput,
                    "--format '" + o->format + "' is not supported; expected onnx");
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
