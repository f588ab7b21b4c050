// The options of `shrink generate` (LibTorch) and `shrink-rt generate` (the runtime), and the
// parser of comma-separated id lists: one definition, so that the same command line runs on
// both, which tests/cli/test_rt_cli.sh compares (greedy ids, stop ids).
#pragma once

#include <CLI/CLI.hpp>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "core/status.h"

namespace shrink::cli {

/// What both tools' `generate` reads besides the sampling options: the model, the prompt (text
/// or ids), a tokenizer to use instead of the model's, and how to print.
struct GenerateArgs {
  std::string model, prompt, prompt_ids, tokenizer;
  bool ids = false, ignore_eos = false;
};

/// The model, the prompt, and the sampling options of `o` (train::GenerateOptions or
/// runtime::GenerateOptions: max_new_tokens, sampling, seed), whose values are the defaults.
template <class GenerateOptions>
void add_generate_options(CLI::App* sub, GenerateArgs& a, GenerateOptions& o) {
  sub->add_option("model", a.model, "Model directory")->required();
  auto* text = sub->add_option("--prompt", a.prompt, "Prompt text (needs a tokenizer)");
  auto* ids = sub->add_option("--prompt-ids", a.prompt_ids, "Prompt as token ids, e.g. 1,2,3");
  text->excludes(ids);
  sub->add_option("--max-new-tokens", o.max_new_tokens, "Tokens to generate")
      ->capture_default_str();
  sub->add_option("--temperature", o.sampling.temperature, "Sampling temperature (0: greedy)")
      ->capture_default_str();
  sub->add_option("--top-p", o.sampling.top_p, "Nucleus sampling mass (1: off)")
      ->capture_default_str();
  sub->add_option("--top-k", o.sampling.top_k, "Keep the k most likely tokens (0: off)")
      ->capture_default_str();
  sub->add_option("--seed", o.seed, "Sampling seed")->capture_default_str();
  sub->add_option("--tokenizer", a.tokenizer, "tokenizer.json instead of MODEL_DIR's");
  sub->add_flag("--ids", a.ids, "Print token ids (prompt and continuation) instead of text");
  sub->add_flag("--ignore-eos", a.ignore_eos, "Do not stop at the end-of-sequence token");
}

/// The non-negative integers of `s`, comma-separated ("1, 2,3"); `flag` names the option in
/// errors (kInvalidInput: an empty item, a non-integer, a value above INT32_MAX, no item).
inline Result<std::vector<int32_t>> ids_parse(const std::string& s, const char* flag) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t a = item.find_first_not_of(" \t"), b = item.find_last_not_of(" \t");
    SHRINK_CHECK(a != std::string::npos, StatusCode::kInvalidInput,
                 "%s '%s': empty item; expected comma-separated integers like 1,2,3", flag,
                 s.c_str());
    item = item.substr(a, b - a + 1);
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    SHRINK_CHECK(*end == '\0' && v >= 0 && v <= INT32_MAX, StatusCode::kInvalidInput,
                 "%s: '%s' is not a non-negative integer", flag, item.c_str());
    ids.push_back(int32_t(v));
  }
  SHRINK_CHECK(!ids.empty(), StatusCode::kInvalidInput, "%s: empty list", flag);
  return ids;
}

}  // namespace shrink::cli
