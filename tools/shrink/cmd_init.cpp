// `shrink init --out DIR (--preset NAME | --config config.json) [--tokenizer T] [--streaming]`: a
// randomly initialized model directory (seeded), the starting point for `shrink train`. With
// --streaming, written tensor by tensor without building the model (pipeline/random_model.h), for
// models larger than memory (scripts/scale_check.sh).
#include <cstdio>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/progress.h"
#include "core/threads.h"
#include "core/tokenizer.h"
#include "pipeline/random_model.h"
#include "train/api.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace {

void random_model_stream(const core::ModelConfig& c, const std::string& out,
                         const train::InitOptions& init, const Globals& g) {
  pipeline::RandomModelOptions r;
  r.seed = init.seed;
  r.dtype = init.dtype;
  r.tokenizer = init.tokenizer;
  r.threads = core::threads_resolve(g.threads).take_or_throw();
  core::Progress bar("init", 0, "B", !g.quiet && core::Progress::stderr_is_tty());
  r.progress = [&bar](uint64_t done, uint64_t total) { bar.update(done, core::human_bytes(double(total)) + " in all"); };
  throw_if_error(pipeline::random_model_write(c, out, r));
  bar.finish();
}

}  // namespace

void register_init(CLI::App& app, Globals& g) {
  struct Opts {
    std::string out, preset = "tiny", config, tokenizer;
    int64_t vocab_size = 0;
    bool streaming = false;
    train::InitOptions init;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("init", "Create a randomly initialized model directory");
  sub->add_option("--out", o->out, "Output model directory")->required();
  sub->add_option("--preset", o->preset,
                  std::string("Built-in Llama size: ") + core::config_preset_names())
      ->capture_default_str();
  sub->add_option("--config", o->config, "A config.json to use instead of a preset");
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json to copy in (sets the vocab size)");
  sub->add_option("--vocab-size", o->vocab_size, "Vocabulary size (default: the tokenizer's)");
  sub->add_option("--seed", o->init.seed, "Initialization seed")->capture_default_str();
  sub->add_option("--dtype", o->init.dtype, "float32, float16 or bfloat16")->capture_default_str();
  sub->add_flag("--streaming", o->streaming,
                "Write tensor by tensor without building the model (memory: a few MiB per thread, "
                "for models larger than memory); N(0, 0.02) weights from another generator than "
                "the default's, so the values differ");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("init", g, true, [&] {
      core::ModelConfig c;
      int64_t vocab = o->vocab_size;
      if (!o->tokenizer.empty() && vocab == 0) {
        vocab = core::Tokenizer::load(o->tokenizer).take_or_throw().vocab_size();
      }
      if (!o->config.empty()) {
        std::string text = core::read_file(o->config).take_or_throw();
        c = core::config_from_json(text, o->config).take_or_throw();
        if (o->vocab_size) c.vocab_size = o->vocab_size;
      } else {
        if (vocab == 0) {
          throw Error(StatusCode::kInvalidInput,
                      "--preset needs a vocabulary size: pass --tokenizer or --vocab-size");
        }
        c = core::config_preset(o->preset, vocab).take_or_throw();
      }
      o->init.tokenizer = o->tokenizer;
      if (o->streaming) {
        random_model_stream(c, o->out, o->init, g);
      } else {
        train::model_init(c, o->out, o->init);
      }
      if (g.json) {
        print_json({{"out", o->out}, {"config", nlohmann::json::parse(core::config_to_json(c))}});
      } else {
        std::printf("wrote %s (%s, %lld layers, hidden %lld, vocab %lld, seed %llu)\n",
                    o->out.c_str(), core::arch_name(c.arch), (long long)c.num_layers,
                    (long long)c.hidden_size, (long long)c.vocab_size,
                    (unsigned long long)o->init.seed);
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
