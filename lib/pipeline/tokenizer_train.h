// Tokenizer training (`shrink tokenizer train`): a byte-level BPE trainer that writes GPT-2
// style tokenizers for core::Tokenizer. Ahead-of-time only, so it lives in lib/pipeline; the
// runtime only encodes and decodes. Tested in tests/pipeline/test_tokenizer_train.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tokenizer.h"

namespace shrink::pipeline {

struct BpeTrainOptions {
  int32_t vocab_size = 4096;  // including the 256 byte tokens and the special tokens
  std::vector<std::string> special_tokens = {"<|endoftext|>"};  // ids 0.. in this order
  int32_t min_frequency = 2;  // stop merging when the best pair is rarer than this
  /// Called every few merges with (merges done, merges wanted); may be empty.
  std::function<void(int64_t, int64_t)> progress;
};

/// Train a byte-level BPE on documents pulled from `next_doc` (returns false at the end).
/// Deterministic: ties between pair counts break by the pair's byte strings.
Result<core::Tokenizer> bpe_train(const std::function<bool(std::string&)>& next_doc,
                            const BpeTrainOptions& opts);

}  // namespace shrink::pipeline
