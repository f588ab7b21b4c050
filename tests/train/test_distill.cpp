// Distillation tests: the losses against hand-computed values, KL(p,p) = 0, that gradients reach
// only the student, student initialization from teacher layers (with shape errors), the
// hidden-state map, the teacher top-k cache, masks that stay zero, bitwise resume, and that a
// short distillation lowers the KD loss.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/fs.h"
#include "core/safetensors.h"
#include "train/api.h"
#include "train/distill.h"
#include "train/trainer.h"
#include "tests/train/util.h"

namespace fs = std::filesystem;
using namespace shrink;
using namespace shrink::train;

namespace {

// softmax(x / T) in double, written out.
std::vector<double> softmax_t(const std::vector<double>& x, double T) {
  double mx = -1e300, z = 0;
  for (double v : x) mx = std::max(mx, v / T);
  std::vector<double> p;
  for (double v : x) p.push_back(std::exp(v / T - mx));
  for (double v : p) z += v;
  for (double& v : p) v /= z;
  return p;
}

double kl(const std::vector<double>& p, const std::vector<double>& q) {
  double s = 0;
  for (size_t i = 0; i < p.size(); ++i) s += p[i] * std::log(p[i] / q[i]);
  return s;
}

torch::Tensor rows(const std::vector<std::vector<double>>& r) {
  auto t = torch::empty({int64_t(r.size()), int64_t(r[0].size())}, torch::kFloat32);
  for (size_t i = 0; i < r.size(); ++i) {
    for (size_t j = 0; j < r[i].size(); ++j) t[int64_t(i)][int64_t(j)] = float(r[i][j]);
  }
  return t;
}

// A 4-layer micro teacher trained briefly on the pattern data (so it has something to teach).
struct Fixture {
  std::string dir;
  std::string teacher;
};
Fixture make_teacher(const std::string& name) {
  Fixture f;
  f.dir = test::temp_dir(name);
  test::make_inputs(f.dir);
  core::ModelConfig c = test::micro_config(64);
  c.num_layers = 4;
  EXPECT_TRUE(core::write_file_atomic(f.dir + "/teacher.json", core::config_to_json(c)).is_ok());
  TrainOptions o = test::short_run(f.dir, f.dir + "/teacher_run", /*steps=*/40, /*warmup=*/3,
                                   /*every=*/0, /*seed=*/3);
  o.config = f.dir + "/teacher.json";
  train_run(o);
  f.teacher = f.dir + "/teacher_run/model";
  return f;
}

TrainOptions distill_opts(const Fixture& f, const std::string& out) {
  TrainOptions o =
      test::short_run(f.dir, out, /*steps=*/8, /*warmup=*/2, /*every=*/4, /*seed=*/11);
  o.teacher = f.teacher;
  o.grad_accum = 2;
  o.log_every = 1;
  o.temperature = 2.0;
  return o;
}

}  // namespace

TEST(DistillLoss, ForwardAndReverseKlMatchHandComputedValues) {
  // p_t = (3/4, 1/4) and p_s = (1/2, 1/2) at T = 1:
  //   KL(t||s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120...
  //   KL(s||t) = 1/2 ln(2/3) + 1/2 ln(2)   = 0.1438410...
  auto t = rows({{std::log(3.0), 0.0}});
  auto s = rows({{0.0, 0.0}});
  EXPECT_NEAR(kd_forward_kl(s, t, 1.0).item<double>(), 0.75 * std::log(1.5) + 0.25 * std::log(0.5), 1e-6);
  EXPECT_NEAR(kd_forward_kl(s, t, 1.0).item<double>(), 0.1308120, 1e-6);
  EXPECT_NEAR(kd_reverse_kl(s, t, 1.0).item<double>(), 0.1438410, 1e-6);
  // Several positions, V = 4, T = 2: the mean over positions of T^2 * KL at softened logits.
  std::vector<std::vector<double>> sl = {{0.5, -1.0, 2.0, 0.1}, {3.0, 0.0, -2.0, 1.0}, {0, 0, 0, 0}};
  std::vector<std::vector<double>> tl = {{1.5, -0.5, 0.0, 0.3}, {0.0, 2.0, -1.0, 1.0}, {4, 0, 0, 1}};
  double fwd = 0, rev = 0;
  for (size_t i = 0; i < sl.size(); ++i) {
    fwd += 4.0 * kl(softmax_t(tl[i], 2.0), softmax_t(sl[i], 2.0)) / 3.0;
    rev += 4.0 * kl(softmax_t(sl[i], 2.0), softmax_t(tl[i], 2.0)) / 3.0;
  }
  // Also through a [B, T, V] shape, as the trainer passes them.
  auto S = rows(sl).reshape({1, 3, 4}), T = rows(tl).reshape({1, 3, 4});
  EXPECT_NEAR(kd_forward_kl(S, T, 2.0).item<double>(), fwd, 1e-5);
  EXPECT_NEAR(kd_reverse_kl(S, T, 2.0).item<double>(), rev, 1e-5);
}

TEST(DistillLoss, KlOfADistributionWithItselfIsZero) {
  torch::manual_seed(0);
  auto x = torch::randn({2, 5, 50}) * 3;
  for (double T : {0.5, 1.0, 4.0}) {
    EXPECT_NEAR(kd_forward_kl(x, x, T).item<double>(), 0.0, 1e-6);
    EXPECT_NEAR(kd_reverse_kl(x, x, T).item<double>(), 0.0, 1e-6);
    EXPECT_GT(kd_forward_kl(x, x.flip(-1), T).item<double>(), 1e-3);
  }
  // Top-k over the whole vocabulary is the full forward KL.
  auto [vals, ids] = x.topk(50, -1);
  EXPECT_NEAR(kd_topk_forward_kl(x, ids, vals, 2.0).item<double>(), 0.0, 1e-5);
  auto y = torch::randn({2, 5, 50});
  EXPECT_NEAR(kd_topk_forward_kl(y, ids, vals, 2.0).item<double>(),
              kd_forward_kl(y, x, 2.0).item<double>(), 1e-4);
}

TEST(DistillLoss, TopkKlMatchesHandComputedValue) {
  // Teacher logits (ln 6, ln 3, ln 1, -inf-ish): top-2 = ids 0, 1 with renormalized (2/3, 1/3).
  // Student uniform over 4: log p_s = ln(1/4) at each id.
  // KL = 2/3 ln((2/3)/(1/4)) + 1/3 ln((1/3)/(1/4)) = 2/3 ln(8/3) + 1/3 ln(4/3).
  auto t = rows({{std::log(6.0), std::log(3.0), 0.0, -30.0}});
  auto s = rows({{0.0, 0.0, 0.0, 0.0}});
  auto [vals, ids] = t.topk(2, -1);
  double want = 2.0 / 3.0 * std::log(8.0 / 3.0) + 1.0 / 3.0 * std::log(4.0 / 3.0);
  EXPECT_NEAR(kd_topk_forward_kl(s, ids, vals, 1.0).item<double>(), want, 1e-6);
}

TEST(DistillLoss, HiddenLossesMatchHandComputedValues) {
  auto a = rows({{1, 0}, {0, 2}});
  auto b = rows({{0, 1}, {0, 4}});
  // MSE over elements: (1 + 1 + 0 + 4) / 4 = 1.5. Cosine: row 1 orthogonal (1), row 2 same
  // direction (0): mean 0.5.
  EXPECT_NEAR(hidden_mse(a, b).item<double>(), 1.5, 1e-6);
  EXPECT_NEAR(hidden_cosine(a, b).item<double>(), 0.5, 1e-6);
  EXPECT_NEAR(hidden_cosine(a, a * 3).item<double>(), 0.0, 1e-6);
}

TEST(Distill, GradientsReachOnlyTheStudent) {
  core::ModelConfig c = test::micro_config(64);
  c.num_layers = 4;
  CausalLM teacher = model_create(c, 1);
  teacher->eval();
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);
  CausalLM student = student_from_layers(teacher, {0, 3});
  HiddenProjection proj(2, 32, 32);
  auto ids = torch::randint(0, 64, {2, 16}, torch::kLong);
  ForwardOutput so = student->forward(ids, true), to;
  {
    torch::NoGradGuard ng;
    to = teacher->forward(ids, true);
  }
  auto loss = kd_forward_kl(so.logits, to.logits, 2.0) +
              hidden_mse(proj->forward(0, so.hidden_states[1]), to.hidden_states[4]);
  loss.backward();
  for (auto& p : teacher->named_parameters()) EXPECT_FALSE(p.value().grad().defined()) << p.key();
  int nonzero = 0;
  for (auto& p : student->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    nonzero += p.value().grad().abs().sum().item<double>() > 0;
  }
  EXPECT_EQ(nonzero, int(student->parameters().size()));
  EXPECT_TRUE(proj->identity());  // equal widths: no projection parameters
  EXPECT_TRUE(proj->parameters().empty());
}

TEST(Distill, StudentFromLayersCopiesTheChosenLayers) {
  core::ModelConfig c = test::micro_config(64);
  c.num_layers = 4;
  CausalLM teacher = model_create(c, 2);
  CausalLM all = student_from_layers(teacher, {0, 1, 2, 3});
  auto ids = torch::randint(0, 64, {1, 12}, torch::kLong);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(all->forward(ids).logits, teacher->forward(ids).logits));
  CausalLM half = student_from_layers(teacher, parse_layer_list("::2", 4));
  EXPECT_EQ(half->config().num_layers, 2);
  auto tp = teacher->named_parameters();
  auto sp = half->named_parameters();
  EXPECT_TRUE(torch::equal(*sp.find("model.layers.1.mlp.up_proj.weight"),
                           *tp.find("model.layers.2.mlp.up_proj.weight")));
  EXPECT_TRUE(torch::equal(*sp.find("model.norm.weight"), *tp.find("model.norm.weight")));
  // Copies, not views: training the student leaves the teacher alone.
  sp.find("model.layers.1.mlp.up_proj.weight")->add_(1.0);
  EXPECT_FALSE(torch::equal(*sp.find("model.layers.1.mlp.up_proj.weight"),
                            *tp.find("model.layers.2.mlp.up_proj.weight")));
  // Shapes and indices are checked with clear messages.
  for (auto bad : std::vector<std::vector<int64_t>>{{0, 4}, {2, 1}, {}}) {
    try {
      student_from_layers(teacher, bad);
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidInput) << e.what();
    }
  }
  try {
    parse_layer_list("0,x", 4);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'x' is not an integer"), std::string::npos);
  }
  EXPECT_EQ(parse_layer_list("0-2,5", 8), (std::vector<int64_t>{0, 1, 2, 5}));
}

TEST(Distill, HiddenLayerMap) {
  using P = std::vector<std::pair<int64_t, int64_t>>;
  // Layers {0,2,4,6} of 8: student output i is teacher layer keep[i-1]'s output; finals pair.
  EXPECT_EQ(hidden_layer_map("", 4, 8, {0, 2, 4, 6}), (P{{1, 1}, {2, 3}, {3, 5}, {4, 8}}));
  EXPECT_EQ(hidden_layer_map("", 2, 8, {}), (P{{1, 4}, {2, 8}}));
  EXPECT_EQ(hidden_layer_map("1:2,2:8", 2, 8, {}), (P{{1, 2}, {2, 8}}));
  EXPECT_THROW(hidden_layer_map("1:9", 2, 8, {}), Error);
  EXPECT_THROW(hidden_layer_map("12", 2, 8, {}), Error);
}

TEST(Distill, ShortRunLowersTheKdLossAndKeepsTheTeacherIntact) {
  env_init(1);
  Fixture f = make_teacher("kd50");
  std::string before = core::read_file(f.teacher + "/model.safetensors").take_or_throw();
  TrainOptions o = distill_opts(f, f.dir + "/s");
  o.student_layers = "0,3";
  o.steps = 50;
  o.eval_every = 25;
  o.alpha = 1.0;
  TrainResult r = distill_run(o);
  auto kd = test::metric_series(f.dir + "/s/metrics.jsonl", {"kd"});
  ASSERT_EQ(kd.size(), 50u);
  double first = (kd[0].second + kd[1].second + kd[2].second) / 3;
  double last = (kd[47].second + kd[48].second + kd[49].second) / 3;
  EXPECT_LT(last, 0.7 * first) << "first " << first << " last " << last;
  EXPECT_GT(r.val_kl, 0.0);
  EXPECT_TRUE(fs::exists(f.dir + "/s/distill.json"));
  EXPECT_EQ(core::config_load(f.dir + "/s/model").take_or_throw().num_layers, 2);
  EXPECT_EQ(before, core::read_file(f.teacher + "/model.safetensors").take_or_throw());
  fs::remove_all(f.dir);
}

TEST(Distill, StoppedAndResumedRunIsBitwiseIdenticalWithProjection) {
  env_init(1);
  Fixture f = make_teacher("kdresume");
  // A narrower student from a config: the hidden loss goes through learned projections, whose
  // state must survive the restart too. The projections never enter the student's files.
  core::ModelConfig c = test::micro_config(64);
  c.hidden_size = 16;
  c.head_dim = 4;
  ASSERT_TRUE(core::write_file_atomic(f.dir + "/student.json", core::config_to_json(c)).is_ok());
  TrainOptions a = distill_opts(f, f.dir + "/a");
  a.config = f.dir + "/student.json";
  a.hidden_loss = "mse";
  a.alpha = 0.5;
  distill_run(a);
  TrainOptions b = a;
  b.out = f.dir + "/b";
  b.stop_after = 4;
  distill_run(b);
  EXPECT_TRUE(fs::exists(f.dir + "/b/checkpoint/projection.pt"));
  b.stop_after = 0;
  b.resume = true;
  distill_run(b);
  test::expect_same_weights(f.dir + "/a/model", f.dir + "/b/model");
  EXPECT_EQ(test::metric_series(f.dir + "/a/metrics.jsonl", {"loss"}),
            test::metric_series(f.dir + "/b/metrics.jsonl", {"loss"}));
  auto names = core::Checkpoint::open(f.dir + "/a/model").take_or_throw().names();
  for (const auto& n : names) EXPECT_EQ(n.find("proj.maps"), std::string::npos) << n;
  EXPECT_EQ(names.size(), core::expected_tensors(c).size());
  fs::remove_all(f.dir);
}

TEST(Distill, MaskedWeightsStayExactlyZero) {
  env_init(1);
  Fixture f = make_teacher("kdmask");
  // A "pruned" student: the teacher with half of each layer matrix zeroed (every other element).
  CausalLM s = model_load(f.teacher);
  int64_t zeros = 0;
  {
    torch::NoGradGuard ng;
    for (auto& p : s->named_parameters()) {
      if (p.value().dim() == 2 && p.key().rfind("model.layers.", 0) == 0) {
        auto flat = p.value().view({-1});
        flat.index_put_({torch::indexing::Slice(0, torch::indexing::None, 2)}, 0.0);
        zeros += (flat.numel() + 1) / 2;
      }
    }
  }
  model_save(s, f.dir + "/pruned");
  TrainOptions o = distill_opts(f, f.dir + "/m");
  o.model = f.dir + "/pruned";
  o.steps = 10;
  o.weight_decay = 0.1;
  TrainResult r = distill_run(o);
  EXPECT_NEAR(r.student_sparsity, 0.5, 0.01);
  CausalLM out = model_load(f.dir + "/m/model");
  CausalLM start = model_load(f.dir + "/pruned");
  int64_t still_zero = 0, changed = 0;
  auto sp = start->named_parameters();
  for (auto& p : out->named_parameters()) {
    if (p.value().dim() != 2 || p.key().rfind("model.layers.", 0) != 0) continue;
    auto was_zero = *sp.find(p.key()) == 0;
    still_zero += (p.value() == 0).logical_and(was_zero).sum().item<int64_t>();
    changed += (p.value() != *sp.find(p.key())).logical_and(was_zero.logical_not()).sum().item<int64_t>();
  }
  EXPECT_EQ(still_zero, zeros);
  EXPECT_GT(changed, zeros / 2);  // the unmasked weights did train
  fs::remove_all(f.dir);
}

TEST(Distill, TeacherTopkCacheIsBuiltOnceAndMatchesTheTeacher) {
  env_init(1);
  Fixture f = make_teacher("kdcache");
  TrainOptions o = distill_opts(f, f.dir + "/c1");
  o.student_layers = "::2";
  o.teacher_cache = f.dir + "/cache";
  o.cache_topk = 8;
  TrainResult r1 = distill_run(o);
  EXPECT_GT(r1.cache_build_seconds, 0.0);
  // 20000 tokens -> 624 windows of 32; 8 x (2 + 2) bytes per token.
  EXPECT_EQ(r1.cache_bytes, uint64_t(624) * 32 * 8 * 4);
  o.out = f.dir + "/c2";
  TrainResult r2 = distill_run(o);
  EXPECT_EQ(r2.cache_build_seconds, 0.0);  // reused
  test::expect_same_weights(f.dir + "/c1/model", f.dir + "/c2/model");
  // The cached entries are the teacher's top-k logits (to float16 rounding).
  CausalLM teacher = model_load(f.teacher);
  core::TokenDataset ds = core::TokenDataset::open(f.dir + "/data", core::Split::kTrain).take_or_throw();
  TeacherCache c = TeacherCache::open_or_build(f.dir + "/cache", teacher, f.teacher, ds, "other",
                                               32, 8, false);
  EXPECT_TRUE(c.built_now());  // a different data key rebuilds
  auto [ids, vals] = c.lookup({5});
  std::vector<int32_t> tok(32);
  ds.read(5 * 32, 32, tok.data());
  torch::NoGradGuard ng;
  auto logits = teacher->forward(torch::from_blob(tok.data(), {1, 32}, torch::kInt32).to(torch::kLong)).logits;
  auto [tv, ti] = logits.topk(8, -1);
  EXPECT_TRUE(torch::equal(ids, ti));
  EXPECT_TRUE(torch::allclose(vals, tv, 1e-3, 1e-2));
  // Options that need the full teacher are refused with the cache.
  o.kd_loss = "reverse";
  EXPECT_THROW(distill_run(o), Error);
  fs::remove_all(f.dir);
}

TEST(Distill, StudentMustShareTheVocabulary) {
  env_init(1);
  Fixture f = make_teacher("kdvocab");
  core::ModelConfig c = test::micro_config(80);
  ASSERT_TRUE(core::write_file_atomic(f.dir + "/s.json", core::config_to_json(c)).is_ok());
  TrainOptions o = distill_opts(f, f.dir + "/v");
  o.config = f.dir + "/s.json";
  try {
    distill_run(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("vocab_size is 80 but the teacher's is 64"), std::string::npos);
  }
  fs::remove_all(f.dir);
}
