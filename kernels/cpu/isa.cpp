// ISA detection (see isa.h). Builds without the x86 variants (SHRINK_KERNELS_X86 undefined)
// report only the scalar reference.
#include "kernels/cpu/isa.h"

#include <cstdlib>

namespace shrink::kernels::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kRef: return "ref";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Vnni: return "avx512vnni";
  }
  return "?";
}

bool isa_from_name(const std::string& name, Isa* out) {
  for (Isa i : {Isa::kRef, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni}) {
    if (name == isa_name(i)) {
      *out = i;
      return true;
    }
  }
  return false;
}

bool isa_supported(Isa isa) {
#if defined(SHRINK_KERNELS_X86)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kRef: return true;
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return isa_supported(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
    case Isa::kAvx512Vnni:
      return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == Isa::kRef;
#endif
}

Isa isa_best() {
  for (Isa i : {Isa::kAvx512Vnni, Isa::kAvx512, Isa::kAvx2}) {
    if (isa_supported(i)) return i;
  }
  return Isa::kRef;
}

Isa isa_active() {
  static const Isa active = [] {
    Isa best = isa_best();
    const char* env = std::getenv("SHRINK_ISA");
    Isa want;
    if (env && isa_from_name(env, &want) && int(want) < int(best)) return want;
    return best;
  }();
  return active;
}

}  // namespace shrink::kernels::cpu
