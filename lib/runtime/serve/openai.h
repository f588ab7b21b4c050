// The OpenAI-compatible protocol of `shrink-rt serve`, apart from HTTP: request validation
// (every field's type and range, with its JSON path in the error, as OpenAI's 400s name
// `param`), the text side of generation (incremental detokenization that never splits a UTF-8
// character, stop strings, including one that spans tokens and is held back until decided),
// response and stream-chunk bodies, the response cache, and the Prometheus metrics text.
// Pure functions and small classes, so the fuzz harness and unit tests drive them without a
// socket. Tested in tests/runtime/test_serve.cpp; the server end to end with the `openai` npm
// client in tests/cli/test_serve.sh.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/sampling.h"
#include "core/jinja.h"
#include "core/status.h"
#include "core/tokenizer.h"
#include "runtime/scheduler.h"

namespace shrink::runtime::serve {

/// Most choices one request may ask for (`n`).
constexpr int kMaxChoices = 16;

/// A validated /v1/completions request.
struct CompletionRequest {
  std::string model;
  std::vector<int32_t> prompt;  // token ids (text prompts are encoded with the tokenizer)
  std::string prompt_text;      // as given, for echo (text prompts)
  int64_t max_tokens = 16;
  core::SamplingParams sampling;  // OpenAI's default temperature 1, top_p 1
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  core::LogitAdjust adjust;  // presence_penalty, frequency_penalty, logit_bias
  int n = 1;                 // choices: n sequences of the same prompt (choice i seeded seed + i)
  int logprobs = -1;  // -1: none
  bool echo = false, stream = false, include_usage = false, return_token_ids = false;
  bool ignore_eos = false;
  bool chat = false;  // /v1/chat/completions: prompt rendered from messages by the chat template
};

/// An error in OpenAI's shape: HTTP status, message, the offending parameter (JSON path).
struct ApiError {
  int status = 400;
  std::string message, param, type = "invalid_request_error", code;
  nlohmann::json body() const;
};

/// Parse and check a /v1/completions body. `tok` may be null (then prompts must be token ids).
/// `model_id` is the served model's name: another name is a 404, as OpenAI answers.
std::optional<ApiError> parse_completion(const std::string& body, const core::Tokenizer* tok,
                                         const std::string& model_id, int64_t vocab,
                                         int64_t context, CompletionRequest& out);

/// Parse and check a /v1/chat/completions body: `messages` (role and content: a string, or
/// text parts) rendered with the model's chat template (`tmpl` null: a 400 saying the model
/// has none), then encoded without special tokens, as transformers' apply_chat_template does.
/// Also `tools`, `chat_template_kwargs`, `add_generation_prompt`, `max_completion_tokens`,
/// `logprobs` (boolean) with `top_logprobs`.
std::optional<ApiError> parse_chat(const std::string& body, const core::Tokenizer* tok,
                                   const core::ChatTemplate* tmpl, const std::string& model_id,
                                   int64_t vocab, int64_t context, CompletionRequest& out);

/// The text of a request's sampled tokens as they arrive: `push` returns the text that is
/// final (a stop string can no longer begin in it, and no UTF-8 character is cut), `stopped`
/// tells when a stop string was found (the text then ends before it).
class TextStream {
 public:
  TextStream(const core::Tokenizer* tok, std::vector<std::string> stop)
      : tok_(tok), stop_(std::move(stop)) {}
  std::string push(const std::vector<TokenOut>& toks, bool last);
  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }  // the final text emitted so far
  const std::vector<TokenOut>& tokens() const { return toks_; }
  /// Tokens whose text is part of the output (all, unless a stop string cut them).
  size_t tokens_kept() const { return kept_; }
  /// The text a token decodes to alone (logprobs' token strings).
  std::string piece(int32_t id) const;

 private:
  const core::Tokenizer* tok_;
  std::vector<std::string> stop_;
  std::vector<TokenOut> toks_;
  std::vector<int32_t> ids_;
  std::string text_;
  bool stopped_ = false;
  size_t kept_ = 0;
};

/// What a finished completion returns (and the response cache keeps).
struct CompletionResult {
  std::string text;                // with the prompt first when echo
  std::vector<TokenOut> tokens;    // kept tokens
  std::string finish_reason;       // stop | length
  int64_t prompt_tokens = 0, cached_tokens = 0;
};

nlohmann::json usage_json(const CompletionResult& r);
/// The logprobs object of the legacy completions API (tokens, token_logprobs, top_logprobs,
/// text_offset), or null.
nlohmann::json logprobs_json(const CompletionRequest& q, const TextStream& ts,
                             const std::vector<TokenOut>& toks, size_t text_offset0);
/// The response body of a completion (not streamed).
nlohmann::json completion_body(const std::string& id, int64_t created, const std::string& model,
                               const CompletionRequest& q, const CompletionResult& r,
                               const nlohmann::json& logprobs, bool cache_hit);
/// With echo: the prompt's tokens first (the first with a null log-probability, the others as
/// ServeStream::prompt_logprobs gives them, text offsets from 0), then the generated `toks`
/// (offsets after the prompt's text, as logprobs_json gives them), or null without logprobs.
nlohmann::json echo_logprobs_json(const CompletionRequest& q, const TextStream& ts,
                                  const std::vector<TokenOut>& prompt_lp,
                                  const std::vector<TokenOut>& toks);
/// One body with the choices of n single-choice bodies (choice i gets index i) and their usage:
/// the prompt counted once, the completions' tokens summed.
nlohmann::json bodies_merge(const std::vector<nlohmann::json>& bodies);
/// The response body of a chat completion, and one streamed chunk of it (`delta`: the new
/// content, `role` set on the first; finish_reason null until the last).
nlohmann::json chat_body(const std::string& id, int64_t created, const std::string& model,
                         const CompletionRequest& q, const CompletionResult& r,
                         const nlohmann::json& logprobs, bool cache_hit);
nlohmann::json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                          const nlohmann::json& delta, const nlohmann::json& logprobs,
                          const nlohmann::json& finish);
/// The logprobs object of the chat API ({"content": [{token, logprob, bytes, top_logprobs}]}).
nlohmann::json chat_logprobs_json(const CompletionRequest& q, const TextStream& ts,
                                  const std::vector<TokenOut>& toks);
/// One server-sent event of a streamed completion: "data: {...}\n\n".
std::string sse(const nlohmann::json& j);

/// Serialize JSON whatever bytes the model produced (invalid UTF-8 becomes U+FFFD).
std::string dump(const nlohmann::json& j);

/// Identical deterministic requests (greedy, or sampled with a seed) answered from memory: an
/// LRU of `capacity` entries keyed by the request's canonical form. Thread-safe.
class ResponseCache {
 public:
  explicit ResponseCache(size_t capacity) : cap_(capacity) {}
  /// The key of a cacheable request, or "" for one that is not (sampled without a seed).
  static std::string key(const CompletionRequest& q);
  std::optional<nlohmann::json> get(const std::string& key);
  void put(const std::string& key, nlohmann::json value);
  uint64_t hits() const;
  uint64_t misses() const;
  size_t size() const;

 private:
  size_t cap_;
  mutable std::mutex mu_;
  std::list<std::pair<std::string, nlohmann::json>> lru_;
  std::unordered_map<std::string, std::list<std::pair<std::string, nlohmann::json>>::iterator> map_;
  uint64_t hits_ = 0, misses_ = 0;
};

/// HTTP-side counters of the server, for /metrics.
struct HttpCounters {
  uint64_t ok = 0, client_errors = 0, unauthorized = 0, busy = 0, server_errors = 0;
  uint64_t response_cache_hits = 0, response_cache_misses = 0;
};
std::string metrics_text(const SchedulerStats& s, const HttpCounters& h, size_t response_cache_size);

}  // namespace shrink::runtime::serve
