// The recipe runner (pipeline/runner.h) driven by stand-in stage commands: what it validates,
// what it runs, and when a rerun may skip a stage. The real commands are tested end to end by
// tests/cli/test_run.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/status.h"
#include "pipeline/runner.h"
#include "tests/util.h"

namespace shrink::pipeline {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Stand-in commands: eval and verify, each with the keys `max-tokens` and `task` (a file) and
// the flag `no-bench`. Runs happen in the runner's forked child, so each appends its command
// line to a log file, and writes the result JSON the runner reads.
class FakeCommands : public StageCommands {
 public:
  explicit FakeCommands(std::string log) : log_(std::move(log)) {}
  std::map<std::string, bool> keys(const std::string& type) override {
    if (type == "report") return {};
    if (type != "eval" && type != "verify") throw Error(StatusCode::kInvalidInput, "no " + type);
    return {{"max-tokens", false}, {"task", false}, {"no-bench", true}, {"data", false},
            {"split", false}, {"reference", false}, {"prompt-len", false}, {"gen-len", false}};
  }
  std::string check(const std::vector<std::string>& args) override {
    for (size_t i = 0; i + 1 < args.size(); ++i) {
      if (args[i] == "--max-tokens" && args[i + 1].find_first_not_of("0123456789") != std::string::npos) {
        return "--max-tokens: '" + args[i + 1] + "' is not an integer";
      }
    }
    return "";
  }
  int run(const std::vector<std::string>& args, const StageIo& io) override {
    std::string line;
    for (const auto& a : args) line += a + " ";
    std::ofstream(log_, std::ios::app) << line << "\n";
    std::ofstream(io.json_out) << json({{"perplexity_compact", 10.0}, {"kl", 0.01},
                                        {"top1_agreement", 0.9},
                                        {"speed_compact", {{"decode_tokens_per_second", 100.0},
                                                           {"prefill_tokens_per_second", 1000.0}}},
                                        {"verdict", "pass"}})
                                      .dump();
    return 0;
  }

 private:
  std::string log_;
};

class RunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("runner");
    write("corpus.txt", "the cat sat on the mat\n");
    write("task.jsonl", "{}\n");
    write("recipe.yaml", "version: 1\nteacher: " + std::string(SHRINK_FIXTURES_DIR) +
                             "/hf/llama_gqa_llama3rope\ndata:\n  train: " + dir_ +
                             "/corpus.txt\nstages:\n  - eval: {max-tokens: 64, task: " + dir_ +
                             "/task.jsonl}\n  - verify: {max-tokens: 64}\n  - report\n");
    o_.recipe = dir_ + "/recipe.yaml";
    o_.out = dir_ + "/out";
    o_.json_lines = true;
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) const {
    std::ofstream(dir_ + "/" + name, std::ios::binary) << text;
  }
  // Command lines the stand-ins ran since the last call.
  std::vector<std::string> runs() {
    std::vector<std::string> out;
    std::ifstream f(dir_ + "/runs.log");
    for (std::string l; std::getline(f, l);) out.push_back(l);
    fs::remove(dir_ + "/runs.log");
    return out;
  }
  int stage_runs(const std::vector<std::string>& lines, const std::string& type) {
    int n = 0;
    for (const auto& l : lines) n += l.rfind(type + " ", 0) == 0 && l.find("--max-tokens 64") != std::string::npos;
    return n;
  }
  RunResult run() {
    FakeCommands c(dir_ + "/runs.log");
    testing::internal::CaptureStdout();  // the runner's JSON-lines events
    try {
      RunResult r = recipe_run(o_, c);
      testing::internal::GetCapturedStdout();
      return r;
    } catch (...) {
      testing::internal::GetCapturedStdout();
      throw;
    }
  }
  std::string dir_;
  RunOptions o_;
};

TEST_F(RunnerTest, RerunSkipsStagesUntilTheContentOfAnInputChanges) {
  EXPECT_EQ(run().exit_code, 0);
  std::vector<std::string> first = runs();
  EXPECT_EQ(stage_runs(first, "eval"), 1);
  EXPECT_EQ(stage_runs(first, "verify"), 1);
  EXPECT_TRUE(fs::exists(o_.out + "/report.json"));
  EXPECT_TRUE(fs::exists(o_.out + "/01-verify/stage.json"));

  run();  // nothing changed: every stage and the teacher's metrics are reused
  EXPECT_TRUE(runs().empty());

  write("corpus.txt", "the cat sat on the hat\n");  // same path and size, new content
  run();
  std::vector<std::string> third = runs();
  EXPECT_EQ(stage_runs(third, "eval"), 1);
  EXPECT_EQ(stage_runs(third, "verify"), 1);

  write("task.jsonl", "{ }\n");  // a file named by the first stage's keys
  run();
  std::vector<std::string> fourth = runs();
  EXPECT_EQ(stage_runs(fourth, "eval"), 1);
  EXPECT_EQ(stage_runs(fourth, "verify"), 1);  // later stages chain the earlier key

  o_.from = 1;  // forced from stage 1 on
  run();
  std::vector<std::string> fifth = runs();
  EXPECT_EQ(stage_runs(fifth, "eval"), 0);
  EXPECT_EQ(stage_runs(fifth, "verify"), 1);
}

TEST_F(RunnerTest, ReportsEveryProblemAtItsLineAndColumnAndRunsNothing) {
  write("recipe.yaml", "version: 1\nteacher: " + dir_ + "/no-model\nstages:\n"
                       "  - eval: {max-tokens: lots}\n  - verify: {max-tokenz: 64, reference: x}\n");
  testing::internal::CaptureStderr();
  try {
    run();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("4 problems"), std::string::npos) << e.what();
  }
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("recipe.yaml:2:10: teacher:"), std::string::npos) << err;
  EXPECT_NE(err.find("recipe.yaml:4:12: stages[0].eval.max-tokens: --max-tokens: 'lots' is not an integer"),
            std::string::npos) << err;
  EXPECT_NE(err.find("recipe.yaml:5:14: stages[1].verify: unknown key 'max-tokenz'; did you mean 'max-tokens'?"),
            std::string::npos) << err;
  EXPECT_NE(err.find("recipe.yaml:5:30: stages[1].verify.reference: set by the runner"), std::string::npos) << err;
  EXPECT_TRUE(runs().empty());
  EXPECT_FALSE(fs::exists(o_.out));
}

TEST_F(RunnerTest, DryRunPlansCommandLinesAndRunsNothing) {
  o_.dry_run = true;
  const RunResult r = run();
  ASSERT_EQ(r.plan["stages"].size(), 3u);
  EXPECT_EQ(r.plan["stages"][0]["command"],
            "shrink eval " + std::string(SHRINK_FIXTURES_DIR) + "/hf/llama_gqa_llama3rope --data " +
                dir_ + "/corpus.txt --split val --max-tokens 64 --task " + dir_ + "/task.jsonl");
  EXPECT_EQ(r.plan["stages"][1]["output"], o_.out + "/01-verify");
  EXPECT_TRUE(runs().empty());
  EXPECT_FALSE(fs::exists(o_.out));
}

}  // namespace
}  // namespace shrink::pipeline
