// gemm_f32: the avx2 variant. fp32 C = A * B^T, register-blocked dot products.
// The body is gemm_f32_simd.inc, shared with the other vector width; this file only fixes the ISA
// (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against gemm_f32_ref
// in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx2
#include "kernels/cpu/gemm_f32/gemm_f32_simd.inc"
