// `shrink run RECIPE.yaml [--set PATH=VALUE]... [--dry-run] [--out DIR] [--from N]`: the recipe
// runner's command line. The runner itself is pipeline::recipe_run (lib/pipeline/runner.h); this
// file gives it the stage commands, which are this CLI's own subcommands (so a recipe's keys are
// exactly their options), and prints the dry run's plan.
// Tested by tests/cli/test_run.sh.
#include <cstdio>
#include <memory>

#include "core/progress.h"
#include "core/status.h"
#include "pipeline/runner.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace {

// The stage commands are `shrink` subcommands, parsed by CLI11 as on the command line.
class CliStageCommands : public pipeline::StageCommands {
 public:
  std::map<std::string, bool> keys(const std::string& type) override {
    std::map<std::string, bool> keys;
    if (type == "report") return keys;
    CLI::App app{"shrink"};
    Globals g;
    build_app(app, g);
    CLI::App* sub = nullptr;
    try {
      sub = app.get_subcommand(type);
    } catch (const CLI::Error&) {
      throw shrink::Error(StatusCode::kInvalidInput, "stage type '" + type + "' is not available in this build");
    }
    for (const CLI::Option* o : sub->get_options()) {
      if (o->get_lnames().empty()) continue;  // positionals and -h
      const std::string k = o->get_lnames()[0];
      if (k == "help") continue;
      keys[k] = o->get_expected_max() == 0;  // a flag: present or absent
    }
    return keys;
  }

  std::string check(const std::vector<std::string>& args) override {
    std::string err;
    return run_cli(args, true, &err) == 0 ? std::string() : err;
  }

  int run(const std::vector<std::string>& args, const pipeline::StageIo& io) override {
    std::vector<std::string> full = {"--threads", std::to_string(io.threads), "--json-out", io.json_out};
    if (io.quiet) full.push_back("-q");
    full.insert(full.end(), args.begin(), args.end());
    std::string err;
    return run_cli(full, false, &err);
  }
};

void print_plan(const nlohmann::json& plan) {
  std::printf("plan for %s -> %s (teacher %s, %.2fM parameters)\n",
              plan["recipe"].get<std::string>().c_str(), plan["out"].get<std::string>().c_str(),
              plan["teacher"].get<std::string>().c_str(), plan["teacher_params"].get<double>() / 1e6);
  for (const auto& s : plan["stages"]) {
    std::printf("  %d. %-8s %s\n       -> %s  (~%.0f GFLOP)\n", s["index"].get<int>(),
                s["type"].get<std::string>().c_str(), s["command"].get<std::string>().c_str(),
                s["output"].get<std::string>().c_str(), s["estimated_gflop"].get<double>());
  }
}

}  // namespace

void register_run(CLI::App& app, Globals& g) {
  auto o = std::make_shared<pipeline::RunOptions>();
  CLI::App* sub = app.add_subcommand(
      "run", "Run a YAML recipe: validate it all, then its stages in order, each model feeding "
             "the next; writes OUT/NN-stage/ and OUT/report.{json,md,svg}. Exit 3 when verify fails");
  sub->add_option("recipe", o->recipe, "Recipe file (.yaml)")->required();
  sub->add_option("--set", o->sets, "Override a value: stages.2.quantize.scheme=w8a16 (repeatable)");
  sub->add_flag("--dry-run", o->dry_run, "Validate and print the plan; run nothing");
  sub->add_option("--out", o->out, "Output directory (default: the recipe's output)");
  sub->add_option("--from", o->from, "Rerun from this stage index (0-based) on");
  sub->add_option("--metrics-tokens", o->metrics_tokens,
                  "Evaluation tokens for each stage's perplexity/KL/top-1 against the teacher")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("run", g, false, [&]() -> int {
      o->threads = g.threads;
      o->json_lines = g.json || !core::Progress::stderr_is_tty();
      CliStageCommands commands;
      const pipeline::RunResult r = pipeline::recipe_run(*o, commands);
      if (o->dry_run) g.json ? print_json(r.plan) : print_plan(r.plan);
      return r.exit_code;
    });
  });
}

}  // namespace shrink::cli
