// Tensor parallelism's slicing of one linear layer (Megatron-style), on the host before the
// backend repacks it: column-parallel layers (q/k/v, gate/up, the vocab-parallel lm_head) keep a
// subset of their output rows, row-parallel ones (o_proj, down_proj) a range of their input
// columns, whose partial outputs the ranks then sum (TpComm::allreduce_sum).
//
// Slicing works on LinearDesc, the backend-neutral form every checkpoint format is decoded to
// (float32, bfloat16, int8 and 4-bit values with per-channel or per-group scales, zero points,
// GPTQ act-order permutations), so one code path serves every weight kind. A column range must
// hold whole quantization groups: desc_cols refuses one that would cut a group, naming the layer.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "runtime/backend.h"

namespace shrink::runtime {

/// The part of a layer's stored tensors one rank needs: output rows `rows` (all when empty) and
/// input columns [c0, c1) (all when c1 < 0). The loader reads only these bytes of the mapped
/// checkpoint (LinearDesc::sliced), so each rank touches only its own slices.
struct TpRegion {
  std::vector<int64_t> rows;
  int64_t c0 = 0, c1 = -1;
};

/// Keep output rows `rows` of d (in that order): weights, scales, zero points and bias.
void desc_rows(LinearDesc& d, const std::vector<int64_t>& rows);

/// Keep input columns [c0, c1) of d's stored column order (group order when d.perm is set).
/// *channels receives the input channels those columns multiply (d.perm's entries, or c0..c1-1),
/// in column order, and d.perm is cleared: the caller feeds x in that order (or sets d.perm to
/// local indices). The bias is left as it is (a row-parallel layer adds it on one rank only).
/// Errors (kInvalidInput): a range that cuts a quantization group, or int8 activations per 32
/// inputs (ActInt8::kBlock32) across a range not aligned to 32.
Status desc_cols(LinearDesc& d, int64_t c0, int64_t c1, std::vector<int32_t>* channels);

}  // namespace shrink::runtime
