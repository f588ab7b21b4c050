// What the `shrink` and `shrink-rt` command lines share around their subcommands: the global
// options every command reads (threads, JSON, quiet) and the end of main() (parse, run, map to
// the exit codes of ARCHITECTURE.md). One definition, so the two tools take the same global
// flags and exit alike; tests/cli/test_cli.sh and test_rt_cli.sh check both.
#pragma once

#include <CLI/CLI.hpp>
#include <malloc.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <string>

namespace shrink::cli {

/// --threads, --json and -q/--quiet.
inline void add_global_options(CLI::App& app, int& threads, bool& json, bool& quiet) {
  app.add_option("--threads", threads,
                 "Threads for compute (default: $SHRINK_THREADS, else all cores)");
  app.add_flag("--json", json, "Machine-readable JSON on stdout; no progress output");
  app.add_flag("-q,--quiet", quiet, "No progress output");
}

/// Training (train, distill) allocates and frees the same large activation and gradient tensors
/// every step: keep them on the heap (up to 1 GiB each) and never trim it, so no step gives its
/// pages back to the kernel and faults them in again. Not for the streaming stages, whose peak
/// memory is bounded per layer and must not keep freed layers. `shrink distill` of the
/// quickstart's pruned student (20 steps, seq 256, batch 16, 2 threads): 169.0 s (89.4 s in the
/// kernel) with parse_and_run's thresholds, 83.9 s (10.0 s) with these, 243.7 s with glibc's
/// defaults; peak RSS 2.04 -> 2.61 GB.
/// SHRINK_MALLOC=glibc leaves glibc's own thresholds (for measuring what these settings give:
/// scripts/allocator_check.sh).
inline bool allocator_glibc_defaults() {
  const char* m = std::getenv("SHRINK_MALLOC");
  return m && std::string(m) == "glibc";
}

inline void allocator_for_training() {
  if (allocator_glibc_defaults()) return;
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, -1);  // never trim (the heap top stays)
}

/// The spin count OpenMP (libgomp, which LibTorch and the runtime's kernels share) uses unless the
/// user chose one: its threads spin this many iterations (a few microseconds) waiting for work,
/// then sleep. libgomp's default (300,000 spins, about a millisecond) is fast on idle cores and
/// ruinous on busy ones. On this 2-core machine (medians of 3 interleaved runs, README
/// "Commands"): GPTQ on the teacher beside two busy processes 240.3 s with the default, 57.4 s
/// with 10,000, 41.6 s passive; idle 7.86, 8.86 and 8.96 s; shrink-rt decode (smollm-135m shape)
/// idle 63.3, 62.3 and 52.7 tokens/s. 10,000 keeps most of the idle speed and most of the loaded.
inline constexpr const char* kGompSpinCount = "10000";

/// libgomp reads its settings when it is loaded, before main(): unless OMP_WAIT_POLICY or
/// GOMP_SPINCOUNT is set (the user's choice stands), set GOMP_SPINCOUNT=kGompSpinCount and execute
/// this program again, once (the variable is then set). If the exec fails, run as started.
inline void openmp_wait_defaults(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT")) return;
  if (setenv("GOMP_SPINCOUNT", kGompSpinCount, 1) != 0) return;
  execv("/proc/self/exe", argv);
}

/// How OpenMP threads wait in this process, for reports: "OMP_WAIT_POLICY=..." or
/// "GOMP_SPINCOUNT=..." as set, else "libgomp default".
inline std::string openmp_wait_setting() {
  if (const char* p = std::getenv("OMP_WAIT_POLICY")) return std::string("OMP_WAIT_POLICY=") + p;
  if (const char* c = std::getenv("GOMP_SPINCOUNT")) return std::string("GOMP_SPINCOUNT=") + c;
  return "libgomp default";
}

/// Parse argv, which runs the chosen subcommand's callback, and return its exit code (read from
/// `exit_code` after the callback set it): 0 after --help or --version, 2 for a usage error.
/// SIGXFSZ is ignored first, so that a write past the file-size limit (ulimit -f) fails with
/// EFBIG and the command reports it, exits 1 and removes its temporary output, instead of dying
/// of the signal with a core dump.
/// The allocator keeps blocks up to 64 MiB on its heap and trims it only past 128 MiB free:
/// glibc's defaults hand every activation tensor above its (adaptive) mmap threshold back to the
/// kernel when freed and take it again on the next forward, so a layer-by-layer pass spent a
/// third of its time in page faults (`shrink eval` on the default teacher: 955k minor faults and
/// 17.2 s, 101k and 8.2 s with these settings; Wanda on memory_cap_e2e's 8-layer model 19.7 s and
/// 679 MB peak RSS, 15.2 s and 716 MB with them). Returning the free memory before each streamed
/// layer (malloc_trim) gave the time back (20.2 s), so it is not done.
/// First of all, openmp_wait_defaults (which may execute the program again).
inline int parse_and_run(CLI::App& app, int argc, char** argv, const int& exit_code) {
  openmp_wait_defaults(argv);
  if (!allocator_glibc_defaults()) {
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 128 << 20);
  }
  std::signal(SIGXFSZ, SIG_IGN);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return exit_code;
}

}  // namespace shrink::cli
