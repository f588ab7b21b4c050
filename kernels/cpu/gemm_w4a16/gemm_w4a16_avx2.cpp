// gemm_w4a16: the avx2 variant. float x 4-bit weights (dequantised in registers) C = A * B^T.
// The body is gemm_w4a16_simd.inc, shared with the other vector width; this file only fixes the
// ISA (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against
// gemm_w4a16_ref in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx2
#include "kernels/cpu/gemm_w4a16/gemm_w4a16_simd.inc"
