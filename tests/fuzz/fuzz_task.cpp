// libFuzzer harness: multiple-choice task files (choice_task_load) and every `shrink data
// convert-task` format (choice_task_convert), whose output is then loaded as a task.
//
// Input, one of:
//   - a task file (JSONL): loaded with a small byte-level tokenizer for text items and without
//     one (ids only, vocab_size 1000);
//   - "#FORMAT [fewshot=N] [max=N]\n" then the benchmark's JSONL records, optionally followed by
//     "\n#labels\n" and a labels file (piqa); FORMAT is one of choice_task_formats(). The records
//     also serve as the few-shot source.
// Accepted items must satisfy choice_task.h's contract: a non-empty context, at least two
// non-empty choices, ids inside the vocabulary, a label naming a choice, and a scored token left
// in every choice.
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include <algorithm>

#include "core/choice_task.h"
#include "pipeline/task_convert.h"
#include "fuzz_util.h"

using namespace shrink;

namespace {

void check_items(const std::vector<core::ChoiceItem>& items, int64_t vocab) {
  for (const core::ChoiceItem& it : items) {
    FUZZ_CHECK(!it.context.empty(), "an item with an empty context");
    FUZZ_CHECK(it.choices.size() >= 2, "an item with %zu choices", it.choices.size());
    FUZZ_CHECK(it.label >= 0 && it.label < int64_t(it.choices.size()), "label %lld",
               (long long)it.label);
    FUZZ_CHECK(it.given.empty() || it.given.size() == it.choices.size(), "given has %zu entries",
               it.given.size());
    for (int32_t id : it.context) FUZZ_CHECK(id >= 0 && id < vocab, "context id %d", id);
    for (size_t c = 0; c < it.choices.size(); ++c) {
      FUZZ_CHECK(!it.choices[c].empty(), "choice %zu is empty", c);
      for (int32_t id : it.choices[c]) FUZZ_CHECK(id >= 0 && id < vocab, "choice id %d", id);
      if (!it.given.empty()) {
        FUZZ_CHECK(it.given[c] >= 0 && it.given[c] < int64_t(it.choices[c].size()),
                   "choice %zu: given %lld of %zu tokens", c, (long long)it.given[c],
                   it.choices[c].size());
      }
    }
  }
}

void load_task(const std::string& path) {
  const core::Tokenizer tok = fuzz::make_byte_level_tokenizer();
  auto with_tok = core::choice_task_load(path, &tok, tok.vocab_size());
  if (with_tok.is_ok())
    check_items(with_tok.value(), tok.vocab_size());
  else
    fuzz::note_rejected("task", with_tok.status().message());
  auto ids_only = core::choice_task_load(path, nullptr, 1000);
  if (ids_only.is_ok()) check_items(ids_only.value(), 1000);
}

// "#FORMAT fewshot=2 max=3" -> options; false when the header names no known format.
bool parse_header(std::string_view header, pipeline::ChoiceTaskConvertOptions* o) {
  std::vector<std::string> words;
  size_t pos = 1;
  while (pos < header.size()) {
    size_t sp = header.find(' ', pos);
    if (sp == std::string_view::npos) sp = header.size();
    if (sp > pos) words.emplace_back(header.substr(pos, sp - pos));
    pos = sp + 1;
  }
  if (words.empty()) return false;
  const auto& formats = pipeline::choice_task_formats();
  if (std::find(formats.begin(), formats.end(), words[0]) == formats.end()) return false;
  o->format = words[0];
  for (size_t i = 1; i < words.size(); ++i) {
    const std::string& w = words[i];
    // Small counts only: the value is a harness knob, not the input under test.
    auto num = [&](size_t skip) {
      return int64_t(std::strtol(w.c_str() + skip, nullptr, 10) % 16);
    };
    if (w.rfind("fewshot=", 0) == 0) o->fewshot = num(8);
    if (w.rfind("max=", 0) == 0) o->max_items = num(4);
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  pipeline::ChoiceTaskConvertOptions o;
  const size_t nl = in.find('\n');
  if (in.empty() || in[0] != '#' || nl == std::string_view::npos ||
      !parse_header(in.substr(0, nl), &o)) {
    load_task(fuzz::write_temp("task.jsonl", in));
    return 0;
  }
  bool has_labels = false;
  auto [records, labels] = fuzz::split_once(in.substr(nl + 1), "\n#labels\n", &has_labels);
  o.in = fuzz::write_temp("records.jsonl", records);
  if (has_labels) o.labels = fuzz::write_temp("labels.txt", labels);
  if (o.fewshot > 0) o.fewshot_from = o.in;
  const std::string out = fuzz::temp_dir() + "/converted.jsonl";
  auto r = pipeline::choice_task_convert(o, out);
  if (!r.is_ok()) {
    fuzz::note_rejected("convert-task", r.status().message());
    FUZZ_CHECK(!r.status().message().empty(), "an error without a message");
    return 0;
  }
  FUZZ_CHECK(r.value().items >= 0, "negative item count");
  load_task(out);
  return 0;
}
