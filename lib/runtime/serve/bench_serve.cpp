// The serving load benchmark (bench_serve.h) on cpp-httplib's client.
#include "runtime/serve/bench_serve.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

namespace shrink::runtime::serve {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

struct Prompt {
  json prompt;
  int64_t max_tokens = 0;
};

struct Sample {
  bool ok = false;
  std::string error;
  double ttft_ms = 0, e2e_ms = 0;
  std::vector<double> itl_ms;
  int64_t tokens = 0, prompt_tokens = 0, cached_tokens = 0;
};

LatencyStats stats_of(std::vector<double> v) {
  LatencyStats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto pct = [&](double p) {
    const double at = p * double(v.size() - 1);
    const size_t lo = size_t(at);
    const size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (at - double(lo));
  };
  s.p50 = pct(0.50);
  s.p90 = pct(0.90);
  s.p99 = pct(0.99);
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / double(v.size());
  return s;
}

Result<std::vector<Prompt>> load_prompts(const BenchServeOptions& o, int64_t n) {
  std::vector<Prompt> out;
  if (o.synthetic) {
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<int32_t> id(1, std::max(o.vocab - 1, 1));
    std::vector<int32_t> prefix(static_cast<size_t>(o.shared_prefix));
    for (auto& t : prefix) t = id(rng);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> p = prefix;
      for (int64_t j = 0; j < o.prompt_len; ++j) p.push_back(id(rng));
      out.push_back({json(p), o.gen_len});
    }
    return out;
  }
  std::ifstream f(o.dataset);
  if (!f) return Status(StatusCode::kNotFound, o.dataset + ": cannot open the dataset");
  std::string line;
  std::vector<Prompt> all;
  for (int64_t ln = 1; std::getline(f, line); ++ln) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::parse_error& e) {
      return Status(StatusCode::kInvalidInput, o.dataset + ":" + std::to_string(ln) + ":" +
                                                   std::to_string(e.byte) + ": not valid JSON");
    } catch (const json::exception& e) {  // e.g. a number out of range
      return Status(StatusCode::kInvalidInput, o.dataset + ":" + std::to_string(ln) + ": " + e.what());
    }
    if (!j.is_object() || !j.contains("prompt") ||
        !(j["prompt"].is_string() || j["prompt"].is_array()))
      return Status(StatusCode::kInvalidInput,
                    o.dataset + ":" + std::to_string(ln) +
                        ": expected an object with \"prompt\" (text or token ids)");
    Prompt p{j["prompt"], o.gen_len};
    if (j.contains("max_tokens")) {
      if (!j["max_tokens"].is_number_integer() || j["max_tokens"].get<int64_t>() < 0)
        return Status(StatusCode::kInvalidInput, o.dataset + ":" + std::to_string(ln) +
                                                     ": max_tokens: expected an integer >= 0");
      p.max_tokens = j["max_tokens"].get<int64_t>();
    }
    all.push_back(std::move(p));
  }
  if (all.empty()) return Status(StatusCode::kInvalidInput, o.dataset + ": no prompts");
  for (int64_t i = 0; i < n; ++i) out.push_back(all[size_t(i) % all.size()]);
  return out;
}

struct Target {
  std::string host;
  int port = 80;
};

Result<Target> parse_url(const std::string& url) {
  std::string u = url;
  if (u.rfind("http://", 0) == 0) u = u.substr(7);
  else if (u.find("://") != std::string::npos)
    return Status(StatusCode::kInvalidInput, "--url " + url + ": only http:// is supported");
  if (!u.empty() && u.back() == '/') u.pop_back();
  Target t;
  const size_t colon = u.rfind(':');
  if (colon == std::string::npos) {
    t.host = u;
  } else {
    t.host = u.substr(0, colon);
    try {
      t.port = std::stoi(u.substr(colon + 1));
    } catch (...) {
      return Status(StatusCode::kInvalidInput, "--url " + url + ": the port is not a number");
    }
  }
  if (t.host.empty()) return Status(StatusCode::kInvalidInput, "--url " + url + ": no host");
  return t;
}

Sample one_request(const Target& t, const BenchServeOptions& o, const std::string& model,
                   const Prompt& p) {
  Sample s;
  httplib::Client cli(t.host, t.port);
  cli.set_read_timeout(std::chrono::seconds(int64_t(o.timeout_s)));
  cli.set_connection_timeout(std::chrono::seconds(10));
  cli.set_tcp_nodelay(true);
  json body = {{"model", model},   {"prompt", p.prompt},       {"max_tokens", p.max_tokens},
               {"temperature", 0}, {"stream", true},           {"ignore_eos", true},
               {"return_token_ids", true}, {"stream_options", {{"include_usage", true}}}};
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  if (!o.api_key.empty()) req.set_header("Authorization", "Bearer " + o.api_key);
  std::string buf;
  const auto t0 = Clock::now();
  auto last = t0;
  bool first = true;
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    buf.append(data, len);
    for (size_t end; (end = buf.find("\n\n")) != std::string::npos;) {
      std::string ev = buf.substr(0, end);
      buf.erase(0, end + 2);
      if (ev.rfind("data: ", 0) != 0) continue;
      ev = ev.substr(6);
      if (ev == "[DONE]") continue;
      json j = json::parse(ev, nullptr, false);
      if (j.is_discarded()) continue;
      if (j.contains("error")) {
        s.error = j["error"].value("message", "error event");
        continue;
      }
      if (j.contains("usage") && j["usage"].is_object()) {
        s.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(0));
        if (j["usage"].contains("prompt_tokens_details"))
          s.cached_tokens = j["usage"]["prompt_tokens_details"].value("cached_tokens", int64_t(0));
      }
      if (!j.contains("choices") || j["choices"].empty()) continue;
      const json& c = j["choices"][0];
      const int64_t n = c.contains("token_ids") ? int64_t(c["token_ids"].size()) : 0;
      if (n == 0) continue;
      const auto now = Clock::now();
      if (first) {
        s.ttft_ms = std::chrono::duration<double, std::milli>(now - t0).count();
        first = false;
      } else {
        // A chunk of several tokens (text held back at a UTF-8 or stop-string boundary) spreads
        // its gap over them.
        const double gap = std::chrono::duration<double, std::milli>(now - last).count();
        for (int64_t i = 0; i < n; ++i) s.itl_ms.push_back(gap / double(n));
      }
      last = now;
      s.tokens += n;
    }
    return true;
  };
  httplib::Result r = cli.send(req);
  s.e2e_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  if (!r) {
    s.error = "connection: " + httplib::to_string(r.error());
  } else if (r->status != 200) {
    json j = json::parse(r->body, nullptr, false);
    s.error = "HTTP " + std::to_string(r->status) +
              (j.is_object() && j.contains("error") ? ": " + j["error"].value("message", "") : "");
  } else if (s.error.empty() && s.tokens != p.max_tokens) {
    s.error = "got " + std::to_string(s.tokens) + " tokens, expected " + std::to_string(p.max_tokens);
  }
  s.ok = s.error.empty();
  return s;
}

Result<std::string> served_model(const Target& t, const BenchServeOptions& o) {
  httplib::Client cli(t.host, t.port);
  cli.set_connection_timeout(std::chrono::seconds(10));
  httplib::Headers h;
  if (!o.api_key.empty()) h.emplace("Authorization", "Bearer " + o.api_key);
  httplib::Result r = cli.Get("/v1/models", h);
  if (!r) return Status(StatusCode::kIoError, o.url + ": cannot connect (" + httplib::to_string(r.error()) + ")");
  json j = json::parse(r->body, nullptr, false);
  if (r->status != 200 || j.is_discarded() || !j.contains("data") || j["data"].empty())
    return Status(StatusCode::kIoError, o.url + "/v1/models: HTTP " + std::to_string(r->status) +
                                            " without a model list");
  return j["data"][0].value("id", "");
}

}  // namespace

Result<std::vector<BenchServeRow>> bench_serve(const BenchServeOptions& o) {
  SHRINK_CHECK(o.synthetic != !o.dataset.empty(), StatusCode::kInvalidInput,
               "give --dataset FILE.jsonl or --synthetic (one of them)");
  SHRINK_CHECK(!o.concurrency.empty(), StatusCode::kInvalidInput, "--concurrency: no levels");
  for (int c : o.concurrency)
    SHRINK_CHECK(c >= 1 && c <= 4096, StatusCode::kInvalidInput, "--concurrency %d: expected 1..4096", c);
  SHRINK_CHECK(o.prompt_len >= 1 && o.gen_len >= 1 && o.shared_prefix >= 0, StatusCode::kInvalidInput,
               "expected --prompt-len >= 1, --gen-len >= 1 and --shared-prefix >= 0");
  SHRINK_ASSIGN_OR_RETURN(Target t, parse_url(o.url));
  SHRINK_ASSIGN_OR_RETURN(std::string model, served_model(t, o));
  std::vector<BenchServeRow> rows;
  int64_t level_index = 0;
  if (o.warmup) {
    SHRINK_ASSIGN_OR_RETURN(std::vector<Prompt> w, load_prompts(o, 1));
    Sample s = one_request(t, o, model, w[0]);
    SHRINK_CHECK(s.ok, StatusCode::kIoError, "the warm-up request failed: %s", s.error.c_str());
  }
  for (int c : o.concurrency) {
    const int64_t n = o.requests > 0 ? o.requests : std::max<int64_t>(16, 4 * int64_t(c));
    BenchServeOptions oi = o;
    oi.seed = o.seed + 1000003ull * uint64_t(++level_index);  // distinct prompts per level
    SHRINK_ASSIGN_OR_RETURN(std::vector<Prompt> prompts, load_prompts(oi, n));
    std::vector<Sample> samples(static_cast<size_t>(n));
    std::atomic<int64_t> next{0};
    const auto t0 = Clock::now();
    std::vector<std::thread> th;
    for (int i = 0; i < c; ++i) {
      th.emplace_back([&] {
        for (int64_t k; (k = next.fetch_add(1)) < n;)
          samples[size_t(k)] = one_request(t, o, model, prompts[size_t(k)]);
      });
    }
    for (auto& x : th) x.join();
    BenchServeRow r;
    r.concurrency = c;
    r.requests = n;
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    std::vector<double> ttft, itl, e2e;
    for (const Sample& s : samples) {
      if (!s.ok) {
        ++r.errors;
        if (r.error_samples.size() < 3) r.error_samples.push_back(s.error);
        continue;
      }
      r.output_tokens += s.tokens;
      r.prompt_tokens += s.prompt_tokens;
      r.cached_tokens += s.cached_tokens;
      ttft.push_back(s.ttft_ms);
      e2e.push_back(s.e2e_ms);
      itl.insert(itl.end(), s.itl_ms.begin(), s.itl_ms.end());
    }
    r.requests_per_s = double(n - r.errors) / r.seconds;
    r.output_tokens_per_s = double(r.output_tokens) / r.seconds;
    r.ttft_ms = stats_of(ttft);
    r.itl_ms = stats_of(itl);
    r.e2e_ms = stats_of(e2e);
    rows.push_back(r);
  }
  return rows;
}

json bench_serve_json(const BenchServeOptions& o, const std::vector<BenchServeRow>& rows) {
  auto lat = [](const LatencyStats& s) {
    return json{{"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}, {"mean", s.mean}};
  };
  json levels = json::array();
  for (const BenchServeRow& r : rows) {
    levels.push_back({{"concurrency", r.concurrency},
                      {"requests", r.requests},
                      {"errors", r.errors},
                      {"error_samples", r.error_samples},
                      {"seconds", r.seconds},
                      {"requests_per_s", r.requests_per_s},
                      {"output_tokens", r.output_tokens},
                      {"output_tokens_per_s", r.output_tokens_per_s},
                      {"prompt_tokens", r.prompt_tokens},
                      {"cached_tokens", r.cached_tokens},
                      {"ttft_ms", lat(r.ttft_ms)},
                      {"itl_ms", lat(r.itl_ms)},
                      {"e2e_ms", lat(r.e2e_ms)}});
  }
  return {{"url", o.url},
          {"workload", o.synthetic ? json{{"synthetic", true},
                                          {"shared_prefix", o.shared_prefix},
                                          {"prompt_len", o.prompt_len},
                                          {"gen_len", o.gen_len}}
                                   : json{{"dataset", o.dataset}}},
          {"levels", levels}};
}

std::string bench_serve_table(const std::vector<BenchServeRow>& rows, const std::string& format) {
  std::ostringstream s;
  char b[512];
  const bool csv = format == "csv";
  if (csv) {
    s << "concurrency,requests,errors,seconds,requests_per_s,output_tokens_per_s,ttft_p50_ms,"
         "ttft_p90_ms,ttft_p99_ms,itl_p50_ms,itl_p90_ms,itl_p99_ms,e2e_p50_ms,e2e_p90_ms,"
         "e2e_p99_ms,cached_tokens\n";
  } else {
    s << "| concurrency | requests | errors | req/s | output tok/s | TTFT p50 / p90 / p99 ms | "
         "ITL p50 / p90 / p99 ms | E2E p50 / p90 / p99 ms | cached prompt tokens |\n"
         "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  }
  for (const BenchServeRow& r : rows) {
    if (csv) {
      std::snprintf(b, sizeof b,
                    "%d,%lld,%lld,%.3f,%.3f,%.1f,%.1f,%.1f,%.1f,%.2f,%.2f,%.2f,%.1f,%.1f,%.1f,%lld\n",
                    r.concurrency, (long long)r.requests, (long long)r.errors, r.seconds,
                    r.requests_per_s, r.output_tokens_per_s, r.ttft_ms.p50, r.ttft_ms.p90,
                    r.ttft_ms.p99, r.itl_ms.p50, r.itl_ms.p90, r.itl_ms.p99, r.e2e_ms.p50,
                    r.e2e_ms.p90, r.e2e_ms.p99, (long long)r.cached_tokens);
    } else {
      std::snprintf(b, sizeof b,
                    "| %d | %lld | %lld | %.2f | %.1f | %.1f / %.1f / %.1f | %.2f / %.2f / %.2f | "
                    "%.0f / %.0f / %.0f | %lld |\n",
                    r.concurrency, (long long)r.requests, (long long)r.errors, r.requests_per_s,
                    r.output_tokens_per_s, r.ttft_ms.p50, r.ttft_ms.p90, r.ttft_ms.p99,
                    r.itl_ms.p50, r.itl_ms.p90, r.itl_ms.p99, r.e2e_ms.p50, r.e2e_ms.p90,
                    r.e2e_ms.p99, (long long)r.cached_tokens);
    }
    s << b;
  }
  return s.str();
}

}  // namespace shrink::runtime::serve
