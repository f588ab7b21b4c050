// See model_files.h.
#include "train/model_files.h"

#include <filesystem>

#include "core/fs.h"
#include "core/status.h"

namespace shrink::train {

namespace fs = std::filesystem;

void model_sidecars_write(core::ModelConfig cfg, const std::string& dir,
                          const std::string& tokenizer_json, nlohmann::json provenance,
                          int64_t parameters) {
  cfg.raw.erase("quantization_config");  // written as float: `shrink quantize` writes int8
  throw_if_error(core::write_file_atomic(dir + "/config.json", core::config_to_json(cfg)));
  if (!tokenizer_json.empty()) {
    fs::path src(tokenizer_json);
    std::string text = core::read_file(src.string()).take_or_throw();
    throw_if_error(core::write_file_atomic(dir + "/tokenizer.json", text));
    // tokenizer_config.json, generation_config.json (stop ids), ... from the same directory.
    throw_if_error(core::copy_model_sidecars(src.parent_path().string(), dir));
  }
  provenance["shrink_version"] = SHRINK_VERSION;
  provenance["parameters"] = parameters;
  throw_if_error(core::write_file_atomic(dir + "/shrink.json", provenance.dump(2) + "\n"));
}

int64_t config_parameters(const core::ModelConfig& cfg) {
  int64_t n = 0;
  for (const core::TensorSpec& s : core::expected_tensors(cfg)) {
    int64_t k = 1;
    for (int64_t d : s.shape) k *= d;
    n += k;
  }
  return n;
}

}  // namespace shrink::train
