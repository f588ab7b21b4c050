// GEMMs from a library made for them (oneDNN matmul), used by the runtime for prefill-sized
// products; decode-sized ones (M <= kGemvMaxM* below) go to our own GEMV-style kernels, which
// stream the weights once and beat the library's per-call packing there.
//
// Optional at build time: without oneDNN (SHRINK_HAVE_DNNL undefined, e.g. on a machine with no
// apt packages) gemm_library_available() is false and the runtime uses the portable blocked
// kernels of kernels.h for every size. gemm_library_name() says which is in use (printed by
// `shrink-rt --version` and by bench). Tested in tests/runtime/test_kernels.cpp (library
// against the scalar reference, skipped when absent).
#pragma once

#include <cstdint>

namespace shrink::kernels::cpu {

/// Up to this many rows of A the runtime uses its own multi-row GEMVs (kernels.h, kGemvMaxM)
/// even when a library exists, per weight kind. Measured with bench_linear at M = 8..64 with the
/// weights streaming from DRAM (README "Runtime speed"): oneDNN repacks the weights on every
/// call, which the GEMVs never do, and wins once its better register blocking pays for that.
/// f32 and bf16 weights: from 16 rows (2048 x 2048: 1.7 against 2.3 ms).
inline constexpr int64_t kGemvMaxMFloat = 8;
/// W8A8: from 32 rows (2048 x 2048: 0.75 against 1.0 ms; at 16 rows the GEMV is ahead).
inline constexpr int64_t kGemvMaxMW8A8 = 16;
/// W8A16: the library path dequantizes the whole weight to f32 first, which only pays in
/// prefill; the GEMV is ahead at every M up to kGemvMaxM.
inline constexpr int64_t kGemvMaxMW8A16 = 64;

bool gemm_library_available();
/// "onednn 2.6.3" or "builtin" (the portable kernels).
const char* gemm_library_name();

/// fp32 C[M,N] = A[M,K] * B[N,K]^T (row-major with leading dimensions). Threads: the shared
/// OpenMP pool (parallel.h). Returns false when no library is built or it refused the shape.
bool gemm_f32_nt_library(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                         const float* B, int64_t ldb, float* C, int64_t ldc);

/// bf16 C_f32[M,N] = A_bf16[M,K] * B_bf16[N,K]^T (bf16 as raw 16-bit patterns, fp32
/// accumulation). Used only where the CPU has AVX512_BF16 (gemm_bf16_native()); elsewhere
/// oneDNN would emulate it slower than fp32. Returns false when unavailable.
bool gemm_bf16_nt_library(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                          const uint16_t* B, int64_t ldb, float* C, int64_t ldc);
/// Whether this CPU multiplies bf16 natively (AVX512_BF16).
bool gemm_bf16_native();

/// int8 C_s32[M,N] = A_s8[M,K] * B_s8[N,K]^T, exact. Returns false when unavailable.
bool gemm_s8s8_s32_nt_library(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                              const int8_t* B, int64_t ldb, int32_t* C, int64_t ldc);

}  // namespace shrink::kernels::cpu
