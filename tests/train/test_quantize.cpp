// Quantization tests: quantize/dequantize error bounds, GPTQ against round-to-nearest, SmoothQuant leaves the float model's
// outputs unchanged, int8 directories save and load back (dequantized + fake-quant activations,
// matching the quantizer's own evaluation), and bad options are rejected.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "train/api.h"
#include "train/obs.h"
#include "train/quant_ops.h"
#include "train/quantize.h"
#include "train/trainer.h"
#include "tests/train/util.h"

namespace fs = std::filesystem;
using namespace shrink;
using namespace shrink::train;

TEST(QuantOps, RoundTripErrorIsAtMostHalfAStep) {
  torch::manual_seed(3);
  auto w = torch::randn({24, 64}) * torch::rand({24, 1}) * 4;
  for (int64_t gs : {0, 32}) {
    auto [q, scale] = quantize_weight(w, gs);
    EXPECT_EQ(q.scalar_type(), torch::kInt8);
    EXPECT_EQ(scale.size(1), gs ? 64 / gs : 1);
    EXPECT_LE(q.abs().max().item<int>(), 127);
    auto err = (dequantize_weight(q, scale) - w).abs();
    auto step = scale.repeat_interleave(gs ? gs : 64, 1);
    EXPECT_TRUE(torch::all(err <= step * 0.5 + 1e-7).item<bool>()) << gs;
    // The largest |w| of each channel/group maps to exactly +-127.
    EXPECT_EQ(q.abs().max().item<int>(), 127);
  }
  // 4 bits: max|w| / 7 per group, the largest |w| at +-7, values in [-8, 7].
  for (int64_t gs : {0, 32}) {
    auto [q, scale] = quantize_weight(w, gs, 4);
    EXPECT_EQ(q.abs().max().item<int>(), 7) << gs;
    EXPECT_GE(q.min().item<int>(), -8);
    auto err = (dequantize_weight(q, scale) - w).abs();
    auto step = scale.repeat_interleave(gs ? gs : 64, 1);
    EXPECT_TRUE(torch::all(err <= step * 0.5 + 1e-7).item<bool>()) << gs;
  }
  // Asymmetric 4 bits: the range [min(w, 0), max(w, 0)] maps onto [-8, 7] with a zero point,
  // zero is exact, the error is at most half a step, and on one-signed groups (as after a ReLU
  // or a shift) the step is about half the symmetric one.
  for (int64_t gs : {0, 32}) {
    auto wa = w.clone();
    wa.index_put_({0}, wa[0].abs() + 0.5);  // row 0 all positive
    QWeight a = rtn_quantize(wa, gs, 4, true);
    ASSERT_TRUE(a.zp.defined());
    EXPECT_EQ(a.zp.sizes(), a.scale.sizes());
    EXPECT_GE(a.q.min().item<int>(), -8);
    EXPECT_LE(a.q.max().item<int>(), 7);
    EXPECT_GE(a.zp.min().item<int>(), -8);
    EXPECT_LE(a.zp.max().item<int>(), 7);
    auto err = (a.dequantize() - wa).abs();
    auto step = a.scale.repeat_interleave(gs ? gs : 64, 1);
    EXPECT_TRUE(torch::all(err <= step * 0.5 + 1e-6).item<bool>()) << gs;
    EXPECT_EQ(a.zp[0][0].item<int>(), -8);  // all positive: lo = 0 sits at -8
    auto sym = quantize_weight(wa, gs, 4).second;
    EXPECT_LT(a.scale[0][0].item<float>(), 0.5f * sym[0][0].item<float>() * 1.0001f);
    auto z = torch::zeros({2, 64});
    z.index_put_({1, 3}, -1.0);
    QWeight az = rtn_quantize(z, gs, 4, true);
    EXPECT_TRUE(torch::equal(az.dequantize().index({0}), torch::zeros({64})));
    EXPECT_EQ(az.dequantize()[1][3].item<float>(), -1.0f);
  }
  auto x = torch::randn({3, 5, 40}) * 7;
  auto xq = fake_quant_per_token(x);
  auto s = x.abs().amax(-1, true) / 127;
  EXPECT_TRUE(torch::all((xq - x).abs() <= s * 0.5 + 1e-6).item<bool>());
  auto xs = fake_quant_static(x, 0.05f);  // clips beyond 127 * 0.05 = 6.35
  EXPECT_LE(xs.abs().max().item<float>(), 6.35f + 1e-5f);
  auto inside = x.abs() < 6.3;
  EXPECT_TRUE(torch::all(((xs - x).abs() <= 0.025 + 1e-6).logical_or(inside.logical_not())).item<bool>());
}

// The OBS pieces against their definitions: the Hessian sum equals X^T X summed over batches
// (float32 sums of 37 products: 1e-5 relative covers their rounding), exactly symmetric; the
// factor equals the reference construction (Cholesky of the inverse, as GPTQ's code computes it)
// in float64 to float32 accuracy (1e-4 relative of its largest entry), and a column that never
// fires is marked dead and left independent (its row of U is e_j / sqrt(1 + damp)).
TEST(QuantOps, ObsHessianAndFactorMatchTheirDefinitions) {
  torch::manual_seed(7);
  auto a = torch::randn({37, 19}), b = torch::randn({5, 19}) * 3;
  HessianSum hs;
  EXPECT_FALSE(hs.defined());
  hs.add(a);
  hs.add(b);
  const torch::Tensor h = hs.get();
  auto ref = a.to(torch::kFloat64).t().matmul(a.to(torch::kFloat64)) +
             b.to(torch::kFloat64).t().matmul(b.to(torch::kFloat64));
  EXPECT_TRUE(torch::equal(h, h.t()));
  EXPECT_LT((h.to(torch::kFloat64) - ref).abs().max().item<double>(),
            1e-5 * ref.abs().max().item<double>());

  auto x = torch::randn({300, 40}, torch::kFloat64);
  x.select(1, 11).zero_();  // an input that never fires
  auto H = x.t().matmul(x);
  torch::Tensor dead;
  const double damp = 0.01;
  const torch::Tensor U = obs_inverse_factor(H.to(torch::kFloat32), damp, &dead);
  const torch::Tensor Uref = test::obs_factor_reference(H, damp);
  EXPECT_TRUE(torch::equal(U, U.triu()));
  EXPECT_LT((U.to(torch::kFloat64) - Uref).abs().max().item<double>(),
            1e-4 * Uref.abs().max().item<double>());
  EXPECT_EQ(dead.sum().item<int64_t>(), 1);
  EXPECT_TRUE(dead[11].item<bool>());
  // Not positive definite (a negative eigenvalue beyond what damp fixes): a clear error.
  EXPECT_THROW(obs_inverse_factor(-torch::eye(4), 0.01), Error);
}

// GPTQ against its column-by-column definition in float64 (no blocks, no lazy batching: each
// column quantized with its group's scale from the weights as updated so far, its error spread
// over every later column at once). The blocked, row-parallel float32 implementation rounds
// differently, so a weight whose value falls within float32 rounding of a rounding boundary may
// take the neighbouring level: at most 1% of the levels may differ, by one step.
TEST(QuantOps, GptqEqualsItsColumnByColumnDefinition) {
  torch::manual_seed(8);
  auto z = torch::randn({1024, 64}, torch::kFloat64);
  auto x = z.matmul(torch::randn({64, 64}, torch::kFloat64) * 0.4 + torch::eye(64, torch::kFloat64));
  auto H = x.t().matmul(x);
  auto w = torch::randn({40, 64});
  for (bool asym : {false, true}) {
    GptqOptions o;
    o.group_size = 16;
    o.block_size = 32;
    o.bits = 4;
    o.asym = asym;
    QWeight g = gptq_quantize(w, H.to(torch::kFloat32), o);
    // The definition.
    const torch::Tensor U = test::obs_factor_reference(H, o.damp);
    auto W = w.to(torch::kFloat64).clone();
    auto Q = torch::empty({40, 64}, torch::kInt64);
    torch::Tensor s, zp;
    for (int64_t j = 0; j < 64; ++j) {
      if (j % 16 == 0) {
        auto grp = W.narrow(1, j, 16);
        if (!asym) {
          auto amax = grp.abs().amax(1);
          s = torch::where(amax > 0, amax / 7.0, torch::ones_like(amax));
          zp = torch::zeros_like(s);
        } else {
          auto lo = grp.amin(1).clamp_max(0.0), hi = grp.amax(1).clamp_min(0.0);
          s = torch::where(hi - lo > 0, (hi - lo) / 15.0, torch::ones_like(lo));
          zp = torch::round(-8.0 - lo / s).clamp(-8, 7);
        }
      }
      auto col = W.select(1, j);
      auto q = torch::round(col / s + zp).clamp(-8, 7);
      Q.select(1, j).copy_(q);
      auto e = (col - (q - zp) * s) / U[j][j];
      if (j + 1 < 64) W.narrow(1, j + 1, 63 - j).sub_(e.unsqueeze(1) * U[j].narrow(0, j + 1, 63 - j).unsqueeze(0));
    }
    auto diff = (g.q.to(torch::kInt64) - Q).abs();
    EXPECT_LE(diff.max().item<int64_t>(), 1) << (asym ? "asym" : "sym");
    EXPECT_LE(diff.gt(0).sum().item<int64_t>(), 40 * 64 / 100) << (asym ? "asym" : "sym");
  }
}

// GPTQ on correlated inputs (x = z A, so H is far from diagonal): valid int8 in the same format,
// a lower layer-output error than round-to-nearest in every variant, the same per-channel scales
// as RTN, and exact equality with RTN when H is diagonal (no error can be compensated).
TEST(QuantOps, GptqReconstructsBetterThanRoundToNearest) {
  torch::manual_seed(4);
  auto z = torch::randn({2048, 64}, torch::kFloat64);
  auto x = z.matmul(torch::randn({64, 64}, torch::kFloat64) * 0.4 + torch::eye(64, torch::kFloat64));
  x.index({torch::indexing::Slice(), 5}).mul_(20);  // an outlier channel, where act_order pays
  auto H = x.t().matmul(x);
  auto w = torch::randn({48, 64});
  for (int64_t gs : {0, 32}) {
    auto [qr, sr] = quantize_weight(w, gs);
    const double e_rtn = layer_output_error(w, dequantize_weight(qr, sr), H);
    for (bool act_order : {false, true}) {
      GptqOptions o;
      o.group_size = gs;
      o.block_size = 32;  // two blocks: the lazy cross-block update is exercised
      o.act_order = act_order;
      QWeight g = gptq_quantize(w, H, o);
      const torch::Tensor &q = g.q, &s = g.scale;
      const std::string what = "group " + std::to_string(gs) + (act_order ? " act_order" : "");
      ASSERT_EQ(q.scalar_type(), torch::kInt8) << what;
      EXPECT_EQ(q.sizes(), w.sizes()) << what;
      EXPECT_EQ(s.sizes(), sr.sizes()) << what;
      EXPECT_LE(q.abs().max().item<int>(), 127) << what;
      if (gs == 0 || act_order) {
        EXPECT_TRUE(torch::equal(s, sr)) << what;  // scales fixed up front
      }
      const double e = layer_output_error(w, dequantize_weight(q, s), H);
      EXPECT_LT(e, 0.7 * e_rtn) << what << ": gptq " << e << " vs rtn " << e_rtn;
    }
  }
  // 4 bits: GPTQ's error feedback pays more than at 8 bits.
  {
    auto [qr, sr] = quantize_weight(w, 32, 4);
    GptqOptions o;
    o.group_size = 32;
    o.block_size = 32;
    o.bits = 4;
    QWeight g = gptq_quantize(w, H, o);
    EXPECT_GE(g.q.min().item<int>(), -8);
    EXPECT_LE(g.q.max().item<int>(), 7);
    EXPECT_FALSE(g.zp.defined());
    EXPECT_LT(layer_output_error(w, g.dequantize(), H),
              0.7 * layer_output_error(w, dequantize_weight(qr, sr), H));
    // Asymmetric 4 bits: zero points in range, and again below round-to-nearest (asymmetric).
    o.asym = true;
    QWeight ga = gptq_quantize(w, H, o);
    ASSERT_TRUE(ga.zp.defined());
    EXPECT_EQ(ga.zp.sizes(), ga.scale.sizes());
    EXPECT_GE(ga.zp.min().item<int>(), -8);
    EXPECT_LE(ga.zp.max().item<int>(), 7);
    EXPECT_GE(ga.q.min().item<int>(), -8);
    EXPECT_LE(ga.q.max().item<int>(), 7);
    EXPECT_LT(layer_output_error(w, ga.dequantize(), H),
              0.7 * layer_output_error(w, rtn_quantize(w, 32, 4, true).dequantize(), H));
  }
  // Act-order groups: groups of 32 consecutive columns in the activation order, so g_idx maps
  // each column to a group holding exactly 32 columns; below round-to-nearest, and dequantize()
  // puts each column's scale back in the input order.
  for (bool asym : {false, true}) {
    GptqOptions o;
    o.group_size = 32;
    o.block_size = 32;
    o.bits = 4;
    o.asym = asym;
    o.act_order = true;
    o.act_order_groups = true;
    QWeight g = gptq_quantize(w, H, o);
    ASSERT_TRUE(g.g_idx.defined());
    EXPECT_EQ(g.g_idx.numel(), 64);
    EXPECT_TRUE(torch::equal(torch::bincount(g.g_idx.to(torch::kInt64)),
                             torch::full({2}, 32, torch::kInt64)));
    EXPECT_FALSE(
        torch::equal(g.g_idx, torch::div(torch::arange(64), 32, "floor").to(torch::kInt32)))
        << "the outlier channel 5 leads the activation order";
    EXPECT_EQ(g.g_idx[5].item<int>(), 0);
    auto manual = torch::empty({48, 64});
    for (int64_t k = 0; k < 64; ++k) {
      const int64_t gi = g.g_idx[k].item<int>();
      auto z = asym ? g.zp.select(1, gi).to(torch::kFloat32) : torch::zeros({48});
      manual.select(1, k).copy_((g.q.select(1, k).to(torch::kFloat32) - z) * g.scale.select(1, gi));
    }
    EXPECT_TRUE(torch::allclose(g.dequantize(), manual, 0, 1e-7));
    EXPECT_LT(layer_output_error(w, g.dequantize(), H),
              0.7 * layer_output_error(w, rtn_quantize(w, 32, 4, asym).dequantize(), H));
  }
  // A diagonal H: every column is independent, so GPTQ is round-to-nearest exactly.
  auto Hd = torch::diag(torch::rand({64}, torch::kFloat64) + 0.5);
  EXPECT_TRUE(torch::equal(gptq_quantize(w, Hd, GptqOptions{}).q, quantize_weight(w, 0).first));
  {
    GptqOptions a;
    a.bits = 4;
    a.asym = true;
    QWeight gd = gptq_quantize(w, Hd, a);
    QWeight rd = rtn_quantize(w, 0, 4, true);
    EXPECT_TRUE(torch::equal(gd.q, rd.q));
    EXPECT_TRUE(torch::equal(gd.zp, rd.zp));
  }
  // Block sizes that do not hold whole groups are refused.
  GptqOptions b;
  b.group_size = 32;
  b.block_size = 48;
  EXPECT_THROW(gptq_quantize(w, H, b), Error);
}

// AWQ on inputs with a few salient channels (large mean |x|): the searched scales protect them,
// lowering the output error below round-to-nearest's (r = 0, which is in the grid, so never
// above it), at 4 and 8 bits, per group and per channel. The clipping search lowers the error of
// every (row, group) against unclipped scales and shrinks by at most 0.55.
TEST(QuantOps, AwqScalesAndClippingBeatRoundToNearest) {
  torch::manual_seed(6);
  auto x = torch::randn({4096, 128}, torch::kFloat64);
  for (int64_t j : {3, 40, 77, 100}) x.index({torch::indexing::Slice(), j}).mul_(25);
  auto H = x.t().matmul(x);
  auto xm = x.abs().mean(0).to(torch::kFloat32);
  std::vector<torch::Tensor> ws = {torch::randn({48, 128}), torch::randn({32, 128}) * 0.5};
  for (int bits : {4, 8}) {
    for (int64_t gs : {0, 32}) {
      const std::string what = std::to_string(bits) + " bits, group " + std::to_string(gs);
      AwqScale a = awq_search_scale(ws, xm, H, gs, bits);
      double rtn = 0, got = 0;
      for (const auto& w : ws) {
        auto [q, sc] = quantize_weight(w, gs, bits);
        rtn += layer_output_error(w, dequantize_weight(q, sc), H);
        auto [qs, ss] = quantize_weight(w * a.s.unsqueeze(0), gs, bits);
        got += layer_output_error(w, dequantize_weight(qs, ss) / a.s.unsqueeze(0), H);
      }
      EXPECT_NEAR(a.err_rtn, rtn, 1e-4 * rtn) << what;
      EXPECT_NEAR(a.err, got, 1e-4 * got) << what;  // the reported error is the scales' error
      EXPECT_GT(a.ratio, 0) << what;
      EXPECT_LT(got, 0.8 * rtn) << what;
      EXPECT_GT(a.s[40].item<float>(), a.s.median().item<float>()) << what;  // salient: scaled up
    }
  }
  // Clipping: per (row, group) never worse than c = 1, and better overall at 4 bits.
  auto w = torch::randn({48, 128});
  w.index_put_({0, 5}, 9.0);  // a row with one outlier weight, where clipping pays
  for (int64_t gs : {0, 32}) {
    auto s1 = quantize_weight(w, gs, 4).second;
    auto sc = awq_clip_scale(w, H, gs, 4);
    ASSERT_EQ(sc.sizes(), s1.sizes());
    EXPECT_TRUE(torch::all(sc <= s1 * (1 + 1e-6)).item<bool>());
    EXPECT_TRUE(torch::all(sc >= s1 * 0.55 * (1 - 1e-6)).item<bool>());
    auto q = quantize_with_scale(w, sc, 4);
    EXPECT_GE(q.min().item<int>(), -8);
    EXPECT_LE(q.max().item<int>(), 7);
    const int64_t g = gs ? gs : 128;
    auto e1 = (w - dequantize_weight(quantize_with_scale(w, s1, 4), s1)).reshape({48, 128 / g, g});
    auto e2 = (w - dequantize_weight(q, sc)).reshape({48, 128 / g, g});
    for (int64_t j = 0; j < 128 / g; ++j) {
      using torch::indexing::Slice;
      auto Hj = H.index({Slice(j * g, (j + 1) * g), Slice(j * g, (j + 1) * g)}).to(torch::kFloat32);
      auto r1 = (e1.select(1, j).matmul(Hj) * e1.select(1, j)).sum(1);
      auto r2 = (e2.select(1, j).matmul(Hj) * e2.select(1, j)).sum(1);
      EXPECT_TRUE(torch::all(r2 <= r1 * (1 + 1e-5)).item<bool>()) << gs;
    }
    EXPECT_LT(layer_output_error(w, dequantize_weight(q, sc), H),
              0.95 * layer_output_error(w, dequantize_weight(quantize_with_scale(w, s1, 4), s1), H))
        << gs;
  }
  // Asymmetric: the clipping search shrinks both ends and never loses to c = 1; the scale search
  // beats asymmetric round to nearest.
  {
    QWeight r = rtn_quantize(w, 32, 4, true);
    QWeight c = awq_clip_quantize(w, H, 32, 4, true);
    EXPECT_TRUE(torch::all(c.scale <= r.scale * (1 + 1e-6)).item<bool>());
    EXPECT_LT(layer_output_error(w, c.dequantize(), H), layer_output_error(w, r.dequantize(), H));
    AwqScale a = awq_search_scale(ws, xm, H, 32, 4, 20, 1, 0, true);
    EXPECT_LT(a.err, 0.8 * a.err_rtn);
  }
  // Tied heads (o_proj's input under GQA): channels [kv 2, tied 2, head_dim 32] share factors.
  AwqScale t = awq_search_scale(ws, xm, H, 32, 4, 20, 2, 32);
  auto ts = t.s.reshape({2, 2, 32});
  EXPECT_TRUE(torch::equal(ts.select(1, 0), ts.select(1, 1)));
  EXPECT_LE(t.err, t.err_rtn);
}

TEST(QuantOps, SmoothQuantLeavesFloatOutputsUnchanged) {
  for (bool bias : {false, true}) {
    core::ModelConfig c = test::micro_config(64);
    c.qkv_bias = bias;  // Qwen2-style v bias is rescaled with v_proj
    CausalLM m = model_create(c, 5);
    torch::NoGradGuard ng;
    {  // Make the norms non-trivial.
      for (auto& p : m->named_parameters()) {
        if (p.key().find("norm") != std::string::npos) p.value().uniform_(0.5, 1.5);
        if (p.key().find("bias") != std::string::npos) p.value().normal_(0, 0.1);
      }
    }
    auto ids = torch::randint(0, 64, {2, 16}, torch::kLong);
    auto before = m->forward(ids).logits;
    torch::manual_seed(1);
    for (size_t i = 0; i < m->model->layers->size(); ++i) {
      auto& L = *m->model->layers->ptr<DecoderLayerImpl>(i);
      std::map<std::string, torch::Tensor> amax = {
          {"qkv", torch::rand({32}) * 10 + 0.1}, {"o", torch::rand({32}) * 10 + 0.1},
          {"gate_up", torch::rand({32}) * 10 + 0.1}, {"down", torch::rand({64}) * 10 + 0.1}};
      smoothquant_layer(L, amax, 0.5, c.num_heads, c.num_kv_heads, c.head_dim);
    }
    auto after = m->forward(ids).logits;
    EXPECT_TRUE(torch::allclose(before, after, 1e-5, 1e-5)) << (before - after).abs().max().item<double>();
    // And the weights did change (the factors are far from 1).
    EXPECT_GT((model_create(c, 5)->named_parameters().find("model.layers.0.mlp.up_proj.weight")->sub(
                   *m->named_parameters().find("model.layers.0.mlp.up_proj.weight")))
                  .abs()
                  .max()
                  .item<double>(),
              1e-3);
  }
}

TEST(Quantize, Int8DirectoriesSaveAndLoadBack) {
  env_init(1);
  std::string dir = test::temp_dir("quant");
  test::make_inputs(dir);
  TrainOptions t;  // a briefly trained model has structure worth quantizing
  t.config = dir + "/config.json";
  t.data = dir + "/data";
  t.out = dir + "/run";
  t.steps = 30;
  t.seq_len = 32;
  t.batch = 4;
  t.eval_every = 0;
  t.save_every = 0;
  train_run(t);
  struct Case {
    const char* scheme;
    const char* acts;
    const char* observer;
    int64_t group;
    const char* sq;
  };
  for (Case cs :
       {Case{"w8a16", "dynamic", "minmax", 0, ""}, Case{"w8a16", "dynamic", "minmax", 32, ""},
        Case{"w4a16", "awq", "minmax", 32, ""}, Case{"w4a16", "awq-gptq", "minmax", 32, ""},
        Case{"w8a16", "awq", "minmax", 0, ""}, Case{"w8a8", "dynamic", "minmax", 0, ""},
        Case{"w8a8", "static", "entropy", 0, ""}, Case{"w8a8", "static", "mse", 0, "auto"},
        Case{"w8a16", "gptq", "minmax", 32, ""}, Case{"w8a8", "gptq", "mse", 0, "0.5"},
        Case{"w4a16", "dynamic", "minmax", 32, ""}, Case{"w4a16", "gptq", "minmax", 32, ""},
        Case{"w4a16", "asym", "minmax", 32, ""}, Case{"w4a16", "asym-awq", "minmax", 32, ""},
        Case{"w4a16", "asym-gptq", "minmax", 32, ""},
        Case{"w4a16", "gptq-groups", "minmax", 32, ""}}) {
    QuantizeOptions o;
    o.model = dir + "/run/model";
    o.out = dir + "/q";
    o.scheme = cs.scheme;
    const std::string acts = cs.acts;
    const bool asym = acts.rfind("asym", 0) == 0;
    const bool awq = acts.find("awq") != std::string::npos;
    const bool gptq = acts.find("gptq") != std::string::npos;
    o.activations = gptq ? "static" : (awq || asym) ? "dynamic" : cs.acts;  // w8a8 + gptq: static
    o.awq = awq;
    o.asym = asym;
    o.method = gptq ? "gptq" : "rtn";
    const bool groups = acts.find("groups") != std::string::npos;
    o.act_order = gptq && (cs.group == 0 || groups);
    o.act_order_groups = groups;
    o.observer = cs.observer;
    o.group_size = cs.group;
    o.smoothquant = cs.sq;
    o.data = dir + "/data";
    o.calib_samples = 8;
    o.calib_len = 32;
    o.eval_tokens = 1024;
    o.eval_seq_len = 32;
    QuantizeResult r = quantize_run(o);
    std::string what = std::string(cs.scheme) + "/" + cs.acts + "/" + cs.observer + "/g" +
                       std::to_string(cs.group) + "/" + cs.sq;
    // Real int8 tensors in the compressed-tensors layout.
    auto ck = core::Checkpoint::open(o.out).take_or_throw();
    const core::TensorInfo* w = ck.find("model.layers.0.mlp.down_proj.weight");
    ASSERT_TRUE(w) << what;
    EXPECT_EQ(w->dtype, core::DType::kI8) << what;
    const core::TensorInfo* sc = ck.find("model.layers.0.mlp.down_proj.weight_scale");
    ASSERT_TRUE(sc) << what;
    EXPECT_EQ(sc->shape, (std::vector<int64_t>{32, cs.group ? 64 / cs.group : 1})) << what;
    EXPECT_EQ(ck.find("model.layers.0.self_attn.q_proj.input_scale") != nullptr,
              o.activations == "static" && std::string(cs.scheme) == "w8a8")
        << what;
    if (gptq) {  // the report compares each module's output error with round-to-nearest's
      ASSERT_TRUE(r.report.contains("gptq")) << what;
      EXPECT_EQ(r.report["method"], "gptq");
      EXPECT_EQ(r.report["gptq"]["modules"].size(), 2u * 7u) << what;
      EXPECT_LT(r.report["gptq"]["output_error_ratio"].get<double>(), 1.0) << what;
    }
    const bool four = std::string(cs.scheme) == "w4a16";
    if (awq) {  // scales searched per input group of each layer, clipped unless GPTQ rounds
      ASSERT_TRUE(r.report.contains("awq")) << what;
      const auto& a = r.report["awq"];
      EXPECT_EQ(a["layers"].size(), 2u) << what;
      EXPECT_EQ(a["layers"][1].size(), 5u) << what;  // layer, qkv, o, gate_up, down
      EXPECT_LE(a["scale_error_ratio"].get<double>(), 1.0) << what;
      EXPECT_EQ(a["clip"].get<bool>(), !gptq) << what;
      if (!gptq) {  // at 8 bits per channel clipping may find nothing better than c = 1
        EXPECT_LE(a["clip_error_ratio"].get<double>(), four ? 0.99 : 1.0) << what;
      }
    }
    EXPECT_EQ(ck.find("model.embed_tokens.weight")->dtype, core::DType::kF32) << what;
    auto cfg = core::config_load(o.out).take_or_throw();
    ASSERT_TRUE(cfg.has_quantization()) << what;
    EXPECT_EQ(cfg.raw["quantization_config"]["format"], four ? "pack-quantized" : "int-quantized");
    if (four) {  // stored packed, eight values per int32, and read back as I8 in [-8, 7]
      auto f = core::SafetensorsFile::open(o.out + "/model.safetensors").take_or_throw();
      const core::TensorInfo* p = f->find("model.layers.0.mlp.down_proj.weight_packed");
      ASSERT_TRUE(p) << what;
      EXPECT_EQ(p->dtype, core::DType::kI32);
      EXPECT_EQ(p->shape, (std::vector<int64_t>{32, 64 / 8}));
      EXPECT_EQ(f->find("model.layers.0.mlp.down_proj.weight"), nullptr);
      const int8_t* v = reinterpret_cast<const int8_t*>(ck.data(*w));
      EXPECT_TRUE(std::all_of(v, v + w->numel(), [](int8_t x) { return x >= -8 && x <= 7; }));
      EXPECT_EQ(r.report["bits"], 4);
      EXPECT_EQ(r.report["symmetric"], !asym);
      EXPECT_EQ(cfg.raw["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"],
                !asym);
      const core::TensorInfo* zs = f->find("model.layers.0.mlp.down_proj.weight_zero_point");
      EXPECT_EQ(zs != nullptr, asym) << what;
      if (asym) {  // I32 [ceil(out / 8), groups] on disk, I8 [out, groups] in [-8, 7] read back
        EXPECT_EQ(zs->dtype, core::DType::kI32);
        EXPECT_EQ(zs->shape, (std::vector<int64_t>{32 / 8, 64 / 32}));
        const core::TensorInfo* z = ck.find("model.layers.0.mlp.down_proj.weight_zero_point");
        ASSERT_TRUE(z) << what;
        EXPECT_EQ(z->dtype, core::DType::kI8);
        EXPECT_EQ(z->shape, (std::vector<int64_t>{32, 2}));
        const int8_t* zv = reinterpret_cast<const int8_t*>(ck.data(*z));
        EXPECT_TRUE(std::all_of(zv, zv + z->numel(), [](int8_t x) { return x >= -8 && x <= 7; }));
        EXPECT_TRUE(core::checkpoint_check(cfg, ck).is_ok()) << what;
      }
      EXPECT_EQ(ck.find("model.layers.0.mlp.down_proj.weight_g_idx") != nullptr, groups) << what;
      EXPECT_EQ(cfg.raw["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"],
                groups ? nlohmann::json("group") : nlohmann::json(nullptr))
          << what;
    }
    // Loading back and evaluating reproduces the quantizer's fake-quant perplexity exactly
    // (same arithmetic), and stays close to float (a trained micro model, 8-bit).
    EvalOptions eo;
    eo.source.data = dir + "/data";
    eo.source.split = "val";
    eo.source.max_tokens = 1024;
    eo.seq_len = 32;
    EvalResult e = eval_perplexity(o.out, eo);
    EXPECT_NEAR(e.perplexity, r.report["perplexity_quant"].get<double>(),
                1e-6 * e.perplexity) << what;
    EXPECT_LT(std::abs(r.report["perplexity_change"].get<double>()), four ? 0.25 : 0.05) << what;
    EXPECT_LT(r.report["bytes_after"].get<double>(), 0.5 * r.report["bytes_before"].get<double>()) << what;
  }
  fs::remove_all(dir);
}

// GPTQ act-order groups (weight_g_idx, llm-compressor's `actorder: group`): a model whose
// groups are scattered input columns loads with each weight (q - zp) * scale of its column's
// group, in the input order.
TEST(Quantize, ActOrderGroupsLoadAsTheirDequantizedWeights) {
  const std::string dir = test::temp_dir("gidx_load");
  core::ModelConfig c = test::micro_config(64);
  CausalLM m = model_create(c, 5);
  model_save(m, dir + "/f");
  auto ck = core::Checkpoint::open(dir + "/f").take_or_throw();
  std::vector<std::vector<uint8_t>> bufs;
  bufs.reserve(1024);
  std::vector<core::TensorView> views;
  auto keep = [&](const std::string& name, core::DType dt, const torch::Tensor& t) {
    auto ct = t.contiguous();
    const uint8_t* p = static_cast<const uint8_t*>(ct.data_ptr());
    bufs.emplace_back(p, p + ct.nbytes());
    views.push_back({name, dt, std::vector<int64_t>(ct.sizes().begin(), ct.sizes().end()),
                     bufs.back().data(), bufs.back().size()});
  };
  std::map<std::string, torch::Tensor> want, naive;
  for (const core::TensorSpec& s : core::expected_tensors(c)) {
    const core::TensorInfo* t = ck.find(s.name);
    auto w = torch::empty(s.shape, torch::kFloat32);
    core::convert_to_f32(t->dtype, ck.data(*t), w.data_ptr<float>(), t->numel());
    if (!core::tensor_role_is_linear(s.role) || s.role == core::TensorRole::kLmHead) {
      keep(s.name, core::DType::kF32, w);
      continue;
    }
    const std::string mod = s.name.substr(0, s.name.size() - 7);
    const int64_t in = w.size(1);
    auto perm = torch::randperm(in, torch::TensorOptions().dtype(torch::kInt64));
    QWeight qg = rtn_quantize(w.index_select(1, perm), 32, 8, false);  // groups in perm order
    auto inv = torch::argsort(perm);
    keep(s.name, core::DType::kI8, qg.q.index_select(1, inv));
    keep(mod + ".weight_scale", core::DType::kF32, qg.scale);
    keep(mod + ".weight_g_idx", core::DType::kI32,
         (torch::arange(in, torch::kInt64) / 32).index_select(0, inv).to(torch::kInt32));
    want[s.name] = qg.dequantize().index_select(1, inv);
    // What ignoring g_idx would load (contiguous groups): differs where there are two groups.
    if (in > 32) naive[s.name] = dequantize_weight(qg.q.index_select(1, inv), qg.scale);
  }
  core::QuantScheme qs;
  qs.weight_strategy = "group";
  qs.group_size = 32;
  qs.activations = "none";
  qs.ignore = {"lm_head"};
  core::ModelConfig qc = c;
  qc.raw["quantization_config"] = core::quant_config_to_json(qs);
  fs::create_directories(dir + "/q");
  ASSERT_TRUE(core::checkpoint_write(dir + "/q", views).is_ok());
  ASSERT_TRUE(core::write_file_atomic(dir + "/q/config.json", core::config_to_json(qc)).is_ok());
  ASSERT_TRUE(
      core::checkpoint_check(qc, core::Checkpoint::open(dir + "/q").take_or_throw()).is_ok());
  CausalLM l = model_load(dir + "/q");
  size_t checked = 0;
  for (auto& p : l->named_parameters()) {
    auto it = want.find(p.key());
    if (it == want.end()) continue;
    EXPECT_TRUE(torch::allclose(p.value(), it->second, 0, 1e-7)) << p.key();
    if (naive.count(p.key())) EXPECT_FALSE(torch::allclose(p.value(), naive[p.key()], 0, 1e-7));
    ++checked;
  }
  EXPECT_EQ(checked, want.size());
  EXPECT_EQ(naive.size(), 2u);  // down_proj of each layer (K = 64)
  fs::remove_all(dir);
}

namespace {

// A copy of model directory `from` in bfloat16 (config.json's dtype too), written into `to`.
// The accuracy report of a streamed quantize (compare_streamed: both models layer by layer,
// log-sum-exp over lm_head blocks in float64) against the whole-model path's (both models
// loaded, float32 log_softmax): the same figures to float rounding.
void expect_same_accuracy_report(const nlohmann::json& got, const nlohmann::json& want,
                                 const std::string& what) {
  for (const char* k : {"perplexity_float", "perplexity_quant"}) {
    EXPECT_NEAR(got[k].get<double>(), want[k].get<double>(), 1e-6 * want[k].get<double>())
        << what << ": " << k;
  }
  const double kl = want["kl_vs_float"].get<double>();
  EXPECT_GT(kl, 0.0) << what;
  EXPECT_NEAR(got["kl_vs_float"].get<double>(), kl, 1e-3 * kl + 1e-8) << what;
  // An argmax may flip where two logits tie to rounding: at most one prediction in a thousand.
  EXPECT_NEAR(got["top1_agreement"].get<double>(), want["top1_agreement"].get<double>(), 1e-3)
      << what;
  EXPECT_EQ(got["val_tokens"], want["val_tokens"]) << what;
}

void bf16_copy(const std::string& from, const std::string& to) {
  fs::create_directories(to);
  core::ModelConfig cfg = core::config_load(from).take_or_throw();
  cfg.dtype = "bfloat16";
  ASSERT_TRUE(core::write_file_atomic(to + "/config.json", core::config_to_json(cfg)).is_ok());
  auto ck = core::Checkpoint::open(from).take_or_throw();
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<core::TensorView> views;
  for (const std::string& name : ck.names()) {
    const core::TensorInfo* t = ck.find(name);
    std::vector<float> f(size_t(t->numel()));
    core::convert_to_f32(t->dtype, ck.data(*t), f.data(), t->numel());
    bufs.emplace_back(f.size() * 2);
    core::convert_from_f32(f.data(), core::DType::kBF16, bufs.back().data(), t->numel());
    views.push_back({name, core::DType::kBF16, t->shape, bufs.back().data(), bufs.back().size()});
  }
  ASSERT_TRUE(core::checkpoint_write(to, views, {{"format", "pt"}}).is_ok());
}

}  // namespace

// Round to nearest runs model-free (tensor by tensor from the memory-mapped input, no LibTorch
// model) and must write what the LibTorch path writes, byte for byte: every scheme it takes, f32
// and bf16 inputs, modules left float by --ignore, work cut into 8-row blocks on two threads.
// With an evaluation, both report the same accuracy.
TEST(Quantize, ModelFreeRoundToNearestWritesTheLibTorchPathsBytes) {
  env_init(2);
  std::string dir = test::temp_dir("quant_free");
  test::trained_micro_model(dir, 20, 7);
  bf16_copy(dir + "/run/model", dir + "/bf16");
  struct Case {
    const char* model;
    const char* scheme;
    int64_t group;
    bool asym;
    const char* ignore;
  };
  int compared = 0;
  for (Case cs : {Case{"run/model", "w8a16", 0, false, ""}, Case{"run/model", "w8a16", 32, false, ""},
                  Case{"run/model", "w8a8", 0, false, ""}, Case{"run/model", "w4a16", 0, false, ""},
                  Case{"run/model", "w4a16", 32, true, ""}, Case{"bf16", "w4a16", 0, true, ""},
                  Case{"bf16", "w8a16", 0, false, R"(.*layers\.1\.mlp.*)"},
                  Case{"bf16", "w8a8", 0, false, ""}}) {
    const std::string what = std::string(cs.model) + "/" + cs.scheme + "/g" +
                             std::to_string(cs.group) + (cs.asym ? "/asym" : "") + "/" + cs.ignore;
    QuantizeOptions o;
    o.model = dir + "/" + cs.model;
    o.scheme = cs.scheme;
    o.group_size = cs.group;
    o.asym = cs.asym;
    o.ignore = cs.ignore;
    o.data = dir + "/data";
    o.calib_samples = 2;
    o.calib_len = 32;
    o.eval_tokens = compared == 0 || compared == 5 ? 1024 : 0;
    o.eval_seq_len = 32;
    o.out = dir + "/torch";
    o.load_model = true;
    QuantizeResult ref = quantize_run(o);
    o.out = dir + "/free";
    o.load_model = false;
    o.threads = 2;
    o.block_elements = 100;  // 8 rows per block: blocks meet inside tensors and packed words
    QuantizeResult got = quantize_run(o);
    EXPECT_TRUE(got.report["model_free"].get<bool>()) << what;
    EXPECT_FALSE(ref.report.contains("model_free")) << what;
    for (const char* f : {"model.safetensors", "config.json", "shrink.json"}) {
      EXPECT_TRUE(core::read_file(dir + "/free/" + f).take_or_throw() ==
                  core::read_file(dir + "/torch/" + f).take_or_throw())
          << what << ": " << f << " differs";
    }
    for (const char* k : {"bytes_before", "bytes_after", "quantized_modules", "scheme", "bits",
                          "group_size", "weights", "activations", "rounding"}) {
      EXPECT_EQ(got.report[k], ref.report[k]) << what << ": " << k;
    }
    EXPECT_EQ(got.report["bytes_read"].get<uint64_t>(),
              core::Checkpoint::open(o.model).take_or_throw().total_bytes())
        << what;
    if (o.eval_tokens) expect_same_accuracy_report(got.report, ref.report, what);
    ++compared;
  }
  EXPECT_EQ(compared, 8);
  fs::remove_all(dir);
}

// --targets including lm_head (llm-compressor's targets may): the head is written quantized,
// rounded to nearest from the embedding of a tied model, whose output is then untied. The
// reference is the LibTorch quantizer (train::rtn_quantize) applied to the embedding, against
// the model-free writer's core::rtn_quantize_rows; GPTQ's layer-by-layer path writes the same
// head, and the same layers as without it.
TEST(Quantize, LmHeadInTargetsIsRoundedToNearestAndUntied) {
  env_init(2);
  std::string dir = test::temp_dir("quant_head");
  const std::string model = test::trained_micro_model(dir, 20, 7);
  const core::ModelConfig in = core::config_load(model).take_or_throw();
  ASSERT_TRUE(in.tie_word_embeddings) << "the micro config is expected to be tied";
  const core::Checkpoint src = core::Checkpoint::open(model).take_or_throw();
  const core::TensorInfo* e = src.find("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  auto embed = torch::empty({in.vocab_size, in.hidden_size}, torch::kFloat32);
  core::convert_to_f32(e->dtype, src.data(*e), embed.data_ptr<float>(), e->numel());
  auto bytes_of = [](const core::Checkpoint& ck, const std::string& name) {
    const core::TensorInfo* ti = ck.find(name);
    EXPECT_NE(ti, nullptr) << name;
    if (!ti) return std::string();
    return std::string(reinterpret_cast<const char*>(ck.data(*ti)), size_t(ti->nbytes));
  };
  const std::string with_head = R"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj|lm_head)";
  struct Case {
    const char* scheme;
    int64_t group;
    bool asym;
  };
  for (Case cs : {Case{"w8a16", 0, false}, Case{"w4a16", 32, false}, Case{"w4a16", 32, true}}) {
    const std::string what = std::string(cs.scheme) + "/g" + std::to_string(cs.group) + (cs.asym ? "/asym" : "");
    QuantizeOptions o;
    o.model = model;
    o.scheme = cs.scheme;
    o.group_size = cs.group;
    o.asym = cs.asym;
    o.targets = with_head;
    o.data = dir + "/data";
    o.calib_samples = 2;
    o.calib_len = 32;
    o.eval_tokens = 0;
    o.threads = 2;
    o.block_elements = 100;
    o.out = dir + "/free";
    QuantizeResult got = quantize_run(o);
    EXPECT_EQ(got.report["quantized_modules"].get<int64_t>(), 7 * in.num_layers + 1) << what;
    const core::ModelConfig out = core::config_load(o.out).take_or_throw();
    EXPECT_FALSE(out.tie_word_embeddings) << what;
    EXPECT_TRUE(core::quant_config_from_json(out.raw["quantization_config"]).take_or_throw().ignore.empty())
        << what;
    const core::Checkpoint ck = core::Checkpoint::open(o.out).take_or_throw();
    EXPECT_EQ(bytes_of(ck, "model.embed_tokens.weight"), bytes_of(src, "model.embed_tokens.weight")) << what;

    const int bits = cs.scheme[1] == '4' ? 4 : 8;
    const QWeight ref = rtn_quantize(embed, cs.group, bits, cs.asym);
    const int64_t V = in.vocab_size, H = in.hidden_size;
    // 4-bit weights and zero points are presented unpacked, as int8 (core::Checkpoint).
    const core::TensorInfo* w = ck.find("lm_head.weight");
    ASSERT_TRUE(w && w->dtype == core::DType::kI8) << what;
    EXPECT_EQ(ck.packed_of("lm_head.weight") != nullptr, bits == 4) << what;
    auto q = torch::empty({V, H}, torch::kInt8);
    std::memcpy(q.data_ptr(), ck.data(*w), size_t(V * H));
    EXPECT_TRUE(torch::equal(q, ref.q.to(torch::kInt8))) << what << ": lm_head values";
    const core::TensorInfo* sc = ck.find("lm_head.weight_scale");
    ASSERT_NE(sc, nullptr) << what;
    auto scale = torch::from_blob(const_cast<uint8_t*>(ck.data(*sc)), {ref.scale.numel()}, torch::kFloat32);
    EXPECT_TRUE(torch::equal(scale, ref.scale.reshape({-1}).to(torch::kFloat32))) << what << ": scales";
    if (cs.asym) {
      const int64_t G = ref.zp.size(1);
      auto zp = torch::empty({V, G}, torch::kInt8);
      std::memcpy(zp.data_ptr(), ck.data(*ck.find("lm_head.weight_zero_point")), size_t(V * G));
      EXPECT_TRUE(torch::equal(zp, ref.zp.to(torch::kInt8))) << what << ": zero points";
    }
    if (bits == 4 && !cs.asym) {
      // GPTQ, layer by layer: the same head, and the same layers as GPTQ without the head.
      o.method = "gptq";
      o.out = dir + "/gptq_head";
      quantize_run(o);
      o.targets = QuantizeOptions().targets;
      o.out = dir + "/gptq";
      quantize_run(o);
      const core::Checkpoint gh = core::Checkpoint::open(dir + "/gptq_head").take_or_throw();
      const core::Checkpoint g = core::Checkpoint::open(dir + "/gptq").take_or_throw();
      for (const char* n : {"lm_head.weight", "lm_head.weight_scale", "model.embed_tokens.weight"}) {
        EXPECT_EQ(bytes_of(gh, n), bytes_of(ck, n)) << what << ": gptq " << n;
      }
      for (const std::string& name : g.names()) {
        if (name.rfind("model.layers.", 0) != 0) continue;
        EXPECT_EQ(bytes_of(gh, name), bytes_of(g, name)) << what << ": gptq " << name;
      }
      // Evaluated layer by layer (the packed head dequantized a block of rows at a time) and
      // whole, the head-quantized model gives the same NLL.
      EvalOptions ev;
      ev.source.data = dir + "/data";
      ev.source.max_tokens = 512;
      ev.seq_len = 32;
      const double streamed = eval_perplexity(dir + "/gptq_head", ev).mean_nll;
      ev.load_model = true;
      const double whole = eval_perplexity(dir + "/gptq_head", ev).mean_nll;
      EXPECT_NEAR(whole, streamed, 1e-5 * streamed) << what;
      ev.load_model = false;
      EXPECT_GT(std::fabs(eval_perplexity(dir + "/gptq", ev).mean_nll - streamed), 1e-5 * streamed)
          << what << ": the quantized head changes nothing";
      fs::remove_all(dir + "/gptq_head");
      fs::remove_all(dir + "/gptq");
    }
    fs::remove_all(o.out);
  }
  // Weight-and-activation schemes and the whole-model path refuse the head by name.
  QuantizeOptions bad;
  bad.model = model;
  bad.out = dir + "/bad";
  bad.scheme = "w8a8";
  bad.targets = with_head;
  try {
    quantize_run(bad);
    ADD_FAILURE() << "w8a8 with lm_head accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("lm_head"), std::string::npos) << err.what();
  }
  bad.scheme = "w8a16";
  bad.load_model = true;
  try {
    quantize_run(bad);
    ADD_FAILURE() << "--load-model with lm_head accepted";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("--load-model"), std::string::npos) << err.what();
  }
  EXPECT_FALSE(fs::exists(dir + "/bad"));
  fs::remove_all(dir);
}

// Calibrated methods stream layer by layer (only layer i in memory, from the memory-mapped
// checkpoint) and must write what the whole-model path writes, byte for byte, with the same
// calibration report: GPTQ (act-order groups too), SmoothQuant with an auto alpha and static
// observers, AWQ with and without zero points; f32 and bf16 inputs; the calibration states in
// memory or spilled to a file under a tiny --max-memory; --sensitivity with --keep-float (after
// SmoothQuant and after AWQ, which change the float weights the kept groups are written with);
// W4A8 (4-bit weights, int8 activations per token) after SmoothQuant.
TEST(Quantize, StreamingCalibrationEqualsTheWholeModelPath) {
  env_init(2);
  std::string dir = test::temp_dir("quant_stream");
  test::trained_micro_model(dir, 20, 11);
  bf16_copy(dir + "/run/model", dir + "/bf16");
  struct Case {
    const char* model;
    const char* scheme;
    const char* method;
    const char* acts;
    const char* observer;
    const char* sq;
    bool awq, asym, groups;
    int64_t keep_float = -1;  // >= 0: --sensitivity --keep-float K
  };
  int compared = 0;
  for (Case cs : {Case{"run/model", "w4a16", "gptq", "dynamic", "minmax", "", false, false, false},
                  Case{"run/model", "w4a16", "gptq", "dynamic", "minmax", "", false, true, true},
                  Case{"run/model", "w8a8", "rtn", "static", "entropy", "auto", false, false, false},
                  Case{"bf16", "w8a8", "gptq", "static", "mse", "0.5", false, false, false},
                  Case{"run/model", "w4a16", "rtn", "dynamic", "minmax", "", true, true, false},
                  Case{"bf16", "w8a16", "gptq", "dynamic", "minmax", "", true, false, false},
                  Case{"run/model", "w8a8", "gptq", "static", "minmax", "0.5", false, false, false, 2},
                  Case{"bf16", "w4a8", "gptq", "dynamic", "minmax", "0.5", false, false, false},
                  Case{"bf16", "w4a16", "rtn", "dynamic", "minmax", "", true, false, false, 1}}) {
    const std::string what = std::string(cs.model) + "/" + cs.scheme + "/" + cs.method + "/" +
                             cs.acts + "/" + cs.sq + (cs.awq ? "/awq" : "") + (cs.asym ? "/asym" : "") +
                             (cs.groups ? "/groups" : "") +
                             (cs.keep_float >= 0 ? "/keep" + std::to_string(cs.keep_float) : "");
    QuantizeOptions o;
    o.model = dir + "/" + cs.model;
    o.scheme = cs.scheme;
    o.method = cs.method;
    o.activations = cs.acts;
    o.observer = cs.observer;
    o.smoothquant = cs.sq;
    o.awq = cs.awq;
    o.asym = cs.asym;
    o.act_order = o.act_order_groups = cs.groups;
    o.sensitivity = cs.keep_float >= 0;
    o.keep_float = std::max<int64_t>(cs.keep_float, 0);
    o.sensitivity_tokens = 512;
    o.group_size = std::string(cs.scheme) == "w8a8" ? 0 : 32;
    o.data = dir + "/data";
    o.calib_samples = 6;
    o.calib_len = 32;
    o.eval_tokens = compared == 0 ? 1024 : 0;
    o.eval_seq_len = 32;
    o.out = dir + "/whole";
    o.load_model = true;
    QuantizeResult ref = quantize_run(o);
    o.out = dir + "/stream";
    o.load_model = false;
    o.threads = 2;
    o.max_memory = compared % 2 ? "1k" : "4G";  // odd cases: the states spill to a file
    QuantizeResult got = quantize_run(o);
    EXPECT_TRUE(got.report["streaming"].get<bool>()) << what;
    EXPECT_EQ(got.report["calibration"]["states_spilled"].get<bool>(), compared % 2 == 1) << what;
    EXPECT_EQ(got.report["calibration"]["states_bytes"].get<uint64_t>(), 6u * 32u * 32u * 4u) << what;
    EXPECT_EQ(got.report["layer_seconds"].size(), 2u) << what;
    for (const char* f : {"model.safetensors", "config.json", "shrink.json"}) {
      EXPECT_TRUE(core::read_file(dir + "/stream/" + f).take_or_throw() ==
                  core::read_file(dir + "/whole/" + f).take_or_throw())
          << what << ": " << f << " differs";
    }
    for (const char* k : {"bytes_before", "bytes_after", "quantized_modules", "gptq", "awq",
                          "smoothquant_alpha_per_layer", "calibration/sequences",
                          "calibration/seq_len"}) {
      const nlohmann::json::json_pointer ptr(std::string("/") + k);
      EXPECT_EQ(got.report.value(ptr, nlohmann::json()), ref.report.value(ptr, nlohmann::json()))
          << what << ": " << k;
    }
    if (o.eval_tokens) expect_same_accuracy_report(got.report, ref.report, what);
    if (o.scheme == "w4a8") {  // compressed-tensors W4AINT8: pack-quantized, int8 per token
      const core::ModelConfig qc = core::config_load(dir + "/stream").take_or_throw();
      const core::QuantScheme qs =
          core::quant_config_from_json(qc.raw["quantization_config"]).take_or_throw();
      EXPECT_EQ(core::quant_scheme_name(qs), "w4a8/g32") << what;
      EXPECT_EQ(qc.raw["quantization_config"]["format"], "pack-quantized") << what;
    }
    if (o.sensitivity) {
      // Each group alone quantized, by its KL to the float model: the streamed probes run the
      // original float layers where the whole model holds smoothed or scaled ones (equal up to
      // rounding), and batch the windows, so the KLs agree to float rounding. These briefly
      // trained models' KLs are small (1e-7 to 1e-5: float32 noise is about 1% of them), so the
      // cases keep groups whose KL stands clear of the next one, and the same ones stay float.
      EXPECT_EQ(got.report["kept_float"], ref.report["kept_float"]) << what;
      EXPECT_EQ(got.report["kept_float"].size(), size_t(cs.keep_float)) << what;
      const nlohmann::json &gs = got.report["sensitivity"], &rs = ref.report["sensitivity"];
      ASSERT_EQ(gs.size(), 8u) << what;  // 2 layers x 4 groups
      ASSERT_EQ(rs.size(), gs.size()) << what;
      std::map<std::string, double> by_group;
      for (const auto& e : gs) by_group[e["group"].get<std::string>()] = e["kl"].get<double>();
      for (size_t k = 0; k < rs.size(); ++k) {
        const double kr = rs[k]["kl"].get<double>(), kg = by_group.at(rs[k]["group"].get<std::string>());
        EXPECT_GT(kr, 0.0) << what << ": " << rs[k]["group"];
        EXPECT_NEAR(kg, kr, 2e-2 * kr + 3e-8) << what << ": " << rs[k]["group"];
        if (k > 0) EXPECT_LE(kr, rs[k - 1]["kl"].get<double>()) << what << ": most sensitive first";
      }
      const double last_kept = rs[size_t(cs.keep_float) - 1]["kl"].get<double>(),
                   first_quantized = rs[size_t(cs.keep_float)]["kl"].get<double>();
      ASSERT_GT(last_kept - first_quantized, 4e-2 * last_kept + 6e-8) << what << ": no clear cut";
    }
    ++compared;
  }
  EXPECT_EQ(compared, 9);
  fs::remove_all(dir);
}

// A weight that is not a number fails model-free quantization with kInvalidInput naming the
// tensor and where in it, and nothing is written.
TEST(Quantize, ModelFreeRejectsANonFiniteWeightByName) {
  env_init(1);
  std::string dir = test::temp_dir("quant_nan");
  test::make_inputs(dir);
  InitOptions io;
  io.seed = 3;
  model_init(core::config_load(dir).take_or_throw(), dir + "/model", io);
  // Patch row 3, column 5 of that weight to NaN in the file (header size + data offset).
  const std::string file = dir + "/model/model.safetensors";
  std::string bytes = core::read_file(file).take_or_throw();
  uint64_t header = 0;
  std::memcpy(&header, bytes.data(), 8);
  auto j = nlohmann::json::parse(bytes.substr(8, header));
  const auto& e = j["model.layers.1.self_attn.k_proj.weight"];
  const int64_t cols = e["shape"][1].get<int64_t>();
  const uint64_t pos = 8 + header + e["data_offsets"][0].get<uint64_t>() + uint64_t(3 * cols + 5) * 4;
  const float nan = std::nanf("");
  std::memcpy(bytes.data() + pos, &nan, 4);
  ASSERT_TRUE(core::write_file_atomic(file, bytes).is_ok());
  QuantizeOptions o;
  o.model = dir + "/model";
  o.out = dir + "/q";
  o.scheme = "w8a16";
  o.eval_tokens = 0;
  try {
    quantize_run(o);
    FAIL() << "a NaN weight was quantized";
  } catch (const Error& err) {
    EXPECT_EQ(err.code(), StatusCode::kInvalidInput);
    const std::string msg = err.what();
    EXPECT_NE(msg.find("model.layers.1.self_attn.k_proj.weight: non-finite weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row 3, column 5"), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(o.out));
  fs::remove_all(dir);
}

TEST(Quantize, BadOptionsAreRejectedWithClearErrors) {
  auto expect_bad = [](QuantizeOptions o, const std::string& needle) {
    o.model = "m";
    o.out = "o";
    try {
      quantize_validate(o);
      FAIL() << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), StatusCode::kInvalidInput);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  QuantizeOptions o;
  o.bits = 5;
  expect_bad(o, "--bits 5 is not supported");
  o = {};
  o.observer = "vibes";
  expect_bad(o, "--observer 'vibes' is unknown");
  o = {};
  o.scheme = "w4a4";
  expect_bad(o, "--scheme 'w4a4'");
  o = {};
  o.bits = 4;  // 4-bit weights are --scheme w4a16
  expect_bad(o, "--bits 4 is not supported with --scheme w8a8");
  o = {};
  o.scheme = "w4a16";
  o.block_size = 96;  // must hold the default groups (up to 128)
  expect_bad(o, "--block-size 96");
  o = {};
  o.smoothquant = "1.7";
  expect_bad(o, "--smoothquant '1.7'");
  o = {};
  o.scheme = "w8a16";
  o.group_size = 48;
  expect_bad(o, "--group-size 48");
  o = {};
  o.method = "awq";
  expect_bad(o, "--method 'awq': expected rtn (round to nearest) or gptq; AWQ is --awq");
  o = {};
  o.awq = true;  // the default scheme is w8a8
  expect_bad(o, "--awq is for weight-only schemes");
  o = {};
  o.scheme = "w4a16";
  o.awq = true;
  o.smoothquant = "auto";
  expect_bad(o, "--awq and --smoothquant both rescale");
  o = {};
  o.awq_clip = false;
  expect_bad(o, "--awq-no-clip applies to --awq");
  o = {};
  o.scheme = "w8a16";
  o.asym = true;
  expect_bad(o, "--asym (zero points) is for --scheme w4a16");
  o = {};
  o.method = "gptq";
  o.act_order_groups = true;
  expect_bad(o, "--act-order-groups needs --act-order");
  o = {};
  o.scheme = "w8a16";
  o.method = "gptq";
  o.group_size = 64;
  o.block_size = 96;
  expect_bad(o, "--block-size 96: expected a positive multiple of --group-size (64)");
  o = {};
  o.act_order = true;
  expect_bad(o, "--act-order applies to --method gptq");
  o = {};
  o.method = "gptq";
  o.damp = -0.1;
  expect_bad(o, "--damp must be in [0, 1]");
}
