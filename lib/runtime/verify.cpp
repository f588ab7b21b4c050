// Compact-vs-reference verification; see verify.h.
#include "runtime/verify.h"

#include <cmath>

#include "core/dataset.h"

namespace shrink::runtime {

namespace {

// log-softmax of one row in double.
void log_softmax(const float* x, int64_t n, std::vector<double>& out) {
  out.resize(size_t(n));
  double mx = x[0];
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, double(x[i]));
  double z = 0;
  for (int64_t i = 0; i < n; ++i) z += std::exp(double(x[i]) - mx);
  const double lz = mx + std::log(z);
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = double(x[i]) - lz;
}

}  // namespace

nlohmann::json VerifyResult::to_json() const {
  auto b = [](const BenchResult& r) {
    return nlohmann::json{{"prefill_tokens_per_second", r.prefill_tokens_per_second},
                          {"decode_tokens_per_second", r.decode_tokens_per_second},
                          {"ttft_ms", r.ttft_seconds * 1e3},
                          {"latency_p50_ms", r.latency_p50_ms},
                          {"latency_p99_ms", r.latency_p99_ms},
                          {"weight_gb_per_second", r.weight_gb_per_second}};
  };
  return {{"engine_reference", engine_reference},
          {"engine_compact", engine_compact},
          {"perplexity_reference", ppl_reference},
          {"perplexity_compact", ppl_compact},
          {"perplexity_increase", ppl_increase},
          {"kl", kl},
          {"top1_agreement", top1_agreement},
          {"tokens_scored", tokens_scored},
          {"speed_reference", b(bench_reference)},
          {"speed_compact", b(bench_compact)},
          {"decode_speedup", decode_speedup},
          {"prefill_speedup", prefill_speedup},
          {"weight_bytes_reference", bytes_reference},
          {"weight_bytes_compact", bytes_compact},
          {"passed", passed},
          {"verdict", verdict}};
}

Result<VerifyResult> verify(const std::string& compact_dir, const std::string& reference_dir,
                            const VerifyOptions& o) {
  SHRINK_CHECK(o.seq_len >= 2, StatusCode::kInvalidInput, "--seq-len %lld: expected >= 2",
               (long long)o.seq_len);
  EngineOptions eo = o.engine;
  eo.max_seq_len = std::max(o.seq_len, o.bench_prompt_len + o.bench_gen_len);
  eo.max_batch = 1;
  EngineOptions ref_eo = eo;
  ref_eo.lm_head = "f32";  // the reference is what it is; only the compact model's head may shrink
  ref_eo.kv_cache = "f32";  // ... and its cache
  SHRINK_ASSIGN_OR_RETURN(auto ref, Engine::load(reference_dir, ref_eo));
  SHRINK_ASSIGN_OR_RETURN(auto cmp, Engine::load(compact_dir, eo));
  const int64_t V = ref->config().vocab_size;
  SHRINK_CHECK(cmp->config().vocab_size == V, StatusCode::kInvalidInput,
               "%s has vocab_size %lld but the reference has %lld: verification compares token "
               "distributions and needs the same vocabulary",
               compact_dir.c_str(), (long long)cmp->config().vocab_size, (long long)V);
  SHRINK_ASSIGN_OR_RETURN(LoadedTokens data, tokens_load(reference_dir, V, o.source));
  VerifyResult r;
  r.engine_reference = ref->describe();
  r.engine_compact = cmp->describe();
  double nll_r = 0, nll_c = 0, kl = 0, agree = 0;
  std::vector<float> lr, lc;
  std::vector<double> pr, pc;
  for (const core::EvalWindow& w : core::eval_windows(data.tokens.size(), o.seq_len)) {
    const int32_t* t = data.tokens.data() + w.start;
    ref->reset_all();
    cmp->reset_all();
    SHRINK_RETURN_IF_ERROR(ref->forward({{0, t, w.len}}, true, lr));
    SHRINK_RETURN_IF_ERROR(cmp->forward({{0, t, w.len}}, true, lc));
    for (int64_t i = 0; i + 1 < w.len; ++i) {
      log_softmax(lr.data() + i * V, V, pr);
      log_softmax(lc.data() + i * V, V, pc);
      const int32_t next = t[i + 1];
      nll_r -= pr[size_t(next)];
      nll_c -= pc[size_t(next)];
      size_t ar = 0, ac = 0;
      double k = 0;
      for (int64_t v = 0; v < V; ++v) {
        k += std::exp(pr[size_t(v)]) * (pr[size_t(v)] - pc[size_t(v)]);
        if (pr[size_t(v)] > pr[ar]) ar = size_t(v);
        if (pc[size_t(v)] > pc[ac]) ac = size_t(v);
      }
      kl += k;
      agree += ar == ac;
      r.tokens_scored++;
    }
  }
  SHRINK_CHECK(r.tokens_scored > 0, StatusCode::kInvalidInput,
               "%s: too few tokens to score (need at least 2)", data.description.c_str());
  const double n = double(r.tokens_scored);
  r.ppl_reference = std::exp(nll_r / n);
  r.ppl_compact = std::exp(nll_c / n);
  r.ppl_increase = r.ppl_compact / r.ppl_reference - 1.0;
  r.kl = kl / n;
  r.top1_agreement = agree / n;
  r.bytes_reference = ref->weight_bytes();
  r.bytes_compact = cmp->weight_bytes();
  if (o.bench) {
    BenchOptions bo;
    bo.prompt_len = o.bench_prompt_len;
    bo.gen_len = o.bench_gen_len;
    ref->reset_all();
    cmp->reset_all();
    SHRINK_ASSIGN_OR_RETURN(r.bench_reference, bench(*ref, bo));
    SHRINK_ASSIGN_OR_RETURN(r.bench_compact, bench(*cmp, bo));
    r.decode_speedup = r.bench_compact.decode_tokens_per_second /
                       std::max(1e-12, r.bench_reference.decode_tokens_per_second);
    r.prefill_speedup = r.bench_compact.prefill_tokens_per_second /
                        std::max(1e-12, r.bench_reference.prefill_tokens_per_second);
  }
  std::string failed;
  if (o.max_ppl_increase >= 0 && r.ppl_increase > o.max_ppl_increase) {
    failed += shrink::strfmt("perplexity +%.2f%% exceeds +%.2f%%", 100 * r.ppl_increase,
                           100 * o.max_ppl_increase);
  }
  if (o.min_speedup >= 0 && o.bench && r.decode_speedup < o.min_speedup) {
    if (!failed.empty()) failed += "; ";
    failed += shrink::strfmt("decode speed-up %.2fx is below %.2fx", r.decode_speedup, o.min_speedup);
  }
  r.passed = failed.empty();
  r.verdict = r.passed ? "pass" : "fail: " + failed;
  return r;
}

}  // namespace shrink::runtime
