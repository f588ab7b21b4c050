// gemm_w8a16: the avx512 variant. float x int8 (dequantised in the kernel) C = A * B^T.
// The body is gemm_w8a16_simd.inc, shared with the other vector width; this file only fixes the ISA
// (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against gemm_w8a16_ref
// in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx512
#include "kernels/cpu/gemm_w8a16/gemm_w8a16_simd.inc"
