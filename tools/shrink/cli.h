// Shared plumbing for `shrink` subcommands: global options, the guarded run wrapper that maps
// exceptions to exit codes (0 ok, 1 failure, 2 bad input/usage, 3 gate failed), and output
// helpers. Each subcommand lives in cmd_<name>.cpp and registers itself from main.cpp.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace shrink::cli {

struct Globals {
  int threads = 0;  // 0 = SHRINK_THREADS or all cores
  bool json = false;
  bool json_file = false;  // --json-out: JSON goes to a file, so progress may still show
  bool quiet = false;
  int exit_code = 0;
  /// Recipe validation: commands check their options (the same checks as a real run) and
  /// return without loading anything or initialising LibTorch.
  bool validate_only = false;
  /// The first error of a command run in validate_only mode (not printed then).
  std::string last_error;
  /// Progress bars: only on a TTY, never with --json or --quiet.
  bool progress() const;
};

/// Run a subcommand body: resolves threads, initialises LibTorch (and warns on a reference
/// BLAS) when `torch` is set, catches shrink::Error / std::exception and prints
/// "shrink <name>: error: ..." to stderr. Returns the exit code.
int run_guarded(const std::string& name, Globals& g, bool torch, const std::function<int()>& body);

/// Print a JSON document to stdout (pretty, newline-terminated), or into the file named by the
/// hidden global option --json-out (the recipe runner's stage results; progress stays on).
void print_json(const nlohmann::json& j);

void register_inspect(CLI::App& app, Globals& g);
void register_eval(CLI::App& app, Globals& g);
void register_generate(CLI::App& app, Globals& g);
void register_tokenizer(CLI::App& app, Globals& g);
void register_data(CLI::App& app, Globals& g);
void register_init(CLI::App& app, Globals& g);
void register_train(CLI::App& app, Globals& g);
void register_distill(CLI::App& app, Globals& g);
void register_convert(CLI::App& app, Globals& g);
void register_prune(CLI::App& app, Globals& g);
void register_quantize(CLI::App& app, Globals& g);
void register_export(CLI::App& app, Globals& g);
void register_verify(CLI::App& app, Globals& g);
void register_run(CLI::App& app, Globals& g);
void register_compare(CLI::App& app, Globals& g);

/// The whole `shrink` command line: global options and every subcommand.
void build_app(CLI::App& app, Globals& g);
/// Parse and run `args` (without the program name) as `shrink` would; returns the exit code.
/// With validate_only, commands only check their options; the first problem is in *error.
int run_cli(const std::vector<std::string>& args, bool validate_only, std::string* error);

}  // namespace shrink::cli
