// Multiple-choice tasks: the accuracy side of "does the compact model still behave like the
// teacher", scored as lm-evaluation-harness and llama.cpp's `perplexity --multiple-choice` score
// HellaSwag-style tasks: each choice's log-likelihood as the continuation of the context.
//
// File format (JSONL, one item per line; blank lines are skipped):
//   {"context": "text", "choices": ["text", ...], "label": 0}
// or, for checkpoints without a tokenizer, the same in token ids:
//   {"context_ids": [1, 2], "choices_ids": [[3], [4, 5]], "label": 1}
// or a context per choice and one continuation, scored after each (lm-eval's "partial
// evaluation" of Winogrande: the choice is which context makes the continuation likeliest):
//   {"contexts": ["text", ...], "continuation": "text", "label": 0}
//   {"contexts_ids": [[1, 2], [1, 3]], "continuation_ids": [4, 5], "label": 0}
// Tokenization follows lm-eval's loglikelihood requests: whitespace at the end of the context
// moves to the front of the choice, the context is encoded with the tokenizer's document
// prefix (e.g. a BOS), and a choice's tokens are those of context + choice beyond the context's
// (so a merge across the boundary is scored as the model would see it). Each choice keeps its
// length in characters (code points, Python's len) for acc_norm, as lm-eval normalizes; id items
// use the token count.
//
// choice_task_build makes such a task from a text corpus (by default the held-out split of the
// built-in fortunes), in the way HellaSwag was built from captions: each document of 8 to 80
// words is cut at a word boundary near its middle; the choices are its true ending and the
// endings of other documents of similar length, in a seeded random order.
// Tested in tests/pipeline/test_choice_task.cpp (the tests need a trained BPE, from lib/pipeline).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tokenizer.h"

namespace shrink::core {

struct ChoiceItem {
  std::vector<int32_t> context;               // shared by every choice; never empty
  std::vector<std::vector<int32_t>> choices;  // >= 2, none empty
  // Per choice (or empty: all 0): how many of its leading tokens are its own context, which
  // conditions but is not scored. Each choice keeps at least one scored token.
  std::vector<int64_t> given;
  std::vector<double> norm_length;  // per choice: bytes (text) or tokens (ids)
  int64_t label = 0;
};

/// Reads and tokenizes a task file. `tok` may be null when every item gives ids. Errors name
/// the file and line and what was expected (exit code 2); ids are checked against vocab_size.
Result<std::vector<ChoiceItem>> choice_task_load(const std::string& path, const Tokenizer* tok,
                                                 int64_t vocab_size);

struct ChoiceTaskBuildOptions {
  std::string data;  // text source (TextReader)
  std::string split = "val";
  double val_fraction = 0.05;
  uint64_t split_seed = 0;  // the document-level split's seed (as `shrink data prepare`)
  uint64_t seed = 0;        // picks the distractors and the label order
  int64_t choices = 4;
  int64_t max_items = 0;  // 0 = every eligible document
  int64_t min_words = 8, max_words = 80;
};
struct ChoiceTaskBuildResult {
  int64_t items = 0, documents = 0;
};
/// Writes the task as JSONL to `out_path` (atomically).
Result<ChoiceTaskBuildResult> choice_task_build(const ChoiceTaskBuildOptions& o,
                                                const std::string& out_path);

}  // namespace shrink::core
