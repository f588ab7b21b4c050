// Int8 quantization on LibTorch tensors (see core/quant.h for the arithmetic and quantize.h for
// the command): weight quantization, fake-quant activations through the model's LinearTap,
// SmoothQuant on one decoder layer, and loading int8 directories back (dequantized weights plus
// fake-quant activations). Tested in tests/train/test_quantize.cpp.
#pragma once

#include <torch/torch.h>

#include <map>
#include <set>
#include <string>

#include "core/quant.h"
#include "core/safetensors.h"
#include "train/model.h"
#include "train/prune_ops.h"

namespace shrink::train {

/// Symmetric int8 weights: q [out, in] int8 and scale [out, 1] (group_size 0) or
/// [out, in / group_size] float32, with scale = max|w| / 127 over the channel or group. With
/// bits 4: scale = max|w| / 7 and q in [-8, 7] (core/quant.h), held in int8.
std::pair<torch::Tensor, torch::Tensor> quantize_weight(const torch::Tensor& w, int64_t group_size,
                                                        int bits = 8);
/// q * scale as float32 [out, in]; with zero points zp [out, groups] (int8), (q - zp) * scale.
torch::Tensor dequantize_weight(const torch::Tensor& q, const torch::Tensor& scale,
                                const torch::Tensor& zp = {});

/// Quantized weights: q [out, in] int8, scale [out, groups] float32 and, for asymmetric 4-bit
/// weights, zp [out, groups] int8 in [-8, 7] (undefined when symmetric).
/// g_idx [in] (int32, GPTQ act-order groups): the group of each input column, when the groups
/// are not contiguous (undefined otherwise).
struct QWeight {
  torch::Tensor q, scale, zp, g_idx;
  torch::Tensor dequantize() const;
};
/// The scale (and zero point, asym) of every group, from its range: symmetric as
/// quantize_weight; asymmetric 4-bit as core/quant.h (lo = min(w, 0), hi = max(w, 0),
/// scale = (hi - lo) / 15, zp = clamp(round(-8 - lo / scale), -8, 7)). `clip` multiplies the
/// range (AWQ's clipping search); [out, groups] each.
std::pair<torch::Tensor, torch::Tensor> weight_qparams(const torch::Tensor& w, int64_t group_size,
                                                       int bits, bool asym,
                                                       const torch::Tensor& clip = {});
/// q = clamp(round(w / scale + zp), qmin, qmax) for given parameters (zp undefined: 0).
torch::Tensor quantize_with_params(const torch::Tensor& w, const torch::Tensor& scale,
                                   const torch::Tensor& zp, int bits);
/// Round to nearest with weight_qparams' parameters (asym: 4 bits only).
QWeight rtn_quantize(const torch::Tensor& w, int64_t group_size, int bits, bool asym);
/// GPTQ (Frantar et al. 2023) for the same int8 format as quantize_weight. With H = X^T X over
/// the calibration inputs, columns are quantized left to right (or by decreasing H_jj with
/// act_order) in blocks of block_size, and each column's rounding error is spread over the
/// not-yet-quantized columns through the OBS factor (obs_inverse_factor), so the layer's output
/// changes least. Scales: per channel from the original weights (max|w| / 127, as RTN); per
/// group from the weights as updated when the group starts, or from the original weights with
/// act_order (static groups, so no column permutation is stored). Returns (q, scale) in the
/// original column order.
struct GptqOptions {
  int64_t group_size = 0;    // 0: per output channel
  int64_t block_size = 128;  // a multiple of group_size
  double damp = 0.01;        // fraction of mean(diag H) added to the diagonal
  bool act_order = false;
  // With act_order: groups of group_size consecutive columns in the activation order, each
  // scaled from its weights as updated when it starts (llm-compressor's actorder: group), so
  // QWeight::g_idx maps columns to groups. Without: static groups in the original order.
  bool act_order_groups = false;
  int bits = 8;  // 8, or 4 (q in [-8, 7])
  bool asym = false;  // 4 bits with zero points (ranges as weight_qparams)
};
QWeight gptq_quantize(const torch::Tensor& w, const torch::Tensor& H, const GptqOptions& o);
/// ||X (w - wq)^T||^2 = sum over rows of e H e^T, given H = X^T X (computed in float64).
double layer_output_error(const torch::Tensor& w, const torch::Tensor& wq, const torch::Tensor& H);

/// q = round(w / scale) clamped to the bits' range, for a given scale [out, groups] (float32):
/// quantize_weight with the scale chosen elsewhere (AWQ's clipped scales).
torch::Tensor quantize_with_scale(const torch::Tensor& w, const torch::Tensor& scale, int bits);

/// AWQ (Lin et al. 2024), activation-aware weight quantization, for one input group (the
/// linears `ws` that read the same input, e.g. q/k/v). Input channel j is scaled by s_j before
/// rounding (W * s, the input divided by s is folded into the op before), so channels that carry
/// large activations lose less. Candidates, as AutoAWQ: s = mx^r / wm^(1 - r) ("duo") and
/// s = mx^r ("plain") for r = 0, 1/grid, .., (grid - 1)/grid, normalized by sqrt(max s * min s),
/// where mx is the mean |x| of each input channel and wm the mean over output rows of
/// |w| / max|w| of its group. The objective is the group's linear outputs on the calibration
/// inputs, sum over ws of ||X (W - Q(W s) / s)^T||^2 through H = X^T X (AutoAWQ runs the
/// attention or MLP block instead). r = 0 is round-to-nearest, so the result is never worse than
/// RTN on this objective.
struct AwqScale {
  torch::Tensor s;     // [in] float32 (all ones if r = 0 won)
  double ratio = 0;    // the winning r
  bool duo = false;    // the winning form
  double err = 0;      // the objective at the winner
  double err_rtn = 0;  // the objective at r = 0 (round to nearest)
};
/// With tied > 1 the input channels are [kv heads, tied, head_dim] and each factor is shared by
/// the tied heads (o_proj's input under GQA, whose factors fold into v_proj's rows).
/// With asym, candidates are rounded with zero points (asymmetric 4-bit).
AwqScale awq_search_scale(const std::vector<torch::Tensor>& ws, const torch::Tensor& x_mean,
                          const torch::Tensor& H, int64_t group_size, int bits, int grid = 20,
                          int64_t tied = 1, int64_t head_dim = 0, bool asym = false);
/// AWQ's clipping search for one linear: per output row and group, the clipping ratio c in 1,
/// 0.95, .., 0.55 (grid 20, shrink up to 0.45) whose scale c max|w| / qmax gives the least
/// output error of the group's columns, e_g H_gg e_g^T. Returns the scale [out, groups]
/// (float32); c = 1 is quantize_weight's scale.
torch::Tensor awq_clip_scale(const torch::Tensor& w, const torch::Tensor& H, int64_t group_size,
                             int bits, int grid = 20);
/// The same search for symmetric or asymmetric weights (asym: both ends of the range shrink by
/// c, as AutoAWQ's zero-point clipping): the quantized weights at the best c per (row, group).
QWeight awq_clip_quantize(const torch::Tensor& w, const torch::Tensor& H, int64_t group_size,
                          int bits, bool asym, int grid = 20);

/// Fake-quant x [..., K]: per token (scale = max|x_t| / 127) or with a fixed per-tensor scale.
torch::Tensor fake_quant_per_token(const torch::Tensor& x);
torch::Tensor fake_quant_static(const torch::Tensor& x, float scale);

/// Fake-quant activations for the quantized linears. `input_scales` (module -> scale) for
/// static; `modules` limits which modules are quantized (input groups by their first module).
struct FakeQuantTap : LinearTap {
  std::string mode = "dynamic";  // dynamic | static
  std::map<std::string, float> input_scales;
  std::set<std::string> modules;
  void on_input(const std::string&, const torch::Tensor&) override {}
  torch::Tensor transform(const std::string& module, const torch::Tensor& x) override;
};

/// SmoothQuant one decoder layer in place, given per-input-channel max |x| for its four input
/// groups ("qkv", "o", "gate_up", "down"). Float outputs are unchanged up to rounding.
void smoothquant_layer(DecoderLayerImpl& layer, const std::map<std::string, torch::Tensor>& act_max,
                       double alpha, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim);

/// Divide one decoder layer's linear inputs by per-channel factors and multiply the reading
/// weights' columns by them, folded as SmoothQuant folds (same groups; "o" is [n_kv_heads *
/// head_dim], one factor per KV group and channel). Float outputs are unchanged up to rounding.
void scale_layer_inputs(DecoderLayerImpl& layer, const std::map<std::string, torch::Tensor>& s,
                        int64_t n_heads, int64_t n_kv_heads, int64_t head_dim);

/// Fill a model built from a quantized config with the dequantized weights of `ckpt` and install
/// the fake-quant activation tap (model_load calls this for int8 directories).
void quant_load_into(CausalLM& m, const core::Checkpoint& ckpt, const core::QuantScheme& s);
/// The fake-quant tap of scheme s, with no modules yet (quant_param_load adds them).
std::shared_ptr<FakeQuantTap> fake_quant_tap_for(const core::QuantScheme& s);
/// Parameter `name` of a quantized checkpoint into dst (float32, its shape): an int8 weight
/// dequantized (scales, zero points, act-order groups), registering its input group with the tap
/// (and its static input scale); any other tensor converted. The pages read are released.
void quant_param_load(const core::Checkpoint& ck, const core::QuantScheme& s, const std::string& name,
                      torch::Tensor& dst, FakeQuantTap& tap);

}  // namespace shrink::train
