// The HTTP side of `shrink-rt serve` (server.h) on cpp-httplib.
#include "runtime/serve/server.h"

#include <httplib.h>

#include <ctime>
#include <mutex>
#include <random>

#include "runtime/serve/openai.h"

namespace shrink::runtime::serve {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {
constexpr milliseconds kPoll{50};  // how often a waiting handler looks at its request
}

struct Server::Impl {
  Scheduler& sched;
  const core::Tokenizer* tok;
  ServerOptions o;
  httplib::Server http;
  ResponseCache rcache;
  std::atomic<bool> refusing{false};
  std::atomic<uint64_t> seq{0};
  std::mutex mu;  // counters, seed_rng
  HttpCounters counters;
  std::mt19937_64 seed_rng{std::random_device{}()};
  int bound_port = -1;
  int64_t started = int64_t(std::time(nullptr));

  Impl(Scheduler& s, const core::Tokenizer* t, ServerOptions opts)
      : sched(s), tok(t), o(std::move(opts)), rcache(o.response_cache) {}

  void count(uint64_t HttpCounters::*field) {
    std::lock_guard<std::mutex> lk(mu);
    ++(counters.*field);
  }
  void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(dump(e.body()), "application/json");
    count(e.status == 401   ? &HttpCounters::unauthorized
          : e.status == 503 ? &HttpCounters::busy
          : e.status >= 500 ? &HttpCounters::server_errors
                            : &HttpCounters::client_errors);
  }
  ApiError server_error(int status, const std::string& msg, const std::string& code = "") {
    ApiError e;
    e.status = status;
    e.message = msg;
    e.type = "server_error";
    e.code = code;
    return e;
  }
  bool authorized(const httplib::Request& req, httplib::Response& res) {
    if (o.api_key.empty()) return true;
    const std::string want = "Bearer " + o.api_key;
    const std::string got = req.get_header_value("Authorization");
    unsigned diff = unsigned(got.size() ^ want.size());
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) diff |= unsigned(got[i] ^ want[i]);
    if (diff == 0) return true;
    ApiError e;
    e.status = 401;
    e.message = got.empty() ? "no API key: send the header `Authorization: Bearer KEY`"
                            : "incorrect API key provided";
    e.code = "invalid_api_key";
    send_error(res, e);
    return false;
  }

  void completions(const httplib::Request& req, httplib::Response& res, bool chat);
  using Streams = std::vector<std::shared_ptr<ServeStream>>;
  std::optional<ApiError> submit_choices(const CompletionRequest& q, Streams& out);
  void complete_whole(const CompletionRequest& q, const Streams& ss, const std::string& id,
                      int64_t created, const std::string& key, httplib::Response& res);
  void complete_streamed(const CompletionRequest& q, const Streams& ss, const std::string& id,
                         int64_t created, const std::string& key, httplib::Response& res);
  void replay_streamed(const json& body, const CompletionRequest& q, httplib::Response& res);
  void routes();
};

namespace {

json chunk_of(const std::string& id, int64_t created, const std::string& model,
              const std::string& text, const json& logprobs, const json& finish) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0},
                                    {"text", text},
                                    {"logprobs", logprobs},
                                    {"finish_reason", finish}}})}};
}

// A completion's logprobs object: with echo, the prompt's first.
json completion_logprobs(const CompletionRequest& q, const TextStream& ts, const ServeStream& s,
                         const std::vector<TokenOut>& toks) {
  if (q.echo && q.logprobs >= 0) return echo_logprobs_json(q, ts, s.prompt_logprobs(), toks);
  return logprobs_json(q, ts, toks, q.echo ? q.prompt_text.size() : 0);
}

// One finished choice's response body, in the chat or the completions shape.
json choice_body(const CompletionRequest& q, const std::string& id, int64_t created,
                 const std::string& model, const TextStream& ts, const ServeStream& s,
                 const std::string& reason) {
  CompletionResult r;
  r.text = (q.echo ? q.prompt_text : "") + ts.text();
  r.tokens = ts.tokens();
  r.finish_reason = reason;
  r.prompt_tokens = int64_t(q.prompt.size());
  r.cached_tokens = s.cached_tokens();
  return q.chat ? chat_body(id, created, model, q, r, chat_logprobs_json(q, ts, r.tokens), false)
                : completion_body(id, created, model, q, r, completion_logprobs(q, ts, s, r.tokens), false);
}

}  // namespace

void Server::Impl::completions(const httplib::Request& req, httplib::Response& res, bool chat) {
  if (!authorized(req, res)) return;
  if (refusing.load()) return send_error(res, server_error(503, "the server is shutting down", "shutting_down"));
  CompletionRequest q;
  std::optional<ApiError> bad =
      chat ? parse_chat(req.body, tok, o.chat_template, o.model_id, sched.vocab(), sched.context(), q)
           : parse_completion(req.body, tok, o.model_id, sched.vocab(), sched.context(), q);
  if (bad) return send_error(res, *bad);
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(++seq);
  const int64_t created = int64_t(std::time(nullptr));
  const std::string key = o.response_cache ? ResponseCache::key(q) : "";
  if (!key.empty()) {
    if (std::optional<json> hit = rcache.get(key)) {
      count(&HttpCounters::response_cache_hits);
      (*hit)["id"] = id;
      (*hit)["created"] = created;
      (*hit)["shrink"] = {{"response_cache", "hit"}};
      if (q.stream) return replay_streamed(*hit, q, res);
      res.set_content(dump(*hit), "application/json");
      count(&HttpCounters::ok);
      return;
    }
    count(&HttpCounters::response_cache_misses);
  }
  Streams ss;
  if (std::optional<ApiError> e = submit_choices(q, ss)) {
    if (e->status == 503) res.set_header("Retry-After", "1");
    return send_error(res, *e);
  }
  if (q.stream) return complete_streamed(q, ss, id, created, key, res);
  complete_whole(q, ss, id, created, key, res);
}

// The request's n sequences, queued together (choice i seeded seed + i when a seed is given);
// if one is refused, the others are cancelled.
std::optional<ApiError> Server::Impl::submit_choices(const CompletionRequest& q, Streams& out) {
  for (int i = 0; i < q.n; ++i) {
    ServeRequest sr;
    sr.prompt = q.prompt;
    sr.max_tokens = q.max_tokens;
    sr.sampling = q.sampling;
    if (q.seed) {
      sr.seed = *q.seed + uint64_t(i);
    } else {
      std::lock_guard<std::mutex> lk(mu);
      sr.seed = seed_rng();
    }
    sr.top_logprobs = q.logprobs;
    sr.adjust = q.adjust;
    sr.prompt_logprobs = q.echo && q.logprobs >= 0 && !q.chat;
    if (!q.ignore_eos) sr.eos = o.eos;
    bool busy = false;
    Result<std::shared_ptr<ServeStream>> s = sched.submit(std::move(sr), &busy);
    if (!s.is_ok()) {
      for (auto& done : out) done->cancel();
      if (busy) return server_error(503, s.status().message(), "overloaded");
      ApiError e;
      e.message = s.status().message();
      return e;
    }
    out.push_back(s.value());
  }
  return std::nullopt;
}

void Server::Impl::complete_whole(const CompletionRequest& q, const Streams& ss,
                                  const std::string& id, int64_t created, const std::string& key,
                                  httplib::Response& res) {
  std::vector<json> bodies;
  for (const auto& s : ss) {
    TextStream ts(tok, q.stop);
    std::vector<TokenOut> got;
    size_t have = 0;
    for (bool done = false; !done;) {
      done = s->wait(have, got, kPoll);
      have += got.size();
      ts.push(got, done);
      if (ts.stopped()) s->cancel();
    }
    const std::string reason = ts.stopped() ? "stop" : s->finish_reason();
    if (reason == "error" || reason == "cancelled") {
      for (const auto& other : ss) other->cancel();
      if (reason == "error") return send_error(res, server_error(500, "generation failed: " + s->error()));
      return send_error(res, server_error(503, "the request was cancelled (the server is stopping)", "shutting_down"));
    }
    bodies.push_back(choice_body(q, id, created, o.model_id, ts, *s, reason));
  }
  json body = bodies_merge(bodies);
  if (!key.empty()) rcache.put(key, body);
  res.set_content(dump(body), "application/json");
  count(&HttpCounters::ok);
}

void Server::Impl::complete_streamed(const CompletionRequest& q, const Streams& ss,
                                     const std::string& id, int64_t created,
                                     const std::string& key, httplib::Response& res) {
  struct Choice {
    std::shared_ptr<ServeStream> s;
    TextStream ts;
    size_t have = 0;
    bool started = false, ended = false;
    size_t offset = 0;  // text offset of the next token (logprobs)
    std::string reason;
  };
  struct State {
    std::vector<Choice> choices;
    bool ended = false;
    void cancel() {
      for (Choice& c : choices) c.s->cancel();
    }
  };
  auto st = std::make_shared<State>();
  for (const auto& s : ss) st->choices.push_back(Choice{s, TextStream(tok, q.stop)});
  const std::string model = o.model_id;
  count(&HttpCounters::ok);
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, st, q, id, created, model, key](size_t, httplib::DataSink& sink) -> bool {
        auto send = [&](const std::string& text) {
          if (!sink.write(text.data(), text.size())) {
            st->cancel();  // the client went away: free its slots at the next step
            return false;
          }
          return true;
        };
        auto end = [&]() {
          if (!send("data: [DONE]\n\n")) return false;
          st->ended = true;
          sink.done();
          return true;
        };
        if (st->ended) {
          sink.done();
          return true;
        }
        // A chunk of choice i's new text (the chat API's is a delta of the assistant's message).
        auto piece = [&](size_t i, const std::string& text, const json& lp, const json& finish) {
          json c;
          if (q.chat) {
            json delta = finish.is_null() ? json{{"content", text}} : json::object();
            c = chat_chunk(id, created, model, delta, lp, finish);
          } else {
            c = chunk_of(id, created, model, text, lp, finish);
          }
          c["choices"][0]["index"] = i;
          return c;
        };
        // One wait of up to kPoll on the first choice still running; the others are polled.
        bool waited = false;
        for (size_t i = 0; i < st->choices.size(); ++i) {
          Choice& ch = st->choices[i];
          if (ch.ended) continue;
          if (!ch.started && q.chat) {
            ch.started = true;
            json c = chat_chunk(id, created, model, {{"role", "assistant"}, {"content", ""}}, nullptr, nullptr);
            c["choices"][0]["index"] = i;
            if (!send(sse(c))) return false;
          }
          std::vector<TokenOut> got;
          const bool done = ch.s->wait(ch.have, got, waited ? milliseconds(0) : kPoll);
          waited = true;
          // The echoed prompt goes first; with logprobs once they exist (the prompt is prefilled
          // when the first token or the end arrives).
          if (!ch.started && (q.logprobs < 0 || !got.empty() || done)) {
            ch.started = true;
            if (q.echo) {
              ch.offset = q.prompt_text.size();
              json lp = q.logprobs >= 0 ? echo_logprobs_json(q, ch.ts, ch.s->prompt_logprobs(), {}) : json(nullptr);
              if (!send(sse(piece(i, q.prompt_text, lp, nullptr)))) return false;
            }
          }
          if (!ch.started) continue;
          ch.have += got.size();
          const size_t kept_before = ch.ts.tokens().size();
          const std::string delta = ch.ts.push(got, done);
          if (ch.ts.stopped()) ch.s->cancel();
          const std::vector<TokenOut> fresh(ch.ts.tokens().begin() + long(kept_before), ch.ts.tokens().end());
          if (!delta.empty() || ((q.logprobs >= 0 || q.return_token_ids) && !fresh.empty())) {
            json lp = q.chat ? chat_logprobs_json(q, ch.ts, fresh) : logprobs_json(q, ch.ts, fresh, ch.offset);
            for (const TokenOut& t : fresh) ch.offset += ch.ts.piece(t.id).size();
            json c = piece(i, delta, lp, nullptr);
            if (q.return_token_ids) {
              json ids = json::array();
              for (const TokenOut& t : fresh) ids.push_back(t.id);
              c["choices"][0]["token_ids"] = ids;
            }
            if (!send(sse(c))) return false;
          }
          if (!done && !ch.ts.stopped()) continue;
          // Ended, or cut by a stop string (the scheduler takes the cancel at its next step).
          ch.ended = true;
          ch.reason = ch.ts.stopped() ? "stop" : ch.s->finish_reason();
          if (ch.reason == "error" || ch.reason == "cancelled") {
            st->cancel();
            ApiError e = server_error(ch.reason == "error" ? 500 : 503,
                                      ch.reason == "error" ? "generation failed: " + ch.s->error()
                                                           : "the request was cancelled (the server is stopping)");
            if (!send(sse(e.body()))) return false;
            return end();
          }
          if (!send(sse(piece(i, "", nullptr, ch.reason)))) return false;
        }
        for (const Choice& ch : st->choices)
          if (!ch.ended) return true;
        // Every choice ended: the usage chunk, the response cache, [DONE].
        if (q.include_usage || !key.empty()) {
          std::vector<json> bodies;
          for (const Choice& ch : st->choices)
            bodies.push_back(choice_body(q, id, created, model, ch.ts, *ch.s, ch.reason));
          json merged = bodies_merge(bodies);
          if (q.include_usage) {
            json u = piece(0, "", nullptr, nullptr);
            u["choices"] = json::array();
            u["usage"] = merged["usage"];
            if (!send(sse(u))) return false;
          }
          if (!key.empty()) rcache.put(key, merged);
        }
        return end();
      },
      [st](bool) {
        if (!st->ended) st->cancel();
      });
}

void Server::Impl::replay_streamed(const json& body, const CompletionRequest& q,
                                   httplib::Response& res) {
  std::string out;
  json u;
  for (const json& c : body["choices"]) {
    json first, last;
    if (q.chat) {
      first = chat_chunk(body["id"], body["created"], body["model"],
                         {{"role", "assistant"}, {"content", c["message"]["content"]}}, c["logprobs"], nullptr);
      last = chat_chunk(body["id"], body["created"], body["model"], json::object(), nullptr, c["finish_reason"]);
      u = chat_chunk(body["id"], body["created"], body["model"], json::object(), nullptr, nullptr);
    } else {
      first = chunk_of(body["id"], body["created"], body["model"], c["text"], c["logprobs"], nullptr);
      last = chunk_of(body["id"], body["created"], body["model"], "", nullptr, c["finish_reason"]);
      u = chunk_of(body["id"], body["created"], body["model"], "", nullptr, nullptr);
    }
    first["choices"][0]["index"] = c["index"];
    last["choices"][0]["index"] = c["index"];
    first["shrink"] = body["shrink"];
    out += sse(first) + sse(last);
  }
  if (q.include_usage) {
    u["choices"] = json::array();
    u["usage"] = body["usage"];
    out += sse(u);
  }
  out += "data: [DONE]\n\n";
  res.set_header("Cache-Control", "no-cache");
  res.set_content(out, "text/event-stream");
  count(&HttpCounters::ok);
}

void Server::Impl::routes() {
  http.Post("/v1/completions",
            [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, false); });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& req, httplib::Response& res) { completions(req, res, true); });
  http.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req, res)) return;
    json m = {{"id", o.model_id},
              {"object", "model"},
              {"created", started},
              {"owned_by", "shrink"},
              {"max_model_len", sched.context()}};
    res.set_content(dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
    count(&HttpCounters::ok);
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.status = refusing.load() ? 503 : 200;
    res.set_content(refusing.load() ? "{\"status\":\"stopping\"}" : "{\"status\":\"ok\"}",
                    "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    HttpCounters h;
    {
      std::lock_guard<std::mutex> lk(mu);
      h = counters;
    }
    res.set_content(metrics_text(sched.stats(), h, rcache.size()), "text/plain; version=0.0.4");
  });
  http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e;
    e.status = res.status;
    e.message = res.status == 404 ? "no route " + req.method + " " + req.path +
                                        " (POST /v1/completions, POST /v1/chat/completions, GET /v1/models, /health, /metrics)"
                : res.status == 413 ? "the request body is too large"
                                    : "HTTP " + std::to_string(res.status);
    if (res.status >= 500) e.type = "server_error";
    res.set_content(dump(e.body()), "application/json");
  });
  http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
    }
    send_error(res, server_error(500, "internal error: " + what));
  });
}

Server::Server(Scheduler& sched, const core::Tokenizer* tok, ServerOptions o)
    : impl_(std::make_unique<Impl>(sched, tok, std::move(o))) {
  Impl& m = *impl_;
  const int threads = m.o.http_threads > 0 ? m.o.http_threads : int(sched.slots() + sched.queue_limit() + 4);
  m.http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
  m.http.set_payload_max_length(size_t(16) << 20);
  m.http.set_keep_alive_max_count(1000);
  m.http.set_tcp_nodelay(true);  // each streamed token leaves at once (no Nagle delay)
  m.http.set_read_timeout(30, 0);
  m.routes();
}

Server::~Server() = default;

Status Server::bind() {
  Impl& m = *impl_;
  if (m.o.port == 0) {
    m.bound_port = m.http.bind_to_any_port(m.o.host);
    if (m.bound_port < 0)
      return Status(StatusCode::kIoError, "cannot listen on " + m.o.host + " (any port)");
  } else {
    if (!m.http.bind_to_port(m.o.host, m.o.port))
      return Status(StatusCode::kIoError, "cannot listen on " + m.o.host + ":" +
                                              std::to_string(m.o.port) +
                                              " (in use, or not an address of this machine)");
    m.bound_port = m.o.port;
  }
  return Status::ok();
}

int Server::port() const { return impl_->bound_port; }

Status Server::listen() {
  if (!impl_->http.listen_after_bind())
    return Status(StatusCode::kIoError, "the HTTP listener stopped with an error");
  return Status::ok();
}

void Server::stop(std::chrono::milliseconds grace) {
  Impl& m = *impl_;
  m.refusing.store(true);
  m.sched.shutdown(grace);  // running requests finish or are cancelled; their handlers return
  m.http.stop();
}

}  // namespace shrink::runtime::serve
