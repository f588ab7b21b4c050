// cuBLASLt GEMMs for prefill-sized batches, over row-major data in the "TN" form:
//   Y[M, N] = X[M, K] W[N, K]^T  is, column-major,  Y^T (N x M) = op_T(W as K x N) * (X^T as K x M),
// so W and X are passed as they are stored, A = W with transa = T, B = X with transb = N.
//  - float: W and X in f16 / bf16 (or f32, exact fp32 compute, no TF32), float32 output written
//    straight into the caller's rows at stride ldy (CUBLAS_COMPUTE_32F);
//  - int8: CUDA_R_8I W and X, CUBLAS_COMPUTE_32I, int32 output; the per-channel x per-token
//    dequantisation runs in the epilogue kernel that follows (ops.h epilogue_s32). Calls that
//    break the IMMA preconditions (host_policy.h imma_refusal) are refused before cuBLASLt.
// Plans (descriptors + the heuristic's first algorithm) are cached per LtKey (host_policy.h):
// the M bucket, N, K, ldy and each operand's alignment, which the heuristic is told
// (CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES). A call sets the exact M on the bucket's layouts.
// Keys with no algorithm are remembered, so they cost one heuristic query per run. The workspace
// is allocated once, so calls are capturable in CUDA graphs. Errors return a Status and the
// backend falls back to the GEMV kernels (and counts it: CudaCounters::lt_fallback).
// Tested in tests/cuda/test_backend.cpp (linear at prefill sizes against the CPU backend, the
// counters) and, for the host-side policy, tests/runtime/test_cuda_host.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "kernels/cuda/host_policy.h"
#include "kernels/cuda/ops.h"

namespace shrink::cuda {

class GemmLt {
 public:
  static Result<std::unique_ptr<GemmLt>> create(size_t workspace_bytes);
  ~GemmLt();
  GemmLt(const GemmLt&) = delete;
  GemmLt& operator=(const GemmLt&) = delete;

  /// y[m * ldy + n] = sum_k x[m, k] w[n, k]; x and w both of type t (kF32, kF16, kBF16).
  Status gemm_float(WType t, int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                    float* y, int64_t ldy, cudaStream_t s);
  /// acc[m * N + n] = sum_k x[m, k] w[n, k] in int32. Refused (an error, before cuBLASLt) unless
  /// N and K are multiples of 4 and the pointers 4-byte aligned (imma_refusal).
  Status gemm_s8(int64_t M, int64_t N, int64_t K, const int8_t* x, const int8_t* w, int32_t* acc,
                 cudaStream_t s);
  /// "cuBLASLt 13.0.x".
  std::string version() const;
  /// Calls run and plans made so far (the lt_* fields of CudaCounters; lt_fallback is the
  /// backend's).
  const CudaCounters& counters() const { return counters_; }
  size_t plans_cached() const { return plans_.size(); }

  struct Plan;

 private:
  GemmLt() = default;
  Result<Plan*> plan(const LtKey& key);
  Status plan_make(const LtKey& key, Plan& p);
  Status matmul(Plan& p, int64_t M, const void* x, const void* w, void* y, const void* alpha,
                bool int8, cudaStream_t s);
  Status run(int kind, int64_t M, int64_t N, int64_t K, const void* x, const void* w, void* y,
             int64_t ldy, const void* alpha, cudaStream_t s);
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  PlanCache<Plan> plans_;
  CudaCounters counters_;
};

}  // namespace shrink::cuda
