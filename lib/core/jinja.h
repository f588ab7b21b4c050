// A Jinja2 subset for Hugging Face chat templates (tokenizer_config.json's `chat_template`),
// rendered as transformers renders them: trim_blocks and lstrip_blocks on, loop controls on,
// Python semantics for values (truthiness, comparisons, str() of numbers and booleans),
// `tojson` as json.dumps (insertion order, ", " and ": " separators, non-ASCII kept), and the
// globals transformers provides (raise_exception, strftime_now, namespace, range).
//
// What it covers is what the templates of Llama 3.x, Qwen2/2.5, Mistral and SmolLM use:
// if/elif/else, for (with `loop`, tuple targets, an `if` filter, else), set (also into a
// namespace, and block sets), macros, break/continue, {% generation %}, the whitespace controls
// `-` and `+`, filters (trim, tojson, length, upper, lower, title, capitalize, default, join,
// first, last, string, int, float, list, items, replace, reverse, selectattr, rejectattr, map,
// unique, abs, round, safe, indent, wordcount, sum, sort, dictsort, min, max, batch), tests
// (defined, none, string, number, mapping, sequence, iterable, boolean, equalto, ...), string
// and dict methods (strip, split, startswith, items, get, ...), slices and the ternary operator.
// A template that uses anything else is refused by parse() with the construct's name and its
// line:column, so a server refuses it at start-up rather than mid-request.
// Checked against Hugging Face's own renderer (@huggingface/jinja) in scripts/jinja_check.mjs;
// unit tests in tests/core/test_jinja.cpp.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace shrink::core {

class JinjaTemplate {
 public:
  /// Parse `source`; `origin` names it in errors ("tokenizer_config.json: chat_template").
  /// Errors: kInvalidInput "ORIGIN:LINE:COL: ..." for a syntax error or an unsupported
  /// construct (named).
  static Result<JinjaTemplate> parse(const std::string& source, const std::string& origin);
  /// Render with `context` (an object: messages, add_generation_prompt, bos_token, ...).
  /// Errors: kInvalidInput for raise_exception() (its message) and type errors at run time.
  Result<std::string> render(const nlohmann::ordered_json& context) const;

  JinjaTemplate();
  ~JinjaTemplate();
  JinjaTemplate(JinjaTemplate&&) noexcept;
  JinjaTemplate& operator=(JinjaTemplate&&) noexcept;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// A model's chat template with the special tokens its context names.
struct ChatTemplate {
  JinjaTemplate tmpl;
  std::string origin;  // "DIR/tokenizer_config.json: chat_template"
  std::string bos_token, eos_token;
};

/// The chat template of MODEL_DIR: chat_template.jinja when present (newer transformers),
/// else tokenizer_config.json's `chat_template` (a string, or a list of {name, template} whose
/// "default" entry is taken). nullopt when the model has none. Errors: kInvalidInput naming the
/// file for malformed JSON and for a template that does not parse or uses an unsupported
/// construct (named, with line:column).
Result<std::optional<ChatTemplate>> chat_template_load(const std::string& model_dir);

/// Render `messages` as transformers' apply_chat_template(tokenize=False) does: the context
/// holds messages, add_generation_prompt, bos_token, eos_token, tools (when not null) and the
/// entries of `extra` (chat_template_kwargs).
Result<std::string> chat_template_render(const ChatTemplate& t, const nlohmann::ordered_json& messages,
                                         bool add_generation_prompt,
                                         const nlohmann::ordered_json& tools = nullptr,
                                         const nlohmann::ordered_json& extra = nullptr);

}  // namespace shrink::core
