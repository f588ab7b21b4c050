// Verification statistics (runtime::verify): nearest-rank percentiles; the KL and delta-p
// distributions, standard errors and the perplexity interval against a hand computation on a
// real pair of models (a fixture against itself with its lm_head quantized to int8); a model
// against itself scores exactly zero everywhere; the KL and top-1 gates; the compact model's
// logits spilled to a file give the same statistics as kept in memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "core/dataset.h"
#include "runtime/engine.h"
#include "runtime/verify.h"
#include "tests/runtime/util.h"

namespace fs = std::filesystem;
using namespace shrink;
using runtime::Engine;
using runtime::EngineOptions;

TEST(Verify, DistributionIsNearestRank) {
  std::vector<double> v;
  for (int i = 200; i >= 1; --i) v.push_back(i * 0.5);  // 0.5 .. 100, unsorted
  auto d = runtime::distribution(v);
  EXPECT_EQ(d.min, 0.5);
  EXPECT_EQ(d.p01, 1.0);   // rank ceil(0.01 * 200) = 2
  EXPECT_EQ(d.p05, 5.0);   // rank 10
  EXPECT_EQ(d.p50, 50.0);  // rank 100
  EXPECT_EQ(d.p90, 90.0);
  EXPECT_EQ(d.p95, 95.0);
  EXPECT_EQ(d.p99, 99.0);
  EXPECT_EQ(d.p999, 100.0);  // rank ceil(199.8) = 200
  EXPECT_EQ(d.max, 100.0);
  std::vector<double> one = {3.0};
  EXPECT_EQ(runtime::distribution(one).p01, 3.0);
}

namespace {

void log_softmax(const float* x, int64_t n, std::vector<double>& out) {
  double mx = *std::max_element(x, x + n), z = 0;
  for (int64_t i = 0; i < n; ++i) z += std::exp(double(x[i]) - mx);
  out.assign(size_t(n), 0);
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = double(x[i]) - mx - std::log(z);
}

double nearest_rank(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[size_t(std::ceil(q * double(v.size()))) - 1];
}

}  // namespace

TEST(Verify, StatisticsMatchAHandComputation) {
  const std::string dir = test::temp_dir("verify");
  const std::string model = test::fixture("llama_gqa_llama3rope");
  std::vector<int32_t> toks;
  for (int i = 0; i < 70; ++i) toks.push_back((i * 53 + 7) % 300);
  {
    core::ShardWriter w(dir, "val", 300, "test");
    ASSERT_TRUE(w.append(toks.data(), toks.size()).is_ok());
    ASSERT_TRUE(w.finish().is_ok());
  }
  runtime::VerifyOptions o;
  o.source.data = dir;
  o.seq_len = 16;
  o.bench = false;
  o.engine.lm_head = "int8";  // the compact model: the same weights with an int8 head
  auto r = runtime::verify(model, model, o);
  ASSERT_TRUE(r.is_ok()) << r.status().message();

  // By hand: both engines over the same windows (16, 16, 16, 16, 6 tokens).
  EngineOptions eo;
  eo.max_seq_len = 16;
  auto ref = Engine::load(model, eo).take_or_throw();
  eo.lm_head = "int8";
  auto cmp = Engine::load(model, eo).take_or_throw();
  std::vector<double> kls, dps, lr_row, lc_row;
  double d_sum = 0, d_sq = 0, agree = 0;
  for (int64_t s = 0; s < 70; s += 16) {
    const int64_t len = std::min<int64_t>(16, 70 - s);
    std::vector<float> lr, lc;
    ref->reset_all();
    cmp->reset_all();
    ASSERT_TRUE(ref->forward({{0, toks.data() + s, len}}, true, lr).is_ok());
    ASSERT_TRUE(cmp->forward({{0, toks.data() + s, len}}, true, lc).is_ok());
    for (int64_t t = 0; t + 1 < len; ++t) {
      log_softmax(lr.data() + t * 300, 300, lr_row);
      log_softmax(lc.data() + t * 300, 300, lc_row);
      double k = 0;
      for (int v = 0; v < 300; ++v) k += std::exp(lr_row[size_t(v)]) * (lr_row[size_t(v)] - lc_row[size_t(v)]);
      kls.push_back(std::max(k, 0.0));
      const size_t next = size_t(toks[size_t(s + t + 1)]);
      dps.push_back(std::exp(lc_row[next]) - std::exp(lr_row[next]));
      const double d = lr_row[next] - lc_row[next];  // per-token ln(ppl_c / ppl_r)
      d_sum += d;
      d_sq += d * d;
      agree += std::max_element(lr_row.begin(), lr_row.end()) - lr_row.begin() ==
               std::max_element(lc_row.begin(), lc_row.end()) - lc_row.begin();
    }
  }
  const double n = double(kls.size());
  ASSERT_EQ(r->tokens_scored, kls.size());
  ASSERT_EQ(kls.size(), 65u);  // 4 x 15 + 5
  double kl = 0;
  for (double k : kls) kl += k;
  kl /= n;
  EXPECT_GT(kl, 0);  // the int8 head really changes the distribution
  EXPECT_NEAR(r->kl, kl, 1e-12 + 1e-9 * kl);
  EXPECT_NEAR(r->kl_dist.p50, nearest_rank(kls, 0.5), 1e-12);
  EXPECT_NEAR(r->kl_dist.p99, nearest_rank(kls, 0.99), 1e-12);
  EXPECT_NEAR(r->kl_dist.max, *std::max_element(kls.begin(), kls.end()), 1e-12);
  double ss = 0;
  for (double k : kls) ss += (k - kl) * (k - kl);
  EXPECT_NEAR(r->kl_stderr, std::sqrt(ss / (n - 1) / n), 1e-12);
  double rms = 0;
  for (double x : dps) rms += x * x;
  EXPECT_NEAR(r->delta_p_rms, std::sqrt(rms / n), 1e-12);
  EXPECT_NEAR(r->delta_p.p01, nearest_rank(dps, 0.01), 1e-12);
  EXPECT_NEAR(r->delta_p.max, *std::max_element(dps.begin(), dps.end()), 1e-12);
  const double m = d_sum / n, se = std::sqrt((d_sq / n - m * m) * n / (n - 1) / n);
  EXPECT_NEAR(r->ln_ppl_ratio, m, 1e-12);
  EXPECT_NEAR(std::log1p(r->ppl_increase), m, 1e-9);  // the interval is around the estimate
  EXPECT_NEAR(r->ln_ppl_ratio_stderr, se, 1e-9 * se + 1e-15);
  EXPECT_NEAR(r->ppl_increase_lo, std::exp(m - 1.96 * se) - 1, 1e-12);
  EXPECT_NEAR(r->ppl_increase_hi, std::exp(m + 1.96 * se) - 1, 1e-12);
  EXPECT_LT(r->ppl_increase_lo, r->ppl_increase);
  EXPECT_GT(r->ppl_increase_hi, r->ppl_increase);
  EXPECT_NEAR(r->top1_agreement, agree / n, 1e-12);
  auto j = r->to_json();
  EXPECT_EQ(j["kl_stats"]["p99"].get<double>(), r->kl_dist.p99);
  EXPECT_EQ(j["delta_p"]["rms"].get<double>(), r->delta_p_rms);
  EXPECT_EQ(j["perplexity_increase_ci95"].size(), 2u);

  // One model at a time: the compact model's logits were kept in memory (65 positions x 300 x 4
  // bytes); under a 1 KiB budget they spill to a file and every statistic is the same, bit for bit.
  EXPECT_EQ(r->logits_bytes, 65u * 300u * 4u);
  EXPECT_FALSE(r->logits_spilled);
  {
    runtime::VerifyOptions os = o;
    os.max_memory = "1K";
    auto sp = runtime::verify(model, model, os);
    ASSERT_TRUE(sp.is_ok()) << sp.status().message();
    EXPECT_TRUE(sp->logits_spilled);
    EXPECT_EQ(sp->to_json().dump(), [&] {
      nlohmann::json j = r->to_json();
      j["logits_spilled"] = true;
      return j.dump();
    }());
    os.max_memory = "lots";
    auto bad_budget = runtime::verify(model, model, os);
    ASSERT_FALSE(bad_budget.is_ok());
    EXPECT_NE(bad_budget.status().message().find("--max-memory"), std::string::npos)
        << bad_budget.status().message();
  }

  // Gates: a KL ceiling below the measured mean and a top-1 floor above the agreement fail.
  o.max_kl = kl * 0.5;
  o.min_top1 = std::min(1.0, r->top1_agreement + 1e-9);
  auto g = runtime::verify(model, model, o);
  ASSERT_TRUE(g.is_ok());
  EXPECT_FALSE(g->passed);
  EXPECT_NE(g->verdict.find("KL"), std::string::npos) << g->verdict;
  if (r->top1_agreement < 1) {
    EXPECT_NE(g->verdict.find("top-1 agreement"), std::string::npos) << g->verdict;
  }
  o.min_top1 = 1.5;
  auto bad = runtime::verify(model, model, o);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("--min-top1 1.5"), std::string::npos);

  // A model against itself: every statistic is exactly zero and the gates pass.
  o.engine.lm_head = "f32";
  o.max_kl = 0;
  o.min_top1 = 1;
  auto same = runtime::verify(model, model, o);
  ASSERT_TRUE(same.is_ok());
  EXPECT_TRUE(same->passed) << same->verdict;
  EXPECT_EQ(same->kl_dist.max, 0);
  EXPECT_EQ(same->delta_p.min, 0);
  EXPECT_EQ(same->delta_p.max, 0);
  EXPECT_EQ(same->ppl_increase_lo, 0);
  EXPECT_EQ(same->ppl_increase_hi, 0);
  fs::remove_all(dir);
}
