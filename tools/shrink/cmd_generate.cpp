// `shrink generate MODEL_DIR (--prompt TEXT | --prompt-ids 1,2,3)`: sample a continuation.
// --ids prints token ids, so checkpoints without a tokenizer can be run and compared exactly.
#include <cstdio>
#include <sstream>

#include "core/status.h"
#include "train/api.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace {
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
    if (a == std::string::npos) {
      throw Error(StatusCode::kInvalidInput, "--prompt-ids '" + s + "': empty item; expected "
                                             "comma-separated token ids like 1,2,3");
    }
    item = item.substr(a, b - a + 1);
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (*end != '\0' || v < 0 || v > INT32_MAX) {
      throw Error(StatusCode::kInvalidInput, "--prompt-ids: '" + item +
                                                 "' is not a token id; expected integers >= 0");
    }
    ids.push_back(int32_t(v));
  }
  return ids;
}
}  // namespace

void register_generate(CLI::App& app, Globals& g) {
  struct Opts {
    std::string model, prompt, prompt_ids;
    bool ids = false, ignore_eos = false;
    train::GenerateOptions o;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("generate", "Generate a continuation of a prompt");
  sub->add_option("model", o->model, "Model directory")->required();
  auto* p = sub->add_option("--prompt", o->prompt, "Prompt text (needs a tokenizer)");
  auto* pi = sub->add_option("--prompt-ids", o->prompt_ids, "Prompt as token ids, e.g. 1,2,3");
  p->excludes(pi);
  sub->add_option("--max-new-tokens", o->o.max_new_tokens, "Tokens to generate")
      ->capture_default_str();
  sub->add_option("--temperature", o->o.sampling.temperature, "Sampling temperature (0: greedy)")
      ->capture_default_str();
  sub->add_option("--top-p", o->o.sampling.top_p, "Nucleus sampling mass (1: off)")
      ->capture_default_str();
  sub->add_option("--top-k", o->o.sampling.top_k, "Keep the k most likely tokens (0: off)")
      ->capture_default_str();
  sub->add_option("--seed", o->o.seed, "Sampling seed")->capture_default_str();
  sub->add_option("--tokenizer", o->o.tokenizer, "tokenizer.json instead of MODEL_DIR's");
  sub->add_flag("--ids", o->ids, "Print token ids (prompt and continuation) instead of text");
  sub->add_flag("--ignore-eos", o->ignore_eos, "Do not stop at the end-of-sequence token");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("generate", g, true, [&] {
      if (o->prompt.empty() && o->prompt_ids.empty()) {
        throw Error(StatusCode::kInvalidInput, "give --prompt TEXT or --prompt-ids 1,2,3");
      }
      if (!o->prompt_ids.empty()) o->o.prompt_ids = parse_ids(o->prompt_ids);
      o->o.prompt = o->prompt;
      o->o.stop_at_eos = !o->ignore_eos;
      train::GenerateResult r = train::generate(o->model, o->o);
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
      } else if (o->ids || !r.has_text) {
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
