// Tests for core/dataset.h: text readers (.txt, .jsonl, fortune, directories), the document split,
// token shards (round trips, boundaries, malformed headers), dataset preparation, packing and
// evaluation windows. Inputs are small files written to a per-test temporary directory; the
// tokenizer is a pure byte-level BPE (id == byte value, "<|endoftext|>" = 256) so expected token
// streams can be computed from the text.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "core/dataset.h"

namespace shrink::core {
namespace {

namespace fs = std::filesystem;

std::string make_temp_dir() {
  static std::atomic<int> counter{0};
  fs::path p = fs::temp_directory_path() / ("shrink-test-dataset-" + std::to_string(getpid()) +
                                            "-" + std::to_string(counter++));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

void write(const std::string& path, const std::string& content) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << content;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<TextBlock> read_all(const std::string& path) {
  auto r = TextReader::open(path);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  std::vector<TextBlock> out;
  if (!r.is_ok()) return out;
  TextBlock b;
  while (true) {
    auto got = (*r)->next(b);
    EXPECT_TRUE(got.is_ok()) << got.status().message();
    if (!got.is_ok() || !got.value()) break;
    out.push_back(b);
  }
  return out;
}

// GPT-2 byte-to-unicode map: printable bytes map to themselves, the rest to U+0100 upwards.
std::string byte_symbol(int b) {
  int cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    cp = 256 + n;
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

// A pure byte-level tokenizer: token id == byte value, "<|endoftext|>" == 256 (the EOS).
const Tokenizer& byte_tokenizer() {
  static Tokenizer* tok = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = b;
    nlohmann::json j = {{"version", "1.0"},
                        {"truncation", nullptr},
                        {"padding", nullptr},
                        {"added_tokens",
                         {{{"id", 256},
                           {"content", "<|endoftext|>"},
                           {"single_word", false},
                           {"lstrip", false},
                           {"rstrip", false},
                           {"normalized", false},
                           {"special", true}}}},
                        {"normalizer", nullptr},
                        {"pre_tokenizer",
                         {{"type", "ByteLevel"},
                          {"add_prefix_space", false},
                          {"trim_offsets", true},
                          {"use_regex", true}}},
                        {"post_processor", nullptr},
                        {"decoder",
                         {{"type", "ByteLevel"},
                          {"add_prefix_space", true},
                          {"trim_offsets", true},
                          {"use_regex", true}}},
                        {"model",
                         {{"type", "BPE"},
                          {"dropout", nullptr},
                          {"unk_token", nullptr},
                          {"continuing_subword_prefix", nullptr},
                          {"end_of_word_suffix", nullptr},
                          {"fuse_unk", false},
                          {"byte_fallback", false},
                          {"vocab", vocab},
                          {"merges", nlohmann::json::array()}}}};
    auto r = Tokenizer::from_json(j.dump(), "byte_tokenizer");
    if (!r.is_ok()) {
      ADD_FAILURE() << r.status().message();
      return new Tokenizer();
    }
    return new Tokenizer(std::move(r).value());
  }();
  return *tok;
}

std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

class TextReaderTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir(); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(TextReaderTest, SmallTxtIsOneDocument) {
  write(dir_ + "/a.txt", "hello\nworld\n");
  auto blocks = read_all(dir_ + "/a.txt");
  ASSERT_EQ(blocks.size(), 1u);
  EXPECT_EQ(blocks[0].text, "hello\nworld\n");
  EXPECT_TRUE(blocks[0].ends_document);
  EXPECT_EQ(blocks[0].doc_index, 0u);
}

TEST_F(TextReaderTest, LargeTxtStreamsInLineBlocks) {
  std::string text;
  for (int i = 0; text.size() < (3u << 20) + 12345; ++i)
    text += "line " + std::to_string(i) + " of a long text file\n";
  text += "last line without newline";
  write(dir_ + "/big.txt", text);
  auto r = TextReader::open(dir_ + "/big.txt");
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ((*r)->bytes_total(), text.size());
  std::string joined;
  TextBlock b;
  int n = 0;
  bool ended = false;
  while (true) {
    auto got = (*r)->next(b);
    ASSERT_TRUE(got.is_ok());
    if (!got.value()) break;
    ASSERT_FALSE(ended) << "a block after the document ended";
    ++n;
    EXPECT_EQ(b.doc_index, 0u);
    EXPECT_LE(b.text.size(), (1u << 20) + (64u << 10));
    if (!b.ends_document) {
      EXPECT_EQ(b.text.back(), '\n') << "non-final blocks are cut at line boundaries";
    }
    ended = b.ends_document;
    joined += b.text;
  }
  EXPECT_TRUE(ended);
  EXPECT_GE(n, 3);
  EXPECT_EQ(joined, text);
  EXPECT_EQ((*r)->bytes_read(), text.size());
}

TEST_F(TextReaderTest, JsonlDocumentsSkipBlankLines) {
  write(dir_ + "/d.jsonl",
        "{\"text\": \"first\\nline\", \"id\": 1}\n\n   \n{\"text\": \"second \\u00e9\"}\r\n"
        "{\"text\": \"third\"}");
  auto blocks = read_all(dir_ + "/d.jsonl");
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(blocks[0].text, "first\nline");
  EXPECT_EQ(blocks[1].text, "second \xc3\xa9");
  EXPECT_EQ(blocks[2].text, "third");
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(blocks[i].ends_document);
    EXPECT_EQ(blocks[i].doc_index, i);
  }
}

TEST_F(TextReaderTest, JsonlBadLineNamesFileAndLine) {
  struct Case {
    std::string line, what;
  } cases[] = {{"{\"text\": ", "not valid JSON"},
               {"[1, 2]", "expected an object"},
               {"{\"txt\": \"x\"}", "no \"text\" field"},
               {"{\"text\": 5}", "not a string"}};
  for (const Case& c : cases) {
    std::string path = dir_ + "/bad.jsonl";
    write(path, "{\"text\": \"ok\"}\n\n" + c.line + "\n");
    auto r = TextReader::open(path);
    ASSERT_TRUE(r.is_ok());
    TextBlock b;
    auto first = (*r)->next(b);
    ASSERT_TRUE(first.is_ok() && first.value());
    auto second = (*r)->next(b);
    ASSERT_FALSE(second.is_ok()) << c.line;
    EXPECT_EQ(second.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(second.status().message().find("bad.jsonl:3:"), std::string::npos)
        << second.status().message();
    EXPECT_NE(second.status().message().find(c.what), std::string::npos)
        << second.status().message();
  }
}

TEST_F(TextReaderTest, FortuneFileSplitsOnPercentLines) {
  std::string f = dir_ + "/quotes";
  write(f, "one\n%\ntwo\nlines\n%\n%\n  \n%\n100% sure\n%\nlast without separator\n");
  write(f + ".dat", std::string(24, '\0'));
  auto blocks = read_all(f);
  ASSERT_EQ(blocks.size(), 4u);
  EXPECT_EQ(blocks[0].text, "one\n");
  EXPECT_EQ(blocks[1].text, "two\nlines\n");
  EXPECT_EQ(blocks[2].text, "100% sure\n");
  EXPECT_EQ(blocks[3].text, "last without separator\n");
  for (size_t i = 0; i < blocks.size(); ++i) {
    EXPECT_TRUE(blocks[i].ends_document);
    EXPECT_EQ(blocks[i].doc_index, i);
  }
}

TEST_F(TextReaderTest, FileWithoutKnownKindIsText) {
  write(dir_ + "/plain", "a\n%\nb\n");  // no .dat sibling: not a fortune file
  auto blocks = read_all(dir_ + "/plain");
  ASSERT_EQ(blocks.size(), 1u);
  EXPECT_EQ(blocks[0].text, "a\n%\nb\n");
}

TEST_F(TextReaderTest, DirectoryIsSortedRecursiveAndSkipsDuplicates) {
  write(dir_ + "/b.txt", "bee\n");
  write(dir_ + "/a.jsonl", "{\"text\":\"a1\"}\n{\"text\":\"a2\"}\n");
  write(dir_ + "/sub/c.txt", "sea\n");
  write(dir_ + "/sub/quotes", "q1\n%\nq2\n%\n");
  write(dir_ + "/sub/quotes.dat", std::string(24, '\0'));
  fs::create_symlink("quotes", dir_ + "/sub/quotes.u8");
  write(dir_ + "/notes.md", "skipped\n");
  write(dir_ + "/noext", "skipped too\n");
  auto r = TextReader::open(dir_);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  std::vector<std::string> names;
  for (const auto& f : (*r)->files()) names.push_back(fs::path(f).lexically_relative(dir_));
  EXPECT_EQ(names, (std::vector<std::string>{"a.jsonl", "b.txt", "sub/c.txt", "sub/quotes"}));
  auto blocks = read_all(dir_);
  std::vector<std::string> texts;
  for (size_t i = 0; i < blocks.size(); ++i) {
    texts.push_back(blocks[i].text);
    EXPECT_EQ(blocks[i].doc_index, i);
  }
  EXPECT_EQ(texts, (std::vector<std::string>{"a1", "a2", "bee\n", "sea\n", "q1\n", "q2\n"}));
}

TEST_F(TextReaderTest, MissingPathAndEmptyDirectory) {
  auto missing = TextReader::open(dir_ + "/nope");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  write(dir_ + "/only.md", "x\n");
  auto empty = TextReader::open(dir_);
  ASSERT_FALSE(empty.is_ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(empty.status().message().find(dir_), std::string::npos);
}

TEST(TextReaderDefaultCorpus, FortunesHaveManyDocumentsAndNoSeparators) {
  if (!fs::is_directory(kDefaultCorpus)) GTEST_SKIP() << kDefaultCorpus << " is not installed";
  auto r = TextReader::open(kDefaultCorpus);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  std::set<std::string> files;
  for (const auto& f : (*r)->files()) {
    EXPECT_TRUE(files.insert(fs::canonical(f).string()).second) << "read twice: " << f;
    EXPECT_NE(fs::path(f).extension(), ".dat");
  }
  TextBlock b;
  uint64_t docs = 0;
  while (true) {
    auto got = (*r)->next(b);
    ASSERT_TRUE(got.is_ok()) << got.status().message();
    if (!got.value()) break;
    ASSERT_FALSE(b.text.empty());
    ASSERT_NE(b.text.rfind("%\n", 0), 0u) << b.text;
    ASSERT_EQ(b.text.find("\n%\n"), std::string::npos) << b.text;
    docs += b.ends_document;
  }
  EXPECT_GT(docs, 10000u);
  EXPECT_EQ((*r)->bytes_read(), (*r)->bytes_total());
}

TEST(DatasetSplit, DeterministicWithExpectedFraction) {
  uint64_t val = 0, differ = 0;
  for (uint64_t i = 0; i < 10000; ++i) {
    bool v = split_is_val(i, 0.1, 42);
    EXPECT_EQ(v, split_is_val(i, 0.1, 42));
    val += v;
    differ += v != split_is_val(i, 0.1, 43);
  }
  EXPECT_GE(val, 800u);
  EXPECT_LE(val, 1200u);
  EXPECT_GT(differ, 0u) << "the seed changes the split";
  EXPECT_FALSE(split_is_val(7, 0.0, 1));
  EXPECT_TRUE(split_is_val(7, 1.0, 1));
}

TEST(DatasetSplit, Names) {
  for (Split s : {Split::kTrain, Split::kVal, Split::kAll}) {
    auto r = split_from_name(split_name(s));
    ASSERT_TRUE(r.is_ok());
    EXPECT_EQ(r.value(), s);
  }
  auto bad = split_from_name("test");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(bad.status().message().find("train, val, all"), std::string::npos);
}

class DatasetTokenize : public TextReaderTest {};

TEST_F(DatasetTokenize, TrainAndValAreDisjointAndComplete) {
  std::string jsonl;
  for (int i = 0; i < 200; ++i) jsonl += "{\"text\": \"doc " + std::to_string(i) + "\"}\n";
  write(dir_ + "/d.jsonl", jsonl);
  const Tokenizer& tok = byte_tokenizer();
  ASSERT_EQ(tok.eos_id(), std::optional<int32_t>(256));
  auto run = [&](Split split) {
    auto r = TextReader::open(dir_ + "/d.jsonl");
    EXPECT_TRUE(r.is_ok());
    TokenizeOptions o;
    o.split = split;
    o.val_fraction = 0.3;
    o.seed = 5;
    std::vector<int32_t> all;
    auto n = tokenize_stream(**r, tok, o, [&](const std::vector<int32_t>& ids) {
      all.insert(all.end(), ids.begin(), ids.end());
    });
    EXPECT_TRUE(n.is_ok());
    EXPECT_EQ(n.value(), all.size());
    return all;
  };
  std::vector<int32_t> train = run(Split::kTrain), val = run(Split::kVal), all = run(Split::kAll);
  // Split the streams back into documents at EOS and compare as multisets.
  auto docs = [](const std::vector<int32_t>& ids) {
    std::multiset<std::vector<int32_t>> out;
    std::vector<int32_t> cur;
    for (int32_t t : ids) {
      if (t == 256) {
        out.insert(cur);
        cur.clear();
      } else {
        cur.push_back(t);
      }
    }
    EXPECT_TRUE(cur.empty());
    return out;
  };
  auto dt = docs(train), dv = docs(val), da = docs(all);
  EXPECT_EQ(da.size(), 200u);
  EXPECT_EQ(dt.size() + dv.size(), 200u);
  EXPECT_GT(dv.size(), 30u);
  EXPECT_LT(dv.size(), 90u);
  std::multiset<std::vector<int32_t>> merged = dt;
  merged.insert(dv.begin(), dv.end());
  EXPECT_EQ(merged, da);
  EXPECT_EQ(*da.begin(), bytes_of("doc 0"));
}

TEST_F(DatasetTokenize, TemplateBosStartsEachDocument) {
  // The byte tokenizer with a BOS template (id 257, "<s>"), as Llama's: every document starts
  // with the BOS and ends with the EOS, including documents that span several blocks, and only
  // the first block of each gets the BOS. tokenize_stream and dataset_prepare agree.
  nlohmann::json j = nlohmann::json::parse(byte_tokenizer().to_json());
  j["added_tokens"].push_back({{"id", 257}, {"content", "<s>"}, {"single_word", false},
                               {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                               {"special", true}});
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
      {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {257}}, {"tokens", {"<s>"}}}}}}};
  auto tr = Tokenizer::from_json(j.dump(), "bos.json");
  ASSERT_TRUE(tr.is_ok()) << tr.status().message();
  const Tokenizer& tok = tr.value();
  EXPECT_EQ(tok.document_prefix(), std::vector<int32_t>{257});
  EXPECT_TRUE(byte_tokenizer().document_prefix().empty());
  std::string big;
  while (big.size() < (3u << 20)) big += "a long line of text for several blocks\n";
  std::filesystem::create_directories(dir_ + "/data");
  write(dir_ + "/data/a.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
  write(dir_ + "/data/b.txt", big);
  auto r = TextReader::open(dir_ + "/data");
  ASSERT_TRUE(r.is_ok());
  std::vector<int32_t> all;
  size_t blocks = 0;
  ASSERT_TRUE(tokenize_stream(**r, tok, TokenizeOptions(), [&](const std::vector<int32_t>& ids) {
                all.insert(all.end(), ids.begin(), ids.end());
                ++blocks;
              }).is_ok());
  EXPECT_GT(blocks, 3u);  // the big file came in several blocks
  std::vector<int32_t> head(all.begin(), all.begin() + 10);
  std::vector<int32_t> want = {257};
  for (int32_t t : bytes_of("one")) want.push_back(t);
  want.push_back(256);
  want.push_back(257);
  for (int32_t t : bytes_of("two")) want.push_back(t);
  want.push_back(256);
  EXPECT_EQ(head, want);
  EXPECT_EQ(std::count(all.begin(), all.end(), 257), 3);  // one per document
  EXPECT_EQ(all[10], 257);
  EXPECT_EQ(all.back(), 256);
  // dataset_prepare writes the same stream (train and val together).
  PrepareOptions po;
  po.val_fraction = 0;
  auto st = dataset_prepare(dir_ + "/data", tok, dir_ + "/shards", po);
  ASSERT_TRUE(st.is_ok()) << st.status().message();
  EXPECT_EQ(st.value().train_tokens, all.size());
}

TEST_F(DatasetTokenize, MaxTokensTruncates) {
  write(dir_ + "/a.txt", "abcdef\n");
  auto r = TextReader::open(dir_ + "/a.txt");
  ASSERT_TRUE(r.is_ok());
  TokenizeOptions o;
  o.max_tokens = 4;
  std::vector<int32_t> got;
  auto n = tokenize_stream(**r, byte_tokenizer(), o, [&](const std::vector<int32_t>& ids) {
    got.insert(got.end(), ids.begin(), ids.end());
  });
  ASSERT_TRUE(n.is_ok());
  EXPECT_EQ(n.value(), 4u);
  EXPECT_EQ(got, bytes_of("abcd"));
}

class ShardIo : public TextReaderTest {
 protected:
  // Writes tokens 0..n-1 (mod vocab) into shards; returns the paths.
  std::vector<std::string> write_shards(const std::string& split, int32_t vocab, uint64_t n,
                                        uint64_t shard_tokens, const std::string& fp = "fp") {
    ShardWriter w(dir_, split, vocab, fp, shard_tokens);
    std::vector<int32_t> toks(n);
    for (uint64_t i = 0; i < n; ++i) toks[i] = int32_t((i * 7919) % uint64_t(vocab));
    // Append in uneven pieces so appends straddle shard boundaries.
    uint64_t pos = 0, step = 1;
    while (pos < n) {
      uint64_t take = std::min(step, n - pos);
      EXPECT_TRUE(w.append(toks.data() + pos, take).is_ok());
      pos += take;
      step = step * 2 + 1;
    }
    auto r = w.finish();
    EXPECT_TRUE(r.is_ok()) << r.status().message();
    return r.is_ok() ? r.value() : std::vector<std::string>{};
  }
};

TEST_F(ShardIo, RoundTripUint16AndUint32) {
  for (int32_t vocab : {300, 65536, 65537, 200000}) {
    fs::remove_all(dir_);
    auto paths = write_shards("train", vocab, 1000, 1 << 20);
    ASSERT_EQ(paths.size(), 1u);
    EXPECT_EQ(fs::path(paths[0]).filename(), "train-00000.tok");
    auto h = shard_read_header(paths[0]);
    ASSERT_TRUE(h.is_ok()) << h.status().message();
    EXPECT_EQ(h->token_bytes, vocab <= 65536 ? 2 : 4);
    EXPECT_EQ(h->n_tokens, 1000u);
    EXPECT_EQ(h->vocab_size, vocab);
    EXPECT_EQ(h->split, "train");
    EXPECT_EQ(h->tokenizer_fingerprint, "fp");
    std::string bytes = slurp(paths[0]);
    ASSERT_EQ(bytes.substr(0, 8), "SHRKTOK1");
    uint64_t hlen = 0;
    std::memcpy(&hlen, bytes.data() + 8, 8);
    EXPECT_EQ((16 + hlen) % 64, 0u);
    EXPECT_EQ(bytes.size(), 16 + hlen + 1000 * uint64_t(h->token_bytes));
    auto j = nlohmann::json::parse(bytes.substr(16, hlen));
    EXPECT_EQ(j["format"], "shrink.tokens");
    EXPECT_EQ(j["version"], 1);

    auto ds = TokenDataset::open(paths[0]);
    ASSERT_TRUE(ds.is_ok()) << ds.status().message();
    ASSERT_EQ(ds->size(), 1000u);
    EXPECT_EQ(ds->vocab_size(), vocab);
    EXPECT_EQ(ds->tokenizer_fingerprint(), "fp");
    std::vector<int32_t> got(1000);
    ds->read(0, 1000, got.data());
    for (uint64_t i = 0; i < 1000; ++i) ASSERT_EQ(got[i], int32_t((i * 7919) % vocab)) << i;
    EXPECT_FALSE(fs::exists(paths[0] + ".tmp"));
  }
}

TEST_F(ShardIo, ReadsSpanShardBoundaries) {
  auto paths = write_shards("val", 1000, 50, 7);
  ASSERT_EQ(paths.size(), 8u);  // 7 full shards of 7 tokens and one of 1
  EXPECT_EQ(fs::path(paths[7]).filename(), "val-00007.tok");
  auto ds = TokenDataset::open(dir_, Split::kVal);
  ASSERT_TRUE(ds.is_ok()) << ds.status().message();
  ASSERT_EQ(ds->size(), 50u);
  for (uint64_t pos = 0; pos < 50; ++pos) {
    for (uint64_t n = 0; pos + n <= 50; ++n) {
      std::vector<int32_t> got(n + 1, -1);
      ds->read(pos, n, got.data());
      for (uint64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], int32_t(((pos + i) * 7919) % 1000));
      ASSERT_EQ(got[n], -1) << "read past n";
    }
  }
  auto train = TokenDataset::open(dir_, Split::kTrain);
  ASSERT_FALSE(train.is_ok());
  EXPECT_EQ(train.status().code(), StatusCode::kNotFound);
}

TEST_F(ShardIo, AllSplitAndMismatchedShards) {
  write_shards("train", 1000, 30, 100);
  write_shards("val", 1000, 20, 100);
  auto all = TokenDataset::open(dir_, Split::kAll);
  ASSERT_TRUE(all.is_ok()) << all.status().message();
  EXPECT_EQ(all->size(), 50u);
  write_shards("val", 1000, 20, 100, "other");
  auto mixed = TokenDataset::open(dir_, Split::kAll);
  ASSERT_FALSE(mixed.is_ok());
  EXPECT_NE(mixed.status().message().find("fingerprint"), std::string::npos);
  write_shards("val", 2000, 20, 100);
  mixed = TokenDataset::open(dir_, Split::kAll);
  ASSERT_FALSE(mixed.is_ok());
  EXPECT_NE(mixed.status().message().find("vocab_size"), std::string::npos);
}

TEST_F(ShardIo, EmptySplitWritesOneEmptyShard) {
  auto paths = write_shards("val", 100, 0, 10);
  ASSERT_EQ(paths.size(), 1u);
  auto ds = TokenDataset::open(dir_, Split::kVal);
  ASSERT_TRUE(ds.is_ok()) << ds.status().message();
  EXPECT_EQ(ds->size(), 0u);
}

TEST_F(ShardIo, TokenOutsideVocabularyIsRejected) {
  ShardWriter w(dir_, "train", 100, "fp", 10);
  int32_t good[2] = {1, 99};
  EXPECT_TRUE(w.append(good, 2).is_ok());
  int32_t bad[2] = {3, 100};
  Status st = w.append(bad, 2);
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput);
  EXPECT_NE(st.message().find("100"), std::string::npos);
  int32_t neg = -1;
  ShardWriter w2(dir_, "val", 100, "fp", 10);
  EXPECT_EQ(w2.append(&neg, 1).code(), StatusCode::kInvalidInput);
}

TEST_F(ShardIo, AbandonedWriterLeavesNoFiles) {
  {
    ShardWriter w(dir_, "train", 100, "fp", 1000);
    int32_t t[3] = {1, 2, 3};
    ASSERT_TRUE(w.append(t, 3).is_ok());
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

TEST_F(ShardIo, MalformedHeadersAreRejectedByName) {
  auto paths = write_shards("train", 300, 10, 100);
  ASSERT_EQ(paths.size(), 1u);
  const std::string good = slurp(paths[0]);
  uint64_t hlen = 0;
  std::memcpy(&hlen, good.data() + 8, 8);
  const std::string header = good.substr(16, hlen);
  auto with_header = [&](std::string json) {
    json.resize(hlen, ' ');
    return good.substr(0, 16) + json + good.substr(16 + hlen);
  };
  auto replace = [&](std::string from, std::string to) {
    std::string h = header;
    size_t p = h.find(from);
    EXPECT_NE(p, std::string::npos) << from;
    h.replace(p, from.size(), to);
    return with_header(h);
  };
  std::string big_len = good;
  big_len[14] = 1;
  struct Case {
    std::string name, bytes, expect;
  } cases[] = {
      {"short", "SHRK", "too short"},
      {"magic", "XHRKTOK1" + good.substr(8), "magic"},
      {"hlen", big_len, "header length"},
      {"truncated", good.substr(0, good.size() - 1), "truncated"},
      {"extra", good + "xx", "truncated or corrupt"},
      {"json", with_header("{not json"), "not a JSON object"},
      {"format", replace("shrink.tokens", "shrink.tokenz"), "format"},
      {"version", replace("\"version\":1", "\"version\":2"), "version"},
      {"token_bytes", replace("\"token_bytes\":2", "\"token_bytes\":3"), "token_bytes"},
      {"n_tokens", replace("\"n_tokens\":10", "\"n_tokens\":11"), "expected"},
      {"vocab", replace("\"vocab_size\":300", "\"vocab_size\":70000"), "vocab_size"},
      {"split", replace("\"split\":\"train\"", "\"split\":7"), "split"},
  };
  for (const Case& c : cases) {
    std::string path = dir_ + "/bad-" + c.name + ".tok";
    write(path, c.bytes);
    auto h = shard_read_header(path);
    ASSERT_FALSE(h.is_ok()) << c.name;
    EXPECT_EQ(h.status().code(), StatusCode::kInvalidInput) << c.name;
    EXPECT_NE(h.status().message().find(path), std::string::npos) << h.status().message();
    EXPECT_NE(h.status().message().find(c.expect), std::string::npos)
        << c.name << ": " << h.status().message();
    auto ds = TokenDataset::open(path);
    EXPECT_FALSE(ds.is_ok()) << c.name;
  }
  auto missing = shard_read_header(dir_ + "/none.tok");
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

class PackSequence : public ShardIo {
 protected:
  // A dataset whose token at position i is i (vocab 100000 -> uint32 tokens).
  TokenDataset iota_dataset(uint64_t n, uint64_t shard_tokens) {
    ShardWriter w(dir_, "train", 100000, "fp", shard_tokens);
    std::vector<int32_t> t(n);
    std::iota(t.begin(), t.end(), 0);
    EXPECT_TRUE(w.append(t.data(), n).is_ok());
    EXPECT_TRUE(w.finish().is_ok());
    auto ds = TokenDataset::open(dir_);
    EXPECT_TRUE(ds.is_ok()) << ds.status().message();
    return std::move(ds).value();
  }
};

TEST_F(PackSequence, SequentialWindowsOverlapByOneToken) {
  TokenDataset ds = iota_dataset(103, 10);
  SequencePacker p(&ds, 10, 0, false);
  EXPECT_EQ(p.windows_per_epoch(), 10u);  // (103 - 1) / 10
  std::vector<int32_t> out(3 * 11);
  p.next_batch(3, out.data());
  for (int b = 0; b < 3; ++b)
    for (int i = 0; i < 11; ++i) ASSERT_EQ(out[b * 11 + i], b * 10 + i);
  for (int k = 0; k < 7; ++k) p.next_batch(1, out.data());
  EXPECT_EQ(out[0], 90);
  EXPECT_EQ(out[10], 100);
  p.next_batch(1, out.data());  // wraps into epoch 1
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(p.cursor().epoch, 1u);
  EXPECT_EQ(p.cursor().index, 1u);
}

TEST_F(PackSequence, ShuffleIsSeededPermutationAndCursorRestores) {
  TokenDataset ds = iota_dataset(1001, 64);
  const int64_t L = 8;
  SequencePacker a(&ds, L, 123, true), b(&ds, L, 123, true), c(&ds, L, 124, true);
  const uint64_t n = a.windows_per_epoch();
  ASSERT_EQ(n, 125u);
  std::vector<int32_t> wa(n * (L + 1)), wb(n * (L + 1)), wc(n * (L + 1));
  a.next_batch(int64_t(n), wa.data());
  b.next_batch(int64_t(n), wb.data());
  c.next_batch(int64_t(n), wc.data());
  EXPECT_EQ(wa, wb);
  EXPECT_NE(wa, wc);
  std::set<int32_t> starts;
  bool in_order = true;
  for (uint64_t k = 0; k < n; ++k) {
    const int32_t* w = wa.data() + k * (L + 1);
    ASSERT_EQ(w[0] % L, 0);
    for (int i = 1; i <= L; ++i) ASSERT_EQ(w[i], w[0] + i);
    starts.insert(w[0]);
    in_order = in_order && w[0] == int32_t(k * L);
  }
  EXPECT_EQ(starts.size(), n) << "each window exactly once per epoch";
  EXPECT_FALSE(in_order);

  // Epoch 1 is a different permutation.
  std::vector<int32_t> e1(n * (L + 1));
  a.next_batch(int64_t(n), e1.data());
  EXPECT_NE(e1, wa);

  // Save mid-epoch, continue, restore into a fresh packer: identical batches, across the wrap.
  a.next_batch(50, e1.data());
  SequencePacker::Cursor saved = a.cursor();
  EXPECT_EQ(saved.epoch, 2u);
  EXPECT_EQ(saved.index, 50u);
  std::vector<int32_t> cont(200 * (L + 1)), restored(200 * (L + 1));
  a.next_batch(200, cont.data());
  SequencePacker d(&ds, L, 123, true);
  d.set_cursor(saved);
  d.next_batch(200, restored.data());
  EXPECT_EQ(cont, restored);
  EXPECT_EQ(a.cursor().epoch, d.cursor().epoch);
  EXPECT_EQ(a.cursor().index, d.cursor().index);
}

TEST(EvalWindows, EdgeCases) {
  auto w = eval_windows(8, 8);  // exactly seq_len: one window
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].start, 0u);
  EXPECT_EQ(w[0].len, 8);
  w = eval_windows(9, 8);  // the final 1-token window scores nothing and is dropped
  ASSERT_EQ(w.size(), 1u);
  w = eval_windows(10, 8);  // final window of 2 tokens is kept
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[1].start, 8u);
  EXPECT_EQ(w[1].len, 2);
  w = eval_windows(20, 8);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[2].start, 16u);
  EXPECT_EQ(w[2].len, 4);
  w = eval_windows(5, 8);  // shorter than seq_len: one partial window
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].len, 5);
  EXPECT_TRUE(eval_windows(1, 8).empty());
  EXPECT_TRUE(eval_windows(0, 8).empty());
  EXPECT_TRUE(eval_windows(100, 0).empty());
}

class DatasetPrepare : public TextReaderTest {};

TEST_F(DatasetPrepare, StreamsMultiMegabyteInputIntoShards) {
  std::string in = dir_ + "/in";
  std::string big;
  for (int i = 0; big.size() < (5u << 20); ++i)
    big += "The quick brown fox " + std::to_string(i) + " jumps over the lazy dog.\n";
  write(in + "/big.txt", big);
  std::string jsonl;
  uint64_t jsonl_bytes = 0;
  for (int i = 0; i < 500; ++i) {
    std::string t = "document number " + std::to_string(i);
    jsonl_bytes += t.size();
    jsonl += "{\"text\": \"" + t + "\"}\n";
  }
  write(in + "/docs.jsonl", jsonl);

  std::string out = dir_ + "/out";
  write(out + "/train-00099.tok", "stale");  // from an earlier run: must be removed
  PrepareOptions o;
  o.val_fraction = 0.2;
  o.seed = 9;
  o.shard_tokens = 1 << 20;
  int progress_calls = 0;
  uint64_t last_done = 0;
  o.progress = [&](uint64_t done, uint64_t total, uint64_t tokens) {
    ++progress_calls;
    EXPECT_LE(done, total);
    EXPECT_GE(done, last_done);
    last_done = done;
  };
  auto r = dataset_prepare(in, byte_tokenizer(), out, o);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  const PrepareStats& s = r.value();
  EXPECT_EQ(s.documents, 501u);
  EXPECT_EQ(s.train_tokens + s.val_tokens, big.size() + jsonl_bytes + 501);
  EXPECT_GT(s.val_tokens, 0u);
  EXPECT_GE(progress_calls, 4);
  EXPECT_EQ(last_done, big.size() + jsonl.size());
  EXPECT_FALSE(fs::exists(out + "/train-00099.tok"));

  auto train = TokenDataset::open(out, Split::kTrain);
  auto val = TokenDataset::open(out, Split::kVal);
  ASSERT_TRUE(train.is_ok() && val.is_ok());
  EXPECT_EQ(train->size(), s.train_tokens);
  EXPECT_EQ(val->size(), s.val_tokens);
  EXPECT_EQ(train->tokenizer_fingerprint(), byte_tokenizer().fingerprint());
  EXPECT_EQ(train->vocab_size(), 257);
  EXPECT_GE(s.shards.size(), 3u);

  auto summary = nlohmann::json::parse(slurp(out + "/dataset.json"));
  EXPECT_EQ(summary["tokens"]["train"], s.train_tokens);
  EXPECT_EQ(summary["tokens"]["val"], s.val_tokens);
  EXPECT_EQ(summary["documents"], 501);
  EXPECT_EQ(summary["source"], in);
  EXPECT_EQ(summary["tokenizer"], byte_tokenizer().fingerprint());
  EXPECT_EQ(summary["val_fraction"], 0.2);
  EXPECT_EQ(summary["seed"], 9);

  // The big .txt (document 0) went to one split whole, in order, followed by EOS.
  bool big_is_val = split_is_val(0, 0.2, 9);
  const TokenDataset& holder = big_is_val ? val.value() : train.value();
  std::vector<int32_t> head(1000);
  holder.read(0, head.size(), head.data());
  EXPECT_EQ(head, bytes_of(big.substr(0, 1000)));
  int32_t eos = -1;
  holder.read(big.size(), 1, &eos);
  EXPECT_EQ(eos, 256);
}

TEST_F(DatasetPrepare, MaxTokensAndMissingInput) {
  write(dir_ + "/a.txt", std::string(5000, 'x'));
  PrepareOptions o;
  o.max_tokens = 1234;
  auto r = dataset_prepare(dir_ + "/a.txt", byte_tokenizer(), dir_ + "/out", o);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->train_tokens + r->val_tokens, 1234u);
  auto missing = dataset_prepare(dir_ + "/none", byte_tokenizer(), dir_ + "/out2", o);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST_F(ShardIo, UnigramBaselineMatchesHandComputedValue) {
  // Train: token 0 x3, token 1 x1 over vocab 4 -> add-one probabilities (4, 2, 1, 1) / 8.
  ShardWriter tw(dir_, "train", 4, "fp", 100);
  int32_t tr[4] = {0, 0, 1, 0};
  ASSERT_TRUE(tw.append(tr, 4).is_ok());
  ASSERT_TRUE(tw.finish().is_ok());
  // Val [2, 0, 1, 3, 0] with seq-len 3: windows [2,0,1] and [3,0]; scored positions are
  // everything but each window's first token: 0, 1, 0.
  ShardWriter vw(dir_, "val", 4, "fp", 100);
  int32_t va[5] = {2, 0, 1, 3, 0};
  ASSERT_TRUE(vw.append(va, 5).is_ok());
  ASSERT_TRUE(vw.finish().is_ok());
  auto t = TokenDataset::open(dir_, Split::kTrain).take_or_throw();
  auto v = TokenDataset::open(dir_, Split::kVal).take_or_throw();
  UnigramBaseline u = unigram_baseline(t, v, 3, 4);
  EXPECT_EQ(u.tokens_scored, 3u);
  EXPECT_EQ(u.distinct_train_tokens, 2);
  double want = -(std::log(0.5) + std::log(0.25) + std::log(0.5)) / 3.0;
  EXPECT_NEAR(u.mean_nll, want, 1e-12);
  EXPECT_NEAR(u.perplexity, std::exp(want), 1e-9);
}

}  // namespace
}  // namespace shrink::core

