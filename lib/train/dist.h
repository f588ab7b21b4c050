// Data-parallel training on LibTorch's c10d: the process group (TCPStore rendezvous, Gloo
// collectives) and a bucketed gradient all-reduce that overlaps with backward.
//
// Why this way: c10d is the engine PyTorch's own DDP runs on, so shrink brings no protocol of its
// own: ranks meet at MASTER_ADDR:MASTER_PORT through TCPStore, exactly as torchrun's static
// rendezvous does, and every collective is ProcessGroupGloo's (NCCL would slot in where LibTorch
// has CUDA). The reducer follows DDP's design: parameters are packed, in reverse registration
// order (roughly the order backward produces their gradients), into buckets of --bucket-mb; a
// post-hook on each parameter's AccumulateGrad node counts ready gradients, and a full bucket is
// flattened and its all-reduce launched asynchronously while backward goes on. Buckets launch in
// index order on every rank, so the collectives always pair up. Gradients are averaged, so N ranks
// at batch B step exactly like one process at batch N*B (up to float summation order).
// Every collective failure (a dead peer closes its sockets; a stalled one hits --dist-timeout)
// becomes a shrink::Error that says what was being done and how to resume.
// Tested in tests/train/test_dist.cpp (two ranks as threads over a HashStore) and
// tests/cli/test_dist.sh (processes: equivalence, a killed rank, resume).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "core/launch.h"

namespace c10d {
class Store;
}

namespace shrink::train {

class DistGroup {
 public:
  ~DistGroup();
  /// Join the group that `env` describes: TCPStore at master_addr:master_port (rank 0 serves
  /// it), then a Gloo process group over TCP. `timeout_s` bounds the rendezvous and every
  /// collective. Throws shrink::Error naming the address on failure.
  static std::unique_ptr<DistGroup> join(const core::DistEnv& env, double timeout_s);
  /// A group over an existing store (tests run ranks as threads over one HashStore).
  static std::unique_ptr<DistGroup> join_store(const c10::intrusive_ptr<c10d::Store>& store,
                                               int rank, int size, double timeout_s);

  int rank() const { return rank_; }
  int size() const { return size_; }
  double timeout_s() const { return timeout_s_; }

  /// Copy root's values into every rank's tensors (in place; contiguous CPU tensors).
  void broadcast(std::vector<torch::Tensor> tensors, int root = 0);
  /// In-place sum over ranks (blocking).
  void allreduce_sum(torch::Tensor t, const char* what);
  /// Start an in-place sum; wait() returns when done. Used by GradReducer.
  struct Pending;
  std::shared_ptr<Pending> allreduce_start(torch::Tensor t);
  void wait(Pending& p, const char* what);
  /// Every rank reaches this point; `timeout_s` <= 0 uses the group's timeout.
  void barrier(const char* what, double timeout_s = 0);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
  double timeout_s_ = 300;
  explicit DistGroup(std::unique_ptr<Impl> impl, int rank, int size, double timeout_s);
};

/// Bucketed gradient averaging over a DistGroup, overlapped with backward (see the file comment).
class GradReducer {
 public:
  GradReducer(DistGroup* group, std::vector<torch::Tensor> params, int64_t bucket_bytes);
  ~GradReducer();
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;
  /// The next backward produces the step's final gradients: reduce during it. (With gradient
  /// accumulation, earlier micro-batches only accumulate locally, like DDP's no_sync.)
  void arm();
  /// After that backward: launch buckets still pending, wait for all, average into .grad.
  void finish();

  int64_t buckets() const { return int64_t(buckets_.size()); }
  /// Gradient bytes each rank all-reduces per step (float32), and the bytes a ring all-reduce
  /// sends per rank for them: 2 * (N-1)/N times as many.
  int64_t grad_bytes() const { return grad_bytes_; }
  double ring_bytes_sent() const;
  /// Buckets whose all-reduce was launched from a hook, i.e. while backward was still running.
  int64_t overlapped_last() const { return overlapped_; }
  /// Seconds spent in finish() waiting for all-reduces (communication not hidden by backward).
  double wait_seconds() const { return wait_seconds_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    std::vector<int64_t> offsets;
    torch::Tensor flat;
    int64_t ready = 0;
    std::shared_ptr<DistGroup::Pending> pending;
  };
  void on_grad_ready(size_t param);
  void launch_ready();
  void launch(Bucket& b);

  DistGroup* group_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<Bucket> buckets_;
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators_;
  std::vector<uintptr_t> hook_keys_;
  size_t next_launch_ = 0;
  bool armed_ = false;
  int64_t grad_bytes_ = 0, overlapped_ = 0;
  double wait_seconds_ = 0;
  friend struct ReadyHook;
};

}  // namespace shrink::train
