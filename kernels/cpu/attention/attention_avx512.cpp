// attention: the avx512 variant. Attention over the KV cache (prefill blocks, decode partials).
// The body is attention_simd.inc, shared with the other vector width; this file only fixes the ISA
// (its compile flags are set per file in kernels/cpu/CMakeLists.txt). Tested against
// attention_ref.cpp in tests/runtime/test_kernels.cpp.
#define SHRINK_ISA_SUFFIX avx512
#include "kernels/cpu/attention/attention_simd.inc"
