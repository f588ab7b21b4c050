// The options and the perplexity report of `shrink eval` (LibTorch) and `shrink-rt eval` (the
// runtime): one definition, so that both tools read the same data into the same windows and
// print the same figures, which tests/cli/test_rt_cli.sh compares. The report is a template
// over the two tools' result types, which share field names but not a header
// (train::EvalResult, runtime::PerplexityResult).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "core/dataset.h"
#include "core/tokens.h"

namespace shrink::cli {

/// The data (`src`), the window length and the windows per forward pass. Defaults are the
/// caller's: the values in `src`, `seq_len` and `batch` when called; --data is the default corpus.
inline void add_eval_options(CLI::App* sub, core::TokenSource& src, int64_t& seq_len,
                             int64_t& batch) {
  src.data = core::kDefaultCorpus;
  sub->add_option("--data", src.data,
                  "Text file, directory, .jsonl, fortune files, or token shards")
      ->capture_default_str();
  sub->add_option("--seq-len", seq_len, "Window length in tokens (0: min(512, max positions))")
      ->capture_default_str();
  sub->add_option("--max-tokens", src.max_tokens, "Use at most this many tokens (0: all)")
      ->capture_default_str();
  sub->add_option("--batch", batch, "Windows per forward pass")->capture_default_str();
  sub->add_option("--split", src.split,
                  "train, val, all or auto (auto: val for token shards, all for text)")
      ->capture_default_str();
  sub->add_option("--val-fraction", src.val_fraction,
                  "Validation fraction of the document-level split of text data")
      ->capture_default_str();
  sub->add_option("--split-seed", src.seed, "Seed of the document-level split")
      ->capture_default_str();
  sub->add_option("--tokenizer", src.tokenizer,
                  "tokenizer.json to use instead of MODEL_DIR/tokenizer.json");
}

/// The figures of a perplexity evaluation `r` over the data described by `data`, as JSON; the
/// caller adds what names the model, the engine and the threads.
template <class PerplexityResult>
nlohmann::json perplexity_json(const PerplexityResult& r, const std::string& data) {
  return {{"data", data},
          {"perplexity", r.perplexity},
          {"mean_nll", r.mean_nll},
          {"tokens", r.tokens},
          {"tokens_scored", r.tokens_scored},
          {"windows", r.windows},
          {"seq_len", r.seq_len},
          {"window_policy", "non-overlapping; each window scores len-1 tokens"},
          {"seconds", r.seconds},
          {"tokens_per_second", r.tokens_per_second}};
}

/// The same figures as text, one per line; the caller adds the engine and speed lines.
template <class PerplexityResult>
void perplexity_print(const PerplexityResult& r, const std::string& data) {
  std::printf("perplexity  %.4f\n", r.perplexity);
  std::printf("mean NLL    %.5f nats over %llu predicted tokens\n", r.mean_nll,
              (unsigned long long)r.tokens_scored);
  std::printf("windows     %llu non-overlapping windows of up to %lld tokens (each scores len-1 "
              "predictions; BOS only where the tokenizer's template adds one)\n",
              (unsigned long long)r.windows, (long long)r.seq_len);
  std::printf("data        %s, %llu tokens\n", data.c_str(), (unsigned long long)r.tokens);
}

}  // namespace shrink::cli
