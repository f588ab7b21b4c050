// rope: the avx512 variant. Rotate-half RoPE.
// The body is rope_simd.inc, shared with the other vector width; this file only fixes the ISA
// (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against rope_ref
// in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx512
#include "kernels/cpu/rope/rope_simd.inc"
