// The OBS machinery GPTQ and SparseGPT share (see obs.h for the design): Hessian sums through
// BLAS ssyrk, the inverse factor through LAPACK spotrf + strtri. Both libraries are the ones
// LibTorch links (Debian: libblas.so.3 / liblapack.so.3, OpenBLAS by default); they see the
// row-major buffers as their column-major transposes, which the comments below follow.
#include "train/obs.h"

#include <algorithm>
#include <string>

#include "core/status.h"

extern "C" {
// BLAS / LAPACK (LP64), with the hidden lengths of the character arguments that gfortran-built
// libraries expect (C implementations such as OpenBLAS's ignore them).
void ssyrk_(const char* uplo, const char* trans, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* beta, float* c, const int* ldc, size_t,
            size_t);
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info, size_t);
void strtri_(const char* uplo, const char* diag, const int* n, float* a, const int* lda, int* info,
             size_t, size_t);
}

namespace shrink::train {

namespace {
int blas_int(int64_t v, const char* what) {
  if (v < 0 || v > int64_t(INT32_MAX)) {
    throw Error(StatusCode::kInternal, std::string(what) + " " + std::to_string(v) +
                                           " exceeds the 32-bit BLAS interface");
  }
  return int(v);
}
}  // namespace

void HessianSum::add(const torch::Tensor& x) {
  const torch::Tensor f = x.detach().reshape({-1, x.size(-1)}).to(torch::kFloat32).contiguous();
  const int n = blas_int(f.size(1), "Hessian width"), k = blas_int(f.size(0), "Hessian rows");
  if (!h_.defined()) h_ = torch::zeros({n, n}, torch::kFloat32);
  if (h_.size(0) != n) {
    throw Error(StatusCode::kInternal, "Hessian: input width " + std::to_string(n) +
                                           " after " + std::to_string(h_.size(0)));
  }
  // Column-major, f is the n x k matrix f^T and h the n x n sum: h += f^T (f^T)^T, its upper
  // triangle, which row-major is h's lower triangle.
  const float one = 1.0f;
  ssyrk_("U", "N", &n, &k, &one, f.data_ptr<float>(), &n, &one, h_.data_ptr<float>(), &n, 1, 1);
  mirrored_ = false;
}

const torch::Tensor& HessianSum::get() const {
  if (mirrored_ || !h_.defined()) return h_;
  const int64_t n = h_.size(0), tile = 64;
  float* h = h_.data_ptr<float>();
  // Upper from lower, in tiles so that both the rows read and the rows written stay cached.
  at::parallel_for(0, (n + tile - 1) / tile, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t i0 = ti * tile, i1 = std::min(n, i0 + tile);
      for (int64_t j0 = i0; j0 < n; j0 += tile) {
        const int64_t j1 = std::min(n, j0 + tile);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = std::max(j0, i + 1); j < j1; ++j) h[i * n + j] = h[j * n + i];
        }
      }
    }
  });
  mirrored_ = true;
  return h_;
}

torch::Tensor obs_inverse_factor(const torch::Tensor& H, double damp, torch::Tensor* dead) {
  torch::NoGradGuard ng;
  const int64_t n64 = H.size(0);
  const int n = blas_int(n64, "Hessian width");
  torch::Tensor a = H.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true).contiguous();
  auto diag = a.diagonal();
  auto d = diag == 0;  // inputs that never fire: independent columns
  diag.masked_fill_(d, 1.0);
  diag.add_(damp * diag.mean().item<double>());
  if (dead) *dead = d;
  // P H P (P reverses the order) = L L^T; then H^-1 = (P L^-1 P)^T (P L^-1 P), and P L^-1 P is
  // upper triangular with a positive diagonal: H^-1's upper Cholesky factor, which is unique.
  float* p = a.data_ptr<float>();
  std::reverse(p, p + n64 * n64);  // P H P: rows and columns reversed
  int info = 0;
  spotrf_("U", &n, p, &n, &info, 1);  // column-major R^T R; row-major its lower L = R^T
  if (info > 0) {
    throw Error(StatusCode::kInvalidInput,
                "the calibration Hessian (" + std::to_string(n) + " inputs) is not positive "
                "definite after dampening (leading minor " + std::to_string(info) +
                "); raise --damp or calibrate on more tokens");
  }
  if (info == 0) strtri_("U", "N", &n, p, &n, &info, 1, 1);  // row-major: L^-1, lower
  if (info != 0) {
    throw Error(StatusCode::kInternal, "LAPACK failed on the OBS factor (info " +
                                           std::to_string(info) + ")");
  }
  std::reverse(p, p + n64 * n64);  // P L^-1 P: upper; below the diagonal what P H P left there
  return a.triu_();
}

}  // namespace shrink::train
