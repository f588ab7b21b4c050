// Token loading for evaluation, calibration and verification: the one definition that `shrink
// eval`, prune and quantize (lib/train) and shrink-rt's eval and verify (lib/runtime) share, so
// that the same --data, --split and --max-tokens give the same tokens on both sides.
//
// Token shards (`shrink data prepare`: a .tok file or a directory of them) are read as they
// are; anything else is text (a file, a directory, .jsonl, fortune files) tokenized with the
// model's tokenizer.json through core::tokenize_stream. Split "auto" is val for a shard
// directory (which holds both splits) and all for a single .tok file or text. Every id is
// checked against the model's vocabulary, so a corpus prepared for another tokenizer is an
// error here rather than an out-of-range embedding lookup later.
// Tested in tests/core/test_tokens.cpp, and end to end by tests/cli/test_cli.sh and
// tests/cli/test_rt_cli.sh.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace shrink::core {

/// Where tokens come from.
struct TokenSource {
  std::string data;            // token shard file/dir, or text
  std::string tokenizer;       // tokenizer.json for text; empty = <model_dir>/tokenizer.json
  std::string split = "auto";  // train | val | all | auto
  double val_fraction = 0.05;  // text: the document split (core::split_is_val)
  uint64_t seed = 0;
  uint64_t max_tokens = 0;  // 0 = all
};
struct LoadedTokens {
  std::vector<int32_t> tokens;
  std::string description;  // "fortunes (text, split all, tokenizer <fp>)"
  std::string split;        // the split read ("auto" resolved)
};

/// The tokens of `src` for the model in model_dir (whose tokenizer.json tokenizes text unless
/// src.tokenizer names one), every id in [0, vocab_size). `progress` draws a tokenization
/// progress bar on stderr. Errors: kNotFound for missing data; kInvalidInput for a bad split,
/// text without a tokenizer, or an id outside the vocabulary (naming the id and its position).
Result<LoadedTokens> tokens_load(const std::string& model_dir, int64_t vocab_size,
                                 const TokenSource& src, bool progress = false);

}  // namespace shrink::core
