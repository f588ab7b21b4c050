// Multiple-choice task files: lm-eval's tokenization rules, errors that name the line, the
// HellaSwag-style builder (every item is a real document cut in two; deterministic by seed), and
// the conversion of published benchmarks (pipeline/task_convert.h). Here rather than in
// tests/core because the task tests tokenize with a BPE trained by pipeline::bpe_train.
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
#include "pipeline/task_convert.h"
#include "pipeline/tokenizer_train.h"

using namespace shrink;
using namespace shrink::core;
using namespace shrink::pipeline;

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

TEST(ChoiceTask, ContextPerChoiceItemsScoreTheContinuationAfterEach) {
  const Tokenizer tok = small_bpe();
  const std::string f = tmp("partial.jsonl");
  write(f,
        "{\"contexts\": [\"the cat \", \"the mat \"], \"continuation\": \"sat on the hat\", "
        "\"label\": 1}\n"
        "{\"contexts_ids\": [[3, 4, 5], [3, 6]], \"continuation_ids\": [7, 8], \"label\": 0}\n");
  auto items = choice_task_load(f, &tok, tok.vocab_size());
  ASSERT_TRUE(items.is_ok()) << items.status().message();
  // Text: each choice is its own context's tokens beyond the shared start (given, not scored),
  // then the continuation's, exactly as context + continuation tokenizes.
  const ChoiceItem& a = (*items)[0];
  ASSERT_EQ(a.given.size(), 2u);
  for (int c = 0; c < 2; ++c) {
    std::vector<int32_t> ctx = tok.document_prefix(), whole = tok.document_prefix();
    for (int32_t t : tok.encode(c == 0 ? "the cat" : "the mat", false)) ctx.push_back(t);
    for (int32_t t :
         tok.encode(c == 0 ? "the cat sat on the hat" : "the mat sat on the hat", false))
      whole.push_back(t);
    std::vector<int32_t> joined = a.context;
    joined.insert(joined.end(), a.choices[size_t(c)].begin(), a.choices[size_t(c)].end());
    EXPECT_EQ(joined, whole);
    EXPECT_EQ(int64_t(a.context.size()) + a.given[size_t(c)], int64_t(ctx.size()));
    EXPECT_GT(a.given[size_t(c)], 0);  // "cat" and "mat" differ
  }
  EXPECT_EQ(a.norm_length, (std::vector<double>{14, 14}));  // the continuation's characters
  // Ids: the common start is the shared context.
  const ChoiceItem& b = (*items)[1];
  EXPECT_EQ(b.context, (std::vector<int32_t>{3}));
  EXPECT_EQ(b.choices[0], (std::vector<int32_t>{4, 5, 7, 8}));
  EXPECT_EQ(b.choices[1], (std::vector<int32_t>{6, 7, 8}));
  EXPECT_EQ(b.given, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(b.norm_length, (std::vector<double>{2, 2}));
  // acc_norm's lengths are characters (Python's len), not bytes.
  write(f, "{\"context\": \"a \", \"choices\": [\"caf\u00e9\", \"cafe\"], \"label\": 0}\n");
  auto u = choice_task_load(f, &tok, tok.vocab_size());
  ASSERT_TRUE(u.is_ok()) << u.status().message();
  EXPECT_EQ((*u)[0].norm_length, (std::vector<double>{4, 4}));
  EXPECT_TRUE((*u)[0].given.empty());
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
       "expected exactly one of"},
      {"{\"contexts_ids\": [[1], [2]], \"label\": 0}", "expected both \"contexts_ids\""},
      {"{\"contexts_ids\": [[1, 2], [3, 2]], \"continuation_ids\": [4], \"label\": 0}",
       "share no first token"},
      {"{\"contexts_ids\": [[1], [1, 2]], \"continuation_ids\": [], \"label\": 0}",
       "choice 0 has no tokens of its own"},
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
      if (int64_t(c) != label) {
        EXPECT_NE(ch[c], ch[size_t(label)]);
      }
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

namespace {

// Converts `records` (one JSON object per line) and returns the task file's lines.
std::vector<nlohmann::json> convert(const std::string& format, const std::string& records,
                                    const std::string& labels = "") {
  const std::string in = tmp(format + "_in.jsonl"), out = tmp(format + "_out.jsonl");
  write(in, records);
  ChoiceTaskConvertOptions o;
  o.format = format;
  o.in = in;
  if (!labels.empty()) {
    o.labels = tmp(format + "_labels.lst");
    write(o.labels, labels);
  }
  auto r = choice_task_convert(o, out);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  std::vector<nlohmann::json> lines;
  if (!r.is_ok()) return lines;
  std::istringstream s(read_file(out).take_or_throw());
  for (std::string line; std::getline(s, line);) lines.push_back(nlohmann::json::parse(line));
  EXPECT_EQ(int64_t(lines.size()), r->items);
  return lines;
}

}  // namespace

// Records in each benchmark's published layout become lm-eval's zero-shot requests: the
// expected strings are those lm-evaluation-harness builds from the same records.
TEST(ChoiceTask, ConvertsStandardBenchmarksWithLmEvalPrompts) {
  using nlohmann::json;
  // HellaSwag (rowanz/hellaswag's README example, and a WikiHow item with bracket tags).
  auto h = convert(
      "hellaswag",
      "{\"ind\": 24, \"activity_label\": \"Roof shingle removal\", \"ctx_a\": \"A man is sitting "
      "on a roof.\", \"ctx_b\": \"he\", \"ctx\": \"A man is sitting on a roof. he\", \"split\": "
      "\"val\", \"split_type\": \"indomain\", \"label\": 3, \"endings\": [\"is using wrap to wrap "
      "a pair of skis.\", \"is ripping level tiles off.\", \"is holding a rubik's cube.\", "
      "\"starts pulling up roofing on a roof.\"], \"source_id\": \"activitynet~v_-JhWjGDPHMY\"}\n"
      "{\"ind\": 7, \"activity_label\": \"Baking\", \"ctx_a\": \"[header] How to bake bread "
      "[title] Heat the oven.\", \"ctx_b\": \"Then MIX the flour\", \"label\": \"1\", "
      "\"endings\": [\"[step] and wait.\", \"with  water [substeps] slowly.\"]}\n");
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[0]["context"], "Roof shingle removal: A man is sitting on a roof. He ");
  EXPECT_EQ(h[0]["choices"][3], "starts pulling up roofing on a roof.");
  EXPECT_EQ(h[0]["label"], 3);
  EXPECT_EQ(h[0]["id"], 24);
  // capitalize() lower-cases the rest; " [title]" becomes ". ", tags go, double spaces close.
  EXPECT_EQ(h[1]["context"], "Baking: How to bake bread. Heat the oven. Then mix the flour ");
  // As in Python, a tag at the start leaves its following space (re.sub runs after strip).
  EXPECT_EQ(h[1]["choices"], json({" and wait.", "with water slowly."}));
  EXPECT_EQ(h[1]["label"], 1);

  // ARC, in AI2's layout and in the HF layout (labels "1".."4" occur in both).
  auto a = convert("arc",
                   "{\"id\": \"Mercury_7\", \"question\": {\"stem\": \"Which is a metal?\", "
                   "\"choices\": [{\"text\": \"wood\", \"label\": \"A\"}, {\"text\": \"iron\", "
                   "\"label\": \"B\"}]}, \"answerKey\": \"B\"}\n"
                   "{\"id\": \"x\", \"question\": \"Which is wet?\", \"choices\": {\"text\": "
                   "[\"sand\", \"rain\", \"salt\"], \"label\": [\"1\", \"2\", \"3\"]}, "
                   "\"answerKey\": \"2\"}\n");
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[0]["context"], "Question: Which is a metal?\nAnswer: ");
  EXPECT_EQ(a[0]["choices"], json({"wood", "iron"}));
  EXPECT_EQ(a[0]["label"], 1);
  EXPECT_EQ(a[0]["id"], "Mercury_7");
  EXPECT_EQ(a[1]["context"], "Question: Which is wet?\nAnswer: ");
  EXPECT_EQ(a[1]["label"], 1);

  // OpenBookQA: the stem alone.
  auto ob = convert("openbookqa",
                    "{\"id\": \"7-980\", \"question_stem\": \"The sun is responsible for\", "
                    "\"choices\": {\"text\": [\"puppies\", \"plants sprouting\"], \"label\": "
                    "[\"A\", \"B\"]}, \"answerKey\": \"B\"}\n");
  ASSERT_EQ(ob.size(), 1u);
  EXPECT_EQ(ob[0]["context"], "The sun is responsible for ");
  EXPECT_EQ(ob[0]["label"], 1);

  // PIQA, with the labels in a separate file as the official release has them.
  auto p = convert("piqa",
                   "{\"goal\": \"How do I open a jar?\", \"sol1\": \"Twist the lid.\", \"sol2\": "
                   "\"Freeze it.\"}\n{\"goal\": \"Dry a shirt\", \"sol1\": \"Wet it\", \"sol2\": "
                   "\"Hang it\"}\n",
                   "0\n1\n");
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0]["context"], "Question: How do I open a jar?\nAnswer: ");
  EXPECT_EQ(p[0]["choices"], json({"Twist the lid.", "Freeze it."}));
  EXPECT_EQ(p[0]["label"], 0);
  EXPECT_EQ(p[1]["label"], 1);

  // Winogrande: a context per option, the rest of the sentence scored after each.
  auto w = convert("winogrande",
                   "{\"qID\": \"3D5G8J4N5CI2K40F4RZLF9OG2CKVTH-2\", \"sentence\": \"Kyle doesn't "
                   "wear leg warmers to bed, while Logan almost always does. _ is more likely to "
                   "live in a colder climate.\", \"option1\": \"Kyle\", \"option2\": \"Logan\", "
                   "\"answer\": \"2\"}\n");
  ASSERT_EQ(w.size(), 1u);
  const std::string pre = "Kyle doesn't wear leg warmers to bed, while Logan almost always does. ";
  EXPECT_EQ(w[0]["contexts"], json({pre + "Kyle ", pre + "Logan "}));
  EXPECT_EQ(w[0]["continuation"], "is more likely to live in a colder climate.");
  EXPECT_EQ(w[0]["label"], 1);

  // MMLU (HF cais/mmlu): the description line, lettered choices; the choices are the letters.
  auto m = convert("mmlu",
                   "{\"question\": \" What is 2 + 2? \", \"subject\": \"elementary_mathematics\", "
                   "\"choices\": [\"3\", \"4\", \"5\", \"22\"], \"answer\": 1}\n"
                   "{\"question\": \"Pick C\", \"choices\": [\"a\", \"b\", \"c\"], \"answer\": "
                   "\"C\"}\n");
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0]["context"],
            "The following are multiple choice questions (with answers) about elementary "
            "mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer: ");
  EXPECT_EQ(m[0]["choices"], json({"A", "B", "C", "D"}));
  EXPECT_EQ(m[0]["label"], 1);
  EXPECT_EQ(m[1]["context"], "Pick C\nA. a\nB. b\nC. c\nAnswer: ");
  EXPECT_EQ(m[1]["label"], 2);

  // MMLU 5-shot as lm-eval builds it: the first examples of the dev split of the same subject,
  // each with its answer, after the description line.
  {
    const std::string dev = tmp("mmlu_dev.jsonl"), test = tmp("mmlu_test.jsonl"),
                      out = tmp("mmlu_5shot.jsonl");
    write(dev,
          "{\"question\": \"1 + 1?\", \"subject\": \"math\", \"choices\": [\"2\", \"3\"], "
          "\"answer\": 0}\n"
          "{\"question\": \"Capital of France?\", \"subject\": \"geo\", \"choices\": "
          "[\"Rome\", \"Paris\"], \"answer\": 1}\n"
          "{\"question\": \"2 + 2?\", \"subject\": \"math\", \"choices\": [\"5\", \"4\"], "
          "\"answer\": 1}\n"
          "{\"question\": \"3 + 3?\", \"subject\": \"math\", \"choices\": [\"6\", \"7\"], "
          "\"answer\": 0}\n");
    write(test,
          "{\"question\": \"4 + 4?\", \"subject\": \"math\", \"choices\": [\"9\", \"8\"], "
          "\"answer\": 1}\n");
    ChoiceTaskConvertOptions o;
    o.format = "mmlu";
    o.in = test;
    o.fewshot = 2;
    o.fewshot_from = dev;
    auto r = choice_task_convert(o, out);
    ASSERT_TRUE(r.is_ok()) << r.status().message();
    const json j = json::parse(read_file(out).take_or_throw());
    EXPECT_EQ(j["context"],
              "The following are multiple choice questions (with answers) about math.\n\n"
              "1 + 1?\nA. 2\nB. 3\nAnswer: A\n\n"
              "2 + 2?\nA. 5\nB. 4\nAnswer: B\n\n"
              "4 + 4?\nA. 9\nB. 8\nAnswer: ");
    EXPECT_EQ(j["label"], 1);
    o.fewshot = 4;  // only three math examples
    auto few = choice_task_convert(o, out);
    ASSERT_FALSE(few.is_ok());
    EXPECT_NE(few.status().message().find("3 few-shot examples of subject math"), std::string::npos)
        << few.status().message();
    EXPECT_NE(few.status().message().find(test + ":1"), std::string::npos);
    o.fewshot_from.clear();
    EXPECT_NE(choice_task_convert(o, out).status().message().find("needs --fewshot-from"),
              std::string::npos);
  }
  // Every converted file loads as a task.
  const Tokenizer tok = small_bpe();
  for (const char* fmt : {"hellaswag", "arc", "openbookqa", "piqa", "winogrande", "mmlu"}) {
    auto items = choice_task_load(tmp(std::string(fmt) + "_out.jsonl"), &tok, tok.vocab_size());
    EXPECT_TRUE(items.is_ok()) << fmt << ": " << items.status().message();
  }
}

TEST(ChoiceTask, ConvertRefusesBadRecordsNamingTheLineAndField) {
  const std::string in = tmp("conv_bad.jsonl"), out = tmp("conv_bad_out.jsonl");
  struct Case {
    std::string format, record, want;
  };
  const std::string hs_ok =
      "{\"activity_label\": \"A\", \"ctx_a\": \"b\", \"ctx_b\": \"c\", \"endings\": [\"d\", "
      "\"e\"], \"label\": 0}";
  const std::vector<Case> cases = {
      {"hellaswag", "{\"activity_label\": \"A\", \"ctx_a\": \"b\", \"endings\": [\"d\"]}",
       "no \"ctx_b\""},
      {"hellaswag",
       "{\"activity_label\": \"A\", \"ctx_a\": \"b\", \"ctx_b\": \"c\", \"endings\": [\"d\", "
       "\"e\"], \"label\": \"\"}",
       "\"label\" is empty: expected the labelled split"},
      {"hellaswag",
       "{\"activity_label\": \"A\", \"ctx_a\": \"b\", \"ctx_b\": \"c\", \"endings\": [\"d\", 4], "
       "\"label\": 0}",
       "\"endings\"[1]: expected a string"},
      {"hellaswag",
       "{\"activity_label\": \"A\", \"ctx_a\": \"b\", \"ctx_b\": \"c\", \"endings\": [\"d\", "
       "\"e\"], \"label\": 5}",
       "label 5 is not a choice index"},
      {"arc",
       "{\"question\": \"q\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"A\", \"B\"]}, "
       "\"answerKey\": \"E\"}",
       "\"answerKey\" \"E\" is not one of the choices' labels"},
      {"winogrande",
       "{\"sentence\": \"no blank\", \"option1\": \"a\", \"option2\": \"b\", "
       "\"answer\": \"1\"}",
       "has no \"_\""},
      {"winogrande",
       "{\"sentence\": \"a _ b\", \"option1\": \"a\", \"option2\": \"b\", "
       "\"answer\": \"\"}",
       "\"answer\" is empty"},
      {"piqa", "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}", "give --labels"},
      {"mmlu", "{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": \"x\"}",
       "\"answer\": expected an integer"},
      {"hellaswag", "[1, 2]", "not a JSON object"},
  };
  for (const Case& c : cases) {
    // A good first line (hellaswag's) is used only for hellaswag; the bad record is line 2.
    const std::string first = c.format == "hellaswag" ? hs_ok + "\n" : "\n";
    write(in, first + c.record + "\n");
    ChoiceTaskConvertOptions o;
    o.format = c.format;
    o.in = in;
    auto r = choice_task_convert(o, out);
    ASSERT_FALSE(r.is_ok()) << c.record;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(r.status().message().find(in + ":2: "), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(c.want), std::string::npos) << r.status().message();
    EXPECT_FALSE(std::filesystem::exists(out));  // nothing is written
  }
  ChoiceTaskConvertOptions o;
  o.format = "squad";
  o.in = in;
  EXPECT_NE(choice_task_convert(o, out).status().message().find("expected one of hellaswag"),
            std::string::npos);
  o.format = "arc";
  o.labels = in;
  EXPECT_NE(choice_task_convert(o, out).status().message().find("--labels is for piqa"),
            std::string::npos);
  // A labels file with a different count is refused.
  o.format = "piqa";
  write(in, "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n");
  o.labels = tmp("conv_bad.lst");
  write(o.labels, "0\n1\n");
  EXPECT_NE(choice_task_convert(o, out).status().message().find("2 labels for 1 records"),
            std::string::npos);
}
