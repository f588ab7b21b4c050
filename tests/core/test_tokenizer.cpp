// Tests for core/tokenizer.h: the GPT-2 splitter against hand-derived pieces, a fixed encoding
// of a hand-built tokenizer.json (expected ids worked out by applying the merge ranks by hand),
// round trips over awkward text (invalid UTF-8, emoji, combining marks), added tokens, the
// TemplateProcessing BOS, malformed-file errors, and the trainer (determinism, compression,
// reload). The trainer tests read Debian's fortunes when present and skip otherwise.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/tokenizer.h"
#include "core/unicode_tables.h"

namespace shrink::core {
namespace {

using nlohmann::json;

// GPT-2 byte -> code point, written out again here (not taken from the library) so the fixture
// does not depend on the code under test.
std::string gpt2_byte_char(int b) {
  int n = 0;
  uint32_t cp = 0;
  for (int x = 0; x < 256; ++x) {
    const bool keep = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174);
    const uint32_t c = keep ? uint32_t(x) : uint32_t(256 + n++);
    if (x == b) cp = c;
  }
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else {
    s += char(0xC0 | (cp >> 6));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

/// vocab: the 256 byte tokens with id == byte value, then `extra` tokens from id 256.
json byte_vocab(const std::vector<std::string>& extra) {
  json v = json::object();
  for (int b = 0; b < 256; ++b) v[gpt2_byte_char(b)] = b;
  for (size_t k = 0; k < extra.size(); ++k) v[extra[k]] = 256 + int(k);
  return v;
}

json tokenizer_doc(const json& vocab, const json& merges) {
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", json::array()},
              {"normalizer", nullptr},
              {"pre_tokenizer",
               {{"type", "ByteLevel"},
                {"add_prefix_space", false},
                {"trim_offsets", true},
                {"use_regex", true}}},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model",
               {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"vocab", vocab},
                {"merges", merges}}}};
}

// "Ġ" is the byte-level form of the space byte (0x20 -> U+0120).
const std::vector<std::string> kSmallTokens = {"Ġt",   "he", "Ġthe",   "in",  "Ġc", "at",
                                               "Ġcat", "er", "Ġtheat", "the", "yz", "xy"};
const std::vector<std::string> kSmallMerges = {"Ġ t",   "h e", "Ġt he",   "i n",  "Ġ c", "a t",
                                               "Ġc at", "e r", "Ġthe at", "t he", "y z", "x y"};

json small_doc() {
  return tokenizer_doc(byte_vocab(kSmallTokens), kSmallMerges);
}

Tokenizer load_doc(const json& doc) {
  auto r = Tokenizer::from_json(doc.dump(), "test.json");
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return std::move(r).value();
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  for (auto v : pretokenize_gpt2(s)) out.emplace_back(v);
  return out;
}

const std::vector<std::string>& awkward_strings() {
  static const std::vector<std::string> kStrings = {
      "",
      "a",
      "Hello world's  123 foo!!\n\n  bar",
      "the cat sat in the theater xyz",
      "I'm sure they'll say we've done what you'd do; it's John's.",
      "DON'T ''s 's'",
      "tabs\tand\t\tmore\t \t  \n\r\n trailing   ",
      "   leading spaces",
      "digits 0123456789 12.5e-3 ٣٤٥ ⅷ",
      "emoji 👋🏽 👨‍👩‍👧 🇩🇪!!",
      "日本語のテキスト、中文文本。한국어",
      "combining e\xcc\x81 a\xcc\x8a\xcc\x81 ñ",
      "invalid \xff\xfe bytes \xc3 trunc \xed\xa0\x80 surrogate \xc0\xaf overlong",
      std::string("nul\0inside", 10),
      "\xf4\x90\x80\x80 above U+10FFFF, \xe2\x82 cut",
      "\x01\x02\x7f control",
      "\xc2\xa0nbsp\xe3\x80\x80ideographic space\xe2\x80\xa8line sep",
      "mixed123abc___---...",
      "<|endoftext|> looks special but is not one here",
  };
  return kStrings;
}

// --------------------------------------------------------------------------------------------
// Unicode tables

TEST(UnicodeTables, Classes) {
  EXPECT_TRUE(unicode_is_letter('A'));
  EXPECT_TRUE(unicode_is_letter(0x00E9));  // é
  EXPECT_TRUE(unicode_is_letter(0x4E2D));  // 中
  EXPECT_TRUE(unicode_is_letter(0xD55C));  // 한
  EXPECT_FALSE(unicode_is_letter('1'));
  EXPECT_FALSE(unicode_is_letter(0x0301));   // combining acute (Mn)
  EXPECT_FALSE(unicode_is_letter(0x1F44B));  // 👋 (So)
  EXPECT_TRUE(unicode_is_number('7'));
  EXPECT_TRUE(unicode_is_number(0x0663));  // Arabic-Indic three (Nd)
  EXPECT_TRUE(unicode_is_number(0x2167));  // Roman numeral eight (Nl)
  EXPECT_TRUE(unicode_is_number(0x00BD));  // ½ (No)
  EXPECT_FALSE(unicode_is_number('x'));
  EXPECT_TRUE(unicode_is_space(' '));
  EXPECT_TRUE(unicode_is_space('\n'));
  EXPECT_TRUE(unicode_is_space(0x0085));
  EXPECT_TRUE(unicode_is_space(0x00A0));
  EXPECT_TRUE(unicode_is_space(0x3000));
  EXPECT_FALSE(unicode_is_space(0x001C));  // Python's isspace says yes; White_Space says no
  EXPECT_FALSE(unicode_is_space(0x200B));  // zero-width space is Cf, not White_Space
  EXPECT_FALSE(unicode_is_letter(0x110000));
}

// --------------------------------------------------------------------------------------------
// GPT-2 splitter

TEST(TokenizerSplit, Gpt2Sentence) {
  // "  123": two spaces before a digit: \s+(?!\S) takes the first space only, then " 123".
  // "\n\n  bar": the whitespace run is 4 long and followed by 'b'; \s+(?!\S) backs off one
  // character, matching "\n\n " (followed by ' ', which is \s), and " bar" is ' ?\p{L}+'.
  EXPECT_EQ(split("Hello world's  123 foo!!\n\n  bar"),
            (std::vector<std::string>{"Hello", " world", "'s", " ", " 123", " foo", "!!", "\n\n ",
                                      " bar"}));
}

TEST(TokenizerSplit, Contractions) {
  EXPECT_EQ(split("I'm we'll they're you've he'd it's don't"),
            (std::vector<std::string>{"I", "'m", " we", "'ll", " they", "'re", " you", "'ve", " he",
                                      "'d", " it", "'s", " don", "'t"}));
  // Case-sensitive, as in GPT-2: "'T" is not a contraction, so "'" is punctuation.
  EXPECT_EQ(split("DON'T"), (std::vector<std::string>{"DON", "'", "T"}));
  EXPECT_EQ(split("''s"), (std::vector<std::string>{"''", "s"}));
}

TEST(TokenizerSplit, Whitespace) {
  EXPECT_EQ(split("a  b"), (std::vector<std::string>{"a", " ", " b"}));
  EXPECT_EQ(split("hi  "), (std::vector<std::string>{"hi", "  "}));
  // A single tab before a letter: \s+(?!\S) fails at length 1, \s+ takes it; ' ?' is only ' '.
  EXPECT_EQ(split("x\t\ty"), (std::vector<std::string>{"x", "\t", "\t", "y"}));
  EXPECT_EQ(split(" \n x"), (std::vector<std::string>{" \n", " x"}));
  EXPECT_EQ(split(" "), (std::vector<std::string>{" "}));
  EXPECT_EQ(split(" !"), (std::vector<std::string>{" !"}));
  EXPECT_EQ(split("a\n"), (std::vector<std::string>{"a", "\n"}));
}

TEST(TokenizerSplit, UnicodeClasses) {
  EXPECT_EQ(split("日本語 テスト"), (std::vector<std::string>{"日本語", " テスト"}));
  EXPECT_EQ(split("café"), (std::vector<std::string>{"café"}));
  // A combining mark is neither letter nor number: it is punctuation-like for the regex.
  EXPECT_EQ(split("e\xcc\x81t"), (std::vector<std::string>{"e", "\xcc\x81", "t"}));
  EXPECT_EQ(split("abc123 ٣٤"), (std::vector<std::string>{"abc", "123", " ٣٤"}));
  EXPECT_EQ(split("hi 👋🏽!"), (std::vector<std::string>{"hi", " 👋🏽!"}));
  // Invalid bytes are single "other" code points and join punctuation runs.
  EXPECT_EQ(split("a\xff\xfe!b"), (std::vector<std::string>{"a", "\xff\xfe!", "b"}));
  EXPECT_EQ(split("a \xc3"), (std::vector<std::string>{"a", " \xc3"}));
}

TEST(TokenizerSplit, PiecesCoverInput) {
  for (const std::string& s : awkward_strings()) {
    std::string joined;
    for (auto p : pretokenize_gpt2(s)) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}

// --------------------------------------------------------------------------------------------
// Encoding

TEST(TokenizerEncode, FixedExpectedIds) {
  const Tokenizer tok = load_doc(small_doc());
  // Byte ids equal byte values here: t=116 h=104 e=101 s=115 a=97 c=99 i=105 n=110 r=114
  // x=120 ' '=32. Merged ids: Ġt=256 he=257 Ġthe=258 in=259 Ġc=260 at=261 Ġcat=262 er=263
  // Ġtheat=264 the=265 yz=266 xy=267. Ranks follow kSmallMerges order.
  //   "the":      (h,e)#1 -> t he; (t,he)#9 -> the                                 [265]
  //   " cat":     (Ġ,c)#4, then (a,t)#5, then (Ġc,at)#6                            [262]
  //   " sat":     only (a,t)#5 applies -> Ġ s at                               [32,115,261]
  //   " in":      (i,n)#3 -> Ġ in                                                [32,259]
  //   " the":     (Ġ,t)#0, (h,e)#1, (Ġt,he)#2                                       [258]
  //   " theater": #0, #1, #2 -> Ġthe a t e r; (a,t)#5 -> Ġthe at e r; (e,r)#7 comes before
  //               (Ġthe,at)#8 -> Ġthe at er -> Ġtheat er                         [264,263]
  //   " xyz":     (y,z)#10 outranks (x,y)#11 although it is further right -> Ġ x yz
  //                                                                           [32,120,266]
  const std::vector<int32_t> expected = {265, 262, 32,  115, 261, 32, 259,
                                         258, 264, 263, 32,  120, 266};
  EXPECT_EQ(tok.encode("the cat sat in the theater xyz"), expected);
  EXPECT_EQ(tok.decode(expected), "the cat sat in the theater xyz");
  EXPECT_EQ(tok.vocab_size(), 268);
  EXPECT_EQ(tok.id_to_token(258), "Ġthe");
  EXPECT_EQ(tok.token_to_id("Ġcat"), std::optional<int32_t>(262));
}

TEST(TokenizerEncode, MergesAsPairsEqualStrings) {
  json pairs = json::array();
  for (const std::string& m : kSmallMerges) {
    const size_t sp = m.find(' ');
    pairs.push_back(json::array({m.substr(0, sp), m.substr(sp + 1)}));
  }
  const Tokenizer a = load_doc(small_doc());
  const Tokenizer b = load_doc(tokenizer_doc(byte_vocab(kSmallTokens), pairs));
  for (const std::string& s : awkward_strings()) EXPECT_EQ(a.encode(s), b.encode(s)) << s;
  EXPECT_EQ(a.fingerprint(), b.fingerprint());
}

TEST(TokenizerEncode, RoundTripAwkwardText) {
  const Tokenizer tok = load_doc(small_doc());
  for (const std::string& s : awkward_strings()) {
    EXPECT_EQ(tok.decode(tok.encode(s)), s) << s;
  }
}

TEST(TokenizerEncode, PureByteLevel) {
  const Tokenizer tok = load_doc(tokenizer_doc(byte_vocab({}), json::array()));
  EXPECT_EQ(tok.vocab_size(), 256);
  for (const std::string& s : awkward_strings()) {
    const std::vector<int32_t> ids = tok.encode(s);
    ASSERT_EQ(ids.size(), s.size());
    for (size_t i = 0; i < s.size(); ++i) EXPECT_EQ(ids[i], int32_t(uint8_t(s[i])));
    EXPECT_EQ(tok.decode(ids), s);
  }
}

TEST(TokenizerEncode, AddPrefixSpace) {
  json doc = small_doc();
  doc["pre_tokenizer"]["add_prefix_space"] = true;
  const Tokenizer tok = load_doc(doc);
  EXPECT_EQ(tok.encode("the cat"), (std::vector<int32_t>{258, 262}));
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{258}));
}

TEST(TokenizerEncode, SpecialTokensMatchedInsideText) {
  json doc = tokenizer_doc(byte_vocab(kSmallTokens), kSmallMerges);
  doc["added_tokens"] =
      json::array({json{{"id", 268}, {"content", "<|endoftext|>"}, {"special", true}},
                   json{{"id", 269}, {"content", "<|end"}, {"special", true}}});
  const Tokenizer tok = load_doc(doc);
  EXPECT_EQ(tok.vocab_size(), 270);
  EXPECT_EQ(tok.encode("the<|endoftext|>the"), (std::vector<int32_t>{265, 268, 265}));
  // Longest match wins; the shorter one still matches where the longer does not.
  EXPECT_EQ(tok.encode(" cat<|endoftext|><|end the"), (std::vector<int32_t>{262, 268, 269, 258}));
  EXPECT_EQ(tok.eos_id(), std::optional<int32_t>(268));
  EXPECT_EQ(tok.bos_id(), std::nullopt);
  const std::vector<int32_t> ids = tok.encode("a<|endoftext|> cat");
  EXPECT_EQ(ids, (std::vector<int32_t>{97, 268, 262}));
  EXPECT_EQ(tok.decode(ids), "a<|endoftext|> cat");
  EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true), "a cat");
  EXPECT_EQ(tok.token_to_id("<|endoftext|>"), std::optional<int32_t>(268));
  EXPECT_EQ(tok.id_to_token(268), "<|endoftext|>");
}

json with_bos_template(json doc) {
  doc["added_tokens"] = json::array({json{{"id", 268},
                                          {"content", "<s>"},
                                          {"single_word", false},
                                          {"lstrip", false},
                                          {"rstrip", false},
                                          {"normalized", false},
                                          {"special", true}}});
  doc["post_processor"] =
      json{{"type", "TemplateProcessing"},
           {"single", json::array({json{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                   json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
           {"pair", json::array({json{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                 json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                 json{{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
           {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {268}}, {"tokens", {"<s>"}}}}}}};
  return doc;
}

TEST(TokenizerEncode, TemplateBosOnlyWithSpecialTokens) {
  const Tokenizer tok = load_doc(with_bos_template(small_doc()));
  EXPECT_EQ(tok.encode("the cat", true), (std::vector<int32_t>{268, 265, 262}));
  EXPECT_EQ(tok.encode("the cat", false), (std::vector<int32_t>{265, 262}));
  EXPECT_EQ(tok.encode("", true), (std::vector<int32_t>{268}));
  EXPECT_EQ(tok.bos_id(), std::optional<int32_t>(268));
  EXPECT_EQ(tok.decode({268, 265, 262}), "<s>the cat");
  EXPECT_EQ(tok.decode({268, 265, 262}, true), "the cat");
  // The template survives to_json.
  auto again = Tokenizer::from_json(tok.to_json(), "again");
  ASSERT_TRUE(again.is_ok()) << again.status().message();
  EXPECT_EQ(again->encode("the cat", true), (std::vector<int32_t>{268, 265, 262}));
  EXPECT_EQ(again->fingerprint(), tok.fingerprint());
}

TEST(TokenizerEncode, ByteLevelPostProcessorAddsNothing) {
  json doc = small_doc();
  doc["post_processor"] = json{{"type", "ByteLevel"},
                               {"add_prefix_space", true},
                               {"trim_offsets", false},
                               {"use_regex", true}};
  const Tokenizer tok = load_doc(doc);
  EXPECT_EQ(tok.encode("the", true), (std::vector<int32_t>{265}));
}

TEST(TokenizerEncode, ConcurrentEncodeAgrees) {
  const Tokenizer tok = load_doc(small_doc());
  std::vector<std::vector<int32_t>> want;
  for (const std::string& s : awkward_strings()) want.push_back(tok.encode(s));
  std::vector<int> bad(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 50; ++rep) {
        for (size_t k = 0; k < want.size(); ++k) {
          if (tok.encode(awkward_strings()[k]) != want[k]) ++bad[size_t(t)];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int b : bad) EXPECT_EQ(b, 0);
}

// --------------------------------------------------------------------------------------------
// JSON I/O

TEST(TokenizerJson, ToJsonRoundTrip) {
  const Tokenizer tok = load_doc(small_doc());
  const std::string text = tok.to_json();
  const json j = json::parse(text);
  EXPECT_EQ(j["version"], "1.0");
  EXPECT_TRUE(j["truncation"].is_null());
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(j["post_processor"]["type"], "ByteLevel");
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["merges"][2], "Ġt he");
  EXPECT_EQ(j["model"]["vocab"]["Ġthe"], 258);
  EXPECT_FALSE(j["model"]["byte_fallback"].get<bool>());
  auto again = Tokenizer::from_json(text, "again");
  ASSERT_TRUE(again.is_ok()) << again.status().message();
  for (const std::string& s : awkward_strings()) EXPECT_EQ(again->encode(s), tok.encode(s));
  EXPECT_EQ(again->fingerprint(), tok.fingerprint());
  EXPECT_EQ(again->to_json(), text);
}

TEST(TokenizerJson, SaveAndLoad) {
  const Tokenizer tok = load_doc(small_doc());
  const std::string path = ::testing::TempDir() + "shrink_test_tokenizer.json";
  ASSERT_TRUE(tok.save(path).is_ok());
  auto loaded = Tokenizer::load(path);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().message();
  EXPECT_EQ(loaded->encode("the cat sat"), tok.encode("the cat sat"));
  std::remove(path.c_str());
  auto missing = Tokenizer::load(path);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(TokenizerJson, FingerprintDependsOnMerges) {
  const Tokenizer a = load_doc(small_doc());
  std::vector<std::string> fewer(kSmallMerges.begin(), kSmallMerges.end() - 1);
  const Tokenizer b = load_doc(tokenizer_doc(byte_vocab(kSmallTokens), fewer));
  EXPECT_EQ(a.fingerprint().size(), 16u);
  EXPECT_NE(a.fingerprint(), b.fingerprint());
  EXPECT_EQ(a.fingerprint(), load_doc(small_doc()).fingerprint());
}

/// Loads `doc` and expects an kInvalidInput error whose message holds every `parts`.
void expect_error(const std::string& text, const std::vector<std::string>& parts) {
  auto r = Tokenizer::from_json(text, "tokenizer.json");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
  for (const std::string& p : parts) {
    EXPECT_NE(r.status().message().find(p), std::string::npos)
        << "'" << p << "' not in: " << r.status().message();
  }
}

TEST(TokenizerJson, MalformedErrors) {
  expect_error("{\"model\": ", {"tokenizer.json", "not valid JSON", "line 1"});
  expect_error("[1, 2]", {"tokenizer.json", "array"});
  expect_error("{}", {"tokenizer.json", "model"});

  json doc = small_doc();
  doc["model"]["type"] = "WordPiece";
  expect_error(doc.dump(), {"tokenizer.json", "model.type", "WordPiece"});

  doc = small_doc();
  doc["model"]["merges"][3] = "Ġ zz";
  expect_error(doc.dump(), {"tokenizer.json", "model.merges[3]", "'zz'", "model.vocab"});

  doc = small_doc();
  doc["model"]["merges"][12] = "ab";
  expect_error(doc.dump(), {"tokenizer.json: model.merges[12]: 'ab' is not a pair"});

  doc = small_doc();
  doc["model"]["merges"][1] = "q q";  // both parts exist, "qq" does not
  expect_error(doc.dump(), {"model.merges[1]", "'qq'"});

  doc = small_doc();
  doc["model"]["vocab"]["oops"] = "seven";
  expect_error(doc.dump(), {"model.vocab['oops']", "integer"});

  doc = small_doc();
  doc["normalizer"] = json{{"type", "NFC"}};
  expect_error(doc.dump(), {"normalizer", "NFC"});

  doc = small_doc();
  doc["pre_tokenizer"] = json{{"type", "Metaspace"}, {"replacement", "▁"}};
  expect_error(doc.dump(), {"pre_tokenizer", "Metaspace"});

  doc = small_doc();
  doc["decoder"] = json{{"type", "WordPiece"}};
  expect_error(doc.dump(), {"decoder", "WordPiece"});

  doc = small_doc();
  doc["post_processor"] = json{{"type", "BertProcessing"}};
  expect_error(doc.dump(), {"post_processor", "BertProcessing"});

  doc = small_doc();
  doc["model"]["byte_fallback"] = true;
  expect_error(doc.dump(), {"model.byte_fallback"});

  doc = with_bos_template(small_doc());
  doc["post_processor"]["special_tokens"] = json::object();
  expect_error(doc.dump(), {"post_processor.single[0]", "'<s>'"});
}

// --------------------------------------------------------------------------------------------
// Trainer

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
}  // namespace shrink::core
