// Local worker launcher and torchrun-variable parsing (see launch.h).
#include "core/launch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace shrink::core {

namespace {

// A non-negative integer environment variable; *found says whether it was set.
Result<int> env_int(const char* name, int fallback, bool* found = nullptr) {
  const char* v = std::getenv(name);
  if (found) *found = v && *v;
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 20) {
    return Status(StatusCode::kInvalidInput,
                  std::string(name) + "='" + v + "': expected a non-negative integer");
  }
  return int(x);
}

std::string describe_exit(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int s = WTERMSIG(status);
    return "was killed by signal " + std::to_string(s) + " (" + strsignal(s) + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

}  // namespace

Result<DistEnv> dist_env_read() {
  DistEnv e;
  bool has_world = false, has_rank = false;
  SHRINK_ASSIGN_OR_RETURN(e.world_size, env_int("WORLD_SIZE", 1, &has_world));
  SHRINK_ASSIGN_OR_RETURN(e.rank, env_int("RANK", 0, &has_rank));
  SHRINK_ASSIGN_OR_RETURN(e.local_rank, env_int("LOCAL_RANK", e.rank));
  SHRINK_ASSIGN_OR_RETURN(e.local_world_size, env_int("LOCAL_WORLD_SIZE", e.world_size));
  SHRINK_ASSIGN_OR_RETURN(e.master_port, env_int("MASTER_PORT", 29500));
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.active = has_world;
  if (has_world && e.world_size < 1) {
    return Status(StatusCode::kInvalidInput, "WORLD_SIZE=0: expected at least 1 process");
  }
  if (has_world && !has_rank) {
    return Status(StatusCode::kInvalidInput,
                  "WORLD_SIZE is set but RANK is not: set RANK (0..WORLD_SIZE-1) for every "
                  "process, as torchrun does");
  }
  if (e.rank >= e.world_size) {
    return Status(StatusCode::kInvalidInput, "RANK=" + std::to_string(e.rank) +
                                                 " is out of range for WORLD_SIZE=" +
                                                 std::to_string(e.world_size) +
                                                 ": expected 0.." +
                                                 std::to_string(e.world_size - 1));
  }
  if (e.master_port < 1 || e.master_port > 65535) {
    return Status(StatusCode::kInvalidInput,
                  "MASTER_PORT=" + std::to_string(e.master_port) + ": expected 1..65535");
  }
  return e;
}

Result<int> tcp_port_free() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return Status(StatusCode::kIoError, std::string("socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    int err = errno;
    ::close(fd);
    return Status(StatusCode::kIoError, std::string("bind 127.0.0.1:0: ") + std::strerror(err));
  }
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

namespace {
volatile sig_atomic_t g_rank0_pid = 0;
void forward_to_rank0(int sig) {
  const int saved = errno;
  if (g_rank0_pid > 0) ::kill(pid_t(g_rank0_pid), sig);
  errno = saved;
}
}  // namespace

int launch_local(const LaunchOptions& o, const std::function<int(int)>& body, std::string* error) {
  int port = o.master_port;
  if (port == 0) {
    auto p = tcp_port_free();
    if (!p.is_ok()) {
      if (error) *error = p.status().message();
      return 1;
    }
    port = *p;
  }
  const pid_t parent = ::getpid();
  std::vector<pid_t> pids(size_t(o.nproc), -1);
  std::fflush(stdout);
  std::fflush(stderr);
  for (int r = 0; r < o.nproc; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) {
      if (error) *error = std::string("fork failed: ") + std::strerror(errno);
      for (pid_t p : pids) {
        if (p > 0) ::kill(p, SIGKILL);
      }
      for (pid_t p : pids) {
        if (p > 0) ::waitpid(p, nullptr, 0);
      }
      return 1;
    }
    if (pid == 0) {
      // Worker: die with the launcher, never outlive it.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      int rc = 1;
      try {
        rc = body(r);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rank %d: error: %s\n", r, e.what());
      }
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(rc);
    }
    pids[size_t(r)] = pid;
  }
  if (o.forward_stop_signals) {
    g_rank0_pid = pids[0];
    struct sigaction sa {};
    sa.sa_handler = forward_to_rank0;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
  }

  // Supervise: the first failure stops everyone.
  int code = 0, running = o.nproc;
  bool stopping = false;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (running > 0) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, stopping ? WNOHANG : 0);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break;  // no children left
    if (pid == 0) {      // stopping: poll until the grace period ends, then SIGKILL
      if (std::chrono::steady_clock::now() > deadline) {
        for (pid_t p : pids) {
          if (p > 0) ::kill(p, SIGKILL);
        }
        deadline = std::chrono::steady_clock::time_point::max();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    int rank = -1;
    for (int r = 0; r < o.nproc; ++r) {
      if (pids[size_t(r)] == pid) rank = r;
    }
    if (rank < 0) continue;  // not ours
    pids[size_t(rank)] = -1;
    if (rank == 0) g_rank0_pid = 0;  // its pid may be reused: forward nothing more
    --running;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && !stopping) {
      stopping = true;
      code = WIFEXITED(status) && (WEXITSTATUS(status) == 2 || WEXITSTATUS(status) == 3)
                 ? WEXITSTATUS(status)
                 : 1;
      if (error) {
        *error = "rank " + std::to_string(rank) + " (pid " + std::to_string(pid) + ") " +
                 describe_exit(status) + "; stopped the other " + std::to_string(running) +
                 " rank(s)" +
                 (o.failure_hint.empty() ? std::string() : ". " + o.failure_hint);
      }
      for (pid_t p : pids) {
        if (p > 0) ::kill(p, SIGTERM);
      }
      deadline = std::chrono::steady_clock::now() +
                 std::chrono::milliseconds(int64_t(o.grace_s * 1000));
    }
  }
  return code;
}

}  // namespace shrink::core
