// Recipes: the YAML file `shrink run` executes, turned into plain structs. This is the only
// file that sees yaml-cpp. It checks the structure (version, known top-level and data keys, one
// known stage type per list entry, scalar values) and keeps every value's file:line:col, so that
// the runner can check stage keys against the commands' own options and report every problem
// of a recipe in one run. Values stay strings: the stage's command parses them, exactly as it
// parses its command line.
//
// Schema (version 1):
//   version: 1
//   teacher: DIR                 # the model every stage starts from and verifies against
//   data: {train: PATH, calib: PATH, eval: PATH, tokenizer: PATH,    # calib/eval default: train
//          task: FILE.jsonl}     # multiple-choice task: every stage's accuracy row and verify
//   output: DIR                  # default: runs/<recipe name>
//   stages:                      # run in order; each one's model feeds the next
//     - prune: {method: structured, target-params: 0.5}
//     - distill: {steps: 200}
//     - quantize: {scheme: w8a8, smoothquant: auto}
//     - export: {format: onnx}
//     - verify: {max-ppl-increase: 0.5}
//     - report: {}
// Tested in tests/pipeline/test_recipe.cpp and test_runner.cpp, tests/cli/test_run.sh (every shipped
// recipe, a ten-mistake recipe), and fuzzed by tests/fuzz/fuzz_recipe.cpp.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace shrink::pipeline {

struct RecipeValue {
  std::string key;
  std::string value;  // scalars as written; lists joined with ","
  int line = 0, col = 0;  // 1-based; 0 = from --set
};

struct RecipeStage {
  std::string type;
  int line = 0, col = 0;
  std::vector<RecipeValue> params;
  const RecipeValue* find(const std::string& key) const;
};

struct Recipe {
  std::string path;
  std::string text;  // the file as read (for provenance)
  int version = 0;
  RecipeValue teacher;
  RecipeValue data_train, data_calib, data_eval, data_tokenizer, data_task;
  RecipeValue output;
  std::vector<RecipeStage> stages;
};

/// The stage types a recipe may use.
const std::vector<std::string>& recipe_stage_types();

/// Parse recipe text; `overrides` are "--set" paths like "stages.2.quantize.scheme=w8a16" or
/// "teacher=DIR". Every structural problem goes into `issues` as "path:line:col: what" (the
/// recipe is still returned when there are issues, so callers can check further and report all
/// of them together). A YAML syntax error is a single issue.
Recipe recipe_parse(const std::string& path, const std::string& text,
                    const std::vector<std::string>& overrides, std::vector<std::string>* issues);

/// "path:line:col: " (or "--set: " for values from overrides).
std::string recipe_where(const std::string& path, int line, int col);

/// The candidate closest to `word` by edit distance (empty when none is close enough).
std::string closest_word(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace shrink::pipeline
