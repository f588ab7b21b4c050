// `shrink generate MODEL_DIR (--prompt TEXT | --prompt-ids 1,2,3)`: sample a continuation.
// --ids prints token ids, so checkpoints without a tokenizer can be run and compared exactly.
#include <cstdio>

#include "train/api.h"
#include "tools/generate_options.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_generate(CLI::App& app, Globals& g) {
  struct Opts {
    GenerateArgs a;
    train::GenerateOptions o;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("generate", "Generate a continuation of a prompt");
  add_generate_options(sub, o->a, o->o);
  sub->callback([o, &g] {
    g.exit_code = run_guarded("generate", g, true, [&] {
      if (o->a.prompt.empty() && o->a.prompt_ids.empty()) {
        throw Error(StatusCode::kInvalidInput, "give --prompt TEXT or --prompt-ids 1,2,3");
      }
      if (!o->a.prompt_ids.empty()) {
        o->o.prompt_ids = ids_parse(o->a.prompt_ids, "--prompt-ids").take_or_throw();
      }
      o->o.prompt = o->a.prompt;
      o->o.tokenizer = o->a.tokenizer;
      o->o.stop_at_eos = !o->a.ignore_eos;
      train::GenerateResult r = train::generate(o->a.model, o->o);
      std::vector<int32_t> fresh(r.ids.begin() + r.prompt_len, r.ids.end());
      double decode_tps = r.decode_seconds > 0 && fresh.size() > 1
                              ? double(fresh.size() - 1) / r.decode_seconds : 0.0;
      if (g.json) {
        nlohmann::json j = {{"ids", r.ids}, {"prompt_len", r.prompt_len}, {"new_ids", fresh},
                            {"prefill_seconds", r.prefill_seconds},
                            {"decode_seconds", r.decode_seconds},
                            {"decode_tokens_per_second", decode_tps}};
        if (r.has_text) j["text"] = r.text;
        print_json(j);
      } else if (o->a.ids || !r.has_text) {
        for (size_t i = 0; i < r.ids.size(); ++i) std::printf("%s%d", i ? "," : "", r.ids[i]);
        std::printf("\n");
      } else {
        std::printf("%s\n", r.text.c_str());
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
