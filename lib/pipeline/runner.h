// The recipe runner (`shrink run RECIPE.yaml`): validates a whole recipe first (every problem,
// each with file:line:col), then runs its stages in order, each one's model feeding the next,
// and writes OUT/NN-type/ per stage and OUT/report.{json,md,svg}.
//
// Why this way:
// - A stage's keys are its command's options: the runner checks each key by asking that command
//   to parse it (unknown keys get the closest valid key; type and range errors come from the
//   command's own validation, run in validate-only mode), and it runs a stage by running the
//   command. One definition, so the CLI and recipes cannot drift apart. The commands come in
//   through StageCommands, which tools/shrink implements with its CLI, so this module needs
//   neither CLI11 nor LibTorch, and tests can drive the runner with stand-in commands.
// - Each stage runs in a child process (fork before any LibTorch use in the parent): its peak
//   memory is measured exactly (wait4), and a crash or kill of one stage cannot corrupt the
//   runner's state.
// - Stage directories OUT/NN-type hold the model, the stage's own report and stage.json, written
//   last and atomically with the stage's key. The key chains the previous stage's key, the
//   stage's command line, and the contents (pipeline/content_hash.h) of the teacher, the data
//   and every file a stage key names, and the tool's identity (version and executable hash). A
//   rerun skips stages whose key is unchanged; train/distill stages resume from their
//   checkpoint after an interruption.
// Tested by tests/pipeline/test_runner.cpp (stand-in commands: skips, content-keyed reruns) and
// tests/cli/test_run.sh (the real commands: validation of a ten-mistake recipe, dry run, a tiny
// recipe end to end, kill and rerun).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace shrink::pipeline {

/// How a stage's command runs in its child process.
struct StageIo {
  int threads = 1;
  std::string json_out;  // where the command writes its JSON result
  bool quiet = false;    // no progress output
};

/// The stage commands (train, distill, prune, quantize, eval, export, verify), as the program
/// that runs recipes defines them.
class StageCommands {
 public:
  virtual ~StageCommands() = default;
  /// The keys (long option names) of stage `type`, each true when it is a flag. Throws Error
  /// when this build lacks the type.
  virtual std::map<std::string, bool> keys(const std::string& type) = 0;
  /// Parses and validates a stage's command line without running it: "" when it is fine, else
  /// what is wrong.
  virtual std::string check(const std::vector<std::string>& args) = 0;
  /// Runs a stage's command line in this process (the runner's forked child) and returns its
  /// exit code.
  virtual int run(const std::vector<std::string>& args, const StageIo& io) = 0;
};

struct RunOptions {
  std::string recipe;              // the recipe file
  std::vector<std::string> sets;   // --set PATH=VALUE overrides
  bool dry_run = false;            // validate and plan; run nothing
  std::string out;                 // "" = the recipe's output, else runs/<recipe stem>
  int from = -1;                   // rerun from this stage index on (-1: skip what is done)
  int64_t metrics_tokens = 8192;   // evaluation tokens for each stage's metrics
  int threads = 1;
  bool json_lines = false;  // events as JSON lines on stdout (CI, --json), else lines on stderr
};

struct RunResult {
  int exit_code = 0;     // 0, or 3 when a verify stage's gate failed
  nlohmann::json plan;   // dry run: {recipe, out, teacher, teacher_params, stages: [...]}
};

/// Validates the recipe (throws Error kInvalidInput after printing every issue), then plans
/// (dry run) or runs it. A failed stage throws Error; a rerun continues from it.
RunResult recipe_run(const RunOptions& o, StageCommands& commands);

}  // namespace shrink::pipeline
