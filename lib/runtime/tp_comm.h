// The collectives of a tensor-parallel group, as the engine uses them (EngineOptions::tp). The
// engine knows only this interface; runtime/tp/ implements it on Gloo (CPU, TCP) and shared
// memory, and the CUDA backend's plugin on NCCL (Backend::tp_group: the same group's collectives
// on device memory, on the backend's stream), so the runtime itself links no communication
// library.
//
// Every rank calls the same collectives in the same order. A collective that fails (a peer that
// died, or no answer within the group's timeout) throws TpError, which Engine::forward turns into
// a kInternal status naming the collective; the program exits 1.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace shrink::runtime {

struct TpError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// How a rank that waits for its peers spends the time, `waited` into the wait: it yields the core
/// for the first 2 ms (ranks may outnumber cores), then sleeps 0.1 ms, and past 100 ms 1 ms at a
/// time, so that a long wait (an idle serving follower, a stalled peer) costs no core.
inline void tp_wait_pause(std::chrono::steady_clock::duration waited) {
  if (waited < std::chrono::milliseconds(2)) {
    std::this_thread::yield();
  } else {
    std::this_thread::sleep_for(waited < std::chrono::milliseconds(100)
                                    ? std::chrono::microseconds(100)
                                    : std::chrono::microseconds(1000));
  }
}

class TpComm {
 public:
  virtual ~TpComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// The group on host memory: itself, except for a device group (NCCL), whose handshake it
  /// carried and which keeps it for broadcast() and for host buffers.
  virtual TpComm& host_group() { return *this; }
  /// Whether a collective is complete when its call returns, so that stats() times it. False for
  /// a device group, whose calls only enqueue the collective on the backend's stream.
  virtual bool timed_on_host() const { return true; }
  /// --dist-timeout: how long a collective may wait for a peer (set by whoever joins the group).
  double timeout_s = 60;
  /// x[i] = sum over ranks of x[i], in place, the same result on every rank. x is in the memory
  /// of the group's kind: host memory, or a device group's device memory.
  void allreduce_sum(float* x, int64_t n) {
    const auto t0 = std::chrono::steady_clock::now();
    reduce(x, n, Reduce::kSum);
    count(stats_.allreduce_calls, stats_.allreduce_bytes, stats_.allreduce_s, n, t0);
  }
  /// x[i] = max over ranks of x[i], in place (the per-token absolute maxima of split inputs).
  void allreduce_max(float* x, int64_t n) { reduce(x, n, Reduce::kMax); }
  /// out = the n values of rank 0, then rank 1's, ... ([size, n]).
  void allgather(const float* in, int64_t n, float* out) {
    const auto t0 = std::chrono::steady_clock::now();
    gather(in, n, out);
    count(stats_.allgather_calls, stats_.allgather_bytes, stats_.allgather_s, n, t0);
  }
  /// bytes = rank 0's bytes, on every rank (the serving scheduler's step inputs, which only the
  /// leader receives). Built on the sum: rank 0 contributes its bytes, two per float (exact up to
  /// 65,535), the others zeros; not counted in stats(). Runs on host_group().
  void broadcast(std::vector<uint8_t>& bytes) {
    TpComm& h = host_group();
    float len[2] = {0, 0};
    if (rank() == 0) {
      len[0] = float(bytes.size() >> 16);
      len[1] = float(bytes.size() & 0xFFFF);
    }
    h.reduce(len, 2, Reduce::kSum);
    const size_t n = (size_t(len[0]) << 16) | size_t(len[1]);
    std::vector<float> f((n + 1) / 2, 0.0f);
    if (rank() == 0) {
      for (size_t i = 0; i < n; ++i) f[i / 2] += float(bytes[i]) * (i % 2 ? 256.0f : 1.0f);
    }
    if (!f.empty()) h.reduce(f.data(), int64_t(f.size()), Reduce::kSum);
    bytes.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const uint32_t v = uint32_t(f[i / 2]);
      bytes[i] = uint8_t(i % 2 ? v >> 8 : v & 0xFF);
    }
  }
  /// Time and bytes of the sums and gathers so far (bench's all-reduce figures).
  struct Stats {
    uint64_t allreduce_calls = 0, allreduce_bytes = 0, allgather_calls = 0, allgather_bytes = 0;
    double allreduce_s = 0, allgather_s = 0;
  };
  const Stats& stats() const { return stats_; }
  void stats_reset() { stats_ = Stats(); }

 protected:
  enum class Reduce { kSum, kMax };
  /// The transport's collectives (throwing TpError on failure).
  virtual void reduce(float* x, int64_t n, Reduce op) = 0;
  virtual void gather(const float* in, int64_t n, float* out) = 0;

 private:
  static void count(uint64_t& calls, uint64_t& bytes, double& seconds, int64_t n,
                    std::chrono::steady_clock::time_point t0) {
    calls++;
    bytes += uint64_t(n) * sizeof(float);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  Stats stats_;
};

}  // namespace shrink::runtime
