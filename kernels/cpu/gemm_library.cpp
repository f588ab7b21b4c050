// oneDNN matmul glue (see gemm_library.h). Weights stay in HF's [N, K] layout and are described
// to oneDNN as a [K, N] matrix with strides {1, ldb}. The primitives are kept here, keyed by
// types, shape and strides: oneDNN's own primitive cache saves the JIT, but every call still
// built the operation and primitive descriptors (an implementation search) and a stream first.
#include "kernels/cpu/gemm_library.h"

#if defined(SHRINK_HAVE_DNNL)
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdio>
#include <string>
#include <tuple>
#include <unordered_map>
#endif

namespace shrink::kernels::cpu {

bool gemm_bf16_native() {
#if defined(__x86_64__)
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

#if defined(SHRINK_HAVE_DNNL)

namespace {

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// A matmul primitive with its memory descriptors, made once per key.
struct Matmul {
  dnnl::memory::desc a, b, c;
  dnnl::matmul prim;
};

struct MatmulKey {
  int ta, tc;
  int64_t M, N, K, lda, ldb, ldc;
  bool operator==(const MatmulKey& o) const {
    return std::tie(ta, tc, M, N, K, lda, ldb, ldc) ==
           std::tie(o.ta, o.tc, o.M, o.N, o.K, o.lda, o.ldb, o.ldc);
  }
};
struct MatmulKeyHash {
  size_t operator()(const MatmulKey& k) const {
    uint64_t h = uint64_t(k.ta) * 31 + uint64_t(k.tc);
    for (int64_t v : {k.M, k.N, k.K, k.lda, k.ldb, k.ldc}) h = h * 0x9e3779b97f4a7c15ull + uint64_t(v);
    return size_t(h ^ (h >> 29));
  }
};

// The primitive of a key, made on first use by this thread. Per thread, because a primitive
// object carries its scratchpad: two threads running one object at once (tensor-parallel ranks
// in one process, a server beside a test) would share it. Prompt lengths vary M, so the map is
// cleared when it reaches kMaxPrimitives (a few weight shapes x the lengths in use fit far
// below that).
const Matmul& matmul_for(const MatmulKey& k) {
  constexpr size_t kMaxPrimitives = 1024;
  thread_local std::unordered_map<MatmulKey, Matmul, MatmulKeyHash> cache;
  auto it = cache.find(k);
  if (it != cache.end()) return it->second;
  using dnnl::memory;
  const auto ta = memory::data_type(k.ta), tc = memory::data_type(k.tc);
  memory::desc a_md({k.M, k.K}, ta, memory::dims{k.lda, 1});
  memory::desc b_md({k.K, k.N}, ta, memory::dims{1, k.ldb});
  memory::desc c_md({k.M, k.N}, tc, memory::dims{k.ldc, 1});
  dnnl::matmul::desc d(a_md, b_md, c_md);
  dnnl::matmul::primitive_desc pd(d, engine());
  if (cache.size() >= kMaxPrimitives) cache.clear();
  return cache.emplace(k, Matmul{a_md, b_md, c_md, dnnl::matmul(pd)}).first->second;
}

template <typename TA, typename TC>
bool matmul_nt(dnnl::memory::data_type ta, dnnl::memory::data_type tc, int64_t M, int64_t N,
               int64_t K, const TA* A, int64_t lda, const TA* B, int64_t ldb, TC* C, int64_t ldc) {
  using dnnl::memory;
  try {
    const Matmul& m = matmul_for({int(ta), int(tc), M, N, K, lda, ldb, ldc});
    memory am(m.a, engine(), const_cast<TA*>(A));
    memory bm(m.b, engine(), const_cast<TA*>(B));
    memory cm(m.c, engine(), C);
    thread_local dnnl::stream s(engine());
    m.prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    s.wait();
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

}  // namespace

bool gemm_library_available() { return true; }

const char* gemm_library_name() {
  static const std::string name = [] {
    const dnnl_version_t* v = dnnl::version();
    return "onednn " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
           std::to_string(v->patch);
  }();
  return name.c_str();
}

bool gemm_f32_nt_library(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                         const float* B, int64_t ldb, float* C, int64_t ldc) {
  return matmul_nt(dnnl::memory::data_type::f32, dnnl::memory::data_type::f32, M, N, K, A, lda, B,
                   ldb, C, ldc);
}

bool gemm_bf16_nt_library(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                          const uint16_t* B, int64_t ldb, float* C, int64_t ldc) {
  return matmul_nt(dnnl::memory::data_type::bf16, dnnl::memory::data_type::f32, M, N, K, A, lda,
                   B, ldb, C, ldc);
}

bool gemm_s8s8_s32_nt_library(int64_t M, int64_t N, int64_t K, const int8_t* A, int64_t lda,
                              const int8_t* B, int64_t ldb, int32_t* C, int64_t ldc) {
  return matmul_nt(dnnl::memory::data_type::s8, dnnl::memory::data_type::s32, M, N, K, A, lda, B,
                   ldb, C, ldc);
}

#else

bool gemm_library_available() { return false; }
const char* gemm_library_name() { return "builtin"; }
bool gemm_f32_nt_library(int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
                         float*, int64_t) {
  return false;
}
bool gemm_s8s8_s32_nt_library(int64_t, int64_t, int64_t, const int8_t*, int64_t, const int8_t*,
                              int64_t, int32_t*, int64_t) {
  return false;
}
bool gemm_bf16_nt_library(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint16_t*,
                          int64_t, float*, int64_t) {
  return false;
}

#endif

}  // namespace shrink::kernels::cpu
