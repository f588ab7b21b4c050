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

Result<GemmLt::Plan*> GemmLt::plan(int kind, int64_t M, int64_t N, int64_t K, int64_t ldy) {
  auto key = std::make_tuple(kind, M, N, K, ldy);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  auto p = std::make_unique<Plan>();
  const bool int8 = kind == int(WType::kS8);
  const cudaDataType_t ab = data_type(kind);
  const cudaDataType_t ct = int8 ? CUDA_R_32I : CUDA_R_32F;
  const cublasComputeType_t compute = int8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F;
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatmulDescCreate(&p->op, compute, int8 ? CUDA_R_32I : CUDA_R_32F), "desc"));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  SHRINK_RETURN_IF_ERROR(lt_status(
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa"));
  SHRINK_RETURN_IF_ERROR(lt_status(
      cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb"));
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatrixLayoutCreate(&p->a, ab, uint64_t(K), uint64_t(N), K), "layout A"));
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatrixLayoutCreate(&p->b, ab, uint64_t(K), uint64_t(M), K), "layout B"));
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatrixLayoutCreate(&p->c, ct, uint64_t(N), uint64_t(M), ldy), "layout C"));
  cublasLtMatmulPreference_t pref = nullptr;
  SHRINK_RETURN_IF_ERROR(lt_status(cublasLtMatmulPreferenceCreate(&pref), "preference"));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       &workspace_bytes_, sizeof workspace_bytes_);
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(handle_), p->op,
                                                     p->a, p->b, p->c, p->c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  SHRINK_RETURN_IF_ERROR(lt_status(st, "heuristic"));
  SHRINK_CHECK(found > 0, StatusCode::kInternal,
               "cuBLASLt: no algorithm for %s M=%lld N=%lld K=%lld", int8 ? "int8" : "float",
               (long long)M, (long long)N, (long long)K);
  p->algo = res.algo;
  Plan* raw = p.get();
  plans_[key] = std::move(p);
  return raw;
}

Status GemmLt::gemm_float(WType t, int64_t M, int64_t N, int64_t K, const void* x, const void* w,
                          float* y, int64_t ldy, cudaStream_t s) {
  SHRINK_ASSIGN_OR_RETURN(Plan * p, plan(int(t), M, N, K, ldy));
  const float alpha = 1.0f, beta = 0.0f;
  return lt_status(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), p->op, &alpha, w, p->a, x,
                                  p->b, &beta, y, p->c, y, p->c, &p->algo, workspace_,
                                  workspace_bytes_, s),
                   "matmul (float)");
}

Status GemmLt::gemm_s8(int64_t M, int64_t N, int64_t K, const int8_t* x, const int8_t* w,
                       int32_t* acc, cudaStream_t s) {
  SHRINK_CHECK(K % 4 == 0, StatusCode::kInternal, "int8 GEMM needs K %% 4 == 0 (K=%lld)",
               (long long)K);
  SHRINK_ASSIGN_OR_RETURN(Plan * p, plan(int(WType::kS8), M, N, K, N));
  const int32_t alpha = 1, beta = 0;
  return lt_status(cublasLtMatmul(static_cast<cublasLtHandle_t>(handle_), p->op, &alpha, w, p->a, x,
                                  p->b, &beta, acc, p->c, acc, p->c, &p->algo, workspace_,
                                  workspace_bytes_, s),
                   "matmul (int8)");
}

}  // namespace shrink::cuda
