// Standard multiple-choice benchmarks (HellaSwag, ARC, OpenBookQA, PIQA, Winogrande, MMLU) in
// their published JSONL layouts, converted to task files with lm-evaluation-harness's zero-shot
// prompts, so that `eval --task` and `verify --task` score them as lm-eval does. See
// task_convert.h; tested in tests/pipeline/test_choice_task.cpp.
#include "pipeline/task_convert.h"

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/choice_task.h"
#include "core/json_util.h"
#include "core/fs.h"

namespace shrink::pipeline {

using core::read_file;
using core::write_file_atomic;

using nlohmann::json;

namespace {

// Python's str.strip() for ASCII whitespace (including \x1c..\x1f, which Python strips too).
std::string py_strip(const std::string& s) {
  auto ws = [](unsigned char c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f);
  };
  size_t a = 0, b = s.size();
  while (a < b && ws((unsigned char)s[a])) ++a;
  while (b > a && ws((unsigned char)s[b - 1])) --b;
  return s.substr(a, b - a);
}

// Python's str.capitalize() on ASCII: the first character upper-case, the rest lower-case.
std::string py_capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 0 && c >= 'a' && c <= 'z') s[i] = char(c - 'a' + 'A');
    if (i > 0 && c >= 'A' && c <= 'Z') s[i] = char(c - 'A' + 'a');
  }
  return s;
}

// Python's str.replace(a, b): every non-overlapping occurrence, left to right, in one pass.
std::string py_replace(const std::string& s, const std::string& a, const std::string& b) {
  std::string out;
  size_t i = 0;
  for (size_t j; (j = s.find(a, i)) != std::string::npos; i = j + a.size()) {
    out.append(s, i, j - i);
    out += b;
  }
  out.append(s, i, std::string::npos);
  return out;
}

// lm-eval's HellaSwag preprocess: strip; " [title]" -> ". "; drop every "[...]" (the shortest
// match, as re.sub("\\[.*?\\]", "") does; "." does not cross a newline); "  " -> " ".
std::string hellaswag_preprocess(const std::string& text) {
  std::string s = py_replace(py_strip(text), " [title]", ". ");
  std::string out;
  for (size_t i = 0; i < s.size();) {
    if (s[i] == '[') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != ']' && s[j] != '\n') ++j;
      if (j < s.size() && s[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return py_replace(out, "  ", " ");
}

class Record {
 public:
  Record(const json& j, std::string at) : j_(j), at_(std::move(at)) {}
  const std::string& at() const { return at_; }
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& get(const char* key) const {
    if (!has(key)) fail(strfmt("no \"%s\"", key));
    return j_[key];
  }
  std::string str(const json& v, const std::string& what) const {
    if (!v.is_string()) fail(strfmt("%s: expected a string", what.c_str()));
    return v.get<std::string>();
  }
  std::string str(const char* key) const { return str(get(key), strfmt("\"%s\"", key)); }
  std::vector<std::string> strs(const json& v, const std::string& what) const {
    if (!v.is_array()) fail(strfmt("%s: expected an array of strings", what.c_str()));
    std::vector<std::string> out;
    for (size_t i = 0; i < v.size(); ++i)
      out.push_back(str(v[i], strfmt("%s[%zu]", what.c_str(), i)));
    return out;
  }
  // An integer label, given as a number or as a string of digits ("3"); `unlabeled` explains
  // an empty or missing one.
  int64_t index(const json& v, const std::string& what, const char* unlabeled) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_string()) {
      const std::string s = py_strip(v.get<std::string>());
      if (s.empty()) fail(strfmt("%s is empty: %s", what.c_str(), unlabeled));
      if (s.find_first_not_of("0123456789") == std::string::npos && s.size() < 10)
        return std::stoll(s);
    }
    fail(strfmt("%s: expected an integer (or a string of digits)", what.c_str()));
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(StatusCode::kInvalidInput, at_ + ": " + what);
  }

 private:
  const json& j_;
  std::string at_;
};

const char* kUnlabeled = "expected the labelled split (test splits are usually unlabelled)";

// One multiple-choice document as lm-eval renders it: the task's description (MMLU's subject
// line), the query (doc_to_text) and the choices (doc_to_choice).
struct Doc {
  std::string description, query;
  std::vector<std::string> choices;
  int64_t label = 0;
  std::string group;  // MMLU's subject: few-shot examples come from the same one
};

Doc checked(Doc d, const Record& r) {
  if (d.choices.size() < 2) r.fail(strfmt("%zu choice(s); expected at least 2", d.choices.size()));
  if (d.label < 0 || d.label >= int64_t(d.choices.size()))
    r.fail(strfmt("label %lld is not a choice index; expected 0..%zu", (long long)d.label,
                  d.choices.size() - 1));
  return d;
}

// lm-eval's request: description, then each few-shot example as its query, the target delimiter
// (" ") and its right choice, then the fewshot delimiter ("\n\n"), then the query. The context
// ends with the target delimiter, which the loader moves to the front of each choice, so the
// choices' lengths for acc_norm are lm-eval's.
json choice_item(const Doc& d, const std::vector<const Doc*>& shots) {
  std::string ctx = d.description;
  for (const Doc* e : shots) ctx += e->query + " " + e->choices[size_t(e->label)] + "\n\n";
  return {{"context", ctx + d.query + " "}, {"choices", d.choices}, {"label", d.label}};
}

Doc hellaswag(const Record& r) {
  const std::string ctx = r.str("ctx_a") + " " + py_capitalize(r.str("ctx_b"));
  std::vector<std::string> endings = r.strs(r.get("endings"), "\"endings\"");
  for (auto& e : endings) e = hellaswag_preprocess(e);
  return checked({"", hellaswag_preprocess(r.str("activity_label") + ": " + ctx), endings,
                  r.index(r.get("label"), "\"label\"", kUnlabeled)},
                 r);
}

// ARC and OpenBookQA: the AI2 layout nests the stem and choices in "question"; the HF layout has
// them side by side, with "choices" as parallel "text" and "label" arrays.
Doc arc_like(const Record& r, bool obqa) {
  std::string stem;
  std::vector<std::string> texts, labels;
  if (r.has("question") && r.get("question").is_object()) {
    const json& q = r.get("question");
    if (!q.contains("stem")) r.fail("\"question\" has no \"stem\"");
    stem = r.str(q["stem"], "\"question.stem\"");
    if (!q.contains("choices") || !q["choices"].is_array())
      r.fail("\"question.choices\": expected an array of {\"text\", \"label\"}");
    for (size_t i = 0; i < q["choices"].size(); ++i) {
      const json& c = q["choices"][i];
      const std::string w = strfmt("\"question.choices[%zu]\"", i);
      if (!c.is_object() || !c.contains("text") || !c.contains("label"))
        r.fail(w + ": expected {\"text\", \"label\"}");
      texts.push_back(r.str(c["text"], w + ".text"));
      labels.push_back(r.str(c["label"], w + ".label"));
    }
  } else {
    stem = r.str(obqa ? "question_stem" : "question");
    const json& c = r.get("choices");
    if (!c.is_object() || !c.contains("text") || !c.contains("label"))
      r.fail("\"choices\": expected {\"text\": [...], \"label\": [...]}");
    texts = r.strs(c["text"], "\"choices.text\"");
    labels = r.strs(c["label"], "\"choices.label\"");
    if (labels.size() != texts.size())
      r.fail(strfmt("\"choices\" has %zu texts and %zu labels; expected as many of each",
                    texts.size(), labels.size()));
  }
  const std::string key = r.str("answerKey");
  int64_t label = -1;
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] == key) label = int64_t(i);
  if (label < 0) r.fail("\"answerKey\" \"" + key + "\" is not one of the choices' labels");
  return checked({"", obqa ? stem : "Question: " + stem + "\nAnswer:", texts, label}, r);
}

Doc piqa(const Record& r, const std::vector<std::string>& labels, size_t record) {
  int64_t label;
  if (r.has("label")) {
    label = r.index(r.get("label"), "\"label\"", kUnlabeled);
  } else {
    if (record >= labels.size())
      r.fail(
          strfmt("no \"label\", and the labels file has %zu lines; expected a label for "
                 "record %zu (give --labels, e.g. valid-labels.lst)",
                 labels.size(), record + 1));
    label = r.index(json(labels[record]), strfmt("labels file line %zu", record + 1), kUnlabeled);
  }
  return checked(
      {"", "Question: " + r.str("goal") + "\nAnswer:", {r.str("sol1"), r.str("sol2")}, label}, r);
}

json winogrande(const Record& r) {
  const std::string s = r.str("sentence");
  const size_t blank = s.find('_');
  if (blank == std::string::npos) r.fail("\"sentence\" has no \"_\" (the blank to fill)");
  const int64_t answer = r.index(r.get("answer"), "\"answer\"", kUnlabeled);
  if (answer != 1 && answer != 2)
    r.fail(strfmt("\"answer\" %lld: expected 1 or 2", (long long)answer));
  const std::string pre = s.substr(0, blank);
  return {{"contexts", {pre + r.str("option1") + " ", pre + r.str("option2") + " "}},
          {"continuation", py_strip(s.substr(blank + 1))},
          {"label", answer - 1}};
}

Doc mmlu(const Record& r) {
  const std::vector<std::string> choices = r.strs(r.get("choices"), "\"choices\"");
  if (choices.size() < 2 || choices.size() > 26)
    r.fail(strfmt("%zu choices; expected 2..26", choices.size()));
  std::string desc;
  if (r.has("subject")) {
    desc = "The following are multiple choice questions (with answers) about " +
           py_replace(r.str("subject"), "_", " ") + ".\n\n";
  }
  std::string ctx = py_strip(r.str("question"));
  std::vector<std::string> letters;
  for (size_t i = 0; i < choices.size(); ++i) {
    letters.push_back(std::string(1, char('A' + i)));
    ctx += "\n" + letters.back() + ". " + choices[i];
  }
  ctx += "\nAnswer:";
  const json& a = r.get("answer");
  int64_t label;
  if (a.is_string() && a.get<std::string>().size() == 1 && a.get<std::string>()[0] >= 'A' &&
      a.get<std::string>()[0] <= 'Z') {
    label = a.get<std::string>()[0] - 'A';
  } else {
    label = r.index(a, "\"answer\"", kUnlabeled);
  }
  return checked({desc, ctx, letters, label, r.has("subject") ? r.str("subject") : ""}, r);
}

Result<std::vector<std::string>> lines_of(const std::string& path) {
  SHRINK_ASSIGN_OR_RETURN(std::string text, read_file(path));
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    out.push_back(std::move(line));
  }
  return out;
}

}  // namespace

const std::vector<std::string>& choice_task_formats() {
  static const std::vector<std::string> f = {"hellaswag", "arc",        "openbookqa",
                                             "piqa",      "winogrande", "mmlu"};
  return f;
}

Result<ChoiceTaskConvertResult> choice_task_convert(const ChoiceTaskConvertOptions& o,
                                                    const std::string& out_path) {
  const auto& fs = choice_task_formats();
  if (std::find(fs.begin(), fs.end(), o.format) == fs.end()) {
    std::string names;
    for (const std::string& f : fs) names += (names.empty() ? "" : ", ") + f;
    return invalid_input("--format " + o.format + ": expected one of " + names);
  }
  SHRINK_CHECK(o.labels.empty() || o.format == "piqa", StatusCode::kInvalidInput,
               "--labels is for piqa (its labels come in a separate file); %s records carry "
               "their own",
               o.format.c_str());
  SHRINK_CHECK(o.max_items >= 0, StatusCode::kInvalidInput, "--max-items must be >= 0");
  SHRINK_CHECK(o.fewshot >= 0, StatusCode::kInvalidInput, "--fewshot must be >= 0");
  SHRINK_CHECK(o.fewshot == 0 || !o.fewshot_from.empty(), StatusCode::kInvalidInput,
               "--fewshot %lld needs --fewshot-from FILE (e.g. MMLU's dev split)",
               (long long)o.fewshot);
  SHRINK_CHECK(o.fewshot == 0 || o.format != "winogrande", StatusCode::kInvalidInput,
               "--fewshot: winogrande is scored zero-shot here (partial scoring)");
  SHRINK_ASSIGN_OR_RETURN(std::vector<std::string> lines, lines_of(o.in));
  std::vector<std::string> labels;
  if (!o.labels.empty()) {
    SHRINK_ASSIGN_OR_RETURN(labels, lines_of(o.labels));
    while (!labels.empty() && py_strip(labels.back()).empty()) labels.pop_back();
  }
  // Each non-blank line of a file as a record, in order.
  auto for_records = [&](const std::string& path, const std::vector<std::string>& ls,
                         const std::function<bool(const Record&, size_t)>& f) {
    size_t record = 0;
    for (size_t ln = 0; ln < ls.size(); ++ln) {
      if (py_strip(ls[ln]).empty()) continue;
      const std::string at = strfmt("%s:%zu", path.c_str(), ln + 1);
      const json j = core::json_parse_line(ls[ln]);
      if (j.is_discarded() || !j.is_object()) {
        throw Error(StatusCode::kInvalidInput,
                    at + ": not a JSON object; expected one " + o.format + " record per line");
      }
      if (!f(Record(j, at), record++)) break;
    }
    return record;
  };
  auto doc_of = [&](const Record& r, const std::vector<std::string>& ls, size_t record) {
    if (o.format == "hellaswag") return hellaswag(r);
    if (o.format == "arc") return arc_like(r, false);
    if (o.format == "openbookqa") return arc_like(r, true);
    if (o.format == "piqa") return piqa(r, ls, record);
    return mmlu(r);
  };
  ChoiceTaskConvertResult res;
  std::string out;
  size_t records = 0;
  try {
    std::vector<Doc> pool;  // few-shot examples, in file order
    if (o.fewshot > 0) {
      SHRINK_ASSIGN_OR_RETURN(std::vector<std::string> fl, lines_of(o.fewshot_from));
      for_records(o.fewshot_from, fl, [&](const Record& r, size_t) {
        pool.push_back(doc_of(r, {}, 0));
        return true;
      });
    }
    records = for_records(o.in, lines, [&](const Record& r, size_t record) {
      if (o.max_items > 0 && res.items >= o.max_items) return false;
      json item;
      if (o.format == "winogrande") {
        item = winogrande(r);
      } else {
        const Doc d = doc_of(r, labels, record);
        // lm-eval's first_n sampler, as MMLU uses it: the first examples of the few-shot split
        // (of the same subject for MMLU).
        std::vector<const Doc*> shots;
        for (const Doc& e : pool) {
          if (int64_t(shots.size()) < o.fewshot && e.group == d.group) shots.push_back(&e);
        }
        if (int64_t(shots.size()) < o.fewshot) {
          r.fail(strfmt("%zu few-shot examples%s in %s; expected --fewshot %lld", shots.size(),
                        d.group.empty() ? "" : (" of subject " + d.group).c_str(),
                        o.fewshot_from.c_str(), (long long)o.fewshot));
        }
        item = choice_item(d, shots);
      }
      for (const char* id : {"ind", "id", "qID"}) {
        if (r.has(id)) {
          item["id"] = r.get(id);
          break;
        }
      }
      out += item.dump(-1, ' ', false, json::error_handler_t::replace);
      out += '\n';
      res.items++;
      return true;
    });
  } catch (const Error& e) {
    return Status(e.code(), e.what());
  }
  SHRINK_CHECK(res.items > 0, StatusCode::kInvalidInput,
               "%s: no records; expected one %s record "
               "per line",
               o.in.c_str(), o.format.c_str());
  SHRINK_CHECK(labels.empty() || o.max_items > 0 || labels.size() == records,
               StatusCode::kInvalidInput,
               "%s has %zu labels for %zu records; expected one per record", o.labels.c_str(),
               labels.size(), records);
  SHRINK_RETURN_IF_ERROR(write_file_atomic(out_path, out));
  return res;
}

}  // namespace shrink::pipeline
