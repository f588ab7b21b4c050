// Benchmark task conversion: standard multiple-choice benchmarks in their published layouts,
// converted to shrink task files (core/choice_task.h) with lm-evaluation-harness's prompts.
// Ahead-of-time only (`shrink data convert-task`), so it lives in lib/pipeline; the runtime only
// reads task files. Tested in tests/pipeline/test_choice_task.cpp and fuzzed by
// tests/fuzz/fuzz_task.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace shrink::pipeline {

/// Standard benchmarks in their published layouts, written as task files with lm-eval's
/// zero-shot prompts (lm-evaluation-harness v0.4 task configs):
///   hellaswag  {"activity_label", "ctx_a", "ctx_b", "endings", "label"} (rowanz/hellaswag and
///              the HF dataset): "{label}: {ctx_a} {Ctx_b}", lm-eval's bracket clean-up, endings
///   arc        {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"} (AI2) or
///              {"question", "choices": {"text": [], "label": []}, "answerKey"} (HF ai2_arc):
///              "Question: {question}\nAnswer:", the choices' texts
///   openbookqa the same layouts with "question_stem" (HF) or question.stem: "{stem}"
///   piqa       {"goal", "sol1", "sol2"} with "label" or a labels file (one 0/1 per line, as
///              the official valid-labels.lst): "Question: {goal}\nAnswer:", [sol1, sol2]
///   winogrande {"sentence" with one "_", "option1", "option2", "answer": "1"|"2"}: partial
///              scoring, a context per option (the sentence up to the blank, the option filled
///              in) and the rest of the sentence as the continuation
///   mmlu       {"question", "choices": [..], "answer": 0..3 or "A".."D", "subject"?} (HF
///              cais/mmlu): lm-eval's description line for the subject, the question, the
///              lettered choices and "Answer:"; the choices are the letters
/// Python's str.capitalize, strip and len are applied to ASCII (HellaSwag's context).
struct ChoiceTaskConvertOptions {
  std::string format;     // one of choice_task_formats()
  std::string in;         // JSONL, one record per line
  std::string labels;     // piqa only: a file of one label per line, for records without "label"
  int64_t max_items = 0;  // 0 = all
  // k-shot: the first `fewshot` records of `fewshot_from` (of the same subject for MMLU: lm-eval's
  // first_n sampler over MMLU's dev split), each as its query, " ", its right choice and "\n\n",
  // before the query. Not for winogrande.
  int64_t fewshot = 0;
  std::string fewshot_from;
};
struct ChoiceTaskConvertResult {
  int64_t items = 0;
};
const std::vector<std::string>& choice_task_formats();
/// Writes the task as JSONL to `out_path` (atomically). Errors name `in`'s line and the field.
Result<ChoiceTaskConvertResult> choice_task_convert(const ChoiceTaskConvertOptions& o,
                                                    const std::string& out_path);

}  // namespace shrink::pipeline
