// Slicing of a LinearDesc for tensor parallelism; see tp_slice.h.
#include "runtime/tp_slice.h"

#include <numeric>
#include <string>

namespace shrink::runtime {

namespace {

// The rows `rows` of a [n, width] row-major vector (an empty one stays empty).
template <typename T>
void pick_rows(std::vector<T>& v, int64_t width, const std::vector<int64_t>& rows) {
  if (v.empty()) return;
  std::vector<T> out(rows.size() * size_t(width));
  for (size_t i = 0; i < rows.size(); ++i) {
    std::copy(v.begin() + rows[i] * width, v.begin() + (rows[i] + 1) * width,
              out.begin() + int64_t(i) * width);
  }
  v = std::move(out);
}

// Columns [c0, c1) of every row of a [rows, width] row-major vector.
template <typename T>
void pick_cols(std::vector<T>& v, int64_t rows, int64_t width, int64_t c0, int64_t c1) {
  if (v.empty()) return;
  std::vector<T> out(size_t(rows * (c1 - c0)));
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(v.begin() + r * width + c0, v.begin() + r * width + c1,
              out.begin() + r * (c1 - c0));
  }
  v = std::move(out);
}

}  // namespace

void desc_rows(LinearDesc& d, const std::vector<int64_t>& rows) {
  if (d.sliced) {  // read so already (only its rows are in the vectors)
    d.out = int64_t(rows.size());
    return;
  }
  const int64_t groups = d.group > 0 ? (d.in + d.group - 1) / d.group : 0;
  pick_rows(d.w, d.in, rows);
  pick_rows(d.wb, d.in, rows);
  pick_rows(d.q, d.in, rows);
  if (groups > 0) {
    pick_rows(d.scale, groups, rows);
    pick_rows(d.zp, groups, rows);
  }
  pick_rows(d.bias, 1, rows);
  d.out = int64_t(rows.size());
}

Status desc_cols(LinearDesc& d, int64_t c0, int64_t c1, std::vector<int32_t>* channels) {
  SHRINK_CHECK(c0 >= 0 && c1 <= d.in && c0 < c1, StatusCode::kInternal,
               "%s: columns [%lld, %lld) outside [0, %lld)", d.name.c_str(), (long long)c0,
               (long long)c1, (long long)d.in);
  const bool quantized = d.kind != LinearKind::kF32;
  const bool per_channel = !quantized || d.group >= d.in;
  if (!per_channel) {
    SHRINK_CHECK(c0 % d.group == 0 && (c1 % d.group == 0 || c1 == d.in),
                 StatusCode::kInvalidInput,
                 "%s: tensor parallelism would cut a quantization group: this rank's input "
                 "columns [%lld, %lld) are not multiples of the group size %lld; expected a "
                 "split (--tp) that divides the %lld inputs into whole groups",
                 d.name.c_str(), (long long)c0, (long long)c1, (long long)d.group,
                 (long long)d.in);
  }
  SHRINK_CHECK(d.act_int8 != ActInt8::kBlock32 || (c0 % 32 == 0 && (c1 % 32 == 0 || c1 == d.in)),
               StatusCode::kInvalidInput,
               "%s: int8 activations per 32 inputs need a split into multiples of 32 inputs; "
               "this rank has [%lld, %lld) (use --act-quant none)",
               d.name.c_str(), (long long)c0, (long long)c1);
  channels->resize(size_t(c1 - c0));
  if (d.perm.empty()) {
    std::iota(channels->begin(), channels->end(), int32_t(c0));
  } else {
    std::copy(d.perm.begin() + c0, d.perm.begin() + c1, channels->begin());
    d.perm.clear();
  }
  const int64_t rows = d.out;
  if (d.sliced) {  // read so already: the shapes only
    if (quantized && per_channel) d.group = c1 - c0;
    d.in = c1 - c0;
    return Status::ok();
  }
  pick_cols(d.w, rows, d.in, c0, c1);
  pick_cols(d.wb, rows, d.in, c0, c1);
  pick_cols(d.q, rows, d.in, c0, c1);
  if (quantized && !per_channel) {
    const int64_t groups = (d.in + d.group - 1) / d.group;
    const int64_t g0 = c0 / d.group, g1 = (c1 + d.group - 1) / d.group;
    pick_cols(d.scale, rows, groups, g0, g1);
    pick_cols(d.zp, rows, groups, g0, g1);
  } else if (quantized) {
    d.group = c1 - c0;  // per channel: the row's one scale covers the slice
  }
  d.in = c1 - c0;
  return Status::ok();
}

}  // namespace shrink::runtime
