// libFuzzer harness: recipe YAML with --set overrides through recipe_parse.
//
// Input: the recipe text, then optionally a line "#%set" followed by one override per line
// ("stages.2.quantize.scheme=w8a16", "teacher=DIR", ...), as `shrink run --set` passes them.
// recipe_parse must never throw (yaml-cpp's exceptions stay inside core) and must report every
// problem as an issue string; an issue-free recipe has version 1. Only built when
// yaml-cpp is found (shrink_core defines SHRINK_HAVE_YAML).
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include "pipeline/recipe.h"
#include "fuzz_util.h"

using namespace shrink;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  auto [text, set_lines] = fuzz::split_once(in, "\n#%set\n");
  const std::vector<std::string> overrides = fuzz::lines_of(set_lines);
  std::vector<std::string> issues;
  const pipeline::Recipe r = pipeline::recipe_parse("recipe.yaml", std::string(text), overrides, &issues);
  for (const std::string& i : issues) {
    FUZZ_CHECK(!i.empty(), "an empty issue");
    fuzz::note_rejected("recipe", i);
  }
  if (issues.empty()) {
    FUZZ_CHECK(r.version == 1, "no issues but version %d", r.version);
  }
  for (const pipeline::RecipeStage& s : r.stages) {
    for (const pipeline::RecipeValue& v : s.params) FUZZ_CHECK(s.find(v.key) != nullptr, "lost key");
    (void)pipeline::recipe_where(r.path, s.line, s.col);
    (void)pipeline::closest_word(s.type, pipeline::recipe_stage_types());
  }
  return 0;
}
