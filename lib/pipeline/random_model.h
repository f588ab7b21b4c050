// Random model directories of any size, written tensor by tensor: `shrink init --streaming`, the
// way scripts/scale_check.sh makes 1B- and 8B-shaped models on a machine whose memory would not
// hold them in f32.
//
// Why this way: the LibTorch initializer (train::model_init) builds the whole model, which an 8B
// shape cannot afford. Here each tensor is generated in blocks of rows and written through
// core::CheckpointWriter as it is made, so memory is one block per thread. Values come from a
// counter-based generator keyed by (seed, tensor, element), so they do not depend on the thread
// count or the block size; they are not the LibTorch initializer's values. Norm weights are 1;
// every other tensor is N(0, 0.02^2), as HF initializes Llama. Tested in
// tests/pipeline/test_random_model.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "core/model_config.h"
#include "core/status.h"

namespace shrink::pipeline {

struct RandomModelOptions {
  uint64_t seed = 0;
  std::string dtype = "bfloat16";  // float32 | float16 | bfloat16
  std::string tokenizer;           // tokenizer.json to copy in ("" = none)
  int threads = 1;
  uint64_t max_shard_bytes = 0;    // 0 = core::kDefaultMaxShardBytes
  /// Called with (bytes written, bytes in all); may be empty.
  std::function<void(uint64_t, uint64_t)> progress;
};

/// Writes `out` (atomically: nothing appears there unless the whole model was written).
Status random_model_write(const core::ModelConfig& config, const std::string& out,
                          const RandomModelOptions& o);

}  // namespace shrink::pipeline
