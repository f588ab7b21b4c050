// Verify's serving comparison (serve_compare.h).
#include "runtime/serve/serve_compare.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/tokenizer.h"
#include "runtime/scheduler.h"
#include "runtime/serve/bench_serve.h"
#include "runtime/serve/server.h"

namespace shrink::runtime::serve {

using nlohmann::json;

namespace {

// Serve `model` on a free loopback port and run the benchmark against it.
Result<json> measure(const std::string& model, const ServeCompareOptions& o) {
  SHRINK_ASSIGN_OR_RETURN(core::ModelConfig cfg, core::config_load(model));
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
  BenchServeOptions b;
  b.url = "http://127.0.0.1:" + std::to_string(server.port());
  b.synthetic = true;
  b.concurrency = o.concurrency;
  b.requests = o.requests;
  b.prompt_len = o.prompt_len;
  b.gen_len = o.gen_len;
  b.shared_prefix = o.shared_prefix;
  b.vocab = int32_t(std::min<int64_t>(cfg.vocab_size, 4096));
  Result<std::vector<BenchServeRow>> rows = bench_serve(b);
  server.stop(std::chrono::milliseconds(2000));
  listener.join();
  SHRINK_RETURN_IF_ERROR(rows.status());
  for (const BenchServeRow& r : rows.value())
    SHRINK_CHECK(r.errors == 0, StatusCode::kInternal, "%s: %lld of %lld requests failed at concurrency %d: %s",
                 model.c_str(), (long long)r.errors, (long long)r.requests, r.concurrency,
                 r.error_samples.empty() ? "" : r.error_samples[0].c_str());
  json j = bench_serve_json(b, rows.value());
  j["engine"] = engine->describe();
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
