// Holes that a review of the parsers found (issue 25), each with the input that showed it:
// untrusted JSON depth and values (json_util), checked size arithmetic, a sparse tokenizer id,
// and the one checkpoint validator's group-scale shape (`--set` through a scalar recipe value is
// in tests/pipeline/test_recipe.cpp).
// Every test here failed (or crashed) before its fix.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <limits>
#include <string>

#include "core/checked_math.h"
#include "core/json_util.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"

using namespace shrink;
using namespace shrink::core;
using nlohmann::json;

// The JSONL readers (text corpora, benchmark records, tokenizer corpora) share one line parser.
TEST(JsonUntrusted, JsonlLineParserDiscardsBadAndTooDeepLines) {
  const json ok = json_parse_line(R"({"text": "a", "n": [1, 2]})");
  ASSERT_TRUE(ok.is_object());
  EXPECT_EQ(ok["text"], "a");
  EXPECT_EQ(ok["n"][1], 2);
  EXPECT_TRUE(json_parse_line("{\"text\": ").is_discarded());
  EXPECT_TRUE(json_parse_line(std::string(kJsonMaxDepth, '[') + std::string(kJsonMaxDepth, ']')).is_array());
  const std::string deep(200000, '[');  // would overflow the stack of a recursive parser
  EXPECT_TRUE(json_parse_line(deep + std::string(200000, ']')).is_discarded());
}

TEST(JsonUntrusted, DepthIsCappedAtParseTimeWithLineAndColumn) {
  EXPECT_TRUE(json_check_depth("[[[]]]", "x", 3).is_ok());
  Status s = json_check_depth("{\"a\":\n [[[1]]]}", "f.json", 3);
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidInput);
  EXPECT_EQ(s.message(), "f.json:2:4: JSON nested deeper than 3 levels; expected at most 3");
  // Brackets inside strings (escaped quotes included) do not count.
  EXPECT_TRUE(json_check_depth(R"(["[[[[\"[[[[", "]]"])", "x", 1).is_ok());
  // 100 KB of '[' (the review's input) is refused, not parsed into a stack-breaking value.
  auto r = json_parse_untrusted(std::string(100000, '['), "deep.json");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("deep.json:1:65: JSON nested deeper than 64"),
            std::string::npos)
      << r.status().message();
}

TEST(JsonUntrusted, ParseErrorsNameThePositionAndNulBytes) {
  auto r = json_parse_untrusted("{\"a\": tru}", "c.json");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("c.json: not valid JSON: parse error at line 1, column"),
            std::string::npos)
      << r.status().message();
  r = json_parse_untrusted(std::string("{}\0{", 4), "c.json");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("NUL byte at offset 2"), std::string::npos);
  EXPECT_EQ(json_parse_untrusted(R"({"a": [1, {"b": null}]})", "c").take_or_throw()["a"][1],
            json({{"b", nullptr}}));
}

TEST(JsonUntrusted, BriefDescriptionsAndIntegerConversions) {
  EXPECT_EQ(json_brief(json::parse("[1,2,3]")), "an array of 3 items");
  EXPECT_EQ(json_brief(json::parse("{\"a\":1}")), "an object with 1 key (\"a\")");
  EXPECT_EQ(json_brief(json::parse(R"({"a":1,"b":2,"c":3,"d":4})")),
            "an object with 4 keys (\"a\", \"b\", \"c\", ...)");
  EXPECT_EQ(json_brief(json("short")), "\"short\"");
  EXPECT_EQ(json_brief(json(std::string(100, 'x'))),
            "\"" + std::string(40, 'x') + "\"... (100 bytes)");
  EXPECT_EQ(json_brief(json(2.5)), "2.5");
  EXPECT_EQ(json_as_int64(json(4096.0)), std::optional<int64_t>(4096));
  EXPECT_EQ(json_as_int64(json(-7)), std::optional<int64_t>(-7));
  EXPECT_EQ(json_as_int64(json(1e300)), std::nullopt);   // integral-looking, no int64 value
  EXPECT_EQ(json_as_int64(json(9223372036854775808.0)), std::nullopt);  // 2^63
  EXPECT_EQ(json_as_int64(json(-9223372036854775808.0)),
            std::optional<int64_t>(std::numeric_limits<int64_t>::min()));
  EXPECT_EQ(json_as_int64(json(uint64_t(18446744073709551615ull))), std::nullopt);
  EXPECT_EQ(json_as_int64(json(0.5)), std::nullopt);
  EXPECT_EQ(json_as_int64(json("12")), std::nullopt);
  const json o = {{"n", "8"}, {"b", 1}, {"i", 1e300}};
  EXPECT_EQ(json_string_or(o, "n", "", "q").take_or_throw(), "8");
  EXPECT_EQ(json_int_or(o, "absent", 5, 0, 9, "q").take_or_throw(), 5);
  auto bad = json_int_or(o, "i", 8, 1, 64, "q.weights");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().message(), "q.weights.i: expected an integer in [1, 64], got 1e+300");
  EXPECT_FALSE(json_bool_or(o, "b", true, "q").is_ok());
  EXPECT_FALSE(json_int_or(o, "n", 8, 1, 64, "q").is_ok());
}

TEST(CheckedMath, ProductsThatLeaveInt64AreReported) {
  EXPECT_EQ(checked_mul({4096, 131072, 4}), std::optional<int64_t>(int64_t(2147483648)));
  EXPECT_EQ(checked_mul({int64_t(1) << 31, int64_t(1) << 31}),
            std::optional<int64_t>(int64_t(1) << 62));
  EXPECT_EQ(checked_mul({int64_t(1) << 32, int64_t(1) << 31}), std::nullopt);  // 2^63
  EXPECT_EQ(checked_mul({4096, int64_t(1) << 28, int64_t(1) << 24, 8}), std::nullopt);
  EXPECT_EQ(checked_mul({-1, 2}), std::nullopt);
  EXPECT_EQ(checked_mul({0, std::numeric_limits<int64_t>::max()}), std::optional<int64_t>(0));
  EXPECT_EQ(checked_add(std::numeric_limits<int64_t>::max(), 1), std::nullopt);
  EXPECT_EQ(checked_add(2, 3), std::optional<int64_t>(5));
}

// The quantization_config readers used json::value(), which throws type_error on a field of the
// wrong type (an exception out of core: exit 1, or an abort in the exception-free runtime).
TEST(QuantConfigUntrusted, WrongTypesAreErrorsNotExceptions) {
  QuantScheme s;
  s.bits = 4;
  s.weight_strategy = "group";
  s.group_size = 32;
  const json good = quant_config_to_json(s);
  ASSERT_TRUE(quant_config_from_json(good).is_ok());
  for (auto [path, value, want] :
       {std::tuple<std::string, json, std::string>{"/quant_method", json::array(),
                                                   "quantization_config.quant_method: expected a string"},
        {"/format", 4, "quantization_config.format: expected a string, got 4"},
        {"/config_groups/group_0/weights/num_bits", "four", "weights.num_bits: expected an integer"},
        {"/config_groups/group_0/weights/num_bits", 1e300, "weights.num_bits: expected an integer"},
        {"/config_groups/group_0/weights/symmetric", "yes", "weights.symmetric: expected true or false"},
        {"/config_groups/group_0/weights/strategy", 7, "weights.strategy: expected a string"}}) {
    json j = good;
    j[json::json_pointer(path)] = value;
    Result<QuantScheme> r = Status::ok();
    EXPECT_NO_THROW(r = quant_config_from_json(j)) << path;
    ASSERT_FALSE(r.is_ok()) << path;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(r.status().message().find(want), std::string::npos) << r.status().message();
  }
}

// A sparse id in model.vocab sized the id table by the id (16,777,215 -> 400 MB of strings).
TEST(TokenizerUntrusted, SparseVocabIdIsRefused) {
  json vocab = json::object();
  for (int b = 0; b < 4; ++b) vocab[std::string(1, char('a' + b))] = b;
  json doc = {{"version", "1.0"},
              {"added_tokens", json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"post_processor", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  doc["model"]["vocab"]["z"] = 16777215;
  auto r = Tokenizer::from_json(doc.dump(), "tok.json");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("tok.json: model.vocab['z']: id 16777215 is beyond the "
                                      "vocabulary; expected ids below 5"),
            std::string::npos)
      << r.status().message();
  // The bound counts added tokens, which may sit in the gaps: id 5 with 5 vocab entries and one
  // added token is within it.
  doc["model"]["vocab"]["z"] = 5;
  doc["added_tokens"] = {{{"id", 4}, {"content", "<s>"}, {"special", true}, {"single_word", false},
                          {"lstrip", false}, {"rstrip", false}, {"normalized", false}}};
  auto ok = Tokenizer::from_json(doc.dump(), "tok.json");
  EXPECT_TRUE(ok.is_ok()) << ok.status().message();
}

// core::checkpoint_check (floor) and the runtime's own check (ceil) disagreed on the scale shape
// when the last group is partial; now there is one validator, and it takes ceil(in / group).
TEST(CheckpointValidator, GroupScalesCoverAPartialLastGroup) {
  ModelConfig c = config_from_json(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 8,
      "hidden_size": 48, "intermediate_size": 40, "num_hidden_layers": 1,
      "num_attention_heads": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": true})",
                                   "cfg.json")
                      .take_or_throw();
  const std::string dir = (std::filesystem::path(::testing::TempDir()) /
                           ("shrink_validator_" + std::to_string(::getpid())))
                              .string();
  auto write = [&](int64_t scale_cols) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::vector<std::vector<uint8_t>> keep;
    std::vector<TensorView> v;
    for (const TensorSpec& s : expected_tensors(c)) {
      int64_t n = 1;
      for (int64_t d : s.shape) n *= d;
      const bool lin = tensor_role_is_linear(s.role) && s.layer >= 0;
      keep.emplace_back(size_t(n * (lin ? 1 : 4)), 0);
      v.push_back({s.name, lin ? DType::kI8 : DType::kF32, s.shape, keep.back().data(),
                   uint64_t(keep.back().size())});
      if (lin) {
        const int64_t in = s.shape[1];
        // in = 48 or 40 with groups of 32: two groups each, the last one partial.
        const int64_t cols = scale_cols > 0 ? scale_cols : in / 32;
        keep.emplace_back(size_t(s.shape[0] * cols * 4), 0);
        v.push_back({s.name.substr(0, s.name.size() - 7) + ".weight_scale", DType::kF32,
                     {s.shape[0], cols}, keep.back().data(), uint64_t(keep.back().size())});
      }
    }
    ASSERT_TRUE(checkpoint_write(dir, v).is_ok());
  };
  QuantLayout q;
  q.strategy = "group";
  q.group_size = 32;
  write(2);  // ceil(48 / 32) = ceil(40 / 32) = 2
  Status ok = checkpoint_check(c, Checkpoint::open(dir).take_or_throw(), &q);
  EXPECT_TRUE(ok.is_ok()) << ok.message();
  write(0);  // floor: one scale column, the partial group has none
  Status bad = checkpoint_check(c, Checkpoint::open(dir).take_or_throw(), &q);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.message().find("model.layers.0.self_attn.q_proj.weight_scale is F32 [48, 1], "
                               "expected float [48, 2]"),
            std::string::npos)
      << bad.message();
  std::filesystem::remove_all(dir);
}

// Found by the fuzz campaign (tests/fuzz/regressions/tokenizer/found_template_special_id_past_vocab):
// a TemplateProcessing special token whose id is in no vocabulary; encode(text, true) emitted it,
// past vocab_size(), for the model's embedding lookup to meet.
TEST(TokenizerUntrusted, TemplateIdsMustBeTokens) {
  json vocab = json::object();
  for (int b = 0; b < 4; ++b) vocab[std::string(1, char('a' + b))] = b;
  json doc = {{"version", "1.0"},
              {"added_tokens", {{{"id", 4}, {"content", "<s>"}, {"special", true},
                                 {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                                 {"normalized", false}}}},
              {"normalizer", nullptr},
              {"pre_tokenizer", nullptr},
              {"decoder", nullptr},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  auto with_template_id = [&](int id) {
    json d = doc;
    d["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                    {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {id}}, {"tokens", {"<s>"}}}}}}};
    return Tokenizer::from_json(d.dump(), "tok.json");
  };
  auto ok = with_template_id(4);
  ASSERT_TRUE(ok.is_ok()) << ok.status().message();
  EXPECT_EQ(ok.value().encode("ab", true).front(), 4);
  auto bad = with_template_id(855);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("post_processor.special_tokens['<s>'].ids: 855 is not a "
                                        "token of this tokenizer"),
            std::string::npos)
      << bad.status().message();
}
