// `shrink quantize`: post-training int8 quantization with calibration, written as a
// compressed-tensors "int-quantized" model directory (see core/quant.h for the arithmetic).
//
//   W8A16   int8 weights per output channel (or per group of 32/64/128 inputs), float
//           activations
//   W8A8    int8 weights per channel and int8 activations, static per tensor (a calibrated
//           input_scale from an observer) or dynamic per token
//   GPTQ (optional, --method gptq) picks the int8 weights column by column so that the layer's
//           output on the calibration inputs changes least (see quant_ops.h); the format is
//           the same as round-to-nearest's.
//   SmoothQuant (optional) migrates activation outliers into the weights with strength alpha,
//           folding 1/s into the preceding RMSNorm (q/k/v and gate/up), into v_proj rows
//           (o_proj input; s shared by the query heads of a KV group) and into up_proj rows
//           (down_proj input, valid because SwiGLU multiplies by up). `auto` picks alpha per
//           layer from a grid by the layer's output error on the calibration data.
//   AWQ (optional, --awq, weight-only) scales each input channel by s before rounding, so the
//           channels that carry large activations lose less, and folds 1/s where SmoothQuant
//           folds; s is searched per input group on the calibration data (quant_ops.h). With
//           rtn it also searches each group's clipping range; with gptq, GPTQ then rounds the
//           scaled weights.
//
// Why this way: calibration streams layer by layer, and layer i is calibrated on the outputs of
// the already-quantized layers 0..i-1 (fake-quant), so static scales see the activations the
// deployed model will see and memory stays near one layer's activations. Fake-quant evaluation
// uses the stored int8 weights times their scales and the same round-half-even / [-127, 127]
// activation rounding as the runtime, so the accuracy measured here is the runtime's. The
// public API has no LibTorch types. Tested in tests/train/test_quantize.cpp.
//
// Three paths write the same bytes (tested): round to nearest without calibration is model-free
// (quantize_model_free.cpp: tensor by tensor from the memory-mapped input, no LibTorch model);
// calibrated methods stream (quantize_streaming: only decoder layer i in memory, built from the
// checkpoint, written as soon as it is quantized); --sensitivity, which revisits every layer,
// and --load-model build the whole model (the reference path).
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "core/fs.h"

namespace shrink::train {

struct QuantizeOptions {
  std::string model, out;
  std::string scheme = "w8a8";          // w8a8 | w8a16 | w4a16 | w4a8 (4-bit weights, int8 per token)
  std::string activations = "dynamic";  // w8a8: dynamic (per token) | static (per tensor)
  std::string observer = "minmax";    // static: minmax | ema | percentile | mse | entropy
  double percentile = 99.99;
  int bits = 8;
  int64_t group_size = 0;             // w8a16: 0 = per channel, else 32 | 64 | 128
  std::string smoothquant;            // "" = off, a number (alpha), or "auto"
  // Weight rounding: rtn (round to nearest) or gptq (error-compensating, from calibration).
  std::string method = "rtn";
  int64_t block_size = 128;           // gptq: columns per block (a multiple of group_size)
  double damp = 0.01;                 // gptq: fraction of mean(diag H) added to the diagonal
  bool act_order = false;             // gptq: columns by decreasing activation energy
  bool act_order_groups = false;      // gptq + act_order: groups in that order (weight_g_idx)
  // AWQ (weight-only schemes): activation-aware channel scales searched per input group and
  // folded into the op before; with rtn also AWQ's per-group clipping search.
  bool awq = false;
  bool awq_clip = true;
  // w4a16 only: asymmetric 4-bit weights (a zero point per group, compressed-tensors
  // W4A16_ASYM); every rounding method above supports it.
  bool asym = false;
  std::string targets = R"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)";
  std::string ignore;                 // regex of modules kept in float
  // Calibration and evaluation data.
  std::string data;
  std::string tokenizer;
  int64_t calib_samples = 64;
  int64_t calib_len = 256;
  uint64_t eval_tokens = 65536;       // 0 = skip the before/after evaluation
  int64_t eval_seq_len = 256;
  // Sensitivity analysis: quantize one module at a time, report the KL to the float model;
  // then keep the `keep_float` most sensitive modules in float.
  bool sensitivity = false;
  int64_t keep_float = 0;
  uint64_t sensitivity_tokens = 8192;
  bool progress = false;
  // Round to nearest without SmoothQuant, AWQ, static activations or sensitivity needs no model:
  // it runs tensor by tensor from the memory-mapped input on `threads` threads (the model-free
  // path). load_model forces the LibTorch path (the reference the tests compare it with).
  bool load_model = false;
  int threads = 1;
  int64_t block_elements = int64_t(1) << 20;  // model-free: weights per unit of work and thread
  // Budget for the calibration states (samples x tokens x hidden, float32) of the layer-by-layer
  // path: beyond it they live in a temporary file next to --out (the kernel pages them in and
  // out) instead of memory. Same results either way.
  std::string max_memory = core::kDefaultStatesBudget;
};

struct QuantizeResult {
  nlohmann::json report;  // also <out>/quantize.json
};

void quantize_validate(const QuantizeOptions& o);
QuantizeResult quantize_run(const QuantizeOptions& o);

}  // namespace shrink::train
