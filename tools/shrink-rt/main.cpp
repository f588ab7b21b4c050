// `shrink-rt`: the runtime's command-line front end (bench, eval, generate, verify, serve,
// bench-serve). Thin by
// design: parse, validate, call lib/runtime, print. Errors print "shrink-rt <cmd>: error: ..."
// and exit 2 for bad input or usage, 1 for failures (ARCHITECTURE.md). `--version` names the
// kernels' ISA level and the GEMM backend in use. Tested end to end by tests/cli/test_rt_cli.sh.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <iostream>

#include <nlohmann/json.hpp>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/launch.h"
#include "core/progress.h"
#include "core/threads.h"
#include "core/tokens.h"
#include "core/tokenizer.h"
#include "kernels/cpu/gemm_library.h"
#include "kernels/cpu/isa.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "runtime/tp/gloo_comm.h"
#include "runtime/verify.h"
#include "tools/cli_main.h"
#include "tools/eval_options.h"
#include "tools/generate_options.h"
#include "tools/shrink-rt/serve_cmd.h"
#include "tools/verify_options.h"

using namespace shrink;
using nlohmann::json;

namespace {

struct Globals {
  int threads = 0;
  bool json = false;
  bool quiet = false;
  std::string isa;
  std::string device = "cpu";
  std::string cuda_weights;
  std::string cpu_weights;
  int cuda_gemv_rows = 0;
  bool no_cuda_graphs = false;
  std::string lm_head = "auto";
  std::string kv_cache = "f32";
  std::string act_quant = "auto";
  int tp = 1;                  // --tp: tensor-parallel ranks
  double dist_timeout = 60;    // --dist-timeout, seconds
  std::string tp_transport = "auto";  // --tp-transport
  std::shared_ptr<runtime::TpComm> comm;  // this rank's group under --tp
  int local_rank = 0;                     // ... and its rank on this machine (its cuda device)
  bool serving = false;  // the command is serve: SIGINT/SIGTERM are its waiter's to take
  int exit_code = 0;
};

// One rank of --tp: joins the group (core::dist_env_read's variables, set by the local launcher
// or by hand on several machines), runs the command with its share of the threads and prints
// only on rank 0 (every rank computes the same results).
Status tp_rank_run(Globals& g, int threads_total, const std::function<Status()>& body) {
  SHRINK_ASSIGN_OR_RETURN(core::DistEnv env, core::dist_env_read());
  SHRINK_CHECK(env.world_size == g.tp, StatusCode::kInvalidInput,
               "--tp %d but WORLD_SIZE=%d: launch one process per rank with WORLD_SIZE equal to "
               "--tp, or leave WORLD_SIZE unset to start the ranks on this machine",
               g.tp, env.world_size);
  g.local_rank = env.local_rank;
  if (std::getenv("LOCAL_WORLD_SIZE")) {
    g.threads = std::max(1, threads_total / std::max(1, env.local_world_size));
  }
  if (env.rank != 0) {
    g.quiet = true;
    std::fflush(stdout);
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, STDOUT_FILENO);
      ::close(null);
    }
  }
  if (g.serving) {
    // Before tp_join starts the transport's threads (Gloo's): blocked in every thread, the stop
    // signals reach only serve's waiter, which drains (a follower never takes them).
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  }
  SHRINK_ASSIGN_OR_RETURN(g.comm, runtime::tp_join(env, g.dist_timeout, g.tp_transport));
  return body();
}

int run_guarded(const char* name, Globals& g, const std::function<Status()>& body) {
  g.serving = std::string(name) == "serve";
  Result<int> t = core::threads_resolve(g.threads);
  Status st = t.is_ok() ? Status::ok() : t.status();
  if (st.is_ok() && !(g.dist_timeout >= 1)) {
    st = Status(StatusCode::kInvalidInput, "--dist-timeout must be >= 1 second");
  }
  if (st.is_ok() && g.tp > 1 && !std::getenv("WORLD_SIZE")) {
    // Start the ranks on this machine, each with its share of the threads.
    core::LaunchOptions lo;
    lo.nproc = g.tp;
    lo.forward_stop_signals = g.serving;  // rank 0 drains, then stops the rest
    if (const char* p = std::getenv("MASTER_PORT"); p && *p) lo.master_port = std::atoi(p);
    const int total = t.value();
    std::string err;
    const int rc = core::launch_local(
        lo,
        [&](int rank) {
          Status rs = tp_rank_run(g, total, body);
          if (rs.is_ok()) return 0;
          std::fprintf(stderr, "shrink-rt %s: rank %d: error: %s\n", name, rank,
                       rs.message().c_str());
          return exit_code_for(rs.code());
        },
        &err);
    if (rc != 0) std::fprintf(stderr, "shrink-rt %s: --tp %d: %s\n", name, g.tp, err.c_str());
    return rc;
  }
  if (st.is_ok()) {
    g.threads = t.value();
    st = g.tp > 1 ? tp_rank_run(g, g.threads, body) : body();
  }
  if (st.is_ok()) return 0;
  std::fprintf(stderr, "shrink-rt %s: error: %s\n", name, st.message().c_str());
  return exit_code_for(st.code());
}

void print_json(const json& j) { std::cout << j.dump(2) << std::endl; }

runtime::EngineOptions engine_opts(const Globals& g) {
  runtime::EngineOptions o;
  o.threads = g.threads;
  o.isa = g.isa;
  o.device = g.device;
  o.float_weights = g.device == "cuda" ? g.cuda_weights : g.cpu_weights;
  o.gemv_max_rows = g.cuda_gemv_rows;
  o.graphs = !g.no_cuda_graphs;
  o.lm_head = g.lm_head;
  o.kv_cache = g.kv_cache;
  o.act_quant = g.act_quant;
  o.tp = g.comm;
  o.cuda_device = g.local_rank;
  return o;
}

// ---- bench -----------------------------------------------------------------------------------

void register_bench(CLI::App& app, Globals& g) {
  struct Opts {
    std::string model, shape, dtype = "f32", batches = "1", format = "md";
    int64_t prompt_len = 512, gen_len = 128, warmup = 1;
    uint64_t seed = 0;
    core::SamplingParams sampling;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "bench", "Prefill/decode throughput, TTFT, per-token latency, peak RSS, weight GB/s of a "
               "model dir or of random weights of a named shape");
  sub->add_option("model", o->model, "Model directory (or use --shape)");
  sub->add_option("--shape", o->shape, "Random weights of a named shape: smollm-135m, llama-1b");
  sub->add_option("--dtype", o->dtype,
                  "With --shape: f32, bf16, w8a16, w4a16 (groups of 128, else 64 or 32), "
                  "w4a16-asym (the same with zero points), w4a8 (4-bit, int8 activations per "
                  "token) or "
                  "w8a8 (dynamic per token); with --device cuda also f16 (float weights stored so)")
      ->capture_default_str();
  sub->add_option("--prompt-len", o->prompt_len, "Prompt tokens per sequence")->capture_default_str();
  sub->add_option("--gen-len", o->gen_len, "Decode steps")->capture_default_str();
  sub->add_option("--batch", o->batches, "Comma-separated batch sizes, e.g. 1,8")->capture_default_str();
  sub->add_option("--format", o->format, "md, csv or json")->capture_default_str();
  sub->add_option("--seed", o->seed, "Seed of the random weights and prompts")->capture_default_str();
  sub->add_option("--warmup", o->warmup,
                  "Untimed prefill + this many decode steps first, as llama-bench warms up (fills "
                  "oneDNN's primitive cache, the buffers, GPU graph and plan caches); 0 = the "
                  "timed runs start cold")
      ->capture_default_str();
  sub->add_option("--temperature", o->sampling.temperature,
                  "Sample each next token on the backend (0 = greedy argmax)")
      ->capture_default_str();
  sub->add_option("--top-k", o->sampling.top_k, "Sampling: keep the k most likely (0 = off)")
      ->capture_default_str();
  sub->add_option("--top-p", o->sampling.top_p, "Sampling: nucleus mass (1 = off)")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("bench", g, [&]() -> Status {
      SHRINK_CHECK(o->sampling.temperature >= 0 && o->sampling.top_k >= 0 &&
                       o->sampling.top_p > 0 && o->sampling.top_p <= 1,
                   StatusCode::kInvalidInput,
                   "bench: expected --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1");
      SHRINK_CHECK(o->model.empty() != o->shape.empty(), StatusCode::kInvalidInput,
                   "give MODEL_DIR or --shape NAME (one of them)");
      SHRINK_CHECK(o->format == "md" || o->format == "csv" || o->format == "json",
                   StatusCode::kInvalidInput, "--format '%s': expected md, csv or json",
                   o->format.c_str());
      SHRINK_ASSIGN_OR_RETURN(std::vector<int32_t> batches, cli::ids_parse(o->batches, "--batch"));
      int max_b = 1;
      for (int32_t b : batches) {
        SHRINK_CHECK(b >= 1, StatusCode::kInvalidInput, "--batch: %d; expected >= 1", b);
        max_b = std::max(max_b, int(b));
      }
      runtime::EngineOptions eo = engine_opts(g);
      eo.max_batch = max_b;
      eo.max_seq_len = o->prompt_len + std::max(o->gen_len, o->warmup);
      std::unique_ptr<runtime::Engine> e;
      std::string what;
      if (!o->shape.empty()) {
        SHRINK_ASSIGN_OR_RETURN(core::ModelConfig c, runtime::bench_shape(o->shape));
        std::string dtype = o->dtype;
        if (dtype == "f16" || dtype == "bf16") {  // float weights, stored so by the backend
          SHRINK_CHECK(g.device == "cuda" || dtype == "bf16", StatusCode::kInvalidInput,
                       "--dtype %s needs --device cuda; the cpu backend stores f32 or bf16",
                       dtype.c_str());
          eo.float_weights = dtype;
          dtype = "f32";
        }
        SHRINK_ASSIGN_OR_RETURN(e, runtime::Engine::create_random(c, dtype, o->seed, eo));
        what = o->shape + " (random)";
      } else {
        SHRINK_ASSIGN_OR_RETURN(e, runtime::Engine::load(o->model, eo));
        what = o->model;
      }
      json rows = json::array();
      for (int32_t b : batches) {
        runtime::BenchOptions bo;
        bo.prompt_len = o->prompt_len;
        bo.gen_len = o->gen_len;
        bo.batch = b;
        bo.seed = o->seed;
        bo.warmup = o->warmup;
        bo.sampling = o->sampling;
        SHRINK_ASSIGN_OR_RETURN(runtime::BenchResult r, runtime::bench(*e, bo));
        rows.push_back({{"batch", r.batch}, {"prompt_len", r.prompt_len}, {"gen_len", r.gen_len},
                        {"prefill_tok_s", r.prefill_tokens_per_second},
                        {"ttft_ms", r.ttft_seconds * 1e3},
                        {"decode_tok_s", r.decode_tokens_per_second},
                        {"latency_p50_ms", r.latency_p50_ms}, {"latency_p99_ms", r.latency_p99_ms},
                        {"weight_gb_s", r.weight_gb_per_second},
                        {"weight_mib", double(r.weight_bytes) / 1048576.0},
                        {"peak_rss_mib", r.peak_rss_mib}});
        if (!r.backend_counters.empty()) {  // since the engine was made (cuda: cuBLASLt calls)
          json c = json::object();
          for (const auto& [name, n] : r.backend_counters) c[name] = n;
          rows.back()["backend_counters"] = c;
        }
        if (e->tp()) {
          rows.back()["tp_allreduce_bytes_per_step"] = r.tp_allreduce_bytes_per_step;
          rows.back()["tp_allreduce_us_per_step"] = r.tp_allreduce_us_per_step;
          rows.back()["tp_allgather_bytes_per_step"] = r.tp_allgather_bytes_per_step;
          rows.back()["tp_allgather_us_per_step"] = r.tp_allgather_us_per_step;
        }
      }
      const std::string engine = e->describe();
      json tp_json = nullptr;
      if (runtime::TpComm* tp = e->tp()) {
        // The collective alone: back-to-back all-reduces of one token's hidden state (what a
        // decode step does twice per layer) on the backend's memory, without the compute
        // between them that makes the ranks arrive at different times; the first 20 warm up.
        SHRINK_ASSIGN_OR_RETURN(std::vector<double> us, e->tp_allreduce_alone(220));
        us.erase(us.begin(), us.begin() + 20);
        std::sort(us.begin(), us.end());
        tp_json = {{"ranks", tp->size()},
                   {"transport", g.device == "cuda" ? std::string("nccl") : g.tp_transport},
                   {"allreduce_bytes", e->config().hidden_size * 4},
                   {"allreduce_us_median", us[us.size() / 2]},
                   {"allreduce_us_p90", us[us.size() * 9 / 10]}};
      }
      if (o->format == "json" || g.json) {
        print_json({{"model", what}, {"engine", engine}, {"threads", g.threads}, {"tp", g.tp},
                    {"tp_allreduce_alone", tp_json},
                    {"openmp_wait", cli::openmp_wait_setting()},
                    {"device", g.device}, {"dtype", o->dtype},
                    {"sampling", {{"temperature", o->sampling.temperature},
                                  {"top_k", o->sampling.top_k}, {"top_p", o->sampling.top_p}}},
                    {"results", rows}});
        return Status::ok();
      }
      const char* cols[] = {"batch", "prompt_len", "gen_len", "prefill_tok_s", "ttft_ms",
                            "decode_tok_s", "latency_p50_ms", "latency_p99_ms", "weight_gb_s",
                            "weight_mib", "peak_rss_mib"};
      auto cell = [](const json& v) {
        char buf[64];
        if (v.is_number_integer()) std::snprintf(buf, sizeof buf, "%lld", (long long)v.get<int64_t>());
        else std::snprintf(buf, sizeof buf, "%.2f", v.get<double>());
        return std::string(buf);
      };
      if (o->format == "csv") {
        std::printf("model,engine");
        for (const char* c : cols) std::printf(",%s", c);
        std::printf("\n");
        for (const json& r : rows) {
          std::printf("%s,\"%s\"", what.c_str(), engine.c_str());
          for (const char* c : cols) std::printf(",%s", cell(r[c]).c_str());
          std::printf("\n");
        }
      } else {
        std::printf("%s: %s\n\n|", what.c_str(), engine.c_str());
        for (const char* c : cols) std::printf(" %s |", c);
        std::printf("\n|");
        for (size_t i = 0; i < sizeof cols / sizeof *cols; ++i) std::printf("---:|");
        std::printf("\n");
        for (const json& r : rows) {
          std::printf("|");
          for (const char* c : cols) std::printf(" %s |", cell(r[c]).c_str());
          std::printf("\n");
        }
      }
      return Status::ok();
    });
  });
}

// ---- eval ------------------------------------------------------------------------------------

struct EvalOpts {
  std::string model, task;
  core::TokenSource src;
  int64_t seq_len = 0, batch = 4;
};

// `eval --task`: multiple-choice accuracy (runtime::score_choices).
Status eval_task(const EvalOpts& o, const core::ModelConfig& cfg, Globals& g) {
  SHRINK_ASSIGN_OR_RETURN(std::vector<core::ChoiceItem> items,
                          runtime::choice_task_for(o.model, o.src.tokenizer, o.task, cfg.vocab_size));
  SHRINK_CHECK(o.batch >= 1, StatusCode::kInvalidInput, "--batch %lld: expected >= 1",
               (long long)o.batch);
  runtime::EngineOptions eo = engine_opts(g);
  // Sized to the task's longest item (longer contexts than the model's positions are cut).
  eo.max_seq_len = o.seq_len ? o.seq_len
                             : std::min<int64_t>(runtime::choice_task_positions(items),
                                                 cfg.max_position_embeddings);
  eo.max_batch = int(o.batch);
  SHRINK_ASSIGN_OR_RETURN(auto e, runtime::Engine::load(o.model, eo));
  const bool prog_on = !g.json && !g.quiet && core::Progress::stderr_is_tty();
  core::Progress prog("task", items.size(), "items", prog_on);
  SHRINK_ASSIGN_OR_RETURN(runtime::ChoiceResult r,
                          runtime::score_choices(*e, items, [&](uint64_t d) { prog.update(d); }));
  prog.finish();
  if (g.json) {
    print_json({{"model", o.model}, {"engine", e->describe()}, {"task", o.task},
                {"items", r.items}, {"acc", r.acc}, {"acc_stderr", r.acc_stderr},
                {"acc_norm", r.acc_norm}, {"acc_norm_stderr", r.acc_norm_stderr},
                {"truncated", r.truncated}, {"seconds", r.seconds}, {"threads", g.threads}});
  } else {
    std::printf("task        %s, %lld items\n", o.task.c_str(), (long long)r.items);
    std::printf("acc         %.4f +- %.4f\n", r.acc, r.acc_stderr);
    std::printf("acc_norm    %.4f +- %.4f (log-likelihood per byte of the choice)\n", r.acc_norm,
                r.acc_norm_stderr);
    if (r.truncated) {
      std::printf("truncated   %lld contexts cut from the left to fit\n", (long long)r.truncated);
    }
    std::printf("engine      %s\n", e->describe().c_str());
    std::printf("speed       %.1f items/s (%.2f s)\n", r.seconds > 0 ? double(r.items) / r.seconds : 0.0,
                r.seconds);
  }
  return Status::ok();
}

void register_eval(CLI::App& app, Globals& g) {
  using Opts = EvalOpts;
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand(
      "eval", "Perplexity over non-overlapping windows of --seq-len tokens (the definition of "
              "`shrink eval`: each window scores len-1 predictions; BOS only where the tokenizer's "
              "template adds one), or with --task the accuracy on a multiple-choice task");
  sub->add_option("model", o->model, "Model directory")->required();
  cli::add_eval_options(sub, o->src, o->seq_len, o->batch);
  sub->add_option("--task", o->task,
                  "Multiple-choice task (.jsonl, e.g. from `shrink data make-task`): report its "
                  "accuracy instead of perplexity");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("eval", g, [&]() -> Status {
      SHRINK_ASSIGN_OR_RETURN(core::ModelConfig cfg, core::config_load(o->model));
      if (!o->task.empty()) return eval_task(*o, cfg, g);
      const int64_t seq_len = o->seq_len ? o->seq_len : std::min<int64_t>(512, cfg.max_position_embeddings);
      SHRINK_CHECK(seq_len >= 2, StatusCode::kInvalidInput, "--seq-len %lld: expected >= 2",
                   (long long)seq_len);
      SHRINK_CHECK(o->batch >= 1, StatusCode::kInvalidInput, "--batch %lld: expected >= 1",
                   (long long)o->batch);
      runtime::EngineOptions eo = engine_opts(g);
      eo.max_seq_len = seq_len;
      eo.max_batch = int(o->batch);
      SHRINK_ASSIGN_OR_RETURN(auto e, runtime::Engine::load(o->model, eo));
      SHRINK_ASSIGN_OR_RETURN(core::LoadedTokens data,
                              core::tokens_load(o->model, cfg.vocab_size, o->src));
      const bool prog_on = !g.json && !g.quiet && core::Progress::stderr_is_tty();
      core::Progress prog("eval", data.tokens.size(), "tok", prog_on);
      SHRINK_ASSIGN_OR_RETURN(
          runtime::PerplexityResult r,
          runtime::perplexity(*e, data.tokens.data(), data.tokens.size(), seq_len, o->batch,
                              [&](uint64_t d) { prog.update(d); }));
      prog.finish();
      if (g.json) {
        json j = cli::perplexity_json(r, data.description);
        j["model"] = o->model;
        j["engine"] = e->describe();
        j["threads"] = g.threads;
        print_json(j);
      } else {
        cli::perplexity_print(r, data.description);
        std::printf("engine      %s\n", e->describe().c_str());
        std::printf("speed       %.0f tokens/s (%.2f s)\n", r.tokens_per_second, r.seconds);
      }
      return Status::ok();
    });
  });
}

// ---- generate --------------------------------------------------------------------------------

void register_generate(CLI::App& app, Globals& g) {
  struct Opts {
    cli::GenerateArgs a;
    std::string draft;
    int64_t draft_tokens = 4;
    runtime::GenerateOptions o;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("generate", "Generate a continuation of a prompt");
  cli::add_generate_options(sub, o->a, o->o);
  sub->add_option("--draft", o->draft,
                  "Speculative decoding (greedy): a smaller model with the same vocabulary (e.g. a "
                  "distilled student) proposes tokens that the model verifies in one forward");
  sub->add_option("--draft-tokens", o->draft_tokens, "Tokens the draft proposes per round")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("generate", g, [&]() -> Status {
      SHRINK_CHECK(!o->a.prompt.empty() || !o->a.prompt_ids.empty(), StatusCode::kInvalidInput,
                   "give --prompt TEXT or --prompt-ids 1,2,3");
      SHRINK_ASSIGN_OR_RETURN(core::ModelConfig cfg, core::config_load(o->a.model));
      const std::string tok_path =
          o->a.tokenizer.empty() ? o->a.model + "/tokenizer.json" : o->a.tokenizer;
      std::unique_ptr<core::Tokenizer> tok;
      if (o->a.prompt_ids.empty() || core::path_exists(tok_path)) {
        SHRINK_CHECK(core::path_exists(tok_path), StatusCode::kInvalidInput,
                     "%s: not found; --prompt needs a tokenizer. Pass --tokenizer PATH or give "
                     "--prompt-ids", tok_path.c_str());
        SHRINK_ASSIGN_OR_RETURN(core::Tokenizer t, core::Tokenizer::load(tok_path));
        tok = std::make_unique<core::Tokenizer>(std::move(t));
      }
      std::vector<int32_t> prompt;
      if (!o->a.prompt_ids.empty()) {
        SHRINK_ASSIGN_OR_RETURN(prompt, cli::ids_parse(o->a.prompt_ids, "--prompt-ids"));
      } else {
        prompt = tok->encode(o->a.prompt, true);
      }
      SHRINK_CHECK(!prompt.empty(), StatusCode::kInvalidInput, "the prompt is empty");
      o->o.stop_at_eos = !o->a.ignore_eos;
      SHRINK_ASSIGN_OR_RETURN(
          o->o.eos, core::stop_token_ids(o->a.model, cfg, tok && tok->eos_id() ? *tok->eos_id() : -1));
      runtime::EngineOptions eo = engine_opts(g);
      eo.max_seq_len = int64_t(prompt.size()) + std::max<int64_t>(o->o.max_new_tokens, 1);
      SHRINK_ASSIGN_OR_RETURN(auto e, runtime::Engine::load(o->a.model, eo));
      std::unique_ptr<runtime::Engine> draft;
      runtime::GenerateResult r;
      if (!o->draft.empty()) {
        SHRINK_ASSIGN_OR_RETURN(draft, runtime::Engine::load(o->draft, eo));
        SHRINK_ASSIGN_OR_RETURN(r, runtime::generate_speculative(*e, *draft, prompt, o->o, o->draft_tokens));
      } else {
        SHRINK_ASSIGN_OR_RETURN(r, runtime::generate(*e, prompt, o->o));
      }
      std::vector<int32_t> fresh(r.ids.begin() + r.prompt_len, r.ids.end());
      const double tps = r.decode_seconds > 0 && fresh.size() > 1
                              ? double(fresh.size() - 1) / r.decode_seconds : 0.0;
      if (g.json) {
        json j = {{"ids", r.ids}, {"prompt_len", r.prompt_len}, {"new_ids", fresh},
                  {"prefill_seconds", r.prefill_seconds}, {"decode_seconds", r.decode_seconds},
                  {"decode_tokens_per_second", tps}, {"engine", e->describe()}};
        if (tok) j["text"] = tok->decode(r.ids, false);
        if (draft) {
          j["speculative"] = {{"draft", o->draft},
                              {"draft_engine", draft->describe()},
                              {"draft_tokens", o->draft_tokens},
                              {"rounds", r.rounds},
                              {"drafted", r.drafted},
                              {"accepted", r.accepted},
                              {"acceptance_rate", r.drafted ? double(r.accepted) / double(r.drafted) : 0.0},
                              {"tokens_per_round", r.rounds ? double(fresh.size() - 1) / double(r.rounds) : 0.0}};
        }
        print_json(j);
      } else if (o->a.ids || !tok) {
        for (size_t i = 0; i < r.ids.size(); ++i) std::printf("%s%d", i ? "," : "", r.ids[i]);
        std::printf("\n");
      } else {
        std::printf("%s\n", tok->decode(r.ids, false).c_str());
      }
      if (draft && !g.json && !g.quiet) {
        std::fprintf(stderr, "speculative: %lld rounds, %lld of %lld draft tokens accepted (%.1f%%), %.1f tokens/s\n",
                     (long long)r.rounds, (long long)r.accepted, (long long)r.drafted,
                     r.drafted ? 100.0 * double(r.accepted) / double(r.drafted) : 0.0, tps);
      }
      return Status::ok();
    });
  });
}

// ---- verify ----------------------------------------------------------------------------------

void register_verify(CLI::App& app, Globals& g) {
  auto o = std::make_shared<cli::VerifyArgs>();
  CLI::App* sub = app.add_subcommand(
      "verify", "Check a compact model against its reference: perplexity of both, top-1 "
                "agreement and KL, both speeds; exit 3 when a gate fails");
  cli::add_verify_options(sub, *o);
  sub->callback([o, &g] {
    int gate = 0;
    g.exit_code = run_guarded("verify", g, [&]() -> Status {
      SHRINK_CHECK(g.tp == 1 || o->serve_concurrency.empty(), StatusCode::kInvalidInput,
                   "--serve-concurrency with --tp: the serving comparison starts one `shrink-rt "
                   "serve` per model itself; run it without --tp (serve takes --tp on its own)");
      o->v.engine = engine_opts(g);
      SHRINK_ASSIGN_OR_RETURN(runtime::VerifyResult r, runtime::verify(o->compact, o->reference, o->v));
      SHRINK_ASSIGN_OR_RETURN(const nlohmann::json served, cli::verify_serve(*o, o->v.engine));
      if (g.json) {
        nlohmann::json j = cli::verify_json(r, *o, g.threads);
        if (!served.is_null()) j["serve"] = served;
        print_json(j);
      } else {
        if (!served.is_null()) std::printf("%s", cli::serve_table(served).c_str());
        std::printf("| | reference | compact |\n|---|---:|---:|\n");
        std::printf("| engine | %s | %s |\n", r.engine_reference.c_str(), r.engine_compact.c_str());
        std::printf("| perplexity | %.4f | %.4f (%+.2f%%) |\n", r.ppl_reference, r.ppl_compact,
                    100 * r.ppl_increase);
        if (o->v.bench) {
          std::printf("| decode tok/s | %.1f | %.1f (%.2fx) |\n", r.bench_reference.decode_tokens_per_second,
                      r.bench_compact.decode_tokens_per_second, r.decode_speedup);
          std::printf("| prefill tok/s | %.1f | %.1f (%.2fx) |\n", r.bench_reference.prefill_tokens_per_second,
                      r.bench_compact.prefill_tokens_per_second, r.prefill_speedup);
        }
        std::printf("| weight MiB per token | %.2f | %.2f |\n", r.bytes_reference / 1048576.0,
                    r.bytes_compact / 1048576.0);
        std::printf("perplexity change 95%% interval [%+.2f%%, %+.2f%%]; KL(reference||compact) mean "
                    "%.5f, median %.5f, p99 %.5f, max %.5f; delta-p RMS %.4f, p01 %+.4f, p99 %+.4f\n",
                    100 * r.ppl_increase_lo, 100 * r.ppl_increase_hi, r.kl, r.kl_dist.p50,
                    r.kl_dist.p99, r.kl_dist.max, r.delta_p_rms, r.delta_p.p01, r.delta_p.p99);
        if (r.task) {
          std::printf("task %s, %lld items: acc_norm %.4f -> %.4f (drop %+.4f +- %.4f), acc %.4f -> "
                      "%.4f, same choice on %.1f%% of items\n",
                      r.task->path.c_str(), (long long)r.task->items, r.task->acc_norm_reference,
                      r.task->acc_norm_compact, r.task->acc_norm_drop, r.task->acc_norm_drop_stderr,
                      r.task->acc_reference, r.task->acc_compact, 100 * r.task->agreement);
        }
        std::printf("top-1 agreement %.4f, KL(reference||compact) %.5f over %llu tokens: %s\n",
                    r.top1_agreement, r.kl, (unsigned long long)r.tokens_scored, r.verdict.c_str());
      }
      if (!r.passed) gate = 3;
      // Under --tp this body runs in each rank's process: the gate's exit code leaves through it.
      if (!r.passed && g.tp > 1) {
        return Status(StatusCode::kGateFailed, "verification gate failed: " + r.verdict);
      }
      return Status::ok();
    });
    if (g.exit_code == 0 && gate) g.exit_code = gate;
  });
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shrink-rt: the standalone shrink inference runtime (CPU, CUDA): bench, eval, generate.\n"
               "Exit codes: 0 ok, 1 failure, 2 bad input or usage, 3 verification gate failed."};
  namespace kc = shrink::kernels::cpu;
  app.set_version_flag("--version", std::string("shrink-rt ") + SHRINK_VERSION + " (cpu " +
                                        kc::isa_name(kc::isa_active()) + ", gemm " +
                                        kc::gemm_library_name() + ")");
  Globals g;
  cli::add_global_options(app, g.threads, g.json, g.quiet);
  app.add_option("--isa", g.isa, "Kernel ISA level: ref, avx2, avx512, avx512vnni (default: best)");
  app.add_option("--device", g.device, "Backend: cpu or cuda")->capture_default_str();
  app.add_option("--lm-head", g.lm_head,
                 "Storage of a float lm_head: auto (int8 for a quantized checkpoint, f32 for a "
                 "float one), f32 (exact) or int8 (per-channel W8A16, quantized at load; verify "
                 "keeps the reference's head in f32)")
      ->capture_default_str();
  app.add_option("--act-quant", g.act_quant,
                 "cpu: int8 activations for weight-only checkpoints (W4A16, W8A16): auto (int8 "
                 "per 32 inputs for 4-bit weights, float for 8-bit), none, int8-row (one scale "
                 "per token) or int8-block (per 32 inputs for 4-bit weights, per row for 8-bit)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "none", "int8-row", "int8-block"}));
  app.add_option("--kv-cache", g.kv_cache,
                 "Storage of the KV cache: f32, or (cpu) f16 or int8 (half or a quarter of the "
                 "bytes decode attention reads; int8: one scale per token and KV head; "
                 "attention in f32)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "int8"}));
  app.add_option("--cpu-weights", g.cpu_weights,
                 "cpu: storage of float weights: auto (default: as the checkpoint stores them, "
                 "bf16 for a bfloat16 model, else f32; a bf16 model's activations are rounded to "
                 "bf16 and summed in fp32, as llama.cpp and PyTorch compute it, with oneDNN's "
                 "bf16 matmul for prefill where the CPU has AVX512_BF16), exact (as stored, fp32 "
                 "activations), f32, or bf16 (rounded to bf16, half the bytes; as auto's)")
      ->check(CLI::IsMember({"auto", "exact", "f32", "bf16"}));
  app.add_option("--cuda-weights", g.cuda_weights,
                 "cuda: storage of float linear weights: f16 (default), bf16, f32");
  app.add_option("--cuda-gemv-rows", g.cuda_gemv_rows,
                 "cuda: decode batches up to this many rows use the GEMV (0: 4 float, 16 int8)");
  app.add_flag("--no-cuda-graphs", g.no_cuda_graphs, "cuda: run decode steps without CUDA graphs");
  app.add_option("--tp", g.tp,
                 "Tensor parallelism: split the model over N ranks (whole attention heads, MLP "
                 "channels and vocabulary slices; collectives over --tp-transport on the cpu, "
                 "NCCL on cuda, one device per rank: LOCAL_RANK). Without "
                 "WORLD_SIZE in the environment, starts N processes on this machine, each with "
                 "--threads / N threads; with it (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, as "
                 "torchrun sets them), this process is one rank of a group across machines. "
                 "generate, bench, eval, verify and serve")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--tp-transport", g.tp_transport,
                 "--tp collectives: auto (shm when every rank is on this machine, else gloo), "
                 "gloo (TCP, any machines) or shm (a shared-memory segment, one machine); on "
                 "cuda this group carries NCCL's handshake and NCCL the forward's collectives")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "gloo", "shm"}));
  app.add_option("--dist-timeout", g.dist_timeout,
                 "--tp: seconds before a rank that died or stalls fails the others (rendezvous "
                 "and every collective)")
      ->capture_default_str();
  app.require_subcommand(1);
  app.fallthrough();
  register_bench(app, g);
  register_eval(app, g);
  register_generate(app, g);
  register_verify(app, g);
  auto guarded = [&g](const char* name, const std::function<Status()>& body) {
    return run_guarded(name, g, body);
  };
  cli::register_serve(app, [&g] { return engine_opts(g); }, guarded, g.quiet, g.exit_code);
  cli::register_bench_serve(app, guarded, g.json, g.exit_code);
  cli::register_chat_template(app, guarded, g.exit_code);
  return cli::parse_and_run(app, argc, argv, g.exit_code);
}
