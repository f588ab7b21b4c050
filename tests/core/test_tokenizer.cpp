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
#include "core/unicode_nfc.h"
#include "core/unicode_tables.h"
#include "tests/core/awkward_strings.h"

namespace shrink::core {
namespace {

using nlohmann::json;
using test::awkward_strings;

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
  doc["normalizer"] = json{{"type", "NFKC"}};
  expect_error(doc.dump(), {"normalizer.type", "'NFKC'", "'NFC'"});

  doc = small_doc();
  doc["normalizer"] = json{{"type", "Sequence"},
                           {"normalizers", json::array({json{{"type", "NFC"}},
                                                        json{{"type", "Lowercase"}}})}};
  expect_error(doc.dump(), {"normalizer.normalizers[1].type", "'Lowercase'"});

  doc = small_doc();
  doc["normalizer"] = json{{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}};
  expect_error(doc.dump(), {"normalizer.pattern", "Regex", "String"});

  doc = small_doc();
  doc["pre_tokenizer"] = json{{"type", "Whitespace"}};
  expect_error(doc.dump(), {"pre_tokenizer.type", "'Whitespace'", "'Split'"});

  doc = small_doc();
  doc["pre_tokenizer"] = json{{"type", "Split"}, {"pattern", {{"Regex", "\\w+"}}},
                              {"behavior", "Isolated"}, {"invert", false}};
  expect_error(doc.dump(), {"pre_tokenizer.pattern", "Llama 3"});

  doc = small_doc();
  doc["pre_tokenizer"] = json{{"type", "Metaspace"}, {"replacement", "▁"},
                              {"prepend_scheme", "sometimes"}};
  expect_error(doc.dump(), {"pre_tokenizer.prepend_scheme", "'sometimes'"});

  doc = small_doc();
  doc["decoder"] = json{{"type", "Strip"}, {"content", " "}, {"start", -1}, {"stop", 0}};
  expect_error(doc.dump(), {"decoder.start"});

  doc = small_doc();
  doc["decoder"] = json{{"type", "WordPiece"}};
  expect_error(doc.dump(), {"decoder", "WordPiece"});

  doc = small_doc();
  doc["post_processor"] = json{{"type", "BertProcessing"}};
  expect_error(doc.dump(), {"post_processor", "BertProcessing"});

  doc = small_doc();
  doc["model"]["byte_fallback"] = "yes";
  expect_error(doc.dump(), {"model.byte_fallback", "boolean"});

  doc = with_bos_template(small_doc());
  doc["post_processor"]["special_tokens"] = json::object();
  expect_error(doc.dump(), {"post_processor.single[0]", "'<s>'"});
}

// --------------------------------------------------------------------------------------------
// The pipelines of Llama 3, Qwen2, SmolLM and SentencePiece BPE (Llama 2, Mistral). The ctest
// tokenizer_peer_check compares these end to end with Hugging Face's Tokenizers.js; the cases
// here need no node and pin the behaviour where Tokenizers.js departs from the Rust crate.

std::vector<std::string> split_llama3(const std::string& s, size_t digits) {
  std::vector<std::string> out;
  for (auto v : pretokenize_llama3(s, digits)) out.emplace_back(v);
  return out;
}

TEST(TokenizerSplit, Llama3AndQwen2Regex) {
  // Pieces worked out by hand from the regex's alternatives (see pretokenize_llama3).
  using V = std::vector<std::string>;
  EXPECT_EQ(split_llama3("Hello world's 12345 foo!!\n\n  bar", 3),
            (V{"Hello", " world", "'s", " ", "123", "45", " foo", "!!\n\n", " ", " bar"}));
  EXPECT_EQ(split_llama3("12345", 1), (V{"1", "2", "3", "4", "5"}));
  // Case-insensitive contractions; a letter run may take one leading non-letter, non-newline.
  EXPECT_EQ(split_llama3("I'M (fine)\tok", 3), (V{"I", "'M", " (", "fine", ")", "\tok"}));
  // \s*[\r\n]+ ends after the whitespace run's last newline.
  EXPECT_EQ(split_llama3("A\r\n\r\n  B", 3), (V{"A", "\r\n\r\n", " ", " B"}));
  EXPECT_EQ(split_llama3("x  \n y", 3), (V{"x", "  \n", " y"}));
  for (const std::string& s : awkward_strings()) {
    std::string joined;
    for (const std::string& p : split_llama3(s, 3)) {
      EXPECT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}

TEST(UnicodeNfc, ComposesReordersAndKeepsExclusions) {
  // Expected values from Python's unicodedata.normalize("NFC", ...).
  EXPECT_EQ(nfc("e\xcc\x81"), "\xc3\xa9");                         // e + acute -> U+00E9
  EXPECT_EQ(nfc("A\xcc\x8a\xcc\xa7"), "\xc3\x85\xcc\xa7");          // ring 230 after cedilla 202
  EXPECT_EQ(nfc("e\xcc\x81\xcc\xa3"), "\xe1\xba\xb9\xcc\x81");     // dot below first: U+1EB9 U+0301
  EXPECT_EQ(nfc("\xe1\x84\x80\xe1\x85\xa1\xe1\x86\xa8"), "\xea\xb0\x81");  // jamo -> U+AC01
  EXPECT_EQ(nfc("\xe2\x84\xab"), "\xc3\x85");                     // U+212B (singleton) -> U+00C5
  EXPECT_EQ(nfc("\xe0\xa5\x98"), "\xe0\xa4\x95\xe0\xa4\xbc");      // U+0958 is excluded
  EXPECT_EQ(nfc("plain ascii, caf\xc3\xa9"), "plain ascii, caf\xc3\xa9");
  EXPECT_TRUE(nfc_trivially_stable("caf\xc3\xa9"));
  EXPECT_FALSE(nfc_trivially_stable("e\xcc\x81"));
  // Invalid bytes stay and block composition across them.
  EXPECT_EQ(nfc("e\xff\xcc\x81"), "e\xff\xcc\x81");
  for (const std::string& s : awkward_strings()) EXPECT_EQ(nfc(nfc(s)), nfc(s));
}

/// A SentencePiece-style BPE: <unk> <s> </s>, 256 <0xNN> tokens, then `extra` tokens.
json sp_doc(const std::vector<std::string>& extra, const json& merges) {
  json v = json::object();
  v["<unk>"] = 0;
  v["<s>"] = 1;
  v["</s>"] = 2;
  char buf[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(buf, sizeof(buf), "<0x%02X>", b);
    v[buf] = 3 + b;
  }
  for (size_t k = 0; k < extra.size(); ++k) v[extra[k]] = 259 + int(k);
  auto added = [](int id, const char* c) {
    return json{{"id", id},          {"content", c},       {"single_word", false},
                {"lstrip", false},   {"rstrip", false},    {"normalized", false},
                {"special", true}};
  };
  json doc = tokenizer_doc(v, merges);
  doc["added_tokens"] = json::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")});
  doc["normalizer"] = json{{"type", "Sequence"},
                           {"normalizers",
                            json::array({json{{"type", "Prepend"}, {"prepend", "\u2581"}},
                                         json{{"type", "Replace"},
                                              {"pattern", {{"String", " "}}},
                                              {"content", "\u2581"}}})}};
  doc["pre_tokenizer"] = nullptr;
  doc["post_processor"] = json{
      {"type", "TemplateProcessing"},
      {"single", json::array({json{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}};
  doc["decoder"] = json{
      {"type", "Sequence"},
      {"decoders",
       json::array({json{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                    json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}},
                    json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  doc["model"]["unk_token"] = "<unk>";
  doc["model"]["fuse_unk"] = true;
  doc["model"]["byte_fallback"] = true;
  return doc;
}

// ids: 259 "\u2581", 260 "a", 261 "b", 262 "\u2581a", 263 "ab", 264 "\u2581\u2581", 265 "\u2581ab"
const std::vector<std::string> kSpTokens = {"\u2581", "a", "b", "\u2581a", "ab", "\u2581\u2581", "\u2581ab"};
json sp_merges() {
  return json::array({json::array({"\u2581", "\u2581"}), json::array({"\u2581", "a"}),
                      json::array({"a", "b"}), json::array({"\u2581a", "b"})});
}

TEST(TokenizerSentencePiece, PrependReplaceByteFallbackAndStrip) {
  Tokenizer t = load_doc(sp_doc(kSpTokens, sp_merges()));
  using V = std::vector<int32_t>;
  // "ab b" -> "\u2581ab\u2581b": merges by rank: (\u2581,a) then (\u2581a,b).
  EXPECT_EQ(t.encode("ab b", false), (V{265, 259, 261}));
  // Two spaces: (\u2581,\u2581) ranks first: "\u2581a" "\u2581\u2581" "a".
  EXPECT_EQ(t.encode("a  a", false), (V{262, 264, 260}));
  // 'é' is not in the vocabulary: its two UTF-8 bytes' tokens (0xC3 0xA9 -> 3 + byte).
  EXPECT_EQ(t.encode("\xc3\xa9", false), (V{259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(t.decode(t.encode("ab \xc3\xa9 b", false)), "ab \xc3\xa9 b");  // Strip drops the prefix
  // The template adds <s>; the segment after an added token gets its own prefix (Prepend runs per
  // segment, as in Hugging Face).
  EXPECT_EQ(t.encode("a", true), (V{1, 262}));
  EXPECT_EQ(t.encode("<s>a", false), (V{1, 262}));
  EXPECT_EQ(t.decode({1, 262}), "<s> a");
  EXPECT_EQ(t.decode({1, 262}, /*skip_special_tokens=*/true), "a");
  // Without byte_fallback an unknown character is <unk>, consecutive ones fused.
  json doc = sp_doc(kSpTokens, sp_merges());
  doc["model"]["byte_fallback"] = false;
  Tokenizer u = load_doc(doc);
  EXPECT_EQ(u.encode("a\xc3\xa9\xc3\xa8", false), (V{262, 0}));
  // Round trip through to_json keeps the pipeline.
  Tokenizer r = load_doc(json::parse(t.to_json()));
  EXPECT_EQ(r.encode("ab  b \xc3\xa9", true), t.encode("ab  b \xc3\xa9", true));
  EXPECT_EQ(r.decode(t.encode("ab  b", false)), "ab  b");
}

TEST(TokenizerSentencePiece, MetaspacePrependSchemesAndSplit) {
  json doc = sp_doc(kSpTokens, sp_merges());
  doc["normalizer"] = nullptr;
  auto meta = [](const char* scheme, bool split) {
    return json{{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", scheme},
                {"split", split}};
  };
  using V = std::vector<int32_t>;
  doc["pre_tokenizer"] = meta("first", false);
  Tokenizer first = load_doc(doc);
  EXPECT_EQ(first.encode("a  a", false), (V{262, 264, 260}));
  EXPECT_EQ(first.encode("<s>a", false), (V{1, 260}));  // "first": not after an added token
  EXPECT_EQ(first.encode(" a", false), (V{262}));       // already starts with the replacement
  doc["pre_tokenizer"] = meta("always", false);
  EXPECT_EQ(load_doc(doc).encode("<s>a", false), (V{1, 262}));
  doc["pre_tokenizer"] = meta("never", false);
  EXPECT_EQ(load_doc(doc).encode("a", false), (V{260}));
  // split: each replacement starts a piece (the crate's MergedWithNext, as in its test
  // "Hey   friend!" -> "\u2581Hey" "\u2581" "\u2581" "\u2581friend!"), so "\u2581\u2581" never forms.
  doc["pre_tokenizer"] = meta("always", true);
  EXPECT_EQ(load_doc(doc).encode("a  a", false), (V{262, 259, 262}));
  // The Metaspace decoder (the Rust crate's rule): replacement characters become spaces, except
  // in the first token, where they are dropped.
  doc["decoder"] = meta("always", true);
  Tokenizer d = load_doc(doc);
  EXPECT_EQ(d.decode({262, 259, 262}), "a  a");
  EXPECT_EQ(d.decode({264, 262}), " a");
  EXPECT_EQ(d.decode({1, 262}), "<s> a");
}

TEST(TokenizerEncode, ByteLevelSequencesAndIgnoreMerges) {
  // Split(Llama 3 regex) + ByteLevel(use_regex false) splits digits in threes; Digits splits
  // each digit; ignore_merges takes a word that is itself in the vocabulary whole.
  json doc = small_doc();
  const std::string llama3 =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  doc["pre_tokenizer"] = json{
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({json{{"type", "Split"}, {"pattern", {{"Regex", llama3}}}, {"behavior", "Isolated"},
                         {"invert", false}},
                    json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  Tokenizer t = load_doc(doc);
  using V = std::vector<int32_t>;
  EXPECT_EQ(t.encode("1234", false), (V{'1', '2', '3', '4'}));
  EXPECT_EQ(t.decode(t.encode(" the cat 1234\n\n", false)), " the cat 1234\n\n");
  // "xyz": "y z" (rank 10) merges before "x y" (rank 11), so "x" "yz"; with ignore_merges a word
  // that is itself a token is taken whole.
  EXPECT_EQ(t.encode("xyz", false), (V{'x', 256 + 10}));
  doc["model"]["vocab"]["xyz"] = 268;  // the next id: 256 bytes + 12 tokens
  doc["model"]["ignore_merges"] = true;
  EXPECT_EQ(load_doc(doc).encode("xyz", false), (V{268}));
  doc["model"]["ignore_merges"] = false;
  EXPECT_EQ(load_doc(doc).encode("xyz", false), (V{'x', 256 + 10}));
  // Digits(individual_digits) ahead of the GPT-2 ByteLevel.
  json dg = small_doc();
  dg["pre_tokenizer"] = json{
      {"type", "Sequence"},
      {"pretokenizers", json::array({json{{"type", "Digits"}, {"individual_digits", true}},
                                     json{{"type", "ByteLevel"}, {"add_prefix_space", false}}})}};
  EXPECT_EQ(load_doc(dg).encode("a12", false), (V{'a', '1', '2'}));
  // NFC runs before the split: a decomposed e + acute is encoded as the composed character.
  json q = small_doc();
  q["normalizer"] = json{{"type", "NFC"}};
  EXPECT_EQ(load_doc(q).encode("e\xcc\x81", false), load_doc(q).encode("\xc3\xa9", false));
  EXPECT_NE(load_doc(small_doc()).encode("e\xcc\x81", false),
            load_doc(small_doc()).encode("\xc3\xa9", false));
}

}  // namespace
}  // namespace shrink::core
