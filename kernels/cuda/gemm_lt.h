// cuBLASLt GEMMs for prefill-sized batches, over row-major data in the "TN" form:
//   Y[M, N] = X[M, K] W[N, K]^T  is, column-major,  Y^T (N x M) = op_T(W as K x N) * (X^T as K x M),
// so W and X are passed as they are stored, A = W with transa = T, B = X with transb = N.
//  - float: W and X in f16 / bf16 (or f32, exact fp32 compute, no TF32), float32 output written
//    straight into the caller's rows at stride ldy (CUBLAS_COMPUTE_32F);
//  - int8: CUDA_R_8I W and X, CUBLAS_COMPUTE_32I, int32 output; the per-channel x per-token
//    dequantisation runs in the epilogue kernel that follows (ops.h epilogue_s32).
// Plans (descriptors + the heuristic's first algorithm) are cached per shape; the workspace is
// allocated once, so calls are capturable in CUDA graphs. Errors (no algorithm for a shape)
// return a Status and the backend falls back to the GEMV kernels.
// Tested in tests/cuda/test_backend.cpp (linear at prefill sizes against the CPU backend).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "core/status.h"
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
  /// acc[m * N + n] = sum_k x[m, k] w[n, k] in int32. Needs K % 4 == 0.
  Status gemm_s8(int64_t M, int64_t N, int64_t K, const int8_t* x, const int8_t* w, int32_t* acc,
                 cudaStream_t s);
  /// "cuBLASLt 13.0.x".
  std::string version() const;

  struct Plan;

 private:
  GemmLt() = default;
  Result<Plan*> plan(int kind, int64_t M, int64_t N, int64_t K, int64_t ldy);
  void* handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<std::tuple<int, int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Plan>> plans_;
};

}  // namespace shrink::cuda
