// Local multi-process launcher, the part of torchrun that starts and supervises the workers of
// one machine: data-parallel training (`shrink distill --nproc N`) and the runtime's tensor
// parallelism (`shrink-rt --tp N`).
//
// Why this way: the workers are forked from the command's own process before it touches
// LibTorch (an OpenMP pool must never be forked), so no command line has to be rebuilt, and the
// recipe runner's forked stages launch the same way. Each worker receives the torchrun variables
// (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) in its environment;
// the rendezvous is the caller's (LibTorch's TCPStore in lib/train/dist.cpp, runtime/tp.cpp's
// store for Gloo). The supervisor never hangs:
// when one worker exits non-zero or dies by a signal, the others get SIGTERM, then SIGKILL after
// a grace period, and the launch fails with a message naming the rank and how it ended.
// Tested by tests/cli/test_dist.sh (a killed rank, equivalence with one process).
#pragma once

#include <functional>
#include <string>

#include "core/status.h"

namespace shrink::core {

/// The torchrun-style variables of one worker, read from the environment. `world_size` is 1
/// (and `active` false) when WORLD_SIZE is unset.
struct DistEnv {
  bool active = false;
  int rank = 0, local_rank = 0, world_size = 1, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

/// Read RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Errors
/// (kInvalidInput) name the variable and its bad value (e.g. RANK >= WORLD_SIZE).
Result<DistEnv> dist_env_read();

/// A TCP port on 127.0.0.1 that is free now (bound to port 0 and released).
Result<int> tcp_port_free();

struct LaunchOptions {
  int nproc = 2;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;   // 0: a free port
  double grace_s = 10;   // SIGTERM -> SIGKILL delay for the survivors of a failed worker
  std::string failure_hint;  // appended to the error of a failed launch
  /// SIGINT and SIGTERM sent to the launcher go to rank 0 only (a server that drains, then stops
  /// the other ranks itself); otherwise they end the launcher, and the workers with it.
  bool forward_stop_signals = false;
};

/// Fork `nproc` workers; worker r runs body(r) with the torchrun variables set and exits with
/// its return value. Returns the launch's exit code: 0 when every worker returned 0; otherwise
/// the first failing worker's code (2 stays 2, a signal becomes 1) after stopping the others,
/// with *error describing which rank failed and how. Flushes stdio before forking.
int launch_local(const LaunchOptions& opts, const std::function<int(int rank)>& body,
                 std::string* error);

}  // namespace shrink::core
