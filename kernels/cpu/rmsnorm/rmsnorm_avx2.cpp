// rmsnorm: the avx2 variant. RMSNorm and the fused RMSNorm + int8 quantization.
// The body is rmsnorm_simd.inc, shared with the other vector width; this file only fixes the ISA
// (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against rmsnorm_ref
// in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx2
#include "kernels/cpu/rmsnorm/rmsnorm_simd.inc"
