// `shrink-rt serve` and `shrink-rt bench-serve` (serve_cmd.cpp): registered by main.cpp with
// its global options (the engine's options, the error guard, --quiet / --json).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

#include "core/status.h"
#include "runtime/engine.h"
#include "tools/generate_options.h"

namespace shrink::cli {

void register_serve(CLI::App& app, const std::function<runtime::EngineOptions()>& engine_opts,
                    const std::function<int(const char*, const std::function<Status()>&)>& guarded,
                    const bool& quiet, int& exit_code);
void register_chat_template(CLI::App& app,
                            const std::function<int(const char*, const std::function<Status()>&)>& guarded,
                            int& exit_code);
void register_bench_serve(CLI::App& app,
                          const std::function<int(const char*, const std::function<Status()>&)>& guarded,
                          const bool& json_out, int& exit_code);

}  // namespace shrink::cli
