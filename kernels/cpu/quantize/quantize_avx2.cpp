// quantize: the avx2 variant. Symmetric int8 activation quantization.
// The body is quantize_simd.inc, shared with the other vector width; this file only fixes the ISA
// (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against quantize_ref
// in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx2
#include "kernels/cpu/quantize/quantize_simd.inc"
