// The CUDA backend's tensor-parallel group (Backend::tp_group): NCCL, one device per rank, its
// collectives enqueued on the backend's stream (so they order with the kernels around them and
// are recorded into the decode step's CUDA graphs). Part of the CUDA plugin only.
//
// NCCL is loaded at run time (libnccl.so.2: $SHRINK_NCCL_LIBRARY, else the dynamic linker's
// search path), so that neither the plugin nor the programs need it to run on one GPU, and a
// machine whose NCCL comes from pip (nvidia-nccl-cu13) works as well as one with the system's.
//
// Handshake: rank 0's ncclUniqueId travels over the host group (Gloo or shared memory) that
// --tp joined, after every rank has said over it whether it could load NCCL, so that no rank
// waits for a peer that has already failed.
//
// Faults: NCCL's kernels wait for their peers without end. The backend waits for its stream only
// through wait_until, which past --dist-timeout aborts the group (ncclCommAbort; the stalled
// kernels then return) and fails with an error naming the peer where it is known.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <string>

#include "core/status.h"
#include "runtime/tp_comm.h"

namespace shrink::runtime {

class NcclGroup : public TpComm {
 public:
  /// Joins the NCCL group of `host`'s ranks on the calling thread's current device, with its
  /// collectives on `stream`. Errors (kInternal) name the step: loading NCCL, the handshake,
  /// ncclCommInitRank (two ranks on one device are refused by NCCL: "Duplicate GPU detected").
  static Result<std::shared_ptr<NcclGroup>> join(std::shared_ptr<TpComm> host,
                                                 cudaStream_t stream);
  ~NcclGroup() override;

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  TpComm& host_group() override { return *host_; }
  bool timed_on_host() const override { return false; }

  /// Polls `query` (cudaStreamQuery or cudaEventQuery of the backend's work, which may hold
  /// collectives) until it is no longer cudaErrorNotReady. Past timeout_s, or on an
  /// asynchronous NCCL error, aborts the group and fails (kInternal) naming `what`.
  Status wait_until(const std::function<cudaError_t()>& query, const char* what);
  /// "NCCL 2.28.9".
  std::string version() const;

 protected:
  void reduce(float* x, int64_t n, Reduce op) override;
  void gather(const float* in, int64_t n, float* out) override;

 private:
  struct Impl;
  explicit NcclGroup(std::shared_ptr<TpComm> host);
  std::string failure(const std::string& what, const std::string& detail) const;
  std::shared_ptr<TpComm> host_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shrink::runtime
