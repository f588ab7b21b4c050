// The files of a float model directory besides its weights, as every writer of one (the
// LibTorch model_write and the model-free stages) writes them. No LibTorch here.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/model_config.h"

namespace shrink::train {

/// Into `dir`: config.json (cfg without quantization_config, its dtype as given), the tokenizer
/// `tokenizer_json` (if any) with the sidecars beside it (tokenizer_config.json,
/// generation_config.json, ...), and shrink.json: `provenance` with shrink_version and the
/// parameter count.
void model_sidecars_write(core::ModelConfig cfg, const std::string& dir,
                          const std::string& tokenizer_json, nlohmann::json provenance,
                          int64_t parameters);

/// The number of parameters of a float model of this config (its expected tensors).
int64_t config_parameters(const core::ModelConfig& cfg);

}  // namespace shrink::train
