// Tests of the LibTorch Llama-family model:
//  - against a naive per-op reference written here with plain loops (MHA, GQA, MQA, tied and
//    untied heads, with and without q/k/v bias, sliding window), batched packed sequences;
//  - against reference outputs produced by Hugging Face transformers on checkpoints it wrote
//    (tests/fixtures/hf, made by scripts/hf_reference.py): logits, hidden states, greedy ids;
//  - against the real pretrained stories260K checkpoint in ../shared (skipped when absent);
//  - KV-cache decoding equals a full forward; save/load round trips bit-exactly; load errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/fs.h"
#include "core/safetensors.h"
#include "train/api.h"
#include "train/model.h"
#include "train/streamed.h"

namespace fs = std::filesystem;
using namespace shrink;
using shrink::core::ModelConfig;

namespace {

ModelConfig small_config(int64_t heads, int64_t kv, bool tied, bool bias) {
  ModelConfig c;
  c.arch = bias ? core::Arch::kQwen2 : core::Arch::kLlama;
  c.vocab_size = 37;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.num_layers = 2;
  c.num_heads = heads;
  c.num_kv_heads = kv;
  c.head_dim = 24 / heads;
  c.max_position_embeddings = 64;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.qkv_bias = bias;
  c.tie_word_embeddings = tied;
  return c;
}

std::vector<float> to_vec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Plain-loop reference forward of one sequence; returns logits [T*V].
std::vector<float> naive_forward(train::CausalLM& m, const std::vector<int64_t>& ids) {
  const ModelConfig& c = m->config();
  auto P = m->named_parameters();
  auto W = [&](const std::string& n) { return to_vec(*P.find(n)); };
  const int64_t T = int64_t(ids.size()), H = c.hidden_size, D = c.head_dim, NH = c.num_heads,
                KV = c.num_kv_heads, I = c.intermediate_size, V = c.vocab_size;
  auto linear = [](const std::vector<float>& w, const std::vector<float>* b,
                   const std::vector<float>& x, int64_t in, int64_t out) {
    std::vector<float> y(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o) {
      double s = b ? (*b)[size_t(o)] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += double(w[size_t(o * in + i)]) * x[size_t(i)];
      y[size_t(o)] = float(s);
    }
    return y;
  };
  auto rmsnorm = [&](const std::vector<float>& x, const std::vector<float>& w) {
    double ss = 0;
    for (float v : x) ss += double(v) * v;
    double r = 1.0 / std::sqrt(ss / double(x.size()) + c.rms_norm_eps);
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = float(x[i] * r) * w[i];
    return y;
  };
  auto rope = [&](std::vector<float>& v, int64_t heads, int64_t pos) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < D / 2; ++i) {
        double f = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(D));
        if (c.rope_scaling.type == core::RopeType::kLinear) f /= c.rope_scaling.factor;
        double a = double(pos) * f;
        float x1 = v[size_t(h * D + i)], x2 = v[size_t(h * D + i + D / 2)];
        v[size_t(h * D + i)] = float(x1 * std::cos(a) - x2 * std::sin(a));
        v[size_t(h * D + i + D / 2)] = float(x2 * std::cos(a) + x1 * std::sin(a));
      }
    }
  };
  std::vector<float> emb = W("model.embed_tokens.weight");
  std::vector<std::vector<float>> x(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) {
    x[size_t(t)].assign(emb.begin() + ids[size_t(t)] * H, emb.begin() + (ids[size_t(t)] + 1) * H);
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    auto wq = W(p + "self_attn.q_proj.weight"), wk = W(p + "self_attn.k_proj.weight"),
         wv = W(p + "self_attn.v_proj.weight"), wo = W(p + "self_attn.o_proj.weight");
    std::vector<float> bq, bk, bv;
    if (c.qkv_bias) {
      bq = W(p + "self_attn.q_proj.bias");
      bk = W(p + "self_attn.k_proj.bias");
      bv = W(p + "self_attn.v_proj.bias");
    }
    auto n1 = W(p + "input_layernorm.weight"), n2 = W(p + "post_attention_layernorm.weight");
    std::vector<std::vector<float>> q(static_cast<size_t>(T)), k(q), v(q);
    for (int64_t t = 0; t < T; ++t) {
      auto xn = rmsnorm(x[size_t(t)], n1);
      q[size_t(t)] = linear(wq, c.qkv_bias ? &bq : nullptr, xn, H, NH * D);
      k[size_t(t)] = linear(wk, c.qkv_bias ? &bk : nullptr, xn, H, KV * D);
      v[size_t(t)] = linear(wv, c.qkv_bias ? &bv : nullptr, xn, H, KV * D);
      rope(q[size_t(t)], NH, t);
      rope(k[size_t(t)], KV, t);
    }
    for (int64_t t = 0; t < T; ++t) {
      std::vector<float> att(static_cast<size_t>(NH * D), 0.0f);
      for (int64_t h = 0; h < NH; ++h) {
        int64_t kh = h / (NH / KV);
        std::vector<double> s;
        std::vector<int64_t> js;
        for (int64_t j = 0; j <= t; ++j) {
          if (c.sliding_window && t - j >= *c.sliding_window) continue;
          double d = 0;
          for (int64_t i = 0; i < D; ++i) {
            d += double(q[size_t(t)][size_t(h * D + i)]) * k[size_t(j)][size_t(kh * D + i)];
          }
          s.push_back(d / std::sqrt(double(D)));
          js.push_back(j);
        }
        double mx = *std::max_element(s.begin(), s.end()), z = 0;
        for (double& e : s) z += (e = std::exp(e - mx));
        for (size_t a = 0; a < s.size(); ++a) {
          for (int64_t i = 0; i < D; ++i) {
            att[size_t(h * D + i)] += float(s[a] / z * v[size_t(js[a])][size_t(kh * D + i)]);
          }
        }
      }
      auto o = linear(wo, nullptr, att, NH * D, H);
      for (int64_t i = 0; i < H; ++i) x[size_t(t)][size_t(i)] += o[size_t(i)];
      auto xn = rmsnorm(x[size_t(t)], n2);
      auto g = linear(W(p + "mlp.gate_proj.weight"), nullptr, xn, H, I);
      auto u = linear(W(p + "mlp.up_proj.weight"), nullptr, xn, H, I);
      for (int64_t i = 0; i < I; ++i) {
        float gi = g[size_t(i)];
        g[size_t(i)] = gi / (1.0f + std::exp(-gi)) * u[size_t(i)];
      }
      auto d = linear(W(p + "mlp.down_proj.weight"), nullptr, g, I, H);
      for (int64_t i = 0; i < H; ++i) x[size_t(t)][size_t(i)] += d[size_t(i)];
    }
  }
  auto head = c.tie_word_embeddings ? emb : W("lm_head.weight");
  auto nf = W("model.norm.weight");
  std::vector<float> logits;
  for (int64_t t = 0; t < T; ++t) {
    auto y = linear(head, nullptr, rmsnorm(x[size_t(t)], nf), H, V);
    logits.insert(logits.end(), y.begin(), y.end());
  }
  return logits;
}

void expect_close(const std::vector<float>& a, const std::vector<float>& b, float atol,
                  const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  float worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    float d = std::fabs(a[i] - b[i]);
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  EXPECT_LE(worst, atol) << what << ": worst |diff| at " << at << ": " << a[at] << " vs " << b[at];
}

struct Case {
  const char* name;
  int64_t heads, kv;
  bool tied, bias;
  int64_t window;
};

}  // namespace

class ModelVsNaive : public ::testing::TestWithParam<Case> {};

TEST_P(ModelVsNaive, LogitsMatchPerOpReference) {
  const Case& k = GetParam();
  ModelConfig c = small_config(k.heads, k.kv, k.tied, k.bias);
  if (k.window) {
    c.arch = core::Arch::kMistral;
    c.sliding_window = k.window;
  }
  train::CausalLM m = train::model_create(c, 7);
  {
    // Spread the weights so the comparison is sensitive (init std 0.02 gives near-flat logits).
    torch::NoGradGuard ng;
    torch::manual_seed(3);
    for (auto& p : m->parameters()) p.add_(torch::randn_like(p) * 0.2);
  }
  m->eval();
  torch::NoGradGuard ng;
  // A packed batch of two sequences of 11 tokens.
  std::vector<std::vector<int64_t>> seqs = {{1, 5, 9, 2, 33, 17, 0, 36, 4, 4, 12},
                                            {30, 2, 2, 8, 19, 11, 25, 3, 7, 21, 6}};
  auto ids = torch::tensor(std::vector<int64_t>(seqs[0].begin(), seqs[0].end()));
  ids = torch::stack({ids, torch::tensor(seqs[1])});
  auto out = m->forward(ids);
  ASSERT_EQ(out.logits.sizes(), (std::vector<int64_t>{2, 11, c.vocab_size}));
  for (int b = 0; b < 2; ++b) {
    // Tolerance: float32 matmuls vs. double accumulation over <= 40-term sums: ~1e-5 relative;
    // logits here are O(1-10).
    expect_close(to_vec(out.logits[b]), naive_forward(m, seqs[size_t(b)]), 2e-4f, k.name);
  }
  // Attention a query at a time (the no-grad path that calibration over long sequences takes)
  // against the same reference: each block reads only the keys up to its last query.
  for (size_t i = 0; i < m->model->layers->size(); ++i)
    m->model->layers->ptr<train::DecoderLayerImpl>(i)->self_attn->score_block_bytes = 1;
  auto blocked = m->forward(ids);
  for (int b = 0; b < 2; ++b)
    expect_close(to_vec(blocked.logits[b]), naive_forward(m, seqs[size_t(b)]), 2e-4f,
                 std::string(k.name) + " (query blocks of 1)");
}

INSTANTIATE_TEST_SUITE_P(
    Attention, ModelVsNaive,
    ::testing::Values(Case{"mha_untied", 4, 4, false, false, 0},
                      Case{"gqa_tied", 4, 2, true, false, 0},
                      Case{"mqa_untied", 4, 1, false, false, 0},
                      Case{"gqa_bias_tied", 6, 3, true, true, 0},
                      Case{"mha_bias_untied", 2, 2, false, true, 0},
                      Case{"gqa_sliding_window", 4, 2, false, false, 4}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(Model, HiddenStatesFollowHfConvention) {
  train::CausalLM m = train::model_create(small_config(4, 2, true, false), 1);
  torch::NoGradGuard ng;
  auto out = m->forward(torch::tensor({{1, 2, 3}}), /*want_hidden=*/true);
  ASSERT_EQ(out.hidden_states.size(), 3u);  // embeddings, layer 0 output, final normed
  EXPECT_TRUE(torch::equal(out.hidden_states[0], m->model->embed_tokens(torch::tensor({{1, 2, 3}}))));
}

TEST(Model, KvCacheDecodeEqualsFullForward) {
  train::CausalLM m = train::model_create(small_config(4, 2, false, true), 5);
  m->eval();
  torch::NoGradGuard ng;
  auto ids = torch::tensor({{3, 1, 4, 1, 5, 9, 2, 6, 5, 3}});
  auto full = m->forward(ids).logits;
  train::KVCache cache;
  auto first = m->forward(ids.narrow(1, 0, 4), false, &cache).logits;
  std::vector<torch::Tensor> parts = {first};
  for (int t = 4; t < 10; ++t) parts.push_back(m->forward(ids.narrow(1, t, 1), false, &cache).logits);
  auto inc = torch::cat(parts, 1);
  EXPECT_EQ(cache.length, 10);
  EXPECT_LT((inc - full).abs().max().item<float>(), 1e-5f);
  // A prefill after a cached prefix, in query blocks of 2 (3 key lengths: 6, 8, 10 of 10).
  for (size_t i = 0; i < m->model->layers->size(); ++i)
    m->model->layers->ptr<train::DecoderLayerImpl>(i)->self_attn->score_block_bytes =
        2 * 4 * 10 * int64_t(sizeof(float));  // 2 query rows of 4 heads x 10 keys
  train::KVCache blocked_cache;
  auto head = m->forward(ids.narrow(1, 0, 4), false, &blocked_cache).logits;
  auto tail = m->forward(ids.narrow(1, 4, 6), false, &blocked_cache).logits;
  EXPECT_LT((torch::cat({head, tail}, 1) - full).abs().max().item<float>(), 1e-5f);
}

TEST(Model, CreateIsDeterministicForASeed) {
  auto a = train::model_create(small_config(4, 2, true, false), 42);
  auto b = train::model_create(small_config(4, 2, true, false), 42);
  auto c = train::model_create(small_config(4, 2, true, false), 43);
  auto pa = a->parameters(), pb = b->parameters(), pc = c->parameters();
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(torch::equal(pa[i], pb[i]));
  EXPECT_FALSE(torch::equal(pa[1], pc[1]));
}

// ---- Hugging Face fixtures --------------------------------------------------------------------

namespace {

struct Reference {
  std::unique_ptr<core::SafetensorsFile> file;
  std::vector<float> f32(const std::string& name) const {
    const core::TensorInfo* t = file->find(name);
    EXPECT_NE(t, nullptr) << name;
    std::vector<float> v(size_t(t->numel()));
    core::convert_to_f32(t->dtype, file->data(*t), v.data(), t->numel());
    return v;
  }
  std::vector<int64_t> ids(const std::string& name) const {
    auto v = f32(name);
    return std::vector<int64_t>(v.begin(), v.end());
  }
  std::vector<int64_t> shape(const std::string& name) const { return file->find(name)->shape; }
};

Reference load_reference(const std::string& dir) {
  return Reference{core::SafetensorsFile::open(dir + "/reference.safetensors").take_or_throw()};
}

}  // namespace

class HfFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(HfFixture, LogitsHiddenStatesAndGreedyMatchTransformers) {
  std::string dir = std::string(SHRINK_FIXTURES_DIR) + "/hf/" + GetParam();
  train::CausalLM m = train::model_load(dir);
  m->eval();
  Reference ref = load_reference(dir);
  auto shape = ref.shape("input_ids");
  auto ids = torch::tensor(ref.ids("input_ids")).view({shape[0], shape[1]});
  torch::NoGradGuard ng;
  auto out = m->forward(ids, /*want_hidden=*/true);
  // Tolerance: transformers and shrink both compute in float32 but in different op orders
  // (fused vs. separate matmuls); logits here are O(1), differences are ~1e-6.
  expect_close(to_vec(out.logits), ref.f32("logits"), 2e-4f, std::string(GetParam()) + " logits");
  auto hs = ref.f32("hidden_states");
  auto hshape = ref.shape("hidden_states");
  ASSERT_EQ(int64_t(out.hidden_states.size()), hshape[0]);
  const size_t per = hs.size() / size_t(hshape[0]);
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    std::vector<float> want(hs.begin() + long(i * per), hs.begin() + long((i + 1) * per));
    expect_close(to_vec(out.hidden_states[i]), want, 2e-4f,
                 std::string(GetParam()) + " hidden_states[" + std::to_string(i) + "]");
  }
  // Greedy continuation, token for token.
  train::GenerateOptions g;
  for (int64_t id : ref.ids("greedy_prompt")) g.prompt_ids.push_back(int32_t(id));
  auto want = ref.ids("greedy_ids");
  g.max_new_tokens = int64_t(want.size() - g.prompt_ids.size());
  g.stop_at_eos = false;
  train::GenerateResult r = train::generate(dir, g);
  EXPECT_EQ(std::vector<int64_t>(r.ids.begin(), r.ids.end()), want);
}

// The layer-by-layer evaluation (train/streamed.h, what `shrink eval` runs) against the NLL of
// transformers' own logits for each input row: log-sum-exp minus the next token's logit, summed
// over the row's predictions. lm_head blocks of 5 rows make the vocabulary split unevenly.
TEST_P(HfFixture, StreamedNllMatchesTransformersLogits) {
  std::string dir = std::string(SHRINK_FIXTURES_DIR) + "/hf/" + GetParam();
  Reference ref = load_reference(dir);
  const auto shape = ref.shape("input_ids");
  const std::vector<int64_t> ids = ref.ids("input_ids");
  const std::vector<float> logits = ref.f32("logits");
  const int64_t B = shape[0], T = shape[1], V = int64_t(logits.size()) / (B * T);
  ASSERT_GE(T, 2);
  for (int64_t b = 0; b < B; ++b) {
    double want = 0;
    for (int64_t t = 0; t + 1 < T; ++t) {
      const float* l = logits.data() + (b * T + t) * V;
      double mx = l[0], sum = 0;
      for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(l[v]));
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(l[v]) - mx);
      want += mx + std::log(sum) - double(l[ids[size_t(b * T + t + 1)]]);
    }
    std::vector<int32_t> row(ids.begin() + b * T, ids.begin() + (b + 1) * T);
    train::StreamedEvalOptions o;
    o.seq_len = T;
    o.batch = 1;
    o.head_block = 5;
    const train::StreamedEval got = train::nll_streamed(dir, row.data(), row.size(), o);
    EXPECT_EQ(got.scored, uint64_t(T - 1));
    EXPECT_NEAR(got.nll_sum, want, 1e-5 * std::abs(want) + 1e-5) << GetParam() << " row " << b;
    EXPECT_GT(want, 0.1) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Transformers, HfFixture,
                         ::testing::Values("llama_gqa_llama3rope", "qwen2_bias_tied_bf16",
                                           "mistral_mqa_linearrope", "llama_mha_sharded_f16"));

TEST(Stories260K, PretrainedCheckpointMatchesTransformers) {
  std::string dir = std::string(SHRINK_SHARED_DIR) + "/models/stories260K";
  if (!fs::exists(dir + "/model.safetensors")) {
    GTEST_SKIP() << dir << " is not present (a clone without ../shared): not tested here";
  }
  train::CausalLM m = train::model_load(dir);
  m->eval();
  Reference ref = load_reference(std::string(SHRINK_FIXTURES_DIR) + "/hf/stories260K");
  auto shape = ref.shape("input_ids");
  auto ids = torch::tensor(ref.ids("input_ids")).view({shape[0], shape[1]});
  torch::NoGradGuard ng;
  auto logits = m->forward(ids).logits;
  expect_close(to_vec(logits), ref.f32("logits"), 5e-4f, "stories260K logits");
  train::GenerateOptions g;
  for (int64_t id : ref.ids("greedy_prompt")) g.prompt_ids.push_back(int32_t(id));
  auto want = ref.ids("greedy_ids");
  g.max_new_tokens = int64_t(want.size() - g.prompt_ids.size());
  g.stop_at_eos = false;
  train::GenerateResult r = train::generate(dir, g);
  EXPECT_EQ(std::vector<int64_t>(r.ids.begin(), r.ids.end()), want);
}

// ---- save / load ------------------------------------------------------------------------------

namespace {
std::string temp_dir(const std::string& name) {
  auto p = fs::path(::testing::TempDir()) / ("shrink_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  return p.string();
}
}  // namespace

TEST(ModelSave, RoundTripIsBitExactForEveryTensor) {
  // F16 checkpoint written by transformers -> load (to f32) -> save as F16 -> same bytes.
  std::string src = std::string(SHRINK_FIXTURES_DIR) + "/hf/llama_mha_sharded_f16";
  std::string dst = temp_dir("roundtrip");
  train::CausalLM m = train::model_load(src);
  train::SaveOptions so;
  so.max_shard_bytes = 60000;
  train::model_save(m, dst, so);
  auto a = core::Checkpoint::open(src).take_or_throw();
  auto b = core::Checkpoint::open(dst).take_or_throw();
  EXPECT_GT(b.num_files(), 1u);
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    const core::TensorInfo* ta = a.find(n);
    const core::TensorInfo* tb = b.find(n);
    ASSERT_EQ(ta->dtype, tb->dtype) << n;
    ASSERT_EQ(ta->shape, tb->shape) << n;
    EXPECT_EQ(0, std::memcmp(a.data(*ta), b.data(*tb), ta->nbytes)) << n;
  }
  EXPECT_FALSE(fs::exists(dst + ".tmp"));
  fs::remove_all(dst);
}

TEST(ModelLoad, MissingAndMisShapedTensorsAreNamed) {
  std::string dir = temp_dir("badckpt");
  train::CausalLM m = train::model_create(small_config(4, 2, false, false), 1);
  train::model_save(m, dir);
  // Rewrite the checkpoint without one tensor and with another reshaped.
  auto ck = core::Checkpoint::open(dir).take_or_throw();
  std::vector<core::TensorView> views;
  for (const std::string& n : ck.names()) {
    const core::TensorInfo* t = ck.find(n);
    if (n == "model.layers.1.mlp.up_proj.weight") continue;
    core::TensorView v{n, t->dtype, t->shape, ck.data(*t), t->nbytes};
    if (n == "model.norm.weight") v.shape = {4, 6};
    views.push_back(v);
  }
  std::string dir2 = temp_dir("badckpt2");
  fs::create_directories(dir2);
  fs::copy_file(dir + "/config.json", dir2 + "/config.json");
  ASSERT_TRUE(core::checkpoint_write(dir2, views).is_ok());
  try {
    train::model_load(dir2);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(exit_code_for(e.code()), 2);
    std::string msg = e.what();
    EXPECT_NE(msg.find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.norm.weight has shape [4, 6], expected [24]"), std::string::npos)
        << msg;
  }
  fs::remove_all(dir);
  fs::remove_all(dir2);
}
