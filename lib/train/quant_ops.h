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
/// q * scale as float32 [out, in].
torch::Tensor dequantize_weight(const torch::Tensor& q, const torch::Tensor& scale);
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
  int bits = 8;  // 8, or 4 (q in [-8, 7])
};
std::pair<torch::Tensor, torch::Tensor> gptq_quantize(const torch::Tensor& w, const torch::Tensor& H,
                                                      const GptqOptions& o);
/// ||X (w - wq)^T||^2 = sum over rows of e H e^T, given H = X^T X (float64).
double layer_output_error(const torch::Tensor& w, const torch::Tensor& wq, const torch::Tensor& H);

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

/// Fill a model built from a quantized config with the dequantized weights of `ckpt` and install
/// the fake-quant activation tap (model_load calls this for int8 directories).
void quant_load_into(CausalLM& m, const core::Checkpoint& ckpt, const core::QuantScheme& s);

}  // namespace shrink::train
