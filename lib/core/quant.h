// Int8 quantization shared by the LibTorch side (calibration, fake-quant) and the runtime: the
// scheme as written in config.json (compressed-tensors "int-quantized"), the rounding and
// clamping rules, and the activation-range observers over histograms.
//
// Arithmetic (the one definition every backend follows):
//   q = clamp(round_half_even(x * (1 / scale)), -127, 127),  x^ = q * scale
// Weights multiply by the reciprocal of the scale, computed once per row or group, rather than
// dividing each value: that is how `shrink quantize` computes them (train::quantize_weight, a
// broadcast multiply by 1 / scale), and every other weight quantizer (quantize_value below,
// runtime::quant_weight_s8 and so the runtime's int8 lm_head, tests/export/util.h) does the
// same so that all of them write the same int8 values. x * (1 / scale) can differ from
// x / scale in the last bit, which moves a value lying on a rounding boundary by one step.
// Activations are quantized in the runtime's kernels by an IEEE division, x / scale
// (kernels/cpu/quantize, kernels/cuda/common.cuh), which every SIMD variant reproduces exactly.
// Symmetric int8 uses [-127, 127], not [-128, 127]: the range is symmetric so that -x
// quantizes to -q, and every value is also valid for loaders that assume [-128, 127].
// Weights: one scale per output channel (max|w_row| / 127) or per group of `group_size`
// inputs. Activations: static per tensor (a calibrated scale) or dynamic per token
// (max|x_token| / 127 at run time).
//
// Observers pick the static activation scale from |x| statistics:
//   minmax        max |x|
//   ema           moving average of per-batch max |x| (weight 0.01 per batch, as PyTorch's
//                 MovingAverageMinMaxObserver)
//   percentile    the p-th percentile of |x| (default 99.99)
//   mse           the clipping threshold minimizing E[(x - Q(x))^2] over the histogram
//   entropy       TensorRT's: the threshold minimizing KL(P || Q) between the clipped
//                 histogram and its 127-level quantized version
// Tested in tests/core/test_quant.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace shrink::core {

constexpr int kQMax = 127;
/// 4-bit weights (W4A16, compressed-tensors "pack-quantized"): scale = max|w| / 7 per group,
/// q = clamp(round_half_even(w * (1 / scale)), -8, 7), so round-to-nearest gives [-7, 7] and
/// GPTQ's error feedback may use -8. Stored as q + 8 in nibbles, eight per little-endian int32
/// word, the k-th value of a row in bits 4 (k % 8) of word k / 8 (so byte j holds values 2j and
/// 2j + 1).
/// Asymmetric 4-bit (compressed-tensors W4A16_ASYM, `symmetric: false`): per group,
/// lo = min(w, 0), hi = max(w, 0), scale = (hi - lo) / 15, zero point
/// zp = clamp(round(-8 - lo / scale), -8, 7), q = clamp(round(w * (1 / scale) + zp), -8, 7) and
/// w^ = (q - zp) * scale; q packs as above and the zero points [out, groups] pack along the
/// output dimension (int4_pack_rows).
constexpr int kQMax4 = 7;
constexpr int kQMin4 = -8;

/// Pack int4 values q [rows, cols] (each in [-8, 7]) into `out`, rows * int4_packed_cols(cols)
/// int32 words as bytes (padding nibbles hold 8, i.e. zero).
inline int64_t int4_packed_cols(int64_t cols) {
  return cols / 8 + (cols % 8 != 0);  // ceil(cols / 8) without overflow near INT64_MAX
}
void int4_pack(const int8_t* q, int64_t rows, int64_t cols, uint8_t* out);
/// The inverse: bytes of rows * int4_packed_cols(cols) words -> q [rows, cols].
void int4_unpack(const uint8_t* packed, int64_t rows, int64_t cols, int8_t* q);

/// Pack int4 values v [rows, cols] (each in [-8, 7]) along the rows, as compressed-tensors
/// packs zero points: out [int4_packed_cols(rows), cols] int32 words as bytes, value (r, c) in
/// bits 4 (r % 8) of word (r / 8, c), stored as v + 8 (padding nibbles hold 8).
void int4_pack_rows(const int8_t* v, int64_t rows, int64_t cols, uint8_t* out);
/// The inverse: bytes of int4_packed_cols(rows) * cols words -> v [rows, cols].
void int4_unpack_rows(const uint8_t* packed, int64_t rows, int64_t cols, int8_t* v);

/// Round-to-nearest weight quantization of `rows` rows of `cols` float32 weights w, one scale
/// per row (group = 0) or per `group` consecutive inputs, the arithmetic of the LibTorch
/// quantizer (train::quantize_weight, train::weight_qparams), which the model-free path of
/// `shrink quantize` must reproduce bit for bit:
///   symmetric:  scale = max|w| / qmax (1 where max|w| is 0), q = clamp(round(w * (1 / scale)))
///   asymmetric (4 bits, see kQMax4): scale = (hi - lo) / 15, zp = clamp(round(-8 - lo / scale)),
///               q = clamp(round(w * (1 / scale) + zp))
/// with qmax / clamp range 127 / [-127, 127] for 8 bits and 7 / [-8, 7] for 4. Writes q [rows,
/// cols], scale [rows, groups] and, asymmetric, zp [rows, groups]. A non-finite weight fails
/// (kInvalidInput) naming its row and column within the block.
Status rtn_quantize_rows(const float* w, int64_t rows, int64_t cols, int64_t group, int bits,
                         bool asym, int8_t* q, float* scale, int8_t* zp);

/// GPTQ's activation order with groups (compressed-tensors `weight_g_idx`, llm-compressor's
/// `actorder: group`): g_idx[k] is the group of input column k, and the columns of each group
/// need not be contiguous. Validates it (every group in [0, ceil(in / group)), each holding as
/// many columns as a contiguous grouping would) and returns the column order that makes the
/// groups contiguous (columns of group 0 first, each group's in increasing order), or an empty
/// vector when g_idx is already the contiguous grouping. `where` names the tensor in errors.
Result<std::vector<int32_t>> group_order_from_g_idx(const std::vector<int64_t>& g_idx,
                                                    int64_t group, const std::string& where);

/// round-half-to-even (the default FP rounding mode), then clamp to [-127, 127].
inline int8_t quantize_value(float x, float inv_scale) {
  float r = std::nearbyint(x * inv_scale);
  r = r < -127.f ? -127.f : (r > 127.f ? 127.f : r);
  return int8_t(r);
}

/// A quantization scheme: what `shrink quantize` writes and every reader of a quantized model
/// directory (the runtime, the LibTorch loader, the ONNX exporter, shrink inspect) reads, through
/// the one parser below.
struct QuantScheme {
  int bits = 8;                             // 8, or 4 (W4A16 or W4A8, format pack-quantized)
  std::string weight_strategy = "channel";  // channel | group | tensor (one scale; runtime only)
  int64_t group_size = 0;                    // for group
  bool symmetric = true;                     // false: 4-bit weights with zero points (see kQMax4)
  std::string actorder;                      // GPTQ's: "" (none), static, group (weight_g_idx)
  std::string activations = "none";          // none (W8A16, W4A16) | static | dynamic (per token)
  std::string observer = "minmax";           // static activations: minmax|ema|percentile|mse|entropy
  std::vector<std::string> ignore;           // module names (or "re:<regex>") left in float
};

/// The `quantization_config` object of config.json for a scheme (compressed-tensors, format
/// "int-quantized", or "pack-quantized" for 4 bits; quantization_status "compressed").
nlohmann::json quant_config_to_json(const QuantScheme& s);
/// Parse and validate it: compressed-tensors with one config group targeting Linear, int
/// weights of 8 bits (int-quantized, naive-quantized; format defaults to int-quantized) or 4
/// (pack-quantized), zero points for 4-bit weights only, and int8 input activations (static per
/// tensor or dynamic per token; with 4-bit weights dynamic per token only: W4A8). An
/// unsupported scheme (3 bits, asymmetric 8-bit, fp8, several config groups) must fail with
/// kInvalidInput, never run with wrong numbers: errors name the field from
/// "quantization_config", the value and what is supported.
Result<QuantScheme> quant_config_from_json(const nlohmann::json& j);
/// "w8a16", "w4a16", "w4a16-asym", "w4a8", "w4a8-asym", "w8a8-static" or "w8a8-dynamic", with
/// "/g<size>" for group-wise and "/tensor" for per-tensor weight scales, as runtime::Engine::describe() and the
/// ONNX exporter name a scheme.
std::string quant_scheme_name(const QuantScheme& s);
/// The ahead-of-time readers (the LibTorch loader, the ONNX exporter) take one weight scale per
/// channel or group; a per-tensor scheme, which the runtime reads, is kInvalidInput there.
Status quant_scheme_check_channel_or_group(const QuantScheme& s);
/// The group size a 4-bit scheme takes when none is given: the largest of 128, 64 and 32 that
/// divides every input width (32 when none does).
int64_t int4_default_group(const std::vector<int64_t>& in_features);
/// Check a scheme against layer widths (group size divides every K; 4 bits only for weights).
Status quant_scheme_validate(const QuantScheme& s, const std::vector<int64_t>& in_features);

/// A histogram of |x| over [0, max) with `bins` bins; grows by merging bins when a larger
/// value arrives, so one streaming pass suffices.
class AbsHistogram {
 public:
  explicit AbsHistogram(int bins = 2048) : counts_(size_t(bins), 0.0) {}
  void add(const float* x, int64_t n);
  double max() const { return max_; }
  double total() const { return total_; }
  const std::vector<double>& counts() const { return counts_; }
  double bin_width() const { return width_; }

 private:
  void grow_to(double v);
  std::vector<double> counts_;
  double width_ = 0, max_ = 0, total_ = 0;
};

/// The clipping threshold (the absolute value that maps to 127) an observer chooses.
double observer_percentile(const AbsHistogram& h, double percentile);
double observer_mse(const AbsHistogram& h);
double observer_entropy(const AbsHistogram& h);

}  // namespace shrink::core
