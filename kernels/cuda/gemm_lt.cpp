// cuBLASLt plans and calls (see gemm_lt.h).
#include "kernels/cuda/gemm_lt.h"

#include <cublasLt.h>

namespace shrink::cuda {

namespace {

Status lt_status(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return Status::ok();
  return internal_error(std::string("cuBLASLt ") + what + " failed: status " +
                        std::to_string(int(st)));
}

cudaDataType_t data_type(int kind) {
  switch (kind) {
    case int(WType::kF16): return CUDA_R_16F;
    case int(WType::kBF16): return CUDA_R_16BF;
    case int(WType::kS8): return CUDA_R_8I;
    default: return CUDA_R_32F;
  }
}

}  // namespace

struct GemmLt::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (op) cublasLtMatmulDescDestroy(op);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

Result<std::unique_ptr<GemmLt>> GemmLt::create(size_t workspace_bytes) {
  std::unique_ptr<GemmLt> g(new GemmLt());
  cublasLtHandle_t h = nullptr;
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtCreate(&h), "create"));
  g->handle_ = h;
  if (cudaMalloc(&g->workspace_, workspace_bytes) != cudaSuccess) {
    cudaGetLastError();
    return internal_error("cuBLASLt workspace: cudaMalloc of " + std::to_string(workspace_bytes) +
                          " bytes failed");
  }
  g->workspace_bytes_ = workspace_bytes;
  return g;
}

GemmLt::~GemmLt() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
}

std::string GemmLt::version() const {
  const size_t v = cublasLtGetVersion();
  return "cuBLASLt " + std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
}

Result<GemmLt::Plan*> GemmLt::plan(const LtKey& key) {
  if (const PlanCache<Plan>::Entry* e = plans_.find(key)) {
    if (e->plan) return e->plan.get();
    return internal_error(e->failure);  // remembered: no second heuristic query
  }
  auto p = std::make_unique<Plan>();
  Status st = plan_make(key, *p);
  if (!st.is_ok()) {
    ++counters_.lt_plan_failures;
    plans_.put_failure(key, st.message());
    return st;
  }
  ++counters_.lt_plans;
  return plans_.put(key, std::move(p));
}

// Descriptors for the key's M bucket and the heuristic's first algorithm for them, told the
// operands' real alignment.
Status GemmLt::plan_make(const LtKey& key, Plan& p) {
  const bool int8 = key.kind == int(WType::kS8);
  const cudaDataType_t ab = data_type(key.kind);
  const cudaDataType_t ct = int8 ? CUDA_R_32I : CUDA_R_32F;
  const cublasComputeType_t compute = int8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
  const uint64_t M = uint64_t(key.m_bucket), N = uint64_t(key.n), K = uint64_t(key.k);
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatmulDescCreate(&p.op, compute, ct), "desc"));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  SHRINK_RETURN_IF_ERROR(lt_status(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa"));
  SHRINK_RETURN_IF_ERROR(lt_status(
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb"));
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatrixLayoutCreate(&p.a, ab, K, N, int64_t(K)), "layout A"));
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatrixLayoutCreate(&p.b, ab, K, M, int64_t(K)), "layout B"));
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatrixLayoutCreate(&p.c, ct, N, M, key.ldc), "layout C"));
  cublasLtMatmulPreference_t pref = nullptr;
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatmulPreferenceCreate(&pref), "preference"));
  const uint32_t align[4] = {uint32_t(key.align_a), uint32_t(key.align_b), uint32_t(key.align_c),
                             uint32_t(key.align_c)};
  const cublasLtMatmulPreferenceAttributes_t which[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_, sizeof workspace_bytes_);
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, which[i], &align[i], sizeof align[i]);
  }
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(handle_), p.op, p.a, p.b,
                                        p.c, p.c, pref, 1, &res, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  SHRINK_RETURN_IF_ERROR(lt_status(st, "heuristic"));
  SHRINK_CHECK(found > 0, StatusCode::kInternal,
               "cuBLASLt: no algorithm for %s M<=%lld N=%lld K=%lld ldc=%lld, alignment %d/%d/%d",
               int8 ? "int8" : "float", (long long)key.m_bucket, (long long)key.n,
               (long long)key.k, (long long)key.ldc, key.align_a, key.align_b, key.align_c);
  p.algo = res.algo;
  return Status::ok();
}

// One matmul: the plan of its key, the exact M set on the bucket's B and C layouts.
Status GemmLt::run(int kind, int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                   void* y, int64_t ldy, const void* alpha, cudaStream_t s) {
  const int64_t elem = kind == int(WType::kS8) ? 1 : wtype_bytes(WType(kind));
  LtKey key;  // (not const: a failing bucket plan is replaced by an exact one below)
  key.kind = kind;
  key.m_bucket = m_bucket(M);
  key.n = N;
  key.k = K;
  key.ldc = ldy;
  key.align_a = operand_alignment(w, K * elem);
  key.align_b = operand_alignment(x, K * elem);
  key.align_c = operand_alignment(y, ldy * 4);
  SHRINK_ASSIGN_OR_RETURN(Plan * p, plan(key));
  Status st = matmul(*p, M, x, w, y, alpha, kind == int(WType::kS8), s);
  if (!st.is_ok() && key.m_bucket != M) {
    // The bucket's algorithm was chosen for its largest M; cuBLASLt refused it at this one.
    // Plan this M exactly (cached like any key) and try once more.
    key.m_bucket = M;
    key.exact = true;
    ++counters_.lt_exact_replans;
    SHRINK_ASSIGN_OR_RETURN(p, plan(key));
    st = matmul(*p, M, x, w, y, alpha, kind == int(WType::kS8), s);
  }
  SHRINK_RETURN_IF_ERROR(st);
  ++counters_.lt_gemm;
  return Status::ok();
}

// The plan's matmul at M rows (its layouts' columns set to M first).
Status GemmLt::matmul(Plan& p, int64_t M, const void* x, const void* w, void* y,
                      const void* alpha, bool int8, cudaStream_t s) {
  const uint64_t cols = uint64_t(M);
  SHRINK_RETURN_IF_ERROR(lt_status(
      cublasLtMatrixLayoutSetAttribute(p.b, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols),
      "layout B columns"));
  SHRINK_RETURN_IF_ERROR(lt_status(
      cublasLtMatrixLayoutSetAttribute(p.c, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols),
      "layout C columns"));
  const int32_t beta_i = 0;  // beta in the scale type: int32 for int8, float otherwise
  const float beta_f = 0.0f;
  const void* beta = int8 ? static_cast<const void*>(&beta_i) : static_cast<const void*>(&beta_f);
  return lt_status(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), p.op, alpha, w, p.a, x,
                                  p.b, beta, y, p.c, y, p.c, &p.algo, workspace_,
                                  workspace_bytes_, s),
                   int8 ? "matmul (int8)" : "matmul (float)");
}

Status GemmLt::gemm_float(WType t, int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                          float* y, int64_t ldy, cudaStream_t s) {
  const float alpha = 1.0f;
  return run(int(t), M, N, K, x, w, y, ldy, &alpha, s);
}

Status GemmLt::gemm_s8(int64_t M, int64_t N, int64_t K, const int8_t* x, const int8_t* w,
                       int32_t* acc, cudaStream_t s) {
  const std::string why = imma_refusal(N, K, N, operand_alignment(w, K), operand_alignment(x, K),
                                       operand_alignment(acc, N * 4));
  SHRINK_CHECK(why.empty(), StatusCode::kInternal, "cuBLASLt int8 GEMM refused: %s", why.c_str());
  const int32_t alpha = 1;
  return run(int(WType::kS8), M, N, K, x, w, acc, N, &alpha, s);
}

}  // namespace shrink::cuda
