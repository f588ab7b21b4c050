// GGUF export (pipeline/gguf_export.h), read back by a small independent reader of the format
// (GGUF v3: header, typed metadata, tensor table, 32-byte aligned data):
//  - the block codecs against values derived by hand from llama.cpp's reference rules;
//  - a float fixture: metadata from its config, tensor names, ggml dimension order, every weight
//    bit for bit, q/k rows in llama.cpp's RoPE pair order, Llama 3 rope_freqs from the config;
//  - shrink's 4-bit and 8-bit weights (symmetric and asymmetric, group 32 and per channel) mapped
//    onto Q4_0 / Q4_1 / Q8_0 blocks: the dequantized GGUF equals the dequantized checkpoint but
//    for the f16 rounding of the scales, which the result reports; act-order is requantized and
//    says so;
//  - errors: an unknown --type, rows that are not a multiple of 32 for a block type.
// llama.cpp itself runs the files in scripts/llamacpp_check.sh (ctest llamacpp_check).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "core/dtype.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "pipeline/gguf_export.h"
#include "pipeline/random_model.h"
#include "tests/export/util.h"

namespace fs = std::filesystem;
using namespace shrink;
using pipeline::GgmlType;

namespace {

std::string fixture(const std::string& name) { return std::string(SHRINK_FIXTURES_DIR) + "/hf/" + name; }

std::string temp_dir(const std::string& tag) {
  const fs::path d = fs::temp_directory_path() / ("shrink-gguf-" + tag + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

// A GGUF file read back: metadata (numbers as double, strings, arrays' lengths and first
// values) and tensors (type, dims, bytes).
struct Gguf {
  struct Tensor {
    uint32_t type = 0;
    std::vector<uint64_t> ne;
    std::vector<uint8_t> data;
  };
  uint32_t version = 0;
  std::map<std::string, double> num;
  std::map<std::string, std::string> str;
  std::map<std::string, std::vector<std::string>> strs;
  std::map<std::string, std::vector<double>> nums;
  std::vector<std::string> order;
  std::map<std::string, Tensor> t;
};

Gguf gguf_read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t p = 0;
  auto rd = [&](void* out, size_t n) {
    if (p + n > b.size()) throw std::runtime_error("gguf: truncated");
    std::memcpy(out, b.data() + p, n);
    p += n;
  };
  auto u32 = [&] { uint32_t v; rd(&v, 4); return v; };
  auto u64 = [&] { uint64_t v; rd(&v, 8); return v; };
  auto str = [&] { std::string s(u64(), '\0'); rd(s.data(), s.size()); return s; };
  auto scalar = [&](uint32_t type) -> double {
    switch (type) {
      case 0: { uint8_t v; rd(&v, 1); return v; }
      case 1: { int8_t v; rd(&v, 1); return v; }
      case 4: return u32();
      case 5: { int32_t v; rd(&v, 4); return v; }
      case 6: { float v; rd(&v, 4); return v; }
      case 7: { uint8_t v; rd(&v, 1); return v; }
      case 10: return double(u64());
      default: throw std::runtime_error("gguf: unexpected type " + std::to_string(type));
    }
  };
  Gguf g;
  EXPECT_EQ(u32(), 0x46554747u);  // "GGUF"
  g.version = u32();
  const uint64_t nt = u64(), nkv = u64();
  for (uint64_t i = 0; i < nkv; ++i) {
    const std::string k = str();
    const uint32_t type = u32();
    if (type == 8) {
      g.str[k] = str();
    } else if (type == 9) {
      const uint32_t et = u32();
      const uint64_t n = u64();
      for (uint64_t j = 0; j < n; ++j) {
        if (et == 8) g.strs[k].push_back(str());
        else g.nums[k].push_back(scalar(et));
      }
      if (n == 0) g.strs[k];
    } else {
      g.num[k] = scalar(type);
    }
  }
  std::vector<std::pair<std::string, uint64_t>> offs;
  for (uint64_t i = 0; i < nt; ++i) {
    const std::string name = str();
    Gguf::Tensor t;
    const uint32_t dims = u32();
    for (uint32_t d = 0; d < dims; ++d) t.ne.push_back(u64());
    t.type = u32();
    offs.push_back({name, u64()});
    g.order.push_back(name);
    g.t[name] = t;
  }
  const size_t data = (p + 31) / 32 * 32;
  for (auto& [name, off] : offs) {
    Gguf::Tensor& t = g.t[name];
    uint64_t n = 1;
    for (uint64_t d : t.ne) n *= d;
    const uint64_t bytes = pipeline::ggml_row_bytes(GgmlType(t.type), int64_t(t.ne[0])) * (n / t.ne[0]);
    EXPECT_EQ(off % 32, 0u) << name;
    EXPECT_LE(data + off + bytes, b.size()) << name;
    t.data.assign(b.begin() + long(data + off), b.begin() + long(data + off + bytes));
  }
  return g;
}

float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return core::f16_to_f32(h);
}

// Dequantized row-major values of a block-typed tensor (llama.cpp's dequantize_row_*).
std::vector<float> dequantize(const Gguf::Tensor& t) {
  const uint64_t n = t.ne[0] * (t.ne.size() > 1 ? t.ne[1] : 1);
  std::vector<float> x;
  const uint8_t* p = t.data.data();
  for (uint64_t b = 0; b < n / 32; ++b) {
    if (GgmlType(t.type) == GgmlType::kQ8_0) {
      for (int j = 0; j < 32; ++j) x.push_back(float(int8_t(p[2 + j])) * f16(p));
      p += 34;
    } else if (GgmlType(t.type) == GgmlType::kQ4_0) {
      float v[32];
      for (int j = 0; j < 16; ++j) {
        v[j] = float(int(p[2 + j] & 15) - 8) * f16(p);
        v[j + 16] = float(int(p[2 + j] >> 4) - 8) * f16(p);
      }
      x.insert(x.end(), v, v + 32);
      p += 18;
    } else {
      float v[32];
      for (int j = 0; j < 16; ++j) {
        v[j] = float(p[4 + j] & 15) * f16(p) + f16(p + 2);
        v[j + 16] = float(p[4 + j] >> 4) * f16(p) + f16(p + 2);
      }
      x.insert(x.end(), v, v + 32);
      p += 20;
    }
  }
  return x;
}

std::vector<float> floats_of(const core::Checkpoint& ck, const std::string& name) {
  const core::TensorInfo* t = ck.find(name);
  std::vector<float> v(size_t(t->numel()));
  const uint8_t* p = ck.data(*t);
  for (size_t i = 0; i < v.size(); ++i) {
    if (t->dtype == core::DType::kF32) {
      std::memcpy(&v[i], p + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, p + 2 * i, 2);
      v[i] = t->dtype == core::DType::kBF16 ? core::bf16_to_f32(h) : core::f16_to_f32(h);
    }
  }
  return v;
}

}  // namespace

TEST(Gguf, BlockCodecsFollowLlamaCppsReferenceRules) {
  // Q8_0: d = amax / 127; q = round(x / d). x = -16 .. 15 over 4: amax 4, d = 4/127.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[size_t(j)] = float(j - 16) / 4.0f;
  std::vector<uint8_t> q8(34), q4(18), q41(20);
  pipeline::gguf_quantize_q8_0(x.data(), 32, q8.data());
  EXPECT_EQ(f16(q8.data()), core::f16_to_f32(core::f32_to_f16(4.0f / 127.0f)));
  EXPECT_EQ(int8_t(q8[2 + 0]), -127);  // -4 / (4/127)
  EXPECT_EQ(int8_t(q8[2 + 17]), 8);    // x[17] = 0.25: 0.25 * 31.75 = 7.9375 -> 8
  EXPECT_EQ(int8_t(q8[2 + 14]), -16);  // x[14] = -0.5: -15.875 -> -16
  // Q4_0: the value of largest magnitude (-4) is -8 d, so d = 0.5; u = min(15, int(x / d + 8.5)).
  pipeline::gguf_quantize_q4_0(x.data(), 32, q4.data());
  EXPECT_EQ(f16(q4.data()), 0.5f);
  EXPECT_EQ(q4[2] & 15, 0);          // x[0] = -4 -> int(-8 + 8.5) = 0
  EXPECT_EQ(q4[2] >> 4, 8);          // x[16] = 0 -> 8
  EXPECT_EQ(q4[2 + 15] >> 4, 15);    // x[31] = 3.75 -> int(7.5 + 8.5) = 16 -> 15
  EXPECT_EQ(q4[2 + 1] & 15, 1);      // x[1] = -3.75 -> int(-7.5 + 8.5) = 1
  EXPECT_EQ(q4[2 + 1] >> 4, 9);      // x[17] = 0.25 -> int(0.5 + 8.5) = 9
  // Q4_1: d = (max - min) / 15 = 7.75 / 15, m = -4; u = int((x - m) / d + 0.5).
  pipeline::gguf_quantize_q4_1(x.data(), 32, q41.data());
  EXPECT_EQ(f16(q41.data()), core::f16_to_f32(core::f32_to_f16(7.75f / 15.0f)));
  EXPECT_EQ(f16(q41.data() + 2), -4.0f);
  EXPECT_EQ(q41[4] & 15, 0);
  EXPECT_EQ(q41[4 + 15] >> 4, 15);  // x[31]: 7.75 * 15 / 7.75 + 0.5 = 15.5 -> 15
  EXPECT_EQ(q41[4] >> 4, 8);        // x[16] = 0: 4 * 1.9355 + 0.5 = 8.24 -> 8
}

namespace {

// Llama 3's RoPE frequency divisors as transformers computes them (_compute_llama3_parameters):
// the ratio of the plain inverse frequency to the scaled one.
std::vector<double> llama3_divisors(const core::ModelConfig& c) {
  std::vector<double> d;
  const auto& s = c.rope_scaling;
  const double lo_wl = double(s.original_max_position_embeddings) / s.low_freq_factor;
  const double hi_wl = double(s.original_max_position_embeddings) / s.high_freq_factor;
  for (int64_t i = 0; i < c.head_dim / 2; ++i) {
    const double f = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(c.head_dim));
    const double wl = 2 * M_PI / f;
    double scaled = f;
    if (wl > lo_wl) {
      scaled = f / s.factor;
    } else if (wl >= hi_wl) {
      const double sm = (double(s.original_max_position_embeddings) / wl - s.low_freq_factor) /
                        (s.high_freq_factor - s.low_freq_factor);
      scaled = (1 - sm) * f / s.factor + sm * f;
    }
    d.push_back(f / scaled);
  }
  return d;
}

}  // namespace

TEST(Gguf, FloatFixtureMetadataTensorsAndRopeRowOrder) {
  const std::string dir = temp_dir("float"), model = fixture("llama_gqa_llama3rope");
  auto r = pipeline::gguf_export(model, dir + "/m.gguf", {});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->arch, "llama");
  EXPECT_EQ(r->tokenizer, "placeholder");
  const core::ModelConfig c = core::config_load(model).take_or_throw();
  const core::Checkpoint ck = core::Checkpoint::open(model).take_or_throw();
  Gguf g = gguf_read(dir + "/m.gguf");
  EXPECT_EQ(g.version, 3u);
  EXPECT_EQ(g.str["general.architecture"], "llama");
  EXPECT_EQ(g.num["llama.block_count"], double(c.num_layers));
  EXPECT_EQ(g.num["llama.attention.head_count"], 4);
  EXPECT_EQ(g.num["llama.attention.head_count_kv"], 2);
  EXPECT_EQ(g.num["llama.embedding_length"], 64);
  EXPECT_EQ(g.num["llama.feed_forward_length"], 96);
  EXPECT_EQ(g.num["llama.rope.dimension_count"], 16);
  EXPECT_EQ(g.num["llama.rope.freq_base"], double(float(c.rope_theta)));
  EXPECT_EQ(g.num["llama.attention.layer_norm_rms_epsilon"], double(float(c.rms_norm_eps)));
  EXPECT_EQ(g.strs["tokenizer.ggml.tokens"].size(), 300u);
  EXPECT_EQ(g.num["general.file_type"], 0);  // all f32
  // 2 + 9 per layer + rope_freqs (untied: output.weight is there).
  EXPECT_EQ(g.t.size(), size_t(3 + 9 * c.num_layers + 1));
  ASSERT_TRUE(g.t.count("output.weight"));
  const Gguf::Tensor& emb = g.t["token_embd.weight"];
  EXPECT_EQ(emb.ne, (std::vector<uint64_t>{64, 300}));  // ggml order: [in, rows]
  EXPECT_EQ(GgmlType(emb.type), GgmlType::kF32);
  std::vector<float> e = floats_of(ck, "model.embed_tokens.weight");
  EXPECT_EQ(std::memcmp(emb.data.data(), e.data(), e.size() * 4), 0);
  // q (4 heads) and k (2 heads): GGUF row h*16 + 2j + t holds HF row h*16 + t*8 + j.
  for (auto [gg, hf, heads] : {std::tuple<std::string, std::string, int>{"blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", 4},
                               {"blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2}}) {
    const std::vector<float> w = floats_of(ck, hf);
    const float* got = reinterpret_cast<const float*>(g.t[gg].data.data());
    for (int h = 0; h < heads; ++h)
      for (int j = 0; j < 8; ++j)
        for (int t = 0; t < 2; ++t)
          for (int k = 0; k < 64; ++k)
            ASSERT_EQ(got[(h * 16 + 2 * j + t) * 64 + k], w[size_t((h * 16 + t * 8 + j) * 64 + k)]) << gg;
  }
  const std::vector<float> v = floats_of(ck, "model.layers.0.self_attn.v_proj.weight");
  EXPECT_EQ(std::memcmp(g.t["blk.0.attn_v.weight"].data.data(), v.data(), v.size() * 4), 0);
  // Llama 3 RoPE: rope_freqs holds transformers' divisors.
  ASSERT_EQ(c.rope_scaling.type, core::RopeType::kLlama3);
  const std::vector<double> div = llama3_divisors(c);
  const Gguf::Tensor& rf = g.t["rope_freqs.weight"];
  ASSERT_EQ(rf.ne, (std::vector<uint64_t>{8}));
  for (size_t i = 0; i < div.size(); ++i) {
    float got;
    std::memcpy(&got, rf.data.data() + 4 * i, 4);
    EXPECT_NEAR(got, div[i], 1e-6 * div[i]) << i;
  }
  EXPECT_GT(div.back(), 1.0);  // the lowest frequencies really are scaled
  fs::remove_all(dir);
}

TEST(Gguf, Qwen2TiedBf16KeepsBitsBiasesAndHalfRotation) {
  const std::string dir = temp_dir("qwen2"), model = fixture("qwen2_bias_tied_bf16");
  auto r = pipeline::gguf_export(model, dir + "/m.gguf", {});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  Gguf g = gguf_read(dir + "/m.gguf");
  EXPECT_EQ(g.str["general.architecture"], "qwen2");
  EXPECT_FALSE(g.t.count("output.weight"));  // tied: llama.cpp reuses token_embd
  EXPECT_FALSE(g.t.count("rope_freqs.weight"));
  EXPECT_EQ(g.num["general.file_type"], 32);  // bf16
  const core::Checkpoint ck = core::Checkpoint::open(model).take_or_throw();
  const core::TensorInfo* q = ck.find("model.layers.0.self_attn.q_proj.weight");
  ASSERT_EQ(q->dtype, core::DType::kBF16);
  const Gguf::Tensor& gq = g.t["blk.0.attn_q.weight"];
  EXPECT_EQ(GgmlType(gq.type), GgmlType::kBF16);
  ASSERT_EQ(gq.data.size(), q->nbytes);  // qwen2 rotates halves as HF does: rows as stored
  EXPECT_EQ(std::memcmp(gq.data.data(), ck.data(*q), q->nbytes), 0);
  const std::vector<float> b = floats_of(ck, "model.layers.0.self_attn.k_proj.bias");
  const Gguf::Tensor& gb = g.t["blk.0.attn_k.bias"];
  EXPECT_EQ(GgmlType(gb.type), GgmlType::kF32);
  EXPECT_EQ(std::memcmp(gb.data.data(), b.data(), b.size() * 4), 0);
  fs::remove_all(dir);
}

TEST(Gguf, ShrinksIntegerWeightsMapExactlyOntoBlocks) {
  const std::string dir = temp_dir("int"), src = fixture("mistral_mqa_linearrope");
  struct Case {
    std::string name;
    test::QuantSpec q;
    GgmlType type;
  };
  std::vector<Case> cases(3);
  cases[0] = {"w4", {}, GgmlType::kQ4_0};
  cases[0].q.bits = 4;
  cases[0].q.group_size = 32;
  cases[1] = {"w4asym", {}, GgmlType::kQ4_1};
  cases[1].q.bits = 4;
  cases[1].q.asym = true;
  cases[1].q.group_size = 32;
  cases[2] = {"w8", {}, GgmlType::kQ8_0};  // per channel: every block takes its row's scale
  for (const Case& cs : cases) {
    SCOPED_TRACE(cs.name);
    const std::string m = dir + "/" + cs.name;
    test::quantize_model(src, m, cs.q);
    auto r = pipeline::gguf_export(m, m + ".gguf", {});
    ASSERT_TRUE(r.is_ok()) << r.status().message();
    const core::ModelConfig c = core::config_load(m).take_or_throw();
    EXPECT_EQ(r->exact, 7 * c.num_layers);
    EXPECT_EQ(r->requantized, 0);
    EXPECT_GT(r->max_scale_rel_change, 0);
    EXPECT_LE(r->max_scale_rel_change, std::ldexp(1.0, -11));  // f16 rounding, nothing else
    Gguf g = gguf_read(m + ".gguf");
    const core::Checkpoint ck = core::Checkpoint::open(m).take_or_throw();
    for (const std::string mod : {"self_attn.v_proj", "mlp.down_proj"}) {
      const std::string hf = "model.layers.1." + mod;
      const Gguf::Tensor& t = g.t[mod == "mlp.down_proj" ? "blk.1.ffn_down.weight" : "blk.1.attn_v.weight"];
      ASSERT_EQ(GgmlType(t.type), cs.type);
      const std::vector<float> got = dequantize(t);
      const core::TensorInfo* qi = ck.find(hf + ".weight");
      const int8_t* q = reinterpret_cast<const int8_t*>(ck.data(*qi));
      const std::vector<float> s = floats_of(ck, hf + ".weight_scale");
      const core::TensorInfo* zi = ck.find(hf + ".weight_zero_point");
      const int64_t in = qi->shape[1], groups = int64_t(s.size()) / qi->shape[0];
      ASSERT_EQ(got.size(), size_t(qi->numel()));
      for (int64_t i = 0; i < qi->numel(); ++i) {
        const int64_t row = i / in, gidx = row * groups + (i % in) / (in / groups);
        const int zp = cs.q.asym ? int(reinterpret_cast<const int8_t*>(ck.data(*zi))[gidx]) : 0;
        const double want = double(int(q[i]) - zp) * s[size_t(gidx)];
        // f16 scale (and offset) rounding: at most 2^-11 of each term.
        const double bound = std::ldexp(1.0, -11) * (std::fabs(double(q[i]) + 8 * cs.q.asym) * s[size_t(gidx)] +
                                                     std::fabs(double(8 + zp) * s[size_t(gidx)]) * cs.q.asym) + 1e-12;
        ASSERT_NEAR(got[size_t(i)], want, bound) << hf << " [" << i << "]";
      }
    }
  }
  // Act-order groups cannot map onto in-order blocks: requantized, and the result says so.
  test::QuantSpec ao;
  ao.bits = 4;
  ao.group_size = 32;
  ao.act_order_groups = true;
  test::quantize_model(src, dir + "/ao", ao);
  auto r = pipeline::gguf_export(dir + "/ao", dir + "/ao.gguf", {});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->exact, 0);
  EXPECT_GT(r->requantized, 0);
  ASSERT_FALSE(r->notes.empty());
  EXPECT_NE(r->notes[0].find("requantized to q4_0"), std::string::npos) << r->notes[0];
  fs::remove_all(dir);
}

TEST(Gguf, BadTypeAndRowsThatAreNotBlocksAreRefused) {
  const std::string dir = temp_dir("bad");
  pipeline::GgufExportOptions o;
  o.type = "q5_k";
  auto r = pipeline::gguf_export(fixture("llama_gqa_llama3rope"), dir + "/m.gguf", o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(r.status().message().find("--type 'q5_k'"), std::string::npos) << r.status().message();
  // hidden 48: 48-weight rows are not whole 32-weight blocks.
  core::ModelConfig c = core::config_preset("tiny", 300).take_or_throw();
  c.hidden_size = 48;
  c.num_heads = 3;
  c.num_kv_heads = 3;
  c.head_dim = 16;
  ASSERT_TRUE(pipeline::random_model_write(c, dir + "/h48", {}).is_ok());
  o.type = "q8_0";
  r = pipeline::gguf_export(dir + "/h48", dir + "/h48.gguf", o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("rows of 48 weights; q8_0 needs a multiple of 32"),
            std::string::npos) << r.status().message();
  EXPECT_FALSE(fs::exists(dir + "/h48.gguf"));
  o.type = "f16";  // any width in a float type
  EXPECT_TRUE(pipeline::gguf_export(dir + "/h48", dir + "/h48.gguf", o).is_ok());
  fs::remove_all(dir);
}
