// The byte-level BPE trainer (pipeline/tokenizer_train.h): basics on a tiny corpus, and on real
// English (the fortunes corpus) determinism, compression, exact round trips and reloading.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "pipeline/tokenizer_train.h"
#include "tests/core/awkward_strings.h"

namespace shrink::pipeline {
namespace {

using core::Tokenizer;
using nlohmann::json;
using test::awkward_strings;

/// Documents of a fortune(6) file: text separated by lines holding only "%".
std::vector<std::string> fortune_docs(const std::string& path, size_t max_bytes) {
  std::ifstream f(path);
  std::vector<std::string> docs;
  std::string line;
  std::string cur;
  size_t total = 0;
  while (std::getline(f, line) && total < max_bytes) {
    if (line == "%") {
      if (!cur.empty()) docs.push_back(cur);
      total += cur.size();
      cur.clear();
    } else {
      cur += line;
      cur += '\n';
    }
  }
  if (!cur.empty()) docs.push_back(cur);
  return docs;
}

std::vector<std::string> english_docs() {
  std::vector<std::string> docs;
  for (const char* name : {"fortunes", "wisdom", "people", "science"}) {
    auto d = fortune_docs(std::string("/usr/share/games/fortunes/") + name, 200000);
    docs.insert(docs.end(), d.begin(), d.end());
  }
  return docs;
}

Result<Tokenizer> train(const std::vector<std::string>& docs, int32_t vocab) {
  size_t k = 0;
  BpeTrainOptions opts;
  opts.vocab_size = vocab;
  return bpe_train(
      [&](std::string& out) {
        if (k == docs.size()) return false;
        out = docs[k++];
        return true;
      },
      opts);
}

TEST(BpeTrain, SmallCorpusBasics) {
  const std::vector<std::string> docs = {"low lower lowest<|endoftext|>low", "newer newest new",
                                         "wider wide widest low low"};
  auto r = train(docs, 256 + 1 + 10);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  const Tokenizer& tok = r.value();
  EXPECT_EQ(tok.id_to_token(0), "<|endoftext|>");
  EXPECT_EQ(tok.eos_id(), std::optional<int32_t>(0));
  EXPECT_EQ(tok.id_to_token(1 + 'a'), "a");
  EXPECT_EQ(tok.id_to_token(1 + ' '), "Ġ");
  EXPECT_LE(tok.vocab_size(), 267);
  // Words: "low" x2, " low" x2, " lower", " lowest", "newer", " newest", " new", "wider",
  // " wide", " widest" (the special token splits doc 1). ("l","o") and ("o","w") both occur 6
  // times, more than any other pair (("w","e") 5, ("Ġ","l") 4); the tie breaks by bytes, and
  // "l" < "o", so the first merge is "l o".
  const json j = json::parse(tok.to_json());
  EXPECT_EQ(j["model"]["merges"][0], "l o");
  for (const std::string& d : docs) EXPECT_EQ(tok.decode(tok.encode(d)), d);
  auto small = train(docs, 100);
  EXPECT_FALSE(small.is_ok());
}

TEST(BpeTrain, DeterministicCompressesAndReloads) {
  const std::vector<std::string> docs = english_docs();
  if (docs.empty()) GTEST_SKIP() << "no /usr/share/games/fortunes";
  auto a = train(docs, 1000);
  auto b = train(docs, 1000);
  ASSERT_TRUE(a.is_ok()) << a.status().message();
  ASSERT_TRUE(b.is_ok());
  const std::string ja = a->to_json();
  EXPECT_EQ(ja, b->to_json());
  EXPECT_EQ(a->vocab_size(), 1000);

  size_t bytes = 0;
  size_t tokens = 0;
  for (const std::string& d : docs) {
    const std::vector<int32_t> ids = a->encode(d);
    bytes += d.size();
    tokens += ids.size();
    ASSERT_EQ(a->decode(ids), d);
  }
  EXPECT_LT(double(tokens) / double(bytes), 0.5) << tokens << " tokens for " << bytes << " bytes";

  auto reloaded = Tokenizer::from_json(ja, "trained");
  ASSERT_TRUE(reloaded.is_ok()) << reloaded.status().message();
  for (size_t k = 0; k < docs.size(); k += 7)
    EXPECT_EQ(reloaded->encode(docs[k]), a->encode(docs[k]));
  for (const std::string& s : awkward_strings()) {
    EXPECT_EQ(reloaded->encode(s), a->encode(s));
    EXPECT_EQ(a->decode(a->encode(s)), s);
  }
  EXPECT_EQ(reloaded->fingerprint(), a->fingerprint());
}

}  // namespace
}  // namespace shrink::pipeline
