// `shrink eval MODEL_DIR --data PATH`: perplexity, mean NLL and tokens/s (LibTorch, float32).
#include <cstdio>

#include "core/fs.h"
#include "train/api.h"
#include "tools/eval_options.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_eval(CLI::App& app, Globals& g) {
  struct Opts {
    std::string model;
    train::EvalOptions e;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "eval",
      "Perplexity of a model over non-overlapping windows of --seq-len tokens (each window "
      "scores len-1 next-token predictions; no BOS is added unless the tokenizer's "
      "post-processor adds one)");
  sub->add_option("model", o->model, "Model directory (config.json + safetensors)")->required();
  add_eval_options(sub, o->e.source, o->e.seq_len, o->e.batch);
  sub->add_flag("--load-model", o->e.load_model,
                "Load the whole model (float32) instead of streaming it layer by layer (the "
                "reference path; the results agree to float rounding)");
  sub->add_option("--max-memory", o->e.max_memory,
                  "Budget for the streamed hidden states (tokens x hidden x 4 bytes); beyond it "
                  "they spill to a temporary file in $TMPDIR")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("eval", g, true, [&] {
      if (o->e.seq_len < 0 || o->e.seq_len == 1) {
        throw Error(StatusCode::kInvalidInput, "--seq-len " + std::to_string(o->e.seq_len) +
                                                   ": expected >= 2 (or 0 for the default)");
      }
      if (auto m = core::bytes_parse(o->e.max_memory); !m.is_ok()) {
        throw Error(StatusCode::kInvalidInput, "--max-memory: " + m.status().message());
      }
      if (g.validate_only) return 0;
      o->e.progress = g.progress();
      train::EvalResult r = train::eval_perplexity(o->model, o->e);
      if (g.json) {
        nlohmann::json j = perplexity_json(r, r.data_description);
        j["model"] = o->model;
        j["threads"] = g.threads;
        j["streamed"] = r.streamed;
        if (r.streamed) {
          j["states_bytes"] = r.states_bytes;
          j["states_spilled"] = r.states_spilled;
          j["bytes_read"] = r.bytes_read;
        }
        j["peak_rss_mb"] = core::peak_rss_mib();
        print_json(j);
      } else {
        perplexity_print(r, r.data_description);
        std::printf("speed       %.0f tokens/s (%d threads, %.2f s)\n", r.tokens_per_second,
                    g.threads, r.seconds);
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
