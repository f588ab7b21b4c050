// `shrink`: the command-line front end. Thin by design: parse, validate, call lib/, print.
// Subcommands register themselves (cmd_<name>.cpp). Exit codes follow ARCHITECTURE.md.
#include <cstdio>
#include <fstream>
#include <iostream>

#include "core/progress.h"
#include "core/status.h"
#include "core/threads.h"
#include "train/api.h"
#include "tools/cli_main.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

bool Globals::progress() const {
  return (!json || json_file) && !quiet && core::Progress::stderr_is_tty();
}

int run_guarded(const std::string& name, Globals& g, bool torch,
                const std::function<int()>& body) {
  try {
    g.threads = core::threads_resolve(g.threads).take_or_throw();
    if (torch && !g.validate_only) {
      train::EnvInfo env = train::env_init(g.threads);
      std::string w = train::env_blas_warning(env);
      if (!w.empty()) std::fprintf(stderr, "shrink: %s\n", w.c_str());
    }
    return body();
  } catch (const Error& e) {
    g.last_error = e.what();
    if (!g.validate_only) std::fprintf(stderr, "shrink %s: error: %s\n", name.c_str(), e.what());
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    g.last_error = e.what();
    if (!g.validate_only) std::fprintf(stderr, "shrink %s: error: %s\n", name.c_str(), e.what());
    return 1;
  }
}

std::string g_json_out;  // --json-out FILE

void print_json(const nlohmann::json& j) {
  if (g_json_out.empty()) {
    std::cout << j.dump(2) << std::endl;
    return;
  }
  std::ofstream f(g_json_out, std::ios::trunc);
  f << j.dump(2) << std::endl;
}

}  // namespace shrink::cli

namespace shrink::cli {

void build_app(CLI::App& app, Globals& g) {
  app.set_version_flag("--version", std::string("shrink ") + SHRINK_VERSION);
  add_global_options(app, g.threads, g.json, g.quiet);
  app.add_option_function<std::string>(
         "--json-out",
         [&g](const std::string& path) {
           g_json_out = path;
           g.json = g.json_file = true;
         },
         "Write the JSON result to this file")
      ->group("");
  app.require_subcommand(1);
  app.fallthrough();
  register_inspect(app, g);
  register_eval(app, g);
  register_generate(app, g);
  register_tokenizer(app, g);
  register_data(app, g);
  register_init(app, g);
  register_train(app, g);
  register_distill(app, g);
  register_convert(app, g);
  register_prune(app, g);
  register_quantize(app, g);
  register_export(app, g);
  register_verify(app, g);
  register_run(app, g);
  register_compare(app, g);
}

int run_cli(const std::vector<std::string>& args, bool validate_only, std::string* error) {
  CLI::App app{"shrink"};
  Globals g;
  g.validate_only = validate_only;
  build_app(app, g);
  std::vector<std::string> rev(args.rbegin(), args.rend());  // CLI11 takes them reversed
  try {
    app.parse(rev);
  } catch (const CLI::ParseError& e) {
    if (error) *error = e.what();
    return e.get_exit_code() == 0 ? 0 : 2;
  }
  if (error) *error = g.last_error;
  return g.exit_code;
}

}  // namespace shrink::cli

int main(int argc, char** argv) {
  using namespace shrink::cli;
  CLI::App app{
      "shrink: distill, prune and quantize Llama-family LLMs (Llama, Mistral, Qwen2), "
      "then run and verify them.\nExit codes: 0 ok, 1 failure, 2 bad input or usage, "
      "3 verification gate failed."};
  Globals g;
  build_app(app, g);
  return parse_and_run(app, argc, argv, g.exit_code);
}
