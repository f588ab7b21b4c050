// export_peer: the C++ half of the ONNX Runtime peer check (scripts/ort_check.sh runs it, then
// scripts/ort_check.mjs). It needs no LibTorch, so the check runs in any SHRINK_WITH_ONNX build:
//   export_peer quantize SRC DST none|none4|static|dynamic [GROUP] [INPUT_SCALE]
//       int8 variant of a float model dir (tests/export/util.h; what `shrink quantize` writes)
//   export_peer window SRC DST W      a float copy with a Mistral sliding window of W
//   export_peer case MODEL_DIR CASE_DIR [--prompt 1,2,3] [--gen 32]
//       exports MODEL_DIR to CASE_DIR/onnx (exporter::onnx_export_dir, as `shrink export`), then
//       runs shrink-rt's engine (lib/runtime, 1 thread) on the prompt and writes CASE_DIR/ref.json:
//       {model, scheme, prompt, vocab, logits: every prompt position (row-major), greedy: the
//       first `gen` greedy ids (EOS ignored), exactly as `shrink-rt generate --ids` makes them}.
//   export_peer ref MODEL_DIR CASE_DIR [--prompt 1,2,3] [--gen 32]
//       the same ref.json without the ONNX export (the llama.cpp peer check's reference)
//   export_peer gguf MODEL_DIR OUT.gguf TYPE
//       pipeline::gguf_export (as `shrink export --format gguf --type TYPE`); prints its result
// Exit codes: 0 ok, 2 bad usage/input, 1 failure. Not a user tool: a test driver.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "export/onnx_export.h"
#include "pipeline/gguf_export.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "tests/export/util.h"

using namespace shrink;

namespace {

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(int32_t(std::stol(item)));
  return v;
}

int usage() {
  std::fprintf(stderr,
               "usage: export_peer quantize SRC DST none|none4|none4asym|static|dynamic[-gidx] "
               "[GROUP] [INPUT_SCALE]\n"
               "       export_peer window SRC DST W\n"
               "       export_peer case|ref MODEL_DIR CASE_DIR [--prompt 1,2,3] [--gen 32]\n"
               "       export_peer gguf MODEL_DIR OUT.gguf TYPE\n");
  return 2;
}

int run_case(const std::string& model, const std::string& case_dir,
             std::vector<int32_t> prompt, int64_t gen, bool onnx) {
  exporter::OnnxExportResult r;
  if (onnx) {
    r = exporter::onnx_export_dir(model, case_dir + "/onnx");
  } else {
    std::filesystem::create_directories(case_dir);
  }
  runtime::EngineOptions eo;
  eo.threads = 1;
  eo.lm_head = "f32";  // the exports keep a float head as stored
  eo.act_quant = "none";  // and float activations (ONNX weight-only MatMuls; the checks bound llama.cpp's Q8)
  eo.float_weights = "exact";  // a bf16 model in fp32 arithmetic, as the f32 ONNX graph runs it
  auto engine = runtime::Engine::load(model, eo).take_or_throw();
  const int64_t V = engine->config().vocab_size;
  if (prompt.empty()) {
    // A fixed prompt that any vocabulary above 64 ids holds.
    for (int i = 0; i < 8; ++i) prompt.push_back(int32_t((i * 37 + 11) % std::min<int64_t>(V, 64)));
  }
  std::vector<float> logits;
  engine->reset_all();
  throw_if_error(engine->forward({{0, prompt.data(), int64_t(prompt.size())}}, true, logits));
  runtime::GenerateOptions go;
  go.max_new_tokens = gen;
  go.sampling.temperature = 0;
  go.stop_at_eos = false;
  runtime::GenerateResult g = runtime::generate(*engine, prompt, go).take_or_throw();
  nlohmann::json j = {{"model", model},
                      {"scheme", r.scheme},
                      {"engine", engine->describe()},
                      {"prompt", prompt},
                      {"vocab", V},
                      {"logits", logits},
                      {"greedy", std::vector<int32_t>(g.ids.begin() + g.prompt_len, g.ids.end())}};
  throw_if_error(core::write_file_atomic(case_dir + "/ref.json", j.dump()));
  if (onnx) {
    std::printf("%s: %s, %lld nodes -> %s/onnx\n", model.c_str(), r.scheme.c_str(),
                (long long)r.nodes, case_dir.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() >= 4 && a[0] == "quantize") {
      test::QuantSpec q;
      q.activations = a[3];
      if (q.activations.size() > 5 &&
          q.activations.compare(q.activations.size() - 5, 5, "-gidx") == 0) {
        q.act_order_groups = true;  // act-order groups (weight_g_idx)
        q.activations.resize(q.activations.size() - 5);
      }
      if (q.activations == "none4" || q.activations == "none4asym") {  // 4-bit weights (W4A16)
        q.asym = q.activations == "none4asym";
        q.activations = "none";
        q.bits = 4;
      }
      if (q.activations != "none" && q.activations != "static" && q.activations != "dynamic")
        return usage();
      if (a.size() >= 5) q.group_size = std::stoll(a[4]);
      if (a.size() >= 6) q.input_scale = std::stof(a[5]);
      test::quantize_model(a[1], a[2], q);
      return 0;
    }
    if (a.size() == 4 && a[0] == "window") {
      test::copy_model(a[1], a[2], std::stoll(a[3]));
      return 0;
    }
    if (a.size() == 4 && a[0] == "gguf") {
      pipeline::GgufExportOptions o;
      o.type = a[3];
      pipeline::GgufExportResult r = pipeline::gguf_export(a[1], a[2], o).take_or_throw();
      std::printf("%s\n", nlohmann::json({{"file_type", r.file_type},
                                          {"exact", r.exact},
                                          {"requantized", r.requantized},
                                          {"max_scale_rel_change", r.max_scale_rel_change},
                                          {"notes", r.notes}})
                              .dump()
                              .c_str());
      return 0;
    }
    if (a.size() >= 3 && (a[0] == "case" || a[0] == "ref")) {
      std::vector<int32_t> prompt;
      int64_t gen = 32;
      for (size_t i = 3; i + 1 < a.size(); i += 2) {
        if (a[i] == "--prompt") prompt = parse_ids(a[i + 1]);
        else if (a[i] == "--gen") gen = std::stoll(a[i + 1]);
        else return usage();
      }
      return run_case(a[1], a[2], prompt, gen, a[0] == "case");
    }
    return usage();
  } catch (const Error& e) {
    std::fprintf(stderr, "export_peer: error: %s\n", e.what());
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "export_peer: error: %s\n", e.what());
    return 1;
  }
}
