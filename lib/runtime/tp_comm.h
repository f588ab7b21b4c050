// The collectives of a tensor-parallel group, as the engine uses them (EngineOptions::tp). The
// engine knows only this interface; runtime/tp/ implements it on Gloo (CPU, TCP), so the runtime
// itself links no communication library.
//
// Every rank calls the same collectives in the same order. A collective that fails (a peer that
// died, or no answer within the group's timeout) throws TpError, which Engine::forward turns into
// a kInternal status naming the collective; the program exits 1.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace shrink::runtime {

struct TpError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class TpComm {
 public:
  virtual ~TpComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// x[i] = sum over ranks of x[i], in place, the same result on every rank.
  virtual void allreduce_sum(float* x, int64_t n) = 0;
  /// x[i] = max over ranks of x[i], in place (the per-token absolute maxima of split inputs).
  virtual void allreduce_max(float* x, int64_t n) = 0;
  /// out = the n values of rank 0, then rank 1's, ... ([size, n]).
  virtual void allgather(const float* in, int64_t n, float* out) = 0;
  /// Time and bytes of the collectives so far (bench's all-reduce figures).
  struct Stats {
    uint64_t allreduce_calls = 0, allreduce_bytes = 0, allgather_calls = 0, allgather_bytes = 0;
    double allreduce_s = 0, allgather_s = 0;
  };
  const Stats& stats() const { return stats_; }
  void stats_reset() { stats_ = Stats(); }

 protected:
  Stats stats_;
};

}  // namespace shrink::runtime
