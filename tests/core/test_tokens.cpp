// Tests for core/tokens.h, the token loader both sides share: the split rules (shard
// directories default to val, a single .tok file and text to all), max_tokens, text through the
// model directory's tokenizer.json, and the errors (missing data, text without a tokenizer, an id
// outside the vocabulary). Shards are written with ShardWriter; the tokenizer is a four-letter
// BPE vocabulary, so the expected ids can be read off the text.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dataset.h"
#include "core/tokens.h"

namespace shrink::core {
namespace {

namespace fs = std::filesystem;

class TokensLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        (fs::temp_directory_path() / ("shrink-test-tokens-" + std::to_string(getpid()))).string();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Shards of one split in `shards`: ids start, start + 1, ... (n of them), vocabulary 100.
  void write_split(const std::string& shards, const std::string& split, int32_t start, int n) {
    std::vector<int32_t> ids;
    for (int i = 0; i < n; ++i) ids.push_back(start + i);
    ShardWriter w(shards, split, 100, "test");
    ASSERT_TRUE(w.append(ids.data(), ids.size()).is_ok());
    ASSERT_TRUE(w.finish().is_ok());
  }

  std::string dir_;
};

TEST_F(TokensLoad, ShardDirectoriesDefaultToValAndTokFilesToAll) {
  const std::string shards = dir_ + "/shards";
  write_split(shards, "train", 0, 10);
  write_split(shards, "val", 50, 4);
  TokenSource src;
  src.data = shards;
  auto val = tokens_load(dir_, 100, src);
  ASSERT_TRUE(val.is_ok()) << val.status().message();
  EXPECT_EQ(val->tokens, (std::vector<int32_t>{50, 51, 52, 53}));
  EXPECT_EQ(val->split, "val");
  EXPECT_EQ(val->description, shards + " (token shards, split val)");

  src.split = "train";
  src.max_tokens = 3;
  auto train = tokens_load(dir_, 100, src);
  ASSERT_TRUE(train.is_ok()) << train.status().message();
  EXPECT_EQ(train->tokens, (std::vector<int32_t>{0, 1, 2}));

  TokenSource one;
  one.data = shards + "/train-00000.tok";
  auto all = tokens_load(dir_, 100, one);
  ASSERT_TRUE(all.is_ok()) << all.status().message();
  EXPECT_EQ(all->split, "all");
  EXPECT_EQ(all->tokens.size(), 10u);
}

TEST_F(TokensLoad, EveryIdIsCheckedAgainstTheVocabulary) {
  write_split(dir_ + "/shards", "val", 7, 5);  // ids 7..11
  TokenSource src;
  src.data = dir_ + "/shards";
  EXPECT_TRUE(tokens_load(dir_, 12, src).is_ok());
  auto r = tokens_load(dir_, 10, src);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(r.status().message().find(
                "token 10 at position 3 is outside the model's vocabulary (vocab_size 10)"),
            std::string::npos)
      << r.status().message();
}

TEST_F(TokensLoad, TextUsesTheModelsTokenizer) {
  { std::ofstream(dir_ + "/corpus.txt") << "abcd dcba"; }
  TokenSource src;
  src.data = dir_ + "/corpus.txt";
  auto none = tokens_load(dir_, 10, src);
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(none.status().message().find("text data needs a tokenizer"), std::string::npos)
      << none.status().message();

  const nlohmann::json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"d", 3}, {" ", 4}};
  const nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder", nullptr},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  { std::ofstream(dir_ + "/tokenizer.json") << tok.dump(); }
  auto text = tokens_load(dir_, 5, src);
  ASSERT_TRUE(text.is_ok()) << text.status().message();
  EXPECT_EQ(text->tokens, (std::vector<int32_t>{0, 1, 2, 3, 4, 3, 2, 1, 0}));
  EXPECT_EQ(text->split, "all");
  EXPECT_NE(text->description.find(src.data + " (text, split all, tokenizer "), std::string::npos)
      << text->description;

  TokenSource missing;
  missing.data = dir_ + "/nope";
  EXPECT_EQ(tokens_load(dir_, 5, missing).status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace shrink::core
