// oneDNN matmul glue (see gemm_library.h). Weights stay in HF's [N, K] layout and are described
// to oneDNN as a [K, N] matrix with strides {1, ldb}; oneDNN's primitive cache makes re-creating
// the primitive per call cheap (a hash lookup), so no cache is kept here.
#include "kernels/cpu/gemm_library.h"

#if defined(SHRINK_HAVE_DNNL)
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdio>
#include <string>
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

template <typename TA, typename TC>
bool matmul_nt(dnnl::memory::data_type ta, dnnl::memory::data_type tc, int64_t M, int64_t N,
               int64_t K, const TA* A, int64_t lda, const TA* B, int64_t ldb, TC* C, int64_t ldc) {
  using dnnl::memory;
  try {
    memory::desc a_md({M, K}, ta, memory::dims{lda, 1});
    memory::desc b_md({K, N}, ta, memory::dims{1, ldb});
    memory::desc c_md({M, N}, tc, memory::dims{ldc, 1});
    dnnl::matmul::desc d(a_md, b_md, c_md);
    dnnl::matmul::primitive_desc pd(d, engine());
    dnnl::matmul prim(pd);
    memory am(a_md, engine(), const_cast<TA*>(A));
    memory bm(b_md, engine(), const_cast<TA*>(B));
    memory cm(c_md, engine(), C);
    dnnl::stream s(engine());
    prim.execute(s, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
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
