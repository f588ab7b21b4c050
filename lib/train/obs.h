// What GPTQ (quantize.cpp) and SparseGPT (prune.cpp) share: the optimal-brain-surgeon (OBS)
// machinery of Frantar & Alistarh.
//
//   HessianSum       H = sum of x x^T over the calibration inputs, float32, accumulated with
//                    BLAS ssyrk into one triangle (half the flops of X^T X) and mirrored once,
//                    when first read.
//   obs_inverse_factor
//                    the upper Cholesky factor U of (H + damp)^-1 (H^-1 = U^T U), computed as
//                    the reversed inverse of the Cholesky factor of the reversed H: one
//                    Cholesky (spotrf) and one triangular inverse (strtri), 2n^3/3 flops in
//                    one n x n buffer, where Cholesky, inverse and Cholesky again take 4n^3/3
//                    in three.
//   obs_block_sweep  one block of columns, row by row: each row's values are replaced in
//                    column order and each replacement's error spread over the block's later
//                    columns. Rows are independent in both methods, so a row's block stays in
//                    the L1 cache and the rows run in parallel; column by column on the whole
//                    matrix (as the reference code does with tensor ops) every column rewrote
//                    rows x block floats through memory, which was most of GPTQ's time on a
//                    14336-wide down_proj.
// Why BLAS/LAPACK directly: LibTorch 1.13 exposes no symmetric rank-k update and no triangular
// inverse; both are OpenBLAS's, the library LibTorch itself calls. Tested in
// tests/train/test_quantize.cpp and test_prune.cpp (against X^T X, against the reference
// construction of U, and GPTQ/SparseGPT against their column-by-column definitions).
#pragma once

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <cstdint>

namespace shrink::train {

/// Sum of x x^T over calibration inputs x [tokens, n] (any float dtype), kept in float32.
class HessianSum {
 public:
  /// H += x^T x (x [tokens, n]).
  void add(const torch::Tensor& x);
  /// The whole symmetric [n, n] sum (undefined before the first add). The first call after an
  /// add mirrors the summed triangle (the sum itself does not change: hence const).
  const torch::Tensor& get() const;
  bool defined() const { return h_.defined(); }

 private:
  mutable torch::Tensor h_;  // row-major; only the lower triangle is summed until get()
  mutable bool mirrored_ = true;
};

/// The OBS factor shared by SparseGPT and GPTQ: the upper Cholesky factor U of (H + damp *
/// mean(diag H) * I)^-1 (H^-1 = U^T U; row i holds the update that column i's error spreads
/// over the later columns), in float32 (as GPTQ and SparseGPT compute it). Inputs with H_jj == 0
/// never fire: their diagonal becomes 1 so they stay independent of every other column; `dead`
/// (if given) marks them. Throws kInvalidInput when H + damp is not positive definite.
torch::Tensor obs_inverse_factor(const torch::Tensor& H, double damp, torch::Tensor* dead = nullptr);

/// One block of `cnt` columns of w (rows x cnt, row stride ldw, float32), in place: for every
/// row (rows in parallel) and column i in order, v = pick(r, i, row) becomes row[i] and
/// d = (row[i] - v) / u[i][i] is subtracted, times u[i][k], from each later column k of the
/// block; err[r * cnt + i] = d (for the update of the later blocks). u: the block's diagonal
/// block of the OBS factor (row stride ldu). `pick` may read the row's values from column i on
/// (a quantization group's scale from its updated weights, an N:M choice).
template <typename Pick>
void obs_block_sweep(float* w, int64_t ldw, int64_t rows, int64_t cnt, const float* u, int64_t ldu,
                     float* err, Pick&& pick) {
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* row = w + r * ldw;
      float* e = err + r * cnt;
      for (int64_t i = 0; i < cnt; ++i) {
        const float* ui = u + i * ldu;
        const float v = pick(r, i, static_cast<const float*>(row));
        const float d = (row[i] - v) / ui[i];
        for (int64_t k = i + 1; k < cnt; ++k) row[k] -= d * ui[k];
        row[i] = v;
        e[i] = d;
      }
    }
  });
}

}  // namespace shrink::train
