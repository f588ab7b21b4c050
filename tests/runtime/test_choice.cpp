// Multiple-choice scoring (runtime::score_choices) and verify's task comparison, against a
// hand computation: each choice's log-likelihood from one full forward of context + choice.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "core/dataset.h"
#include "runtime/api.h"
#include "runtime/engine.h"
#include "runtime/verify.h"
#include "tests/runtime/util.h"

using namespace shrink;
using runtime::Engine;
using runtime::EngineOptions;

namespace {

// Seeded random items over a vocabulary of V: contexts of 1..12 tokens, 2..5 choices of 1..6.
std::vector<core::ChoiceItem> random_items(int n, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto tok = [&] { return int32_t(rng() % uint64_t(V)); };
  std::vector<core::ChoiceItem> items;
  items.resize(size_t(n));
  for (auto& it : items) {
    it.context.resize(1 + rng() % 12);
    for (auto& t : it.context) t = tok();
    it.choices.resize(2 + rng() % 4);
    for (auto& c : it.choices) {
      c.resize(1 + rng() % 6);
      for (auto& t : c) t = tok();
      it.norm_length.push_back(double(1 + rng() % 30));  // as if bytes
    }
    it.label = int64_t(rng() % it.choices.size());
  }
  return items;
}

// sum over the choice's tokens of log p(token | everything before), from one forward.
double loglik_by_hand(Engine& e, const std::vector<int32_t>& ctx, const std::vector<int32_t>& ch) {
  std::vector<int32_t> all = ctx;
  all.insert(all.end(), ch.begin(), ch.end());
  std::vector<float> logits;
  e.reset_all();
  EXPECT_TRUE(e.forward({{0, all.data(), int64_t(all.size())}}, true, logits).is_ok());
  const int64_t V = e.config().vocab_size;
  double ll = 0;
  for (size_t t = 0; t < ch.size(); ++t) {
    const float* x = logits.data() + (ctx.size() - 1 + t) * size_t(V);
    double mx = *std::max_element(x, x + V), z = 0;
    for (int64_t v = 0; v < V; ++v) z += std::exp(double(x[v]) - mx);
    ll += double(x[ch[t]]) - mx - std::log(z);
  }
  return ll;
}

}  // namespace

TEST(Choice, LoglikelihoodsEqualFullForwardsAtAnyBatch) {
  const std::string model = test::fixture("llama_gqa_llama3rope");
  EngineOptions eo;
  eo.max_seq_len = 32;
  eo.max_batch = 1;
  auto e1 = Engine::load(model, eo).take_or_throw();
  eo.max_batch = 4;
  auto e4 = Engine::load(model, eo).take_or_throw();
  const int64_t V = e1->config().vocab_size;
  const auto items = random_items(11, V, 5);  // 11: the last batch of 4 is partial
  auto r1 = runtime::score_choices(*e1, items);
  auto r4 = runtime::score_choices(*e4, items);
  EXPECT_EQ(e4->length(0), 0);  // the slots are left empty
  ASSERT_TRUE(r1.is_ok()) << r1.status().message();
  ASSERT_TRUE(r4.is_ok()) << r4.status().message();
  EXPECT_EQ(r1->items, 11);
  EXPECT_EQ(r1->truncated, 0);
  int right = 0, right_norm = 0;
  for (size_t k = 0; k < items.size(); ++k) {
    ASSERT_EQ(r1->loglik[k].size(), items[k].choices.size());
    size_t best = 0, best_norm = 0;
    for (size_t c = 0; c < items[k].choices.size(); ++c) {
      const double want = loglik_by_hand(*e1, items[k].context, items[k].choices[c]);
      EXPECT_NEAR(r1->loglik[k][c], want, 1e-4) << "item " << k << " choice " << c;
      EXPECT_NEAR(r4->loglik[k][c], want, 1e-4) << "item " << k << " choice " << c;
      EXPECT_LT(r1->loglik[k][c], 0);
      if (r1->loglik[k][c] > r1->loglik[k][best]) best = c;
      if (r1->loglik[k][c] / items[k].norm_length[c] >
          r1->loglik[k][best_norm] / items[k].norm_length[best_norm])
        best_norm = c;
    }
    EXPECT_EQ(r1->pred[k], int64_t(best));
    EXPECT_EQ(r1->pred_norm[k], int64_t(best_norm));
    right += int64_t(best) == items[k].label;
    right_norm += int64_t(best_norm) == items[k].label;
  }
  EXPECT_DOUBLE_EQ(r1->acc, right / 11.0);
  EXPECT_DOUBLE_EQ(r1->acc_norm, right_norm / 11.0);
  EXPECT_NEAR(r1->acc_stderr, std::sqrt(r1->acc * (1 - r1->acc) / 10.0), 1e-12);
}

// Winogrande-style items: each choice's first `given` tokens are its own context; only the
// rest is scored, after the shared context and those tokens.
TEST(Choice, GivenTokensConditionButAreNotScored) {
  const std::string model = test::fixture("llama_gqa_llama3rope");
  EngineOptions eo;
  eo.max_seq_len = 32;
  eo.max_batch = 3;
  auto e = Engine::load(model, eo).take_or_throw();
  const int64_t V = e->config().vocab_size;
  auto items = random_items(7, V, 11);
  for (size_t k = 0; k < items.size(); ++k) {
    auto& it = items[k];
    for (auto& c : it.choices) {
      // Every other item gives some choices a context of their own (0..3 tokens).
      const int64_t g = k % 2 ? int64_t(c.size() % 4) : 0;
      for (int64_t t = 0; t < g; ++t) c.insert(c.begin(), int32_t((k * 7 + size_t(t)) % size_t(V)));
      it.given.push_back(g);
    }
  }
  auto r = runtime::score_choices(*e, items);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  for (size_t k = 0; k < items.size(); ++k) {
    for (size_t c = 0; c < items[k].choices.size(); ++c) {
      const auto& ch = items[k].choices[c];
      const long g = long(items[k].given[c]);
      std::vector<int32_t> ctx = items[k].context;
      ctx.insert(ctx.end(), ch.begin(), ch.begin() + g);
      const double want = loglik_by_hand(*e, ctx, std::vector<int32_t>(ch.begin() + g, ch.end()));
      EXPECT_NEAR(r->loglik[k][c], want, 1e-4) << "item " << k << " choice " << c;
    }
  }
  // A choice must keep a scored token.
  items[1].given[0] = int64_t(items[1].choices[0].size());
  auto bad = runtime::score_choices(*e, items);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("expected at least one scored token"), std::string::npos)
      << bad.status().message();
}

TEST(Choice, LongContextsAreCutFromTheLeftAndOverlongChoicesRefused) {
  const std::string model = test::fixture("llama_gqa_llama3rope");
  EngineOptions eo;
  eo.max_seq_len = 8;
  auto e = Engine::load(model, eo).take_or_throw();
  core::ChoiceItem it;
  it.context = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
  it.choices = {{20, 21, 22}, {30}};
  it.norm_length = {3, 1};
  auto r = runtime::score_choices(*e, {it});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->truncated, 1);
  const std::vector<int32_t> kept = {10, 11, 12, 13, 14};  // 8 - 3 positions remain
  EXPECT_NEAR(r->loglik[0][0], loglik_by_hand(*e, kept, it.choices[0]), 1e-4);
  EXPECT_NEAR(r->loglik[0][1], loglik_by_hand(*e, kept, it.choices[1]), 1e-4);
  it.choices[0].assign(8, 3);
  auto bad = runtime::score_choices(*e, {it});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("leaves no room for context"), std::string::npos)
      << bad.status().message();
}

TEST(Verify, TaskAccuracyOfBothModelsAndItsGate) {
  const std::string dir = test::temp_dir("verify_task");
  const std::string model = test::fixture("llama_gqa_llama3rope");
  std::vector<int32_t> toks;
  for (int i = 0; i < 40; ++i) toks.push_back((i * 31 + 3) % 300);
  {
    core::ShardWriter w(dir, "val", 300, "test");
    ASSERT_TRUE(w.append(toks.data(), toks.size()).is_ok());
    ASSERT_TRUE(w.finish().is_ok());
  }
  // 60 items of 8 one-token choices: near ties, so an int8 head changes some picks. The labels
  // are the reference's own picks, so its accuracy is 1 and every changed pick is a drop.
  std::mt19937_64 rng(9);
  std::vector<core::ChoiceItem> gen(60);
  for (auto& it : gen) {
    it.context = {int32_t(rng() % 300), int32_t(rng() % 300)};
    for (int c = 0; c < 8; ++c) {
      it.choices.push_back({int32_t(rng() % 300)});
      it.norm_length.push_back(1);
    }
  }
  EngineOptions geo;
  geo.max_seq_len = 16;
  auto picks =
      runtime::score_choices(*Engine::load(model, geo).take_or_throw(), gen).take_or_throw();
  const std::string task = dir + "/task.jsonl";
  {
    std::ofstream f(task);
    for (size_t k = 0; k < gen.size(); ++k) {
      f << "{\"context_ids\": [" << gen[k].context[0] << ", " << gen[k].context[1]
        << "], \"choices_ids\": [";
      for (int c = 0; c < 8; ++c)
        f << (c ? ", " : "") << "[" << gen[k].choices[size_t(c)][0] << "]";
      f << "], \"label\": " << picks.pred_norm[k] << "}\n";
    }
  }
  runtime::VerifyOptions o;
  o.source.data = dir;
  o.seq_len = 16;
  o.bench = false;
  o.task = task;
  auto same = runtime::verify(model, model, o);  // a model against itself
  ASSERT_TRUE(same.is_ok()) << same.status().message();
  ASSERT_TRUE(same->task.has_value());
  EXPECT_EQ(same->task->items, 60);
  EXPECT_EQ(same->task->agreement, 1.0);
  EXPECT_EQ(same->task->acc_norm_drop, 0.0);
  EXPECT_EQ(same->task->acc_norm_reference, 1.0);
  EXPECT_EQ(same->task->acc_norm_compact, 1.0);

  // The compact model: W8A8 with static activation scales. Its numbers are score_choices' on
  // each engine.
  const std::string q = test::temp_dir("verify_task_w8a8");
  core::QuantScheme qs;
  qs.activations = "static";
  test::quantize_dir(model, q, qs, 0.05f);
  auto r = runtime::verify(q, model, o);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  auto items = runtime::choice_task_for(model, "", task, 300).take_or_throw();
  EngineOptions eo;
  eo.max_seq_len = 64;
  auto ref = Engine::load(model, eo).take_or_throw();
  auto cmp = Engine::load(q, eo).take_or_throw();
  auto sr = runtime::score_choices(*ref, items).take_or_throw();
  auto sc = runtime::score_choices(*cmp, items).take_or_throw();
  EXPECT_DOUBLE_EQ(r->task->acc_norm_reference, sr.acc_norm);
  EXPECT_DOUBLE_EQ(r->task->acc_norm_compact, sc.acc_norm);
  double same_pick = 0;
  for (size_t k = 0; k < items.size(); ++k) same_pick += sr.pred_norm[k] == sc.pred_norm[k];
  EXPECT_DOUBLE_EQ(r->task->agreement, same_pick / 60.0);
  EXPECT_LT(r->task->agreement, 1.0);  // W8A8 does change picks here
  EXPECT_NEAR(r->task->acc_norm_drop, 1.0 - same_pick / 60.0, 1e-12);  // labels = ref's picks
  const double p = r->task->acc_norm_compact;  // paired differences are 0 or 1 here
  EXPECT_NEAR(r->task->acc_norm_drop_stderr, std::sqrt(p * (1 - p) / 59.0), 1e-12);
  EXPECT_EQ(r->to_json()["task"]["items"].get<int64_t>(), 60);

  // The gate: a ceiling below the measured drop fails; one above passes.
  o.max_acc_drop = r->task->acc_norm_drop - 1e-9;
  auto g = runtime::verify(q, model, o);
  ASSERT_TRUE(g.is_ok());
  EXPECT_FALSE(g->passed);
  EXPECT_NE(g->verdict.find("task accuracy drop"), std::string::npos) << g->verdict;
  o.max_acc_drop = r->task->acc_norm_drop + 0.01;
  EXPECT_TRUE(runtime::verify(q, model, o)->passed);
  o.task.clear();  // a task gate without a task is a usage error
  auto u = runtime::verify(q, model, o);
  ASSERT_FALSE(u.is_ok());
  EXPECT_EQ(u.status().code(), StatusCode::kInvalidInput);
}
