// silu_mul: the avx2 variant. SiLU(g) * u.
// The body is silu_mul_simd.inc, shared with the other vector width; this file only fixes the ISA
// (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against silu_mul_ref
// in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx2
#include "kernels/cpu/silu_mul/silu_mul_simd.inc"
