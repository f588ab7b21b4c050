// config.json parsing and validation (v4 and v5 forms, every error path names the field),
// HF tensor naming, RoPE frequencies, presets, thread resolution and the sampler.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <sys/stat.h>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/sampling.h"
#include "core/threads.h"

using namespace shrink;
using namespace shrink::core;

namespace {

const char* kLlama = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 100, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
  "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 128,
  "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "custom_key": {"kept": true},
  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
})";

std::string with(const std::string& key, const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(kLlama);
  if (value == "<erase>") j.erase(key);
  else j[key] = nlohmann::json::parse(value);
  return j.dump();
}

void expect_error(const std::string& text, const std::string& needle) {
  auto r = config_from_json(text, "cfg.json");
  ASSERT_FALSE(r.is_ok()) << "expected an error containing: " << needle;
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  EXPECT_EQ(r.status().message().rfind("cfg.json", 0), 0u) << r.status().message();
}

}  // namespace

TEST(ModelConfig, ParsesV4Llama) {
  ModelConfig c = config_from_json(kLlama, "cfg.json").take_or_throw();
  EXPECT_EQ(c.arch, Arch::kLlama);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.rope_scaling.type, RopeType::kLlama3);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 64);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.dtype, "bfloat16");
  EXPECT_FALSE(c.qkv_bias);
}

TEST(ModelConfig, ParsesV5RopeParametersAndQwen2Bias) {
  const char* q = R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}, "dtype": "float16",
    "use_sliding_window": false, "sliding_window": null, "tie_word_embeddings": true})";
  ModelConfig c = config_from_json(q, "q.json").take_or_throw();
  EXPECT_EQ(c.arch, Arch::kQwen2);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.dtype, "float16");
  auto names = expected_tensors(c);
  bool has_qbias = false, has_lm_head = false;
  for (auto& t : names) {
    has_qbias |= t.name == "model.layers.0.self_attn.q_proj.bias";
    has_lm_head |= t.name == "lm_head.weight";
  }
  EXPECT_TRUE(has_qbias);
  EXPECT_FALSE(has_lm_head);  // tied
}

TEST(ModelConfig, RoundTripPreservesUnknownKeys) {
  ModelConfig c = config_from_json(kLlama, "cfg.json").take_or_throw();
  ModelConfig d = config_from_json(config_to_json(c), "again").take_or_throw();
  EXPECT_EQ(d.raw["custom_key"]["kept"], true);
  EXPECT_EQ(d.rope_scaling.type, RopeType::kLlama3);
  EXPECT_EQ(d.head_dim, c.head_dim);
  EXPECT_EQ(d.dtype, "bfloat16");
}

TEST(ModelConfig, ErrorsNameTheField) {
  expect_error("{not json", "not valid JSON: parse error at line 1, column 3");
  expect_error("[1,2]", "expected a JSON object");
  expect_error(with("architectures", R"(["GPT2LMHeadModel"])"),
               "architecture 'GPT2LMHeadModel' is not supported; expected one of "
               "LlamaForCausalLM");
  expect_error(with("hidden_size", "<erase>"), "field 'hidden_size': missing");
  expect_error(with("hidden_size", R"("64")"), "field 'hidden_size': expected an integer in [1, 131072], got \"64\"");
  expect_error(with("num_hidden_layers", "0"), "field 'num_hidden_layers': 0 is out of range");
  expect_error(with("num_key_value_heads", "3"), "num_key_value_heads 3 must divide");
  expect_error(with("rms_norm_eps", "-1"), "field 'rms_norm_eps'");
  expect_error(with("hidden_act", R"("gelu")"), "field 'hidden_act'");
  expect_error(with("tie_word_embeddings", "1"), "field 'tie_word_embeddings': expected true or false");
  expect_error(with("rope_scaling", R"({"rope_type": "yarn", "factor": 4})"),
               "rope type 'yarn' is not supported");
  expect_error(with("rope_scaling", R"({"rope_type": "linear"})"), "needs 'factor'");
  expect_error(with("mlp_bias", "true"), "field 'mlp_bias'");
  expect_error(with("sliding_window", "16"), "field 'sliding_window'");
}

TEST(ModelConfig, MistralSlidingWindowAndQwen2SlidingRefused) {
  nlohmann::json j = nlohmann::json::parse(kLlama);
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = 16;
  ModelConfig c = config_from_json(j.dump(), "m.json").take_or_throw();
  ASSERT_TRUE(c.sliding_window.has_value());
  EXPECT_EQ(*c.sliding_window, 16);
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["use_sliding_window"] = true;
  expect_error(j.dump(), "sliding-window attention is not supported");
}

TEST(ModelConfig, RopeFrequencies) {
  ModelConfig c = config_from_json(kLlama, "cfg.json").take_or_throw();
  c.rope_scaling.type = RopeType::kDefault;
  auto f = rope_inv_freq(c);
  ASSERT_EQ(f.size(), 4u);
  EXPECT_DOUBLE_EQ(f[0], 1.0);
  EXPECT_NEAR(f[1], std::pow(500000.0, -0.25), 1e-15);
  c.rope_scaling.type = RopeType::kLinear;
  c.rope_scaling.factor = 4;
  EXPECT_NEAR(rope_inv_freq(c)[1], std::pow(500000.0, -0.25) / 4, 1e-15);
  // llama3: wavelengths above old_ctx/low_freq are divided by factor; below old_ctx/high kept.
  c = config_from_json(kLlama, "cfg.json").take_or_throw();
  auto g = rope_inv_freq(c);
  EXPECT_DOUBLE_EQ(g[0], 1.0);  // wavelength 2*pi < 64/4: unchanged
  double base3 = std::pow(500000.0, -0.75);  // wavelength ~ 1.3e4 > 64: divided by 8
  EXPECT_NEAR(g[3], base3 / 8.0, 1e-18);
}

TEST(ModelConfig, PresetsAreValid) {
  for (const char* p : {"tiny", "small", "base"}) {
    ModelConfig c = config_preset(p, 4096).take_or_throw();
    EXPECT_TRUE(config_validate(c).is_ok());
    ModelConfig d = config_from_json(config_to_json(c), p).take_or_throw();
    EXPECT_EQ(d.hidden_size, c.hidden_size);
  }
  auto r = config_preset("huge", 10);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("expected one of tiny, small, base"), std::string::npos);
}

TEST(ModelConfig, StopTokenIdsFromConfigGenerationConfigAndTokenizer) {
  char tmpl[] = "/tmp/shrink_stop_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  auto cfg = config_from_json(with("eos_token_id", "[128001, 128009]"), "cfg.json");
  ASSERT_TRUE(cfg.is_ok()) << cfg.status().message();
  // config.json's list, in order; the tokenizer's guess only when nothing names one.
  EXPECT_EQ(stop_token_ids(dir, *cfg, 7).value(), (std::vector<int64_t>{128001, 128009}));
  auto none = config_from_json(with("eos_token_id", "null"), "cfg.json");
  ASSERT_TRUE(none.is_ok());
  EXPECT_EQ(stop_token_ids(dir, *none, 7).value(), (std::vector<int64_t>{7}));
  EXPECT_TRUE(stop_token_ids(dir, *none, -1).value().empty());
  // generation_config.json adds its ids (Llama 3 Instruct's <|eot_id|>), without repeats.
  ASSERT_TRUE(write_file_atomic(dir + "/generation_config.json",
                                "{\"eos_token_id\": [128001, 128008, 128009]}")
                  .is_ok());
  EXPECT_EQ(stop_token_ids(dir, *cfg, 7).value(), (std::vector<int64_t>{128001, 128009, 128008}));
  EXPECT_EQ(stop_token_ids(dir, *none, 7).value(), (std::vector<int64_t>{128001, 128008, 128009}));
  // copy_model_sidecars carries it to a written model.
  const std::string out = dir + "/out";
  ASSERT_EQ(::mkdir(out.c_str(), 0755), 0);
  ASSERT_TRUE(copy_model_sidecars(dir, out).is_ok());
  EXPECT_EQ(stop_token_ids(out, *none, 7).value(), (std::vector<int64_t>{128001, 128008, 128009}));
  // A malformed file is an error naming it.
  ASSERT_TRUE(write_file_atomic(dir + "/generation_config.json", "{\"eos_token_id\": \"x\"}").is_ok());
  auto bad = stop_token_ids(dir, *cfg, 7);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("generation_config.json: field 'eos_token_id'"),
            std::string::npos)
      << bad.status().message();
  std::filesystem::remove_all(dir);
}

TEST(ThreadsResolve, FlagEnvAndDefault) {
  EXPECT_EQ(threads_resolve(3).take_or_throw(), 3);
  setenv("SHRINK_THREADS", "5", 1);
  EXPECT_EQ(threads_resolve(0).take_or_throw(), 5);
  setenv("SHRINK_THREADS", "five", 1);
  auto r = threads_resolve(0);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("SHRINK_THREADS='five'"), std::string::npos);
  unsetenv("SHRINK_THREADS");
  EXPECT_GE(threads_resolve(0).take_or_throw(), 1);
}

TEST(Sampler, GreedyTopKTopPAndDeterminism) {
  std::vector<float> logits = {0.1f, 2.0f, 1.9f, -1.0f, 2.0f};
  Sampler greedy({0.0f, 0, 1.0f}, 1);
  EXPECT_EQ(greedy.sample(logits.data(), 5), 1);  // tie between 1 and 4: lowest id
  Sampler k1({1.0f, 1, 1.0f}, 9);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(k1.sample(logits.data(), 5), 1);
  // top-p 0.5 keeps only the two 2.0 logits (each ~0.31 of the mass) -> ids 1 or 4.
  Sampler p({1.0f, 0, 0.5f}, 3);
  for (int i = 0; i < 50; ++i) {
    int id = p.sample(logits.data(), 5);
    EXPECT_TRUE(id == 1 || id == 4) << id;
  }
  Sampler a({0.8f, 0, 0.95f}, 123), b({0.8f, 0, 0.95f}, 123);
  std::vector<int> sa, sb;
  for (int i = 0; i < 100; ++i) {
    sa.push_back(a.sample(logits.data(), 5));
    sb.push_back(b.sample(logits.data(), 5));
  }
  EXPECT_EQ(sa, sb);
  // Frequencies follow the softmax: id 3 (logit -1) is rare, ids 1/2/4 common.
  Sampler f({1.0f, 0, 1.0f}, 7);
  std::vector<int> count(5, 0);
  for (int i = 0; i < 4000; ++i) count[size_t(f.sample(logits.data(), 5))]++;
  EXPECT_LT(count[3], 120);
  EXPECT_GT(count[1], 900);
}

// ---- Hardening (issue 25): untrusted config.json --------------------------------------------

// One unknown field nested 200,000 arrays deep: before the depth cap, copying config.json into
// ModelConfig::raw (and dumping it into messages) recursed once per level and overflowed the
// stack (`shrink inspect` and `shrink-rt eval` died with SIGSEGV).
TEST(ModelConfigHardening, DeeplyNestedFieldIsRefusedWithItsPosition) {
  std::string text = kLlama;
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  text.insert(1, "\n\"x\": " + deep + ",");
  expect_error(text, "cfg.json:2:");
  expect_error(text, "JSON nested deeper than 64 levels");
  // 64 levels are fine (an unknown field is kept as it is).
  std::string ok = kLlama;
  ok.insert(1, "\"x\": " + std::string(63, '[') + std::string(63, ']') + ",");
  EXPECT_TRUE(config_from_json(ok, "cfg.json").is_ok());
}

TEST(ModelConfigHardening, HugeOrFractionalNumbersAreRangeCheckedBeforeAnyCast) {
  // 1e300 looks integral (floor(x) == x) but has no int64 value: casting it was undefined.
  expect_error(with("hidden_size", "1e300"), "field 'hidden_size': expected an integer in");
  expect_error(with("max_position_embeddings", "-1e300"), "field 'max_position_embeddings'");
  expect_error(with("hidden_size", "64.5"), "field 'hidden_size'");
  EXPECT_EQ(config_from_json(with("hidden_size", "64.0"), "cfg.json").take_or_throw().hidden_size,
            64);
  expect_error(with("rope_scaling", R"({"rope_type": "llama3", "factor": 8.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 1e300})"),
               "field 'original_max_position_embeddings': expected an integer in [1, 268435456]");
  expect_error(with("bos_token_id", "1e300"), "field 'bos_token_id'");
  expect_error(with("eos_token_id", "18446744073709551615"), "field 'eos_token_id'");
}

TEST(ModelConfigHardening, DimensionsAreBoundedAndProductsChecked) {
  expect_error(with("vocab_size", "16777217"), "field 'vocab_size': 16777217 is out of range");
  expect_error(with("num_hidden_layers", "100000"), "field 'num_hidden_layers'");
  expect_error(with("max_position_embeddings", "9007199254740992"),
               "field 'max_position_embeddings'");
  // Each factor in bounds, the KV cache of the whole context in bytes (layers 4096 x positions
  // 2^28 x kv_dim 2^24 x 8) is not: refused instead of overflowing int64.
  nlohmann::json j = nlohmann::json::parse(kLlama);
  j["num_hidden_layers"] = 4096;
  j["max_position_embeddings"] = 1 << 28;
  j["num_attention_heads"] = 4096;
  j["num_key_value_heads"] = 4096;
  j["head_dim"] = 4096;
  expect_error(j.dump(), "the sizes overflow 64 bits");
  // Configs built in code go through the same bounds.
  ModelConfig c = config_from_json(kLlama, "cfg.json").take_or_throw();
  c.num_kv_heads = 0;
  EXPECT_FALSE(config_validate(c).is_ok());  // was a division by zero
}

TEST(ModelConfigHardening, ErrorsDescribeValuesInsteadOfDumpingThem) {
  nlohmann::json arr = nlohmann::json::array();
  for (int i = 0; i < 50000; ++i) arr.push_back(i);
  auto r = config_from_json(with("hidden_act", arr.dump()), "cfg.json");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("an array of 50000 items"), std::string::npos)
      << r.status().message().substr(0, 200);
  EXPECT_LT(r.status().message().size(), 300u);
}
