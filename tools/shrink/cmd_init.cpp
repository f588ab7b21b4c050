// `shrink init --out DIR (--preset NAME | --config config.json) [--tokenizer T]`: a randomly
// initialized model directory (seeded), the starting point for `shrink train`.
#include <cstdio>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "train/api.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_init(CLI::App& app, Globals& g) {
  struct Opts {
    std::string out, preset = "tiny", config, tokenizer;
    int64_t vocab_size = 0;
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
      train::model_init(c, o->out, o->init);
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
