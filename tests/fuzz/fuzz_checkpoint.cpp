// libFuzzer harness: a model directory through Checkpoint::open, then the readers that take a
// config.json and a checkpoint together (checkpoint_check, model_stats).
//
// The input is split into files (fuzz_util.h: "==> NAME <==\n" records, e.g. config.json,
// model.safetensors.index.json and model-0000i-of-0000n.safetensors; an input without records
// is model.safetensors), written into the scratch directory, which is emptied first. This
// reaches the index validation, shards, and compressed-tensors' pack-quantized weights and zero
// points (presented unpacked). Every tensor of an accepted checkpoint is read in full, unpacked
// ones included.
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include "core/model_config.h"
#include "pipeline/report.h"
#include "core/safetensors.h"
#include "fuzz_util.h"

using namespace shrink;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  fuzz::clear_temp_dir();
  bool has_config = false;
  for (const fuzz::FileRecord& r : fuzz::split_files(in, "model.safetensors")) {
    fuzz::write_temp(r.name, r.data);
    has_config |= r.name == "config.json";
  }
  const std::string& dir = fuzz::temp_dir();

  auto ck = core::Checkpoint::open(dir);
  if (!ck.is_ok()) {
    fuzz::note_rejected("checkpoint", ck.status().message());
    FUZZ_CHECK(!ck.status().message().empty(), "an error without a message");
    return 0;
  }
  const core::Checkpoint& c = ck.value();
  for (const std::string& name : c.names()) {
    const core::TensorInfo* t = c.find(name);
    FUZZ_CHECK(t != nullptr && t->name == name, "names() lists '%s' but find() misses it",
               name.c_str());
    const uint8_t* p = c.data(*t);
    FUZZ_CHECK(p != nullptr || t->nbytes == 0, "no data for '%s'", name.c_str());
    if (p) fuzz::touch_bytes(p, t->nbytes);
    FUZZ_CHECK(!c.file_of(name).empty(), "no file for '%s'", name.c_str());
    (void)c.packed_of(name);
  }
  (void)c.metadata();
  (void)c.total_bytes();

  if (!has_config) return 0;
  auto cfg = core::config_load(dir);
  if (!cfg.is_ok()) {
    fuzz::note_rejected("config.json", cfg.status().message());
    return 0;
  }
  if (Status v = core::config_validate(cfg.value()); !v.is_ok()) {
    fuzz::note_rejected("config.json", v.message());
    return 0;
  }
  if (Status st = core::checkpoint_check(cfg.value(), c); !st.is_ok()) {
    fuzz::note_rejected("checkpoint_check", st.message());
  }
  auto stats = pipeline::model_stats(dir);
  if (stats.is_ok()) (void)pipeline::model_stats_json(stats.value()).dump();
  return 0;
}
