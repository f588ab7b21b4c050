// The options of `shrink-rt verify` and `shrink verify` (one definition, so a recipe's verify
// stage takes exactly the runtime's options): the two models, data, windows, gates and the
// benchmark; and the JSON both print.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include <nlohmann/json.hpp>

#include "core/dataset.h"
#include "core/fs.h"
#include "runtime/serve/serve_compare.h"
#include "runtime/verify.h"
#include "tools/generate_options.h"

namespace shrink::cli {

/// What `verify` reads: the compact model, its reference, and the runtime's options.
struct VerifyArgs {
  std::string compact, reference;
  runtime::VerifyOptions v;
  /// The serving comparison (a recipe's `serve:` block): run when --serve-concurrency is given.
  std::string serve_concurrency;
  runtime::serve::ServeCompareOptions serve;
};

/// The data, windows, gates and benchmark options of `verify`.
inline void add_verify_options(CLI::App* sub, runtime::VerifyOptions& v) {
  v.source.data = core::kDefaultCorpus;
  v.source.max_tokens = 16384;
  sub->add_option("--data", v.source.data, "Evaluation data (text or token shards)")->capture_default_str();
  sub->add_option("--max-tokens", v.source.max_tokens, "Evaluation tokens")->capture_default_str();
  sub->add_option("--split", v.source.split, "train, val, all or auto")->capture_default_str();
  sub->add_option("--seq-len", v.seq_len, "Window length")->capture_default_str();
  sub->add_option("--max-ppl-increase", v.max_ppl_increase,
                  "Gate: highest allowed relative perplexity increase (0.05 = +5%)");
  sub->add_option("--max-kl", v.max_kl, "Gate: highest allowed mean KL(reference || compact) per token");
  sub->add_option("--min-top1", v.min_top1, "Gate: lowest allowed top-1 agreement, in [0, 1]");
  sub->add_option("--min-speedup", v.min_speedup, "Gate: lowest allowed decode speed-up");
  sub->add_option("--task", v.task,
                  "Multiple-choice task (.jsonl, e.g. from `shrink data make-task`): both models' "
                  "accuracy");
  sub->add_option("--max-acc-drop", v.max_acc_drop,
                  "Gate: highest allowed drop of the task's acc_norm (0.02 = 2 points)");
  sub->add_option("--prompt-len", v.bench_prompt_len, "Benchmark prompt length")->capture_default_str();
  sub->add_option("--gen-len", v.bench_gen_len, "Benchmark generated tokens")->capture_default_str();
  sub->add_option("--max-memory", v.max_memory,
                  "Budget for the compact model's logits, kept for the reference's pass (one "
                  "model is loaded at a time); beyond it they spill to a temporary file in $TMPDIR")
      ->capture_default_str();
  sub->add_flag("--no-bench", [&v](int64_t) { v.bench = false; }, "Skip the speed comparison");
}

/// The two model directories, then add_verify_options, then the serving comparison's options.
inline void add_verify_options(CLI::App* sub, VerifyArgs& a) {
  sub->add_option("compact", a.compact, "Compact model directory")->required();
  sub->add_option("--reference", a.reference, "Reference (teacher) model directory")->required();
  add_verify_options(sub, a.v);
  sub->add_option("--serve-concurrency", a.serve_concurrency,
                  "Also serve each model (a `shrink-rt serve` process on a loopback port) and "
                  "load-test it at these concurrency levels, e.g. 1,8: throughput and latency side "
                  "by side (a recipe's verify `serve:` block)");
  sub->add_option("--serve-requests", a.serve.requests, "Serving: requests per level (0: max(16, 4 x concurrency))")
      ->capture_default_str();
  sub->add_option("--serve-prompt-len", a.serve.prompt_len, "Serving: prompt tokens per request")
      ->capture_default_str();
  sub->add_option("--serve-gen-len", a.serve.gen_len, "Serving: generated tokens per request")
      ->capture_default_str();
  sub->add_option("--serve-repeats", a.serve.repeats,
                  "Serving: interleaved measurements of each model; the table gives the medians")
      ->capture_default_str();
  sub->add_option("--serve-shared-prefix", a.serve.shared_prefix,
                  "Serving: tokens every prompt starts with (a system prompt; the prefix cache reuses it)")
      ->capture_default_str();
}

/// The serving comparison as a Markdown table (also report.md's, lib/pipeline/report.cpp).
inline std::string serve_table(const nlohmann::json& s) {
  std::string o = "| concurrency | output tok/s reference | output tok/s compact | ratio | TTFT p50 ms reference | TTFT p50 ms compact |\n"
                  "|---:|---:|---:|---:|---:|---:|\n";
  char b[256];
  for (const auto& l : s["levels"]) {
    std::snprintf(b, sizeof b, "| %d | %.1f | %.1f | %.2fx | %.1f | %.1f |\n", l["concurrency"].get<int>(),
                  l["output_tokens_per_s_reference"].get<double>(), l["output_tokens_per_s_compact"].get<double>(),
                  l["throughput_ratio"].get<double>(), l["ttft_p50_ms_reference"].get<double>(),
                  l["ttft_p50_ms_compact"].get<double>());
    o += b;
  }
  return o;
}

/// The serving comparison of `a` when asked for (--serve-concurrency), else null.
inline Result<nlohmann::json> verify_serve(VerifyArgs& a, const runtime::EngineOptions& engine) {
  if (a.serve_concurrency.empty()) return nlohmann::json(nullptr);
  SHRINK_ASSIGN_OR_RETURN(std::vector<int32_t> levels, ids_parse(a.serve_concurrency, "--serve-concurrency"));
  a.serve.concurrency.clear();
  for (int32_t c : levels) {
    SHRINK_CHECK(c >= 1 && c <= 256, StatusCode::kInvalidInput, "--serve-concurrency %d: expected 1..256", c);
    a.serve.concurrency.push_back(int(c));
  }
  SHRINK_CHECK(a.serve.prompt_len >= 1 && a.serve.gen_len >= 1 && a.serve.shared_prefix >= 0 &&
                   a.serve.requests >= 0,
               StatusCode::kInvalidInput,
               "--serve-prompt-len and --serve-gen-len must be >= 1, --serve-shared-prefix and "
               "--serve-requests >= 0");
  a.serve.engine = engine;
  return runtime::serve::serve_compare(a.compact, a.reference, a.serve);
}

/// The verdict `r` of `a` as JSON (runtime::VerifyResult::to_json), with the two model
/// directories and the threads it ran on.
inline nlohmann::json verify_json(const runtime::VerifyResult& r, const VerifyArgs& a,
                                  int threads) {
  nlohmann::json j = r.to_json();
  j["compact"] = a.compact;
  j["reference"] = a.reference;
  j["threads"] = threads;
  j["peak_rss_mb"] = core::peak_rss_mib();
  return j;
}

}  // namespace shrink::cli
