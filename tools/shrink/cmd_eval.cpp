// `shrink eval MODEL_DIR --data PATH`: perplexity, mean NLL and tokens/s (LibTorch, float32).
#include <cstdio>

#include "core/dataset.h"
#include "train/api.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_eval(CLI::App& app, Globals& g) {
  struct Opts {
    std::string model;
    train::EvalOptions e;
  };
  auto o = std::make_shared<Opts>();
  o->e.source.data = core::kDefaultCorpus;
  CLI::App* sub = app.add_subcommand(
      "eval",
      "Perplexity of a model over non-overlapping windows of --seq-len tokens (each window "
      "scores len-1 next-token predictions; no BOS is added unless the tokenizer's "
      "post-processor adds one)");
  sub->add_option("model", o->model, "Model directory (config.json + safetensors)")->required();
  sub->add_option("--data", o->e.source.data,
                  "Text file, directory, .jsonl, fortune files, or token shards")
      ->capture_default_str();
  sub->add_option("--seq-len", o->e.seq_len, "Window length in tokens (0: min(512, max positions))")
      ->capture_default_str();
  sub->add_option("--max-tokens", o->e.source.max_tokens, "Use at most this many tokens (0: all)")
      ->capture_default_str();
  sub->add_option("--batch", o->e.batch, "Windows per forward pass")->capture_default_str();
  sub->add_option("--split", o->e.source.split,
                  "train, val, all or auto (auto: val for token shards, all for text)")
      ->capture_default_str();
  sub->add_option("--val-fraction", o->e.source.val_fraction,
                  "Validation fraction of the document-level split of text data")
      ->capture_default_str();
  sub->add_option("--split-seed", o->e.source.seed, "Seed of the document-level split")
      ->capture_default_str();
  sub->add_option("--tokenizer", o->e.source.tokenizer,
                  "tokenizer.json to use instead of MODEL_DIR/tokenizer.json");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("eval", g, true, [&] {
      if (o->e.seq_len < 0 || o->e.seq_len == 1) {
        throw Error(StatusCode::kInvalidInput, "--seq-len " + std::to_string(o->e.seq_len) +
                                                   ": expected >= 2 (or 0 for the default)");
      }
      if (g.validate_only) return 0;
      o->e.progress = g.progress();
      train::EvalResult r = train::eval_perplexity(o->model, o->e);
      if (g.json) {
        print_json({{"model", o->model},
                    {"data", r.data_description},
                    {"perplexity", r.perplexity},
                    {"mean_nll", r.mean_nll},
                    {"tokens", r.tokens},
                    {"tokens_scored", r.tokens_scored},
                    {"windows", r.windows},
                    {"seq_len", r.seq_len},
                    {"window_policy", "non-overlapping; each window scores len-1 tokens"},
                    {"seconds", r.seconds},
                    {"tokens_per_second", r.tokens_per_second},
                    {"threads", g.threads}});
      } else {
        std::printf("perplexity  %.4f\n", r.perplexity);
        std::printf("mean NLL    %.5f nats over %llu predicted tokens\n", r.mean_nll,
                    (unsigned long long)r.tokens_scored);
        std::printf("windows     %llu non-overlapping windows of up to %lld tokens "
                    "(each scores len-1 predictions; BOS only where the tokenizer's template adds one)\n",
                    (unsigned long long)r.windows, (long long)r.seq_len);
        std::printf("data        %s, %llu tokens\n", r.data_description.c_str(),
                    (unsigned long long)r.tokens);
        std::printf("speed       %.0f tokens/s (%d threads, %.2f s)\n", r.tokens_per_second,
                    g.threads, r.seconds);
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
