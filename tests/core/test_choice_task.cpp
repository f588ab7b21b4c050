// Multiple-choice task files: lm-eval's tokenization rules, errors that name the line, and the
// HellaSwag-style builder (every item is a real document cut in two; deterministic by seed).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/choice_task.h"
#include "core/fs.h"

using namespace shrink;
using namespace shrink::core;

namespace {

std::string tmp(const std::string& name) {
  auto p = std::filesystem::path(::testing::TempDir()) /
           ("shrink_task_" + name + "_" + std::to_string(getpid()));
  return p.string();
}

void write(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

Tokenizer small_bpe() {
  const std::vector<std::string> docs = {"the cat sat on the mat", "the cat in the hat",
                                         "a cat sat in a hat on a mat", "the mat sat on the cat"};
  size_t i = 0;
  BpeTrainOptions o;
  o.vocab_size = 300;
  o.min_frequency = 1;
  return bpe_train([&](std::string& d) { return i < docs.size() ? (d = docs[i++], true) : false; },
                   o)
      .take_or_throw();
}

}  // namespace

TEST(ChoiceTask, TextItemsTokenizeAsLmEvalAndIdItemsAsGiven) {
  const Tokenizer tok = small_bpe();
  const std::string f = tmp("load.jsonl");
  write(f,
        "{\"context\": \"the cat sat \", \"choices\": [\"on the mat\", \"in the hat\"], \"label\": "
        "1}\n"
        "\n"
        "{\"context_ids\": [3, 4], \"choices_ids\": [[5], [6, 7, 8]], \"label\": 0}\n");
  auto items = choice_task_load(f, &tok, tok.vocab_size());
  ASSERT_TRUE(items.is_ok()) << items.status().message();
  ASSERT_EQ(items->size(), 2u);
  const ChoiceItem& a = (*items)[0];
  // The context's trailing space moves to the choices; the choices are the tokens of the whole
  // text beyond the context's.
  std::vector<int32_t> ctx = tok.document_prefix();
  for (int32_t t : tok.encode("the cat sat", false)) ctx.push_back(t);
  EXPECT_EQ(a.context, ctx);
  for (int c = 0; c < 2; ++c) {
    std::vector<int32_t> whole = tok.document_prefix();
    for (int32_t t :
         tok.encode(c == 0 ? "the cat sat on the mat" : "the cat sat in the hat", false))
      whole.push_back(t);
    ASSERT_GT(whole.size(), ctx.size());
    EXPECT_EQ(a.choices[size_t(c)],
              std::vector<int32_t>(whole.begin() + long(ctx.size()), whole.end()));
    std::vector<int32_t> joined = a.context;
    joined.insert(joined.end(), a.choices[size_t(c)].begin(), a.choices[size_t(c)].end());
    EXPECT_EQ(joined, whole);  // here the boundary falls between tokens
  }
  EXPECT_EQ(a.norm_length, (std::vector<double>{10, 10}));  // bytes of the choices as given
  EXPECT_EQ(a.label, 1);
  const ChoiceItem& b = (*items)[1];
  EXPECT_EQ(b.context, (std::vector<int32_t>{3, 4}));
  EXPECT_EQ(b.choices[1], (std::vector<int32_t>{6, 7, 8}));
  EXPECT_EQ(b.norm_length, (std::vector<double>{1, 3}));  // id items: tokens
  // Id items need no tokenizer.
  write(f, "{\"context_ids\": [3], \"choices_ids\": [[5], [6]], \"label\": 1}\n");
  EXPECT_TRUE(choice_task_load(f, nullptr, 10).is_ok());
}

TEST(ChoiceTask, BadFilesNameTheLineAndWhatWasExpected) {
  const Tokenizer tok = small_bpe();
  const std::string f = tmp("bad.jsonl");
  const std::string ok = "{\"context_ids\": [1], \"choices_ids\": [[2], [3]], \"label\": 0}\n";
  struct Case {
    std::string line, want;
  };
  const std::vector<Case> cases = {
      {"{not json", "not valid JSON"},
      {"[1, 2]", "expected a JSON object"},
      {"{\"context_ids\": [1], \"choices_ids\": [[2], [3]]}", "integer \"label\""},
      {"{\"context_ids\": [1], \"choices_ids\": [[2], [3]], \"label\": 2}",
       "label 2 is not a choice index"},
      {"{\"context_ids\": [1], \"choices_ids\": [[2]], \"label\": 0}", "expected at least 2"},
      {"{\"context_ids\": [1], \"choices_ids\": [[2], []], \"label\": 0}",
       "choice 1 has no tokens"},
      {"{\"context_ids\": [], \"choices_ids\": [[2], [3]], \"label\": 0}", "context has no tokens"},
      {"{\"context_ids\": [1], \"choices_ids\": [[2], [999]], \"label\": 0}",
       "outside the vocabulary"},
      {"{\"context_ids\": [1], \"choices_ids\": [[2], [\"x\"]], \"label\": 0}",
       "expected an integer token id"},
      {"{\"context\": \"a\", \"context_ids\": [1], \"choices_ids\": [[2], [3]], \"label\": 0}",
       "expected either"},
      {"{\"context\": \"a\", \"choices\": [\"b\", 3], \"label\": 0}",
       "choices[1]: expected a string"},
  };
  for (const Case& c : cases) {
    write(f, ok + c.line + "\n");
    auto r = choice_task_load(f, &tok, tok.vocab_size());
    ASSERT_FALSE(r.is_ok()) << c.line;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(r.status().message().find(f + ":2"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(c.want), std::string::npos) << r.status().message();
  }
  write(f, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 0}\n");
  auto no_tok = choice_task_load(f, nullptr, 300);
  ASSERT_FALSE(no_tok.is_ok());
  EXPECT_NE(no_tok.status().message().find("needs a tokenizer"), std::string::npos);
  write(f, "\n\n");
  EXPECT_NE(choice_task_load(f, &tok, 300).status().message().find("no items"), std::string::npos);
  EXPECT_EQ(choice_task_load(tmp("missing.jsonl"), &tok, 300).status().code(),
            StatusCode::kNotFound);
}

TEST(ChoiceTask, BuildCutsRealDocumentsAndIsDeterministic) {
  // 40 paragraphs of 8..19 distinct words in one .txt file (paragraphs = documents here).
  std::string corpus;
  std::vector<std::string> paras;
  for (int p = 0; p < 40; ++p) {
    std::string s;
    for (int w = 0; w < 8 + p % 12; ++w)
      s += (w ? " " : "") + ("w" + std::to_string(p) + "x" + std::to_string(w));
    paras.push_back(s);
    corpus += s + "\n\n";
  }
  const std::string data = tmp("corpus.txt"), out = tmp("task.jsonl"), out2 = tmp("task2.jsonl");
  write(data, corpus);
  ChoiceTaskBuildOptions o;
  o.data = data;
  o.split = "all";
  o.seed = 3;
  auto r = choice_task_build(o, out);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(r->items, 40);
  const std::set<std::string> all(paras.begin(), paras.end());
  std::set<std::string> endings;
  for (const std::string& p : paras) {
    const size_t n = size_t(std::count(p.begin(), p.end(), ' ') + 1), cut_word = n / 2;
    size_t pos = 0;
    for (size_t w = 0; w < cut_word; ++w) pos = p.find(' ', pos + 1);
    endings.insert(p.substr(pos));
  }
  std::set<int64_t> labels;
  std::istringstream in(read_file(out).take_or_throw());
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    const auto ch = j["choices"].get<std::vector<std::string>>();
    const int64_t label = j["label"].get<int64_t>();
    ASSERT_EQ(ch.size(), 4u);
    // The true ending completes a document; the others are other documents' endings.
    EXPECT_TRUE(all.count(j["context"].get<std::string>() + ch[size_t(label)])) << line;
    EXPECT_EQ(ch[size_t(label)][0], ' ');  // cut at a word boundary, the space goes with the end
    for (size_t c = 0; c < ch.size(); ++c) {
      EXPECT_TRUE(endings.count(ch[c])) << ch[c];
      if (int64_t(c) != label) EXPECT_NE(ch[c], ch[size_t(label)]);
    }
    labels.insert(label);
    ++n;
  }
  EXPECT_EQ(n, 40);
  EXPECT_GE(labels.size(), 3u);  // the right choice's position varies
  ASSERT_TRUE(choice_task_build(o, out2).is_ok());
  EXPECT_EQ(read_file(out).take_or_throw(), read_file(out2).take_or_throw());
  o.seed = 4;
  ASSERT_TRUE(choice_task_build(o, out2).is_ok());
  EXPECT_NE(read_file(out).take_or_throw(), read_file(out2).take_or_throw());
  o.max_items = 5;
  EXPECT_EQ(choice_task_build(o, out2)->items, 5);

  o.choices = 1;
  EXPECT_EQ(choice_task_build(o, out2).status().code(), StatusCode::kInvalidInput);
  o.choices = 4;
  o.min_words = 30;  // no document is that long
  auto few = choice_task_build(o, out2);
  ASSERT_FALSE(few.is_ok());
  EXPECT_NE(few.status().message().find("expected at least --choices"), std::string::npos);
  // Ten copies of one document: no distinct distractor exists, so no item can be made.
  std::string same;
  for (int i = 0; i < 10; ++i) same += "one two three four five six seven eight\n\n";
  write(data, same);
  o.min_words = 8;
  auto none = choice_task_build(o, out2);
  ASSERT_FALSE(none.is_ok());
  EXPECT_NE(none.status().message().find("distinct endings"), std::string::npos)
      << none.status().message();
}
