// Verify's serving comparison (serve_compare.h).
#include "runtime/serve/serve_compare.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "runtime/scheduler.h"
#include "runtime/serve/bench_serve.h"
#include "runtime/serve/server.h"

extern char** environ;

namespace shrink::runtime::serve {

using nlohmann::json;

namespace {

Result<json> measure_in_process(const std::string& model, const ServeCompareOptions& o);

// The synthetic load of `o` against the server at `url` serving `model`; every request must
// succeed.
Result<json> bench_against(const std::string& url, const std::string& model,
                           const ServeCompareOptions& o) {
  SHRINK_ASSIGN_OR_RETURN(core::ModelConfig cfg, core::config_load(model));
  BenchServeOptions b;
  b.url = url;
  b.synthetic = true;
  b.concurrency = o.concurrency;
  b.requests = o.requests;
  b.prompt_len = o.prompt_len;
  b.gen_len = o.gen_len;
  b.shared_prefix = o.shared_prefix;
  b.vocab = int32_t(std::min<int64_t>(cfg.vocab_size, 4096));
  SHRINK_ASSIGN_OR_RETURN(std::vector<BenchServeRow> rows, bench_serve(b));
  for (const BenchServeRow& r : rows)
    SHRINK_CHECK(r.errors == 0, StatusCode::kInternal, "%s: %lld of %lld requests failed at concurrency %d: %s",
                 model.c_str(), (long long)r.errors, (long long)r.requests, r.concurrency,
                 r.error_samples.empty() ? "" : r.error_samples[0].c_str());
  return bench_serve_json(b, rows);
}

// `shrink-rt serve` for `model` as its own process (as it is deployed), on a free loopback port.
struct ServerProcess {
  pid_t pid = -1;
  std::string url, engine;
  ~ServerProcess() {
    if (pid > 0) {
      kill(pid, SIGTERM);
      int st = 0;
      waitpid(pid, &st, 0);
    }
  }
};

Result<std::unique_ptr<ServerProcess>> spawn_server(const std::string& rt, const std::string& model,
                                                    const ServeCompareOptions& o, int slots,
                                                    int64_t ctx) {
  const EngineOptions& e = o.engine;
  std::vector<std::string> args = {rt, "--threads", std::to_string(std::max(e.threads, 1)), "-q",
                                   "--device", e.device, "--lm-head", e.lm_head, "--kv-cache",
                                   e.kv_cache, "--act-quant", e.act_quant};
  if (!e.isa.empty()) args.insert(args.end(), {"--isa", e.isa});
  if (!e.float_weights.empty())
    args.insert(args.end(), {e.device == "cuda" ? "--cuda-weights" : "--cpu-weights", e.float_weights});
  args.insert(args.end(), {"serve", model, "--port", "0", "--slots", std::to_string(slots), "--ctx",
                           std::to_string(ctx), "--prefix-cache-mb", std::to_string(o.prefix_cache_mb),
                           "--response-cache", "0", "--queue", "4096", "--model-name", "model"});
  int fds[2];
  SHRINK_CHECK(pipe(fds) == 0, StatusCode::kIoError, "serve: pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  auto p = std::make_unique<ServerProcess>();
  const int rc = posix_spawn(&p->pid, rt.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    p->pid = -1;
    return Status(StatusCode::kIoError, "serve: cannot start " + rt);
  }
  // The first line: "shrink-rt serve: listening on http://127.0.0.1:PORT (model .., context N, ENGINE)".
  std::string line;
  char c;
  while (read(fds[0], &c, 1) == 1 && c != '\n') line += c;
  close(fds[0]);
  const size_t at = line.find("http://");
  SHRINK_CHECK(at != std::string::npos, StatusCode::kIoError,
               "serve: %s did not start serving %s (see its error above)", rt.c_str(), model.c_str());
  p->url = line.substr(at, line.find(' ', at) - at);
  const size_t ctx_at = line.find("context ");
  const size_t eng = ctx_at == std::string::npos ? std::string::npos : line.find(", ", ctx_at);
  if (eng != std::string::npos) p->engine = line.substr(eng + 2, line.size() - eng - 3);
  return p;
}

// Serve `model` on a free loopback port and run the benchmark against it: as a `shrink-rt serve`
// process beside this one when the binary is there (the load generator in the server's own
// process slowed about one phase in four by 4-5x at 2 engine threads), else in-process.
Result<json> measure(const std::string& model, const ServeCompareOptions& o) {
  const std::string rt = core::executable_dir() + "/shrink-rt";
  if (access(rt.c_str(), X_OK) == 0) {
    const int slots = *std::max_element(o.concurrency.begin(), o.concurrency.end());
    SHRINK_ASSIGN_OR_RETURN(auto proc, spawn_server(rt, model, o, slots,
                                                    o.shared_prefix + o.prompt_len + o.gen_len));
    SHRINK_ASSIGN_OR_RETURN(json j, bench_against(proc->url, model, o));
    j["engine"] = proc->engine;
    j["server"] = "process";
    return j;
  }
  return measure_in_process(model, o);
}

// The same with the server in this process.
Result<json> measure_in_process(const std::string& model, const ServeCompareOptions& o) {
  EngineOptions eo = o.engine;
  eo.max_batch = *std::max_element(o.concurrency.begin(), o.concurrency.end());
  eo.max_seq_len = o.shared_prefix + o.prompt_len + o.gen_len;
  SHRINK_ASSIGN_OR_RETURN(auto engine, Engine::load(model, eo));
  SchedulerOptions so;
  so.prefix_cache_bytes = uint64_t(o.prefix_cache_mb * 1048576.0);
  so.queue_limit = 4096;
  Scheduler sched(*engine, so);
  sched.start();
  ServerOptions srv;
  srv.port = 0;
  srv.model_id = "model";
  srv.response_cache = 0;  // every request runs the model
  Server server(sched, nullptr, srv);
  SHRINK_RETURN_IF_ERROR(server.bind());
  std::thread listener([&] { (void)server.listen(); });
  Result<json> j = bench_against("http://127.0.0.1:" + std::to_string(server.port()), model, o);
  server.stop(std::chrono::milliseconds(2000));
  listener.join();
  SHRINK_RETURN_IF_ERROR(j.status());
  j.value()["engine"] = engine->describe();
  j.value()["server"] = "in-process";
  return j;
}

}  // namespace

Result<json> serve_compare(const std::string& compact, const std::string& reference,
                           const ServeCompareOptions& o) {
  SHRINK_CHECK(!o.concurrency.empty(), StatusCode::kInvalidInput, "serve: no concurrency levels");
  SHRINK_CHECK(o.repeats >= 1, StatusCode::kInvalidInput, "serve: repeats must be >= 1");
  // Interleaved: reference, compact, reference, ... (one model loaded at a time); per level the
  // medians over the repeats, so that a phase slowed by the machine does not decide the ratio.
  std::vector<json> ref_runs, cmp_runs;
  for (int k = 0; k < o.repeats; ++k) {
    SHRINK_ASSIGN_OR_RETURN(json a, measure(reference, o));
    ref_runs.push_back(std::move(a));
    SHRINK_ASSIGN_OR_RETURN(json b, measure(compact, o));
    cmp_runs.push_back(std::move(b));
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  json levels = json::array();
  for (size_t l = 0; l < o.concurrency.size(); ++l) {
    auto field = [&](const std::vector<json>& runs, auto get) {
      std::vector<double> v;
      for (const json& r : runs) v.push_back(get(r["levels"][l]));
      return v;
    };
    auto tps = [](const json& x) { return x["output_tokens_per_s"].get<double>(); };
    auto ttft = [](const json& x) { return x["ttft_ms"]["p50"].get<double>(); };
    auto itl = [](const json& x) { return x["itl_ms"]["p50"].get<double>(); };
    const double ta = median(field(ref_runs, tps)), tb = median(field(cmp_runs, tps));
    levels.push_back({{"concurrency", o.concurrency[l]},
                      {"output_tokens_per_s_reference", ta},
                      {"output_tokens_per_s_compact", tb},
                      {"output_tokens_per_s_reference_runs", field(ref_runs, tps)},
                      {"output_tokens_per_s_compact_runs", field(cmp_runs, tps)},
                      {"throughput_ratio", ta > 0 ? tb / ta : 0.0},
                      {"ttft_p50_ms_reference", median(field(ref_runs, ttft))},
                      {"ttft_p50_ms_compact", median(field(cmp_runs, ttft))},
                      {"itl_p50_ms_reference", median(field(ref_runs, itl))},
                      {"itl_p50_ms_compact", median(field(cmp_runs, itl))}});
  }
  return json{{"reference", ref_runs.back()}, {"compact", cmp_runs.back()}, {"levels", levels},
              {"repeats", o.repeats},
              {"workload", {{"prompt_len", o.prompt_len}, {"gen_len", o.gen_len},
                            {"shared_prefix", o.shared_prefix}}}};
}

}  // namespace shrink::runtime::serve
