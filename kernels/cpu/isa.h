// CPU instruction-set detection and selection, done once at start-up.
//
// Why: every hand-written kernel exists as a scalar reference plus AVX2 and AVX-512 variants,
// each in its own translation unit with its own compiler flags (kernels/cpu/<op>/). Which
// variant runs is decided once from cpuid (__builtin_cpu_supports), so no kernel checks flags in
// its inner loop. SHRINK_ISA=ref|avx2|avx512|avx512vnni lowers the choice (for tests and for
// benchmarks that compare variants); it can never raise it above what the CPU supports.
// Tested in tests/runtime/test_kernels.cpp (every variant the CPU supports, against ref).
#pragma once

#include <string>

namespace shrink::kernels::cpu {

/// Ordered from least to most capable; a CPU that supports one level supports all below it.
enum class Isa { kRef = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Vnni = 3 };

/// "ref", "avx2", "avx512", "avx512vnni".
const char* isa_name(Isa isa);
/// Parse an ISA name; false if unknown.
bool isa_from_name(const std::string& name, Isa* out);
/// True when this CPU (and this build) can run kernels of that level.
bool isa_supported(Isa isa);
/// The most capable supported level (AVX2 needs FMA too; AVX-512 needs F+BW+VL+DQ; VNNI needs
/// AVX512_VNNI on top).
Isa isa_best();
/// isa_best(), lowered by $SHRINK_ISA when set to a valid, supported name. Computed once.
Isa isa_active();

}  // namespace shrink::kernels::cpu
