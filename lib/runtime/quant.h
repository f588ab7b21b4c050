// int8 model directories in the compressed-tensors layout (as vLLM reads them): parsing and
// validating `quantization_config`, and the symmetric weight quantizer used by tests and by the
// random-weight benchmark models.
//
// Layout (per quantized linear <m>, e.g. model.layers.0.self_attn.q_proj):
//   <m>.weight             I8 [out, in]
//   <m>.weight_scale       F32/F16/BF16 [out, 1] (strategy "channel"), [out, in/group_size]
//                          ("group") or [1] ("tensor"); w = q * scale
//   <m>.weight_zero_point  symmetric: optional, ignored; 4-bit with symmetric false: I8
//                          [out, groups] in [-8, 7] (packed I32 on disk), w = (q - zp) * scale
//   <m>.input_scale        F32/F16/BF16 [1] (or [1, 1]), static activation quantization only
// config.json: quantization_config = {"quant_method": "compressed-tensors", "format":
// "int-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "weights": {...},
// "input_activations": null | {...}}}, "ignore": [...]}. A linear whose weight is stored as a
// float dtype (lm_head, ignored modules) runs in float.
//
// 4-bit weights (format "pack-quantized", num_bits 4, float activations): <m>.weight_packed I32
// [out, ceil(in / 8)] and <m>.weight_shape [2], which core::Checkpoint presents as an I8
// <m>.weight with values in [-8, 7]; the CPU backend keeps them at 4 bits (LinearDesc::bits).
// Why validate here: an unsupported scheme (3 bits, asymmetric 8-bit, fp8, several config groups)
// must fail with kInvalidInput naming the field, never run with wrong numbers.
// Tested in tests/runtime/test_engine.cpp (quantized dirs written by tests/runtime/util.h,
// malformed configs).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/status.h"
#include "runtime/backend.h"

namespace shrink::runtime {

enum class WeightStrategy { kTensor, kChannel, kGroup };

struct QuantScheme {
  bool quantized = false;  // false: a float model
  WeightStrategy strategy = WeightStrategy::kChannel;
  int64_t group_size = 0;  // kGroup only
  ActQuant act = ActQuant::kNone;   // kNone = W8A16 (or W4A16)
  int bits = 8;                     // weights: 8, or 4 (format pack-quantized, W4A16 only)
  bool symmetric = true;            // false: 4-bit weights with zero points (W4A16 asym)
  std::vector<std::string> ignore;  // module names or "re:<regex>"
};

/// Parse and validate cfg.raw["quantization_config"] (absent: a float scheme). `origin` (the
/// config path) prefixes errors, which name the field, the value and what is supported.
Result<QuantScheme> quant_scheme_parse(const core::ModelConfig& cfg, const std::string& origin);

/// "f32", "w8a16", "w4a16", "w4a16-asym", "w8a8-static", "w8a8-dynamic", with "/g128" for
/// group-wise weights.
std::string quant_scheme_name(const QuantScheme& s);

/// The quantization_config JSON for a scheme (what a quantizer writes into config.json).
nlohmann::json quant_scheme_to_json(const QuantScheme& s);

/// Symmetric int8 weight quantization of w [out, in] with `group` inputs per scale (group ==
/// in: per channel): scale = max|w| / 127 over the group (1 for an all-zero group),
/// q = clamp(round_half_even(w / scale), -127, 127). scale is [out, ceil(in / group)].
void quant_weight_s8(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale);
/// The same with 4 bits (core/quant.h): scale = max|w| / 7, q clamped to [-8, 7].
void quant_weight_s4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale);
/// Asymmetric 4 bits (core/quant.h): per group lo = min(w, 0), hi = max(w, 0),
/// scale = (hi - lo) / 15, zp = clamp(round(-8 - lo / scale), -8, 7),
/// q = clamp(round(w / scale + zp), -8, 7); zp is [out, ceil(in / group)].
void quant_weight_u4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale, int8_t* zp);

}  // namespace shrink::runtime
