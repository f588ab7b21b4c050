// libFuzzer harness: the chat-template renderer (core::JinjaTemplate). Input: a template; when
// it parses, it is rendered with a fixed chat context (messages with tool calls, tools,
// add_generation_prompt, bos/eos). Parse and render errors must come back as a Status with a
// message (never a crash, a hang or unbounded memory: the renderer bounds nesting, steps, output
// and macro recursion); a successful render is deterministic.
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include "core/jinja.h"
#include "fuzz_util.h"

using namespace shrink;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string src(reinterpret_cast<const char*>(data), size);
  auto t = core::JinjaTemplate::parse(src, "fuzz");
  if (!t.is_ok()) {
    FUZZ_CHECK(!t.status().message().empty(), "a parse error without a message");
    return 0;
  }
  static const nlohmann::ordered_json ctx = nlohmann::ordered_json::parse(R"({
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi é"},
                 {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                   "function": {"name": "f", "arguments": {"a": 1, "b": [true, null]}}}]},
                 {"role": "tool", "content": "{\"x\": 2}"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>",
    "date_string": "1 Jan 2026"})");
  auto a = t.value().render(ctx);
  if (!a.is_ok()) {
    FUZZ_CHECK(!a.status().message().empty(), "a render error without a message");
    return 0;
  }
  auto b = t.value().render(ctx);
  FUZZ_CHECK(b.is_ok() && b.value() == a.value(), "two renders differ");
  return 0;
}
