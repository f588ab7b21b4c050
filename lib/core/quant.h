// Int8 quantization shared by the LibTorch side (calibration, fake-quant) and the runtime: the
// scheme as written in config.json (compressed-tensors "int-quantized"), the rounding and
// clamping rules, and the activation-range observers over histograms.
//
// Arithmetic (the one definition every backend follows):
//   q = clamp(round_half_even(x / scale), -127, 127),  x^ = q * scale
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

/// round-half-to-even (the default FP rounding mode), then clamp to [-127, 127].
inline int8_t quantize_value(float x, float inv_scale) {
  float r = std::nearbyint(x * inv_scale);
  r = r < -127.f ? -127.f : (r > 127.f ? 127.f : r);
  return int8_t(r);
}

struct QuantScheme {
  int bits = 8;
  std::string weight_strategy = "channel";  // channel | group
  int64_t group_size = 0;                    // for group
  std::string activations = "none";          // none (W8A16) | static (per tensor) | dynamic (per token)
  std::string observer = "minmax";           // static activations: minmax|ema|percentile|mse|entropy
  std::vector<std::string> ignore;           // module names left in float (e.g. lm_head)
  bool is_w8a8() const { return activations != "none"; }
};

/// The `quantization_config` object of config.json for a scheme (compressed-tensors,
/// format "int-quantized", quantization_status "compressed").
nlohmann::json quant_config_to_json(const QuantScheme& s);
/// Parse it back; errors name the offending field.
Result<QuantScheme> quant_config_from_json(const nlohmann::json& j);
/// Check a scheme against layer widths (group size divides every K, bits == 8).
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
