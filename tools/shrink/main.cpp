// `shrink`: the command-line front end. Thin by design: parse, validate, call lib/, print.
// Subcommands register themselves (cmd_<name>.cpp). Exit codes follow ARCHITECTURE.md.
#include <cstdio>
#include <iostream>

#include "core/progress.h"
#include "core/status.h"
#include "core/threads.h"
#include "train/api.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

bool Globals::progress() const { return !json && !quiet && core::Progress::stderr_is_tty(); }

int run_guarded(const std::string& name, Globals& g, bool torch,
                const std::function<int()>& body) {
  try {
    g.threads = core::threads_resolve(g.threads).take_or_throw();
    if (torch) {
      train::EnvInfo env = train::env_init(g.threads);
      std::string w = train::env_blas_warning(env);
      if (!w.empty()) std::fprintf(stderr, "shrink: %s\n", w.c_str());
    }
    return body();
  } catch (const Error& e) {
    std::fprintf(stderr, "shrink %s: error: %s\n", name.c_str(), e.what());
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shrink %s: error: %s\n", name.c_str(), e.what());
    return 1;
  }
}

void print_json(const nlohmann::json& j) { std::cout << j.dump(2) << std::endl; }

}  // namespace shrink::cli

int main(int argc, char** argv) {
  using namespace shrink::cli;
  CLI::App app{
      "shrink: distill, prune and quantize Llama-family LLMs (Llama, Mistral, Qwen2), "
      "then run and verify them.\nExit codes: 0 ok, 1 failure, 2 bad input or usage, "
      "3 verification gate failed."};
  app.set_version_flag("--version", std::string("shrink ") + SHRINK_VERSION);
  Globals g;
  app.add_option("--threads", g.threads,
                 "Threads for compute (default: $SHRINK_THREADS, else all cores)");
  app.add_flag("--json", g.json, "Machine-readable JSON on stdout; no progress output");
  app.add_flag("-q,--quiet", g.quiet, "No progress output");
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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return g.exit_code;
}
