// libFuzzer harness: the OpenAI request parsers of `shrink-rt serve` (parse_completion and
// parse_chat, lib/runtime/serve/openai.cpp) over arbitrary bodies, with the default teacher's
// kind of tokenizer (a small byte-level BPE) and a ChatML template. A rejected body must carry
// an HTTP status of 400 or 404 and a message; an accepted one must satisfy what the scheduler
// relies on: a non-empty prompt of ids inside the vocabulary, max_tokens within the context
// with the prompt, sane sampling settings, at most 4 stop strings, logprobs in [-1, 20], n in
// [1, 16], penalties in [-2, 2], logit_bias ids inside the vocabulary with biases in [-100, 100].
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include <cmath>

#include "core/jinja.h"
#include "fuzz_util.h"
#include "runtime/serve/openai.h"

using namespace shrink;

namespace {
const core::Tokenizer& tokenizer() {
  static const core::Tokenizer t = [] {
    std::vector<std::string> vocab;
    for (int b = 0; b < 256; ++b) vocab.push_back(core::byte_level_encode(std::string(1, char(b))));
    return core::Tokenizer::from_vocab_merges(vocab, {}, {}).take_or_throw();
  }();
  return t;
}
const core::ChatTemplate& chat() {
  static const core::ChatTemplate c = [] {
    core::ChatTemplate ct;
    ct.tmpl = core::JinjaTemplate::parse(
                  "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                  "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
                  "chatml")
                  .take_or_throw();
    return ct;
  }();
  return c;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  const int64_t vocab = 256, context = 128;
  for (int chat_api = 0; chat_api < 2; ++chat_api) {
    runtime::serve::CompletionRequest q;
    auto e = chat_api ? runtime::serve::parse_chat(body, &tokenizer(), &chat(), "m", vocab, context, q)
                      : runtime::serve::parse_completion(body, &tokenizer(), "m", vocab, context, q);
    if (e) {
      FUZZ_CHECK(e->status == 400 || e->status == 404, "status %d", e->status);
      FUZZ_CHECK(!e->message.empty(), "an error without a message");
      (void)runtime::serve::dump(e->body());
      continue;
    }
    FUZZ_CHECK(!q.prompt.empty(), "an empty prompt accepted");
    for (int32_t id : q.prompt) FUZZ_CHECK(id >= 0 && id < vocab, "prompt id %d", id);
    FUZZ_CHECK(q.max_tokens >= 0 && int64_t(q.prompt.size()) + q.max_tokens <= context,
               "prompt %zu + max_tokens %lld past the context", q.prompt.size(), (long long)q.max_tokens);
    FUZZ_CHECK(q.sampling.temperature >= 0 && q.sampling.temperature <= 2, "temperature");
    FUZZ_CHECK(q.sampling.top_p > 0 && q.sampling.top_p <= 1 && std::isfinite(q.sampling.top_p), "top_p");
    FUZZ_CHECK(q.sampling.top_k >= 0, "top_k");
    FUZZ_CHECK(q.stop.size() <= 4, "%zu stop strings", q.stop.size());
    for (const auto& s : q.stop) FUZZ_CHECK(!s.empty(), "an empty stop string");
    FUZZ_CHECK(q.logprobs >= -1 && q.logprobs <= 20, "logprobs %d", q.logprobs);
    FUZZ_CHECK(q.chat == bool(chat_api), "chat flag");
    FUZZ_CHECK(q.n >= 1 && q.n <= runtime::serve::kMaxChoices, "n %d", q.n);
    FUZZ_CHECK(std::fabs(q.adjust.presence) <= 2 && std::fabs(q.adjust.frequency) <= 2, "penalties");
    FUZZ_CHECK(q.adjust.bias.size() <= 1024, "%zu logit_bias entries", q.adjust.bias.size());
    for (const auto& [id, b] : q.adjust.bias)
      FUZZ_CHECK(id >= 0 && id < vocab && std::fabs(b) <= 100, "logit_bias %d: %g", id, double(b));
  }
  return 0;
}
