// Int8 scheme, rounding and observer tests: quantize_value's rounding and clamping, the
// quantization_config round trip and its errors, and observer thresholds on hand-made
// distributions (uniform, Gaussian, Gaussian plus outliers).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "core/quant.h"

namespace shrink::core {
namespace {

TEST(Quant, RoundHalfToEvenAndSymmetricClamp) {
  EXPECT_EQ(quantize_value(0.5f, 1.0f), 0);   // half to even
  EXPECT_EQ(quantize_value(1.5f, 1.0f), 2);
  EXPECT_EQ(quantize_value(-2.5f, 1.0f), -2);
  EXPECT_EQ(quantize_value(1000.f, 1.0f), 127);
  EXPECT_EQ(quantize_value(-1000.f, 1.0f), -127);  // never -128
}

TEST(Quant, ConfigRoundTripAndErrors) {
  QuantScheme s;
  s.weight_strategy = "group";
  s.group_size = 64;
  s.activations = "none";
  s.ignore = {"lm_head"};
  auto j = quant_config_to_json(s);
  EXPECT_EQ(j["format"], "int-quantized");
  EXPECT_EQ(j["config_groups"]["group_0"]["weights"]["strategy"], "group");
  EXPECT_TRUE(j["config_groups"]["group_0"]["input_activations"].is_null());
  auto back = quant_config_from_json(j);
  ASSERT_TRUE(back.is_ok()) << back.status().message();
  EXPECT_EQ(back->group_size, 64);
  EXPECT_EQ(back->activations, "none");
  for (const char* a : {"static", "dynamic"}) {
    QuantScheme w;
    w.activations = a;
    EXPECT_EQ(quant_config_from_json(quant_config_to_json(w))->activations, a);
  }
  auto j4 = j;
  j4["config_groups"]["group_0"]["weights"]["num_bits"] = 4;
  // 4 bits must come with the pack-quantized format, and round-trip with it.
  EXPECT_NE(quant_config_from_json(j4).status().message().find(
                "weights.num_bits: 4 is not supported here; expected 8 (format int-quantized"),
            std::string::npos);
  QuantScheme w4;
  w4.bits = 4;
  w4.weight_strategy = "group";
  w4.group_size = 128;
  const nlohmann::json j4p = quant_config_to_json(w4);
  EXPECT_EQ(j4p["format"], "pack-quantized");
  auto back4 = quant_config_from_json(j4p);
  ASSERT_TRUE(back4.is_ok()) << back4.status().message();
  EXPECT_EQ(back4->bits, 4);
  EXPECT_EQ(back4->group_size, 128);
  EXPECT_TRUE(quant_scheme_validate(w4, {256}).is_ok());
  w4.activations = "dynamic";  // W4A8
  EXPECT_TRUE(quant_scheme_validate(w4, {256}).is_ok());
  w4.activations = "static";
  EXPECT_NE(quant_scheme_validate(w4, {256}).message().find("float activations (W4A16) or int8 "
                                                           "activations per token (W4A8"),
            std::string::npos);
  // Packing: eight values per int32 word, value k in bits 4 (k % 8), stored as q + 8.
  const std::vector<int8_t> q = {-8, -1, 0, 7, 3, -3, 1, 2, 5};  // 9 values: two words
  std::vector<uint8_t> packed(8);
  int4_pack(q.data(), 1, 9, packed.data());
  uint32_t w0, w1;
  std::memcpy(&w0, packed.data(), 4);
  std::memcpy(&w1, packed.data() + 4, 4);
  for (int k = 0; k < 8; ++k) EXPECT_EQ(int((w0 >> (4 * k)) & 15) - 8, q[size_t(k)]) << k;
  EXPECT_EQ(int(w1 & 15) - 8, 5);
  EXPECT_EQ(w1 >> 4, 0x8888888u);  // padding: zeros
  std::vector<int8_t> back_q(9);
  int4_unpack(packed.data(), 1, 9, back_q.data());
  EXPECT_EQ(back_q, q);
  // Zero points pack along the rows (compressed-tensors' packed_dim 0): value (r, c) in bits
  // 4 (r % 8) of word (r / 8, c).
  {
    const int64_t rows = 10, cols = 3;  // two words per column, the second padded
    std::vector<int8_t> z(size_t(rows * cols));
    for (size_t i = 0; i < z.size(); ++i) z[i] = int8_t(int(i * 5 % 16) - 8);
    std::vector<uint8_t> pz(size_t(int4_packed_cols(rows) * cols * 4));
    int4_pack_rows(z.data(), rows, cols, pz.data());
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        uint32_t w;
        std::memcpy(&w, pz.data() + ((r / 8) * cols + c) * 4, 4);
        EXPECT_EQ(int((w >> (4 * (r % 8))) & 15) - 8, z[size_t(r * cols + c)]) << r << " " << c;
      }
    }
    std::vector<int8_t> zb(z.size());
    int4_unpack_rows(pz.data(), rows, cols, zb.data());
    EXPECT_EQ(zb, z);
  }
  // Asymmetric 4-bit weights round-trip as symmetric: false; 8-bit asymmetric is refused.
  QuantScheme a4 = w4;
  a4.activations = "none";
  a4.symmetric = false;
  const nlohmann::json ja = quant_config_to_json(a4);
  EXPECT_EQ(ja["config_groups"]["group_0"]["weights"]["symmetric"], false);
  auto backa = quant_config_from_json(ja);
  ASSERT_TRUE(backa.is_ok()) << backa.status().message();
  EXPECT_FALSE(backa->symmetric);
  EXPECT_TRUE(quant_scheme_validate(*backa, {256}).is_ok());
  auto j8a = j;
  j8a["config_groups"]["group_0"]["weights"]["symmetric"] = false;
  EXPECT_NE(quant_config_from_json(j8a).status().message().find(
                "weights.symmetric: false is not supported here"),
            std::string::npos);
  QuantScheme a8;
  a8.symmetric = false;
  EXPECT_NE(quant_scheme_validate(a8, {64}).message().find("need 4 bits"), std::string::npos);
  QuantScheme bits5;
  bits5.bits = 5;
  EXPECT_EQ(quant_scheme_validate(bits5, {64}).code(), StatusCode::kInvalidInput);
  QuantScheme obs;
  obs.observer = "vibes";
  EXPECT_NE(quant_scheme_validate(obs, {64}).message().find("observer 'vibes' is unknown"), std::string::npos);
  QuantScheme g;
  g.weight_strategy = "group";
  g.group_size = 64;
  EXPECT_NE(quant_scheme_validate(g, {128, 96}).message().find("does not divide the input width K = 96"),
            std::string::npos);
  EXPECT_TRUE(quant_scheme_validate(g, {128, 192}).is_ok());
}

// The runtime reads the same configs through the same parser: per-tensor weight scales (which
// only the runtime runs), a missing format (int-quantized), and the scheme's name as the
// engine's describe() and the ONNX exporter print it; unsupported groups and targets are errors.
TEST(Quant, OneParserForEveryReader) {
  QuantScheme t;
  t.weight_strategy = "tensor";
  t.activations = "dynamic";
  nlohmann::json j = quant_config_to_json(t);
  j.erase("format");
  auto back = quant_config_from_json(j);
  ASSERT_TRUE(back.is_ok()) << back.status().message();
  EXPECT_EQ(back->weight_strategy, "tensor");
  EXPECT_EQ(back->bits, 8);
  EXPECT_EQ(quant_scheme_name(*back), "w8a8-dynamic/tensor");
  EXPECT_NE(quant_scheme_check_channel_or_group(*back).message().find("per-tensor scales"),
            std::string::npos);
  QuantScheme g4;
  g4.bits = 4;
  g4.symmetric = false;
  g4.weight_strategy = "group";
  g4.group_size = 32;
  EXPECT_EQ(quant_scheme_name(g4), "w4a16-asym/g32");
  EXPECT_TRUE(quant_scheme_check_channel_or_group(g4).is_ok());
  EXPECT_EQ(quant_scheme_name(QuantScheme{}), "w8a16");
  auto expect_error = [](nlohmann::json bad, const std::string& want) {
    auto r = quant_config_from_json(bad);
    ASSERT_FALSE(r.is_ok()) << want;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  };
  nlohmann::json two = quant_config_to_json(QuantScheme{});
  two["config_groups"]["group_1"] = two["config_groups"]["group_0"];
  expect_error(two, "quantization_config.config_groups: expected exactly one group");
  nlohmann::json emb = quant_config_to_json(QuantScheme{});
  emb["config_groups"]["group_0"]["targets"] = {"Embedding"};
  expect_error(emb, "targets: an array of 1 item is not supported; expected [\"Linear\"]");
  // 4-bit weights with int8 activations per token (W4A8, compressed-tensors' W4AINT8 preset):
  // pack-quantized weights, dynamic token activations; static per-tensor scales are refused.
  nlohmann::json act4 = quant_config_to_json(g4);
  act4["config_groups"]["group_0"]["input_activations"] =
      quant_config_to_json(t)["config_groups"]["group_0"]["input_activations"];
  auto w4a8 = quant_config_from_json(act4);
  ASSERT_TRUE(w4a8.is_ok()) << w4a8.status().message();
  EXPECT_EQ(w4a8->bits, 4);
  EXPECT_EQ(w4a8->activations, "dynamic");
  EXPECT_EQ(quant_scheme_name(*w4a8), "w4a8-asym/g32");
  EXPECT_TRUE(quant_scheme_validate(*w4a8, {64}).is_ok());
  QuantScheme g4d = g4;
  g4d.symmetric = true;
  g4d.activations = "dynamic";
  EXPECT_EQ(quant_config_to_json(g4d)["format"], "pack-quantized");
  EXPECT_EQ(quant_config_to_json(g4d)["config_groups"]["group_0"]["input_activations"]["strategy"], "token");
  EXPECT_EQ(quant_scheme_name(g4d), "w4a8/g32");
  QuantScheme st4 = g4;
  st4.activations = "static";
  EXPECT_NE(quant_scheme_validate(st4, {64}).message().find("static activation scales are not supported"),
            std::string::npos);
  nlohmann::json static4 = act4;
  static4["config_groups"]["group_0"]["input_activations"]["strategy"] = "tensor";
  static4["config_groups"]["group_0"]["input_activations"]["dynamic"] = false;
  expect_error(static4, "strategy 'tensor' with dynamic false is not supported with 4-bit weights; "
                        "expected null (W4A16) or token/dynamic (W4A8)");
}

TEST(Quant, ObserversOnHandMadeDistributions) {
  // Uniform |x| on [0, 10): the 99th percentile is 9.9; clipping a flat distribution only hurts,
  // so MSE and entropy keep (nearly) the whole range.
  std::vector<float> u(100000);
  for (size_t i = 0; i < u.size(); ++i) u[i] = 10.0f * float(i) / float(u.size());
  AbsHistogram hu;
  hu.add(u.data(), int64_t(u.size()));
  EXPECT_NEAR(observer_percentile(hu, 99.0), 9.9, 0.02);
  EXPECT_NEAR(observer_percentile(hu, 50.0), 5.0, 0.02);
  EXPECT_GT(observer_mse(hu), 9.5);
  EXPECT_GT(observer_entropy(hu), 9.0);
  // Gaussian N(0, 1) plus 10 outliers at +-1000: minmax sets the scale from 1000 and rounds
  // almost every value to 0. Entropy (distribution shape) and the 99.99th percentile clip the
  // outliers to a few sigma; MSE, which counts the outliers' own squared error, keeps them:
  // 10 values clipped by ~1000 outweigh 200k values rounded to zero.
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0, 1);
  std::vector<float> g(200000);
  for (auto& v : g) v = nd(rng);
  for (int i = 0; i < 10; ++i) g[size_t(i)] = i % 2 ? 1000.f : -1000.f;
  AbsHistogram hg;
  hg.add(g.data(), 100000);  // two batches: the histogram range is fixed by the first
  hg.add(g.data() + 100000, 100000);
  EXPECT_DOUBLE_EQ(hg.max(), 1000.0);
  double t_mse = observer_mse(hg), t_ent = observer_entropy(hg), t_pct = observer_percentile(hg, 99.99);
  EXPECT_GT(t_mse, 500.0);
  EXPECT_GT(t_ent, 2.0);
  EXPECT_LT(t_ent, 100.0);  // the smallest candidate, 128 of 2048 bins: 62.5
  EXPECT_GT(t_pct, 3.0);  // |x| 99.99th percentile of N(0,1) is ~3.9
  EXPECT_LT(t_pct, 5.0);
  // Without outliers, a Gaussian's MSE-optimal 8-bit clip sits near its max (few values beyond
  // 4 sigma, and rounding error is small at 127 levels).
  AbsHistogram hn;
  hn.add(g.data() + 10, 199990);
  EXPECT_GT(observer_mse(hn), 3.0);
  EXPECT_LE(observer_mse(hn), hn.max() + 1e-9);
  EXPECT_GT(observer_entropy(hn), 2.0);
}

TEST(Quant, HistogramGrowsByMergingBins) {
  AbsHistogram h(8);
  float a[2] = {1.0f, 0.5f};
  h.add(a, 2);
  float b[1] = {3.5f};  // beyond the first range: bins merge until it fits
  h.add(b, 1);
  EXPECT_DOUBLE_EQ(h.total(), 3.0);
  EXPECT_DOUBLE_EQ(h.max(), 3.5);
  double sum = 0;
  for (double c : h.counts()) sum += c;
  EXPECT_DOUBLE_EQ(sum, 3.0);
  EXPECT_GE(h.bin_width() * 8, 3.5);
}

}  // namespace
}  // namespace shrink::core
