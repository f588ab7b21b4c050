// The OpenAI protocol apart from HTTP (openai.h).
#include "runtime/serve/openai.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/json_util.h"

namespace shrink::runtime::serve {

using nlohmann::json;

json ApiError::body() const {
  json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return json{{"error", e}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

namespace {

const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "a value";
  }
}

ApiError bad(const std::string& param, const std::string& msg) {
  ApiError e;
  e.param = param;
  e.message = param.empty() ? msg : param + ": " + msg;
  return e;
}

std::string shown(const json& v) {
  std::string s = dump(v);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Field readers: absent or null keeps the default; a present value of the wrong type or range
// is an error naming the field, what was expected and what came.
std::optional<ApiError> read_int(const json& j, const char* k, int64_t lo, int64_t hi, int64_t& v) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() && !it->is_number_unsigned())
    return bad(k, std::string("expected an integer, got ") + type_name(*it) + " " + shown(*it));
  if (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t(INT64_MAX))
    return bad(k, "expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                      "], got " + shown(*it));
  const int64_t x = it->get<int64_t>();
  if (x < lo || x > hi)
    return bad(k, "expected an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                      "], got " + std::to_string(x));
  v = x;
  return std::nullopt;
}
std::optional<ApiError> read_num(const json& j, const char* k, double lo, double hi, bool lo_open,
                                 double& v) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number())
    return bad(k, std::string("expected a number, got ") + type_name(*it) + " " + shown(*it));
  const double x = it->get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo)) {
    std::ostringstream m;
    m << "expected a number in " << (lo_open ? "(" : "[") << lo << ", " << hi << "], got " << x;
    return bad(k, m.str());
  }
  v = x;
  return std::nullopt;
}
std::optional<ApiError> read_bool(const json& j, const char* k, bool& v) {
  auto it = j.find(k);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean())
    return bad(k, std::string("expected a boolean, got ") + type_name(*it) + " " + shown(*it));
  v = it->get<bool>();
  return std::nullopt;
}

bool all_ints(const json& a) {
  return std::all_of(a.begin(), a.end(),
                     [](const json& x) { return x.is_number_integer() || x.is_number_unsigned(); });
}

std::optional<ApiError> read_ids(const json& a, const std::string& param, int64_t vocab,
                                 std::vector<int32_t>& ids) {
  ids.clear();
  for (size_t i = 0; i < a.size(); ++i) {
    const json& x = a[i];
    const bool neg = x.is_number_integer() && x.get<int64_t>() < 0;
    if (neg || (x.is_number_unsigned() && x.get<uint64_t>() >= uint64_t(vocab)) ||
        (x.is_number_integer() && x.get<int64_t>() >= vocab))
      return bad(param + "[" + std::to_string(i) + "]",
                 "token id " + shown(x) + " is outside the vocabulary [0, " +
                     std::to_string(vocab) + ")");
    ids.push_back(int32_t(x.get<int64_t>()));
  }
  return std::nullopt;
}

// logit_bias: {"token id": bias in [-100, 100]}, at most kMaxLogitBias entries (OpenAI's
// limits); sorted by id.
constexpr size_t kMaxLogitBias = 1024;
std::optional<ApiError> read_logit_bias(const json& j, int64_t vocab,
                                        std::vector<std::pair<int32_t, float>>& out) {
  auto it = j.find("logit_bias");
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_object()) return bad("logit_bias", std::string("expected an object, got ") + type_name(*it));
  if (it->size() > kMaxLogitBias)
    return bad("logit_bias", "expected at most " + std::to_string(kMaxLogitBias) + " entries, got " +
                                 std::to_string(it->size()));
  for (auto kv = it->begin(); kv != it->end(); ++kv) {
    const std::string path = "logit_bias." + kv.key();
    const std::string& k = kv.key();
    const bool digits = !k.empty() && k.size() <= 10 &&
                        std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || std::stoll(k) >= vocab)
      return bad(path, "expected a token id in [0, " + std::to_string(vocab) + ") as the key");
    if (!kv->is_number())
      return bad(path, std::string("expected a number, got ") + type_name(*kv));
    const double v = kv->get<double>();
    if (!(v >= -100.0 && v <= 100.0))
      return bad(path, "expected a bias in [-100, 100], got " + shown(*kv));
    out.emplace_back(int32_t(std::stoll(k)), float(v));
  }
  std::sort(out.begin(), out.end());
  return std::nullopt;
}

// The sampling, output and length fields both endpoints share; checks prompt + max_tokens
// against the context last.
std::optional<ApiError> read_settings(const json& j, const core::Tokenizer* tok, int64_t vocab,
                                      int64_t context, CompletionRequest& q) {
  if (auto e = read_int(j, "max_tokens", 0, context, q.max_tokens)) return e;
  double t = q.sampling.temperature, tp = q.sampling.top_p;
  if (auto e = read_num(j, "temperature", 0.0, 2.0, false, t)) return e;
  if (auto e = read_num(j, "top_p", 0.0, 1.0, true, tp)) return e;
  q.sampling.temperature = float(t);
  q.sampling.top_p = float(tp);
  int64_t top_k = 0;
  if (auto e = read_int(j, "top_k", -1, vocab, top_k)) return e;
  q.sampling.top_k = int32_t(std::max<int64_t>(top_k, 0));
  if (auto it = j.find("seed"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer() && !it->is_number_unsigned())
      return bad("seed", std::string("expected an integer, got ") + type_name(*it));
    q.seed = it->is_number_unsigned() ? it->get<uint64_t>() : uint64_t(it->get<int64_t>());
  }
  int64_t n = 1, best_of = 1;
  if (auto e = read_int(j, "n", 1, kMaxChoices, n)) return e;
  q.n = int(n);
  if (auto e = read_int(j, "best_of", 1, 1, best_of)) {
    e->message = "best_of: only 1 is supported";
    return e;
  }
  if (auto it = j.find("stop"); it != j.end() && !it->is_null()) {
    if (it->is_string()) {
      q.stop.push_back(it->get<std::string>());
    } else if (it->is_array()) {
      if (it->size() > 4) return bad("stop", "expected at most 4 stop strings, got " + std::to_string(it->size()));
      for (size_t i = 0; i < it->size(); ++i) {
        if (!(*it)[i].is_string())
          return bad("stop[" + std::to_string(i) + "]",
                     std::string("expected a string, got ") + type_name((*it)[i]));
        q.stop.push_back((*it)[i].get<std::string>());
      }
    } else {
      return bad("stop", std::string("expected a string or an array of strings, got ") + type_name(*it));
    }
    for (size_t i = 0; i < q.stop.size(); ++i)
      if (q.stop[i].empty()) return bad("stop[" + std::to_string(i) + "]", "a stop string is empty");
    if (!q.stop.empty() && !tok) return bad("stop", "stop strings need the model's tokenizer.json");
  }
  int64_t lp = -1;
  if (auto it = j.find("logprobs"); it != j.end() && !it->is_null()) {
    if (auto e = read_int(j, "logprobs", 0, 20, lp)) return e;
  }
  q.logprobs = int(lp);
  if (auto e = read_bool(j, "echo", q.echo)) return e;
  if (auto e = read_bool(j, "stream", q.stream)) return e;
  if (auto e = read_bool(j, "return_token_ids", q.return_token_ids)) return e;
  if (auto e = read_bool(j, "ignore_eos", q.ignore_eos)) return e;
  if (auto it = j.find("stream_options"); it != j.end() && !it->is_null()) {
    if (!it->is_object())
      return bad("stream_options", std::string("expected an object, got ") + type_name(*it));
    if (!q.stream) return bad("stream_options", "only allowed with stream: true");
    if (auto it2 = it->find("include_usage"); it2 != it->end() && !it2->is_null()) {
      if (!it2->is_boolean())
        return bad("stream_options.include_usage",
                   std::string("expected a boolean, got ") + type_name(*it2));
      q.include_usage = it2->get<bool>();
    }
  }
  double presence = 0, frequency = 0;
  if (auto e = read_num(j, "presence_penalty", -2.0, 2.0, false, presence)) return e;
  if (auto e = read_num(j, "frequency_penalty", -2.0, 2.0, false, frequency)) return e;
  q.adjust.presence = float(presence);
  q.adjust.frequency = float(frequency);
  if (auto e = read_logit_bias(j, vocab, q.adjust.bias)) return e;
  if (auto it = j.find("suffix"); it != j.end() && !it->is_null())
    return bad("suffix", "not supported");
  if (auto it = j.find("user"); it != j.end() && !it->is_null() && !it->is_string())
    return bad("user", std::string("expected a string, got ") + type_name(*it));
  if (int64_t(q.prompt.size()) + q.max_tokens > context) {
    ApiError e = bad("", "this model's maximum context length is " + std::to_string(context) +
                             " tokens, but " + std::to_string(q.prompt.size() + size_t(q.max_tokens)) +
                             " were requested (" + std::to_string(q.prompt.size()) +
                             " in the prompt, " + std::to_string(q.max_tokens) +
                             " for the completion); shorten the prompt or lower max_tokens");
    e.param = int64_t(q.prompt.size()) > context ? "prompt" : "max_tokens";
    e.code = "context_length_exceeded";
    return e;
  }
  return std::nullopt;
}

std::optional<ApiError> parse_json_object(const std::string& body, json& j) {
  // Copying or printing a value recurses once per level: a body nested 100,000 deep would
  // overflow the stack wherever it is copied (each message is), so nesting is capped first.
  if (auto s = core::json_check_depth(body, "the body"); !s.is_ok()) return bad("", s.message());
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    return bad("", "the body is not valid JSON (byte " + std::to_string(e.byte) + "): " +
                       std::string(e.what()));
  } catch (const json::exception& e) {  // e.g. a number out of range
    return bad("", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) return bad("", std::string("expected a JSON object, got ") + type_name(j));
  return std::nullopt;
}

std::optional<ApiError> read_model(const json& j, const std::string& model_id, CompletionRequest& q) {
  if (auto it = j.find("model"); it != j.end() && !it->is_null()) {
    if (!it->is_string()) return bad("model", std::string("expected a string, got ") + type_name(*it));
    q.model = it->get<std::string>();
    if (q.model != model_id) {
      ApiError e = bad("model", "the model `" + q.model + "` does not exist; this server serves `" +
                                    model_id + "`");
      e.status = 404;
      e.code = "model_not_found";
      return e;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<ApiError> parse_completion(const std::string& body, const core::Tokenizer* tok,
                                         const std::string& model_id, int64_t vocab,
                                         int64_t context, CompletionRequest& q) {
  json j;
  if (auto e = parse_json_object(body, j)) return e;
  q = CompletionRequest{};
  q.sampling.temperature = 1.0f;  // OpenAI's default
  if (auto e = read_model(j, model_id, q)) return e;
  // prompt: text, token ids, or a batch of one of either.
  auto pit = j.find("prompt");
  if (pit == j.end() || pit->is_null()) return bad("prompt", "required");
  json p = *pit;
  std::string ppath = "prompt";
  if (p.is_array() && p.size() == 1 && (p[0].is_string() || p[0].is_array())) {
    p = p[0];
    ppath = "prompt[0]";
  }
  if (p.is_string()) {
    if (!tok)
      return bad(ppath, "this model has no tokenizer.json: send the prompt as token ids");
    q.prompt_text = p.get<std::string>();
    q.prompt = tok->encode(q.prompt_text, true);
  } else if (p.is_array() && all_ints(p)) {
    if (auto e = read_ids(p, ppath, vocab, q.prompt)) return e;
    if (tok) q.prompt_text = tok->decode(q.prompt, false);
  } else if (p.is_array()) {
    return bad("prompt", "expected a string, an array of token ids, or a batch of one of them "
                         "(send one prompt per request)");
  } else {
    return bad("prompt", std::string("expected a string or an array of token ids, got ") +
                             type_name(p));
  }
  if (q.prompt.empty()) return bad(ppath, "the prompt is empty (no tokens)");

  return read_settings(j, tok, vocab, context, q);
}

std::optional<ApiError> parse_chat(const std::string& body, const core::Tokenizer* tok,
                                   const core::ChatTemplate* tmpl, const std::string& model_id,
                                   int64_t vocab, int64_t context, CompletionRequest& q) {
  json j;
  if (auto e = parse_json_object(body, j)) return e;
  q = CompletionRequest{};
  q.sampling.temperature = 1.0f;
  q.chat = true;
  if (auto e = read_model(j, model_id, q)) return e;
  auto mit = j.find("messages");
  if (mit == j.end() || mit->is_null()) return bad("messages", "required");
  if (!mit->is_array() || mit->empty())
    return bad("messages", std::string("expected a non-empty array of messages, got ") +
                               (mit->is_array() ? "an empty array" : type_name(*mit)));
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  // The same body with its objects' keys in the order sent (tojson in templates shows them).
  const nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(body);
  const nlohmann::ordered_json& all = ordered["messages"];
  for (size_t i = 0; i < all.size(); ++i) {
    const std::string at = "messages[" + std::to_string(i) + "]";
    const auto& m = all[i];
    if (!m.is_object()) return bad(at, std::string("expected an object, got ") + type_name(json(m)));
    if (!m.contains("role") || !m["role"].is_string()) return bad(at + ".role", "required: a string");
    nlohmann::ordered_json out = m;
    if (m.contains("content") && !m["content"].is_null() && !m["content"].is_string()) {
      if (!m["content"].is_array())
        return bad(at + ".content", std::string("expected a string or an array of text parts, got ") +
                                        type_name(json(m["content"])));
      std::string text;
      for (size_t k = 0; k < m["content"].size(); ++k) {
        const auto& part = m["content"][k];
        const std::string pat = at + ".content[" + std::to_string(k) + "]";
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          return bad(pat, "only text parts ({\"type\": \"text\", \"text\": ...}) are supported");
        text += (k ? "\n" : "") + part["text"].get<std::string>();
      }
      out["content"] = text;
    }
    // Tool-call arguments arrive as JSON text; templates format them as objects (as vLLM does).
    if (m.contains("tool_calls") && m["tool_calls"].is_array()) {
      for (auto& tc : out["tool_calls"]) {
        if (tc.is_object() && tc.contains("function") && tc["function"].is_object() &&
            tc["function"].contains("arguments") && tc["function"]["arguments"].is_string()) {
          const std::string& text = tc["function"]["arguments"].get_ref<const std::string&>();
          if (!core::json_check_depth(text, "arguments").is_ok()) continue;  // left as text
          auto parsed = nlohmann::ordered_json::parse(text, nullptr, false);
          if (!parsed.is_discarded()) tc["function"]["arguments"] = parsed;
        }
      }
    }
    messages.push_back(out);
  }
  nlohmann::ordered_json tools = nullptr, extra = nlohmann::ordered_json::object();
  if (auto it = j.find("tools"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return bad("tools", std::string("expected an array, got ") + type_name(*it));
    tools = ordered["tools"];
  }
  if (auto it = j.find("chat_template_kwargs"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return bad("chat_template_kwargs", std::string("expected an object, got ") + type_name(*it));
    extra = ordered["chat_template_kwargs"];
  }
  if (auto it = j.find("response_format"); it != j.end() && !it->is_null()) {
    if (!it->is_object() || it->value("type", "") != "text")
      return bad("response_format", "only {\"type\": \"text\"} is supported");
  }
  bool add_generation_prompt = true;
  if (auto e = read_bool(j, "add_generation_prompt", add_generation_prompt)) return e;
  bool want_logprobs = false;
  if (auto e = read_bool(j, "logprobs", want_logprobs)) return e;
  int64_t top = 0;
  if (auto e = read_int(j, "top_logprobs", 0, 20, top)) return e;
  if (j.contains("top_logprobs") && !j["top_logprobs"].is_null() && !want_logprobs)
    return bad("top_logprobs", "needs logprobs: true");
  if (!tmpl) {
    ApiError e = bad("messages", "this model has no chat template (chat_template.jinja or "
                                 "tokenizer_config.json's chat_template); start the server with "
                                 "--chat-template FILE, or use /v1/completions");
    return e;
  }
  if (!tok) return bad("messages", "this model has no tokenizer.json to encode the chat with");
  Result<std::string> text = core::chat_template_render(*tmpl, messages, add_generation_prompt, tools, extra);
  if (!text.is_ok()) return bad("messages", "the chat template refused them: " + text.status().message());
  q.prompt_text = text.value();
  q.prompt = tok->encode(q.prompt_text, false);  // the template wrote the special tokens
  if (q.prompt.empty()) return bad("messages", "the rendered chat is empty (no tokens)");
  json settings = j;
  settings.erase("logprobs");
  settings.erase("top_logprobs");
  settings.erase("echo");
  if (settings.contains("max_completion_tokens") && !settings["max_completion_tokens"].is_null()) {
    int64_t mct = 0;
    if (auto e = read_int(j, "max_completion_tokens", 0, context, mct)) return e;
    settings["max_tokens"] = mct;
  }
  if (auto e = read_settings(settings, tok, vocab, context, q)) return e;
  q.logprobs = want_logprobs ? int(top) : -1;
  return std::nullopt;
}

// ---- text ------------------------------------------------------------------------------------

namespace {

// Bytes at the end of s that begin a UTF-8 character not yet complete.
size_t utf8_incomplete_tail(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead
    const size_t need = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

}  // namespace

std::string TextStream::piece(int32_t id) const {
  if (!tok_) return "token_id:" + std::to_string(id);
  return tok_->decode({id}, false);
}

std::string TextStream::push(const std::vector<TokenOut>& toks, bool last) {
  if (stopped_) return "";
  for (const TokenOut& t : toks) {
    toks_.push_back(t);
    ids_.push_back(t.id);
  }
  kept_ = toks_.size();
  if (!tok_) return "";
  const std::string full = tok_->decode(ids_, true);
  // The earliest stop string, searched from where one could still begin.
  size_t longest = 0;
  for (const std::string& s : stop_) longest = std::max(longest, s.size());
  const size_t from = text_.size() >= longest ? text_.size() - longest + 1 : 0;
  size_t cut = std::string::npos;
  for (const std::string& s : stop_) {
    const size_t at = full.find(s, from);
    if (at != std::string::npos && at < cut) cut = at;
  }
  std::string delta;
  if (cut != std::string::npos) {
    stopped_ = true;
    if (cut > text_.size()) delta = full.substr(text_.size(), cut - text_.size());
    text_ += delta;
    return delta;
  }
  size_t hold = 0;
  if (!last) {
    for (const std::string& s : stop_) {
      for (size_t l = std::min(s.size() - 1, full.size()); l > hold; --l) {
        if (full.compare(full.size() - l, l, s, 0, l) == 0) {
          hold = l;
          break;
        }
      }
    }
    hold = std::max(hold, utf8_incomplete_tail(full));
  }
  const size_t safe = full.size() - std::min(hold, full.size());
  if (safe > text_.size()) {
    delta = full.substr(text_.size(), safe - text_.size());
    text_ += delta;
  }
  return delta;
}

// ---- bodies ----------------------------------------------------------------------------------

json usage_json(const CompletionResult& r) {
  const int64_t c = int64_t(r.tokens.size());
  return {{"prompt_tokens", r.prompt_tokens},
          {"completion_tokens", c},
          {"total_tokens", r.prompt_tokens + c},
          {"prompt_tokens_details", {{"cached_tokens", r.cached_tokens}}}};
}

namespace {
// The legacy completions API's logprobs object: four parallel arrays, text offsets running on.
struct LegacyLogprobs {
  json tokens = json::array(), lps = json::array(), tops = json::array(), offs = json::array();
  size_t off = 0;
  // Token `id` at the running offset, scored by `t` (null: nothing scored it, the prompt's first).
  void add(const CompletionRequest& q, const TextStream& ts, int32_t id, const TokenOut* t) {
    const std::string p = ts.piece(id);
    tokens.push_back(p);
    offs.push_back(off);
    off += p.size();
    if (!t) {
      lps.push_back(nullptr);
      tops.push_back(nullptr);
      return;
    }
    lps.push_back(t->logprob);
    json top = json::object();
    for (const auto& [alt, v] : t->top) top[ts.piece(alt)] = v;
    tops.push_back(q.logprobs > 0 ? top : json(nullptr));
  }
  json body() const {
    return {{"tokens", tokens}, {"token_logprobs", lps}, {"top_logprobs", tops}, {"text_offset", offs}};
  }
};
}  // namespace

json logprobs_json(const CompletionRequest& q, const TextStream& ts,
                   const std::vector<TokenOut>& toks, size_t text_offset0) {
  if (q.logprobs < 0) return nullptr;
  LegacyLogprobs a;
  a.off = text_offset0;
  for (const TokenOut& t : toks) a.add(q, ts, t.id, &t);
  return a.body();
}

namespace {

// A response body around its one choice: the token ids when asked, usage, the cache mark.
json response_body(const std::string& id, int64_t created, const std::string& model,
                   const char* object, json choice, const CompletionRequest& q,
                   const CompletionResult& r, bool cache_hit) {
  if (q.return_token_ids) {
    json ids = json::array();
    for (const TokenOut& t : r.tokens) ids.push_back(t.id);
    choice["token_ids"] = ids;
    choice["prompt_token_ids"] = q.prompt;
  }
  json b = {{"id", id},       {"object", object},                 {"created", created},
            {"model", model}, {"choices", json::array({choice})}, {"usage", usage_json(r)}};
  if (cache_hit) b["shrink"] = {{"response_cache", "hit"}};
  return b;
}

}  // namespace

json completion_body(const std::string& id, int64_t created, const std::string& model,
                     const CompletionRequest& q, const CompletionResult& r, const json& logprobs,
                     bool cache_hit) {
  return response_body(id, created, model, "text_completion",
                       {{"index", 0}, {"text", r.text}, {"logprobs", logprobs},
                        {"finish_reason", r.finish_reason}},
                       q, r, cache_hit);
}

json echo_logprobs_json(const CompletionRequest& q, const TextStream& ts,
                        const std::vector<TokenOut>& prompt_lp, const std::vector<TokenOut>& toks) {
  if (q.logprobs < 0) return nullptr;
  LegacyLogprobs a;
  for (size_t i = 0; i < q.prompt.size(); ++i)  // the first token has no context to score it
    a.add(q, ts, q.prompt[i], i >= 1 && i - 1 < prompt_lp.size() ? &prompt_lp[i - 1] : nullptr);
  a.off = q.prompt_text.size();
  for (const TokenOut& t : toks) a.add(q, ts, t.id, &t);
  return a.body();
}

json bodies_merge(const std::vector<json>& bodies) {
  json b = bodies.at(0);
  json choices = json::array();
  int64_t completion = 0;
  for (size_t i = 0; i < bodies.size(); ++i) {
    json c = bodies[i]["choices"][0];
    c["index"] = i;
    choices.push_back(std::move(c));
    completion += bodies[i]["usage"]["completion_tokens"].get<int64_t>();
  }
  b["choices"] = std::move(choices);
  b["usage"]["completion_tokens"] = completion;
  b["usage"]["total_tokens"] = b["usage"]["prompt_tokens"].get<int64_t>() + completion;
  return b;
}

json chat_body(const std::string& id, int64_t created, const std::string& model,
               const CompletionRequest& q, const CompletionResult& r, const json& logprobs,
               bool cache_hit) {
  return response_body(id, created, model, "chat.completion",
                       {{"index", 0},
                        {"message", {{"role", "assistant"}, {"content", r.text}}},
                        {"logprobs", logprobs},
                        {"finish_reason", r.finish_reason}},
                       q, r, cache_hit);
}

json chat_chunk(const std::string& id, int64_t created, const std::string& model, const json& delta,
                const json& logprobs, const json& finish) {
  return {{"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0}, {"delta", delta}, {"logprobs", logprobs},
                                    {"finish_reason", finish}}})}};
}

json chat_logprobs_json(const CompletionRequest& q, const TextStream& ts,
                        const std::vector<TokenOut>& toks) {
  if (q.logprobs < 0) return nullptr;
  auto entry = [&](int32_t id, float lp) {
    const std::string p = ts.piece(id);
    json bytes = json::array();
    for (unsigned char c : p) bytes.push_back(int(c));
    return json{{"token", p}, {"logprob", lp}, {"bytes", bytes}};
  };
  json content = json::array();
  for (const TokenOut& t : toks) {
    json e = entry(t.id, t.logprob);
    json top = json::array();
    for (const auto& [id, v] : t.top) top.push_back(entry(id, v));
    e["top_logprobs"] = top;
    content.push_back(e);
  }
  return {{"content", content}};
}

std::string sse(const json& j) { return "data: " + dump(j) + "\n\n"; }

// ---- response cache --------------------------------------------------------------------------

std::string ResponseCache::key(const CompletionRequest& q) {
  const bool greedy = q.sampling.temperature <= 0.0f;
  if (!greedy && !q.seed) return "";
  json k = {{"prompt", q.prompt},       {"max_tokens", q.max_tokens},
            {"temperature", greedy ? 0.0 : double(q.sampling.temperature)},
            {"top_p", greedy ? 1.0 : double(q.sampling.top_p)},
            {"top_k", greedy ? 0 : q.sampling.top_k},
            {"seed", greedy || !q.seed ? json(nullptr) : json(*q.seed)},
            {"stop", q.stop},           {"logprobs", q.logprobs},
            {"echo", q.echo},           {"return_token_ids", q.return_token_ids},
            {"ignore_eos", q.ignore_eos}, {"chat", q.chat},
            {"presence_penalty", q.adjust.presence}, {"frequency_penalty", q.adjust.frequency},
            {"logit_bias", q.adjust.bias}, {"n", q.n}};
  return dump(k);
}

std::optional<json> ResponseCache::get(const std::string& key) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = map_.find(key);
  if (it == map_.end()) {
    ++misses_;
    return std::nullopt;
  }
  ++hits_;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->second;
}

void ResponseCache::put(const std::string& key, json value) {
  if (cap_ == 0) return;
  std::lock_guard<std::mutex> lk(mu_);
  auto it = map_.find(key);
  if (it != map_.end()) {
    it->second->second = std::move(value);
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  lru_.emplace_front(key, std::move(value));
  map_[key] = lru_.begin();
  while (lru_.size() > cap_) {
    map_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

uint64_t ResponseCache::hits() const {
  std::lock_guard<std::mutex> lk(mu_);
  return hits_;
}
uint64_t ResponseCache::misses() const {
  std::lock_guard<std::mutex> lk(mu_);
  return misses_;
}
size_t ResponseCache::size() const {
  std::lock_guard<std::mutex> lk(mu_);
  return lru_.size();
}

// ---- metrics ---------------------------------------------------------------------------------

std::string metrics_text(const SchedulerStats& s, const HttpCounters& h, size_t response_cache_size) {
  std::ostringstream o;
  auto metric = [&](const char* name, const char* type, const char* help, auto value) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n'
      << name << ' ' << value << '\n';
  };
  o << "# HELP shrink_http_requests_total HTTP requests answered, by outcome\n"
       "# TYPE shrink_http_requests_total counter\n"
    << "shrink_http_requests_total{outcome=\"ok\"} " << h.ok << '\n'
    << "shrink_http_requests_total{outcome=\"client_error\"} " << h.client_errors << '\n'
    << "shrink_http_requests_total{outcome=\"unauthorized\"} " << h.unauthorized << '\n'
    << "shrink_http_requests_total{outcome=\"busy\"} " << h.busy << '\n'
    << "shrink_http_requests_total{outcome=\"server_error\"} " << h.server_errors << '\n';
  metric("shrink_requests_total", "counter", "Requests the scheduler accepted", s.requests);
  metric("shrink_requests_cancelled_total", "counter", "Requests cancelled (client gone, stop string, shutdown)", s.cancelled);
  metric("shrink_prompt_tokens_total", "counter", "Prompt tokens of accepted requests", s.prompt_tokens);
  metric("shrink_prefill_tokens_total", "counter", "Prompt tokens computed (not restored from the prefix cache)", s.prefill_tokens);
  metric("shrink_cached_prompt_tokens_total", "counter", "Prompt tokens restored from the prefix cache", s.cached_tokens);
  metric("shrink_generation_tokens_total", "counter", "Tokens generated", s.generated_tokens);
  metric("shrink_steps_total", "counter", "Forward passes of the scheduler", s.steps);
  metric("shrink_step_rows_total", "counter", "Rows (tokens) run by those passes", s.step_rows);
  metric("shrink_queue_length", "gauge", "Requests waiting for a slot", s.queued);
  metric("shrink_slots_busy", "gauge", "KV-cache slots running a request", s.running);
  metric("shrink_slots_total", "gauge", "KV-cache slots", s.slots);
  metric("shrink_prefix_cache_lookups_total", "counter", "Prefix-cache lookups", s.prefix_lookups);
  metric("shrink_prefix_cache_hits_total", "counter", "Lookups that reused at least one block", s.prefix_hits);
  metric("shrink_prefix_cache_hit_rate", "gauge", "hits / lookups",
         s.prefix_lookups ? double(s.prefix_hits) / double(s.prefix_lookups) : 0.0);
  metric("shrink_prefix_cache_bytes", "gauge", "Bytes of KV blocks held", s.prefix_bytes);
  metric("shrink_prefix_cache_budget_bytes", "gauge", "--prefix-cache-mb in bytes", s.prefix_budget);
  metric("shrink_prefix_cache_blocks", "gauge", "KV blocks held", s.prefix_blocks);
  metric("shrink_prefix_cache_evictions_total", "counter", "Blocks evicted (LRU)", s.prefix_evictions);
  metric("shrink_response_cache_hits_total", "counter", "Requests answered from the response cache", h.response_cache_hits);
  metric("shrink_response_cache_misses_total", "counter", "Cacheable requests not found there", h.response_cache_misses);
  metric("shrink_response_cache_entries", "gauge", "Entries of the response cache", response_cache_size);
  return o.str();
}

}  // namespace shrink::runtime::serve
