// `shrink-rt serve` and `shrink-rt bench-serve`: parse, load, run lib/runtime/serve.
// SIGINT and SIGTERM are taken by one thread (sigwait, blocked everywhere else), which stops
// the server: no new requests, in-flight ones finish within --grace seconds or are cancelled,
// and the process exits 0.
#include "tools/shrink-rt/serve_cmd.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/jinja.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "core/tokens.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"
#include "runtime/serve/bench_serve.h"
#include "runtime/serve/server.h"

namespace shrink::cli {

namespace {

struct ServeArgs {
  std::string model, tokenizer, warm, model_name, chat_template;
  runtime::serve::ServerOptions server;
  int slots = 8;
  int64_t ctx = 0, max_batch_tokens = 512, queue = 256;
  double prefix_cache_mb = 256;
  double grace_s = 10;
};

Result<std::vector<std::vector<int32_t>>> warm_prompts(const std::string& path,
                                                       const core::Tokenizer* tok) {
  std::ifstream f(path);
  SHRINK_CHECK(bool(f), StatusCode::kNotFound, "--warm %s: cannot open", path.c_str());
  SHRINK_CHECK(tok, StatusCode::kInvalidInput, "--warm %s: needs the model's tokenizer.json",
               path.c_str());
  std::vector<std::vector<int32_t>> out;
  std::string line;
  for (int ln = 1; std::getline(f, line); ++ln) {
    if (line.empty()) continue;
    // A line is a JSON string (escapes for newlines), or plain text.
    std::string text = line;
    if (line[0] == '"') {
      nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      SHRINK_CHECK(!j.is_discarded() && j.is_string(), StatusCode::kInvalidInput,
                   "%s:%d: a line starting with '\"' must be one JSON string", path.c_str(), ln);
      text = j.get<std::string>();
    }
    out.push_back(tok->encode(text, true));
  }
  return out;
}

Status serve(ServeArgs& a, const runtime::EngineOptions& base, bool quiet) {
  // Block the stop signals before any thread exists, so only the waiter below receives them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  SHRINK_CHECK(a.slots >= 1 && a.slots <= 1024, StatusCode::kInvalidInput,
               "--slots %d: expected 1..1024", a.slots);
  SHRINK_CHECK(a.max_batch_tokens >= 1, StatusCode::kInvalidInput,
               "--max-batch-tokens %lld: expected >= 1", (long long)a.max_batch_tokens);
  SHRINK_CHECK(a.queue >= 0, StatusCode::kInvalidInput, "--queue: expected >= 0");
  SHRINK_CHECK(a.prefix_cache_mb >= 0, StatusCode::kInvalidInput, "--prefix-cache-mb: expected >= 0");
  SHRINK_CHECK(a.server.port >= 0 && a.server.port <= 65535, StatusCode::kInvalidInput,
               "--port %d: expected 0..65535", a.server.port);
  SHRINK_ASSIGN_OR_RETURN(core::ModelConfig cfg, core::config_load(a.model));
  const std::string tok_path = a.tokenizer.empty() ? a.model + "/tokenizer.json" : a.tokenizer;
  std::unique_ptr<core::Tokenizer> tok;
  if (core::path_exists(tok_path)) {
    SHRINK_ASSIGN_OR_RETURN(core::Tokenizer t, core::Tokenizer::load(tok_path));
    tok = std::make_unique<core::Tokenizer>(std::move(t));
  } else {
    SHRINK_CHECK(a.tokenizer.empty(), StatusCode::kNotFound, "--tokenizer %s: not found",
                 a.tokenizer.c_str());
  }
  // The chat template is parsed before the model loads: one it cannot render stops here (exit 2,
  // naming the construct), not at the first chat request.
  std::optional<core::ChatTemplate> chat;
  if (!a.chat_template.empty()) {
    std::ifstream f(a.chat_template, std::ios::binary);
    SHRINK_CHECK(bool(f), StatusCode::kNotFound, "--chat-template %s: cannot open", a.chat_template.c_str());
    const std::string src((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    core::ChatTemplate ct;
    SHRINK_ASSIGN_OR_RETURN(ct.tmpl, core::JinjaTemplate::parse(src, a.chat_template));
    ct.origin = a.chat_template;
    SHRINK_ASSIGN_OR_RETURN(auto from_model, core::chat_template_load(a.model));
    if (from_model) {
      ct.bos_token = from_model->bos_token;
      ct.eos_token = from_model->eos_token;
    }
    chat = std::move(ct);
  } else {
    SHRINK_ASSIGN_OR_RETURN(chat, core::chat_template_load(a.model));
  }
  if (chat) a.server.chat_template = &*chat;
  runtime::EngineOptions eo = base;
  eo.max_batch = a.slots;
  eo.max_seq_len = a.ctx;
  SHRINK_ASSIGN_OR_RETURN(auto engine, runtime::Engine::load(a.model, eo));
  SHRINK_ASSIGN_OR_RETURN(a.server.eos,
                          core::stop_token_ids(a.model, cfg, tok && tok->eos_id() ? *tok->eos_id() : -1));
  runtime::SchedulerOptions so;
  so.max_batch_tokens = a.max_batch_tokens;
  so.queue_limit = a.queue;
  so.prefix_cache_bytes = uint64_t(a.prefix_cache_mb * 1048576.0);
  // --tp: a rank that fails stops the group; the leader then stops its server (exit 1).
  so.on_broken = [] { ::kill(::getpid(), SIGTERM); };
  runtime::Scheduler sched(*engine, so);
  sched.start();
  // --tp: ranks other than 0 serve no HTTP; they run the leader's steps until it stops.
  if (sched.follower()) return sched.wait_stopped();
  if (!a.warm.empty()) {
    SHRINK_ASSIGN_OR_RETURN(auto prompts, warm_prompts(a.warm, tok.get()));
    for (auto& p : prompts) {
      runtime::ServeRequest r;
      r.prompt = std::move(p);
      r.max_tokens = 0;
      auto s = sched.submit(std::move(r));
      SHRINK_RETURN_IF_ERROR(sched.failure());  // --tp: a rank died
      SHRINK_RETURN_IF_ERROR(s.status());
      std::vector<runtime::TokenOut> none;
      while (!(*s)->wait(0, none, std::chrono::milliseconds(100))) {
      }
      SHRINK_RETURN_IF_ERROR(sched.failure());
    }
    if (!quiet)
      std::fprintf(stderr, "shrink-rt serve: warmed %zu prefixes (%lld cached tokens)\n",
                   prompts.size(), (long long)sched.stats().prefill_tokens);
  }
  if (a.server.model_id.empty()) a.server.model_id = a.model_name;
  if (a.server.model_id.empty()) {
    std::string m = a.model;
    while (m.size() > 1 && m.back() == '/') m.pop_back();
    a.server.model_id = m.substr(m.find_last_of('/') == std::string::npos ? 0 : m.find_last_of('/') + 1);
  }
  runtime::serve::Server server(sched, tok.get(), a.server);
  SHRINK_RETURN_IF_ERROR(server.bind());
  // The line tests and scripts read the port from.
  std::printf("shrink-rt serve: listening on http://%s:%d (model %s, %d slots, context %lld, %s)\n",
              a.server.host.c_str(), server.port(), a.server.model_id.c_str(), a.slots,
              (long long)engine->max_seq_len(), engine->describe().c_str());
  std::fflush(stdout);
  const auto grace = std::chrono::milliseconds(int64_t(a.grace_s * 1000));
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    if (sig == 0) return;  // woken by the pthread_kill below after the listener failed
    if (!quiet) std::fprintf(stderr, "shrink-rt serve: %s: stopping (grace %.0f s)\n",
                             sig == SIGINT ? "SIGINT" : "SIGTERM", a.grace_s);
    server.stop(grace);
  });
  Status st = server.listen();
  if (!st.is_ok()) {
    server.stop(std::chrono::milliseconds(0));
    pthread_kill(waiter.native_handle(), SIGTERM);
  }
  waiter.join();
  if (st.is_ok()) st = sched.failure();
  return st;
}

}  // namespace

void register_serve(CLI::App& app, const std::function<runtime::EngineOptions()>& engine_opts,
                    const std::function<int(const char*, const std::function<Status()>&)>& guarded,
                    const bool& quiet, int& exit_code) {
  auto a = std::make_shared<ServeArgs>();
  CLI::App* sub = app.add_subcommand(
      "serve", "OpenAI-compatible HTTP server (POST /v1/completions, /v1/chat/completions, GET "
               "/v1/models, /health, /metrics) with continuous batching, a prefix cache and a "
               "response cache");
  sub->add_option("model", a->model, "Model directory")->required();
  sub->add_option("--host", a->server.host, "Address to listen on")->capture_default_str();
  sub->add_option("--port", a->server.port, "Port (0: any free port; the first line printed says which)")
      ->capture_default_str();
  sub->add_option("--slots", a->slots, "Requests decoded together (KV-cache slots)")->capture_default_str();
  sub->add_option("--ctx", a->ctx, "Context of each slot (0: min(max_position_embeddings, 4096))")
      ->capture_default_str();
  sub->add_option("--max-batch-tokens", a->max_batch_tokens,
                  "Rows of one forward pass: the decode rows plus chunks of waiting prompts")
      ->capture_default_str();
  sub->add_option("--queue", a->queue, "Requests that may wait for a slot; beyond, HTTP 503")
      ->capture_default_str();
  sub->add_option("--prefix-cache-mb", a->prefix_cache_mb,
                  "Host memory for KV blocks of seen prompts, reused by requests that share "
                  "their prefix (0: off)")
      ->capture_default_str();
  sub->add_option("--response-cache", a->server.response_cache,
                  "Entries of the cache of deterministic responses (greedy, or seeded; 0: off)")
      ->capture_default_str();
  sub->add_option("--api-key", a->server.api_key, "Require `Authorization: Bearer KEY`");
  sub->add_option("--model-name", a->model_name, "The model's id in the API (default: the directory's name)");
  sub->add_option("--tokenizer", a->tokenizer, "tokenizer.json instead of MODEL_DIR's");
  sub->add_option("--chat-template", a->chat_template,
                  "A Jinja chat template file for /v1/chat/completions instead of the model's "
                  "(chat_template.jinja or tokenizer_config.json's chat_template)");
  sub->add_option("--warm", a->warm,
                  "File of prompts (one per line, text or a JSON string) prefilled into the "
                  "prefix cache at start-up");
  sub->add_option("--grace", a->grace_s,
                  "Seconds in-flight requests may take to finish after SIGINT/SIGTERM")
      ->capture_default_str();
  sub->callback([a, engine_opts, guarded, &quiet, &exit_code] {
    exit_code = guarded("serve", [&] { return serve(*a, engine_opts(), quiet); });
  });
}

void register_chat_template(CLI::App& app,
                            const std::function<int(const char*, const std::function<Status()>&)>& guarded,
                            int& exit_code) {
  struct Opts {
    std::string model, template_file, messages, contexts;
    bool no_generation_prompt = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "chat-template", "Render a chat template (the model's, or --template) as transformers' "
                       "apply_chat_template does: the prompt `serve` builds for /v1/chat/completions");
  sub->add_option("model", o->model, "Model directory (its chat_template.jinja or tokenizer_config.json)");
  sub->add_option("--template", o->template_file,
                  "A .jinja file, or a JSON object with chat_template (and bos_token, eos_token)");
  sub->add_option("--messages", o->messages, "JSON file: the messages (an array of {role, content})");
  sub->add_option("--contexts", o->contexts,
                  "JSON file: an array of whole contexts; prints a JSON array of {text} or {error}");
  sub->add_flag("--no-generation-prompt", o->no_generation_prompt, "add_generation_prompt = false");
  sub->callback([o, guarded, &exit_code] {
    exit_code = guarded("chat-template", [&]() -> Status {
      auto read = [](const std::string& path) -> Result<std::string> {
        std::ifstream f(path, std::ios::binary);
        SHRINK_CHECK(bool(f), StatusCode::kNotFound, "%s: cannot open", path.c_str());
        return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      };
      auto parse = [](const std::string& text, const std::string& path) -> Result<nlohmann::ordered_json> {
        try {
          return nlohmann::ordered_json::parse(text);
        } catch (const nlohmann::json::parse_error& e) {
          return Status(StatusCode::kInvalidInput, path + ":" + std::to_string(e.byte) + ": not valid JSON");
        } catch (const nlohmann::json::exception& e) {
          return Status(StatusCode::kInvalidInput, path + ": " + e.what());
        }
      };
      core::ChatTemplate ct;
      if (!o->template_file.empty()) {
        SHRINK_ASSIGN_OR_RETURN(std::string text, read(o->template_file));
        std::string source = text;
        if (o->template_file.size() > 5 && o->template_file.substr(o->template_file.size() - 5) == ".json") {
          SHRINK_ASSIGN_OR_RETURN(auto j, parse(text, o->template_file));
          SHRINK_CHECK(j.is_object() && j.contains("chat_template") && j["chat_template"].is_string(),
                       StatusCode::kInvalidInput, "%s: expected an object with chat_template",
                       o->template_file.c_str());
          source = j["chat_template"].get<std::string>();
          if (j.contains("bos_token") && j["bos_token"].is_string()) ct.bos_token = j["bos_token"];
          if (j.contains("eos_token") && j["eos_token"].is_string()) ct.eos_token = j["eos_token"];
        }
        SHRINK_ASSIGN_OR_RETURN(ct.tmpl, core::JinjaTemplate::parse(source, o->template_file));
      } else {
        SHRINK_CHECK(!o->model.empty(), StatusCode::kInvalidInput, "give MODEL_DIR or --template FILE");
        SHRINK_ASSIGN_OR_RETURN(auto t, core::chat_template_load(o->model));
        SHRINK_CHECK(t.has_value(), StatusCode::kInvalidInput,
                     "%s has no chat template (chat_template.jinja or tokenizer_config.json's chat_template)",
                     o->model.c_str());
        ct = std::move(*t);
      }
      if (!o->contexts.empty()) {
        SHRINK_ASSIGN_OR_RETURN(std::string text, read(o->contexts));
        SHRINK_ASSIGN_OR_RETURN(auto all, parse(text, o->contexts));
        SHRINK_CHECK(all.is_array(), StatusCode::kInvalidInput, "%s: expected an array", o->contexts.c_str());
        nlohmann::json out = nlohmann::json::array();
        for (const auto& c : all) {
          Result<std::string> r = ct.tmpl.render(c);
          if (r.is_ok()) out.push_back({{"text", r.value()}});
          else out.push_back({{"error", r.status().message()}});
        }
        std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
        return Status::ok();
      }
      SHRINK_CHECK(!o->messages.empty(), StatusCode::kInvalidInput, "give --messages FILE or --contexts FILE");
      SHRINK_ASSIGN_OR_RETURN(std::string text, read(o->messages));
      SHRINK_ASSIGN_OR_RETURN(auto msgs, parse(text, o->messages));
      SHRINK_ASSIGN_OR_RETURN(std::string r, core::chat_template_render(ct, msgs, !o->no_generation_prompt));
      std::cout << r;
      return Status::ok();
    });
  });
}

void register_bench_serve(CLI::App& app, const std::function<int(const char*, const std::function<Status()>&)>& guarded,
                          const bool& json_out, int& exit_code) {
  struct Opts {
    runtime::serve::BenchServeOptions b;
    std::string concurrency = "1,4,16,64", format = "md";
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "bench-serve", "Load benchmark of an OpenAI-compatible server: throughput, TTFT, "
                     "inter-token and end-to-end latency at several concurrency levels");
  sub->add_option("--url", o->b.url, "Server base URL")->capture_default_str();
  auto* ds = sub->add_option("--dataset", o->b.dataset, "JSONL of {\"prompt\": text or ids, \"max_tokens\": N}");
  auto* syn = sub->add_flag("--synthetic", o->b.synthetic, "Random token-id prompts");
  ds->excludes(syn);
  sub->add_option("--concurrency", o->concurrency, "Levels, comma-separated")->capture_default_str();
  sub->add_option("--requests", o->b.requests, "Requests per level (0: max(16, 4 x concurrency))")
      ->capture_default_str();
  sub->add_option("--shared-prefix", o->b.shared_prefix, "Synthetic: tokens every prompt starts with")
      ->capture_default_str();
  sub->add_option("--prompt-len", o->b.prompt_len, "Synthetic: tokens of each prompt's own part")
      ->capture_default_str();
  sub->add_option("--gen-len", o->b.gen_len, "Tokens generated per request (greedy, ignore_eos)")
      ->capture_default_str();
  sub->add_option("--vocab", o->b.vocab, "Synthetic ids are drawn from [1, VOCAB)")->capture_default_str();
  sub->add_option("--seed", o->b.seed, "Seed of the synthetic prompts")->capture_default_str();
  sub->add_option("--api-key", o->b.api_key, "Bearer key");
  sub->add_option("--format", o->format, "md | csv | json")
      ->capture_default_str()
      ->check(CLI::IsMember({"md", "csv", "json"}));
  sub->add_flag("!--no-warmup", o->b.warmup, "Skip the unmeasured warm-up request");
  sub->callback([o, guarded, &json_out, &exit_code] {
    exit_code = guarded("bench-serve", [&]() -> Status {
      o->b.concurrency.clear();
      SHRINK_ASSIGN_OR_RETURN(std::vector<int32_t> levels, ids_parse(o->concurrency, "--concurrency"));
      for (int32_t c : levels) o->b.concurrency.push_back(int(c));
      SHRINK_ASSIGN_OR_RETURN(auto rows, runtime::serve::bench_serve(o->b));
      if (json_out || o->format == "json") {
        std::cout << runtime::serve::bench_serve_json(o->b, rows).dump(2) << std::endl;
      } else {
        std::cout << runtime::serve::bench_serve_table(rows, o->format);
      }
      int64_t errors = 0;
      for (const auto& r : rows) errors += r.errors;
      SHRINK_CHECK(errors == 0, StatusCode::kInternal, "%lld requests failed (see error_samples)",
                   (long long)errors);
      return Status::ok();
    });
  });
}

}  // namespace shrink::cli
