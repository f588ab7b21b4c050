// Recipe parsing (pipeline/recipe.h) on untrusted input: holes found by the issue-25 review,
// each test failing before its fix. The whole recipe grammar is exercised end to end by
// tests/cli/test_run.sh and fuzzed by tests/fuzz/fuzz_recipe.cpp.
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "pipeline/recipe.h"

using namespace shrink::pipeline;

// `--set teacher.x=1` indexed the scalar `teacher` and yaml-cpp's exception escaped (exit 1 with
// a raw message); now it is an issue that names the value's file:line:col.
TEST(RecipeUntrusted, SetThroughAScalarNamesTheValue) {
  const std::string text = "version: 1\nteacher: models/teacher\nstages:\n  - eval: {}\n";
  for (auto [spec, want] :
       {std::pair<std::string, std::string>{"teacher.x=1",
                                            "--set teacher.x: 'teacher' is a value (r.yaml:2:10), "
                                            "not a mapping; cannot set 'x' inside it"},
        {"version.a.b=2", "--set version.a.b: 'version' is a value (r.yaml:1:10)"},
        {"stages.0.eval.x.y=1", ""}}) {
    std::vector<std::string> issues;
    EXPECT_NO_THROW(recipe_parse("r.yaml", text, {spec}, &issues)) << spec;
    if (want.empty()) continue;
    ASSERT_FALSE(issues.empty()) << spec;
    bool found = false;
    for (const auto& i : issues) found |= i.find(want) != std::string::npos;
    EXPECT_TRUE(found) << spec << ": " << issues[0];
  }
}
