// int8 model directories in the compressed-tensors layout (as vLLM reads them) as the runtime
// runs them: a scheme's activation quantization, and the weight quantizers used by the int8
// lm_head (EngineOptions::lm_head) and by tests.
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
//
// The scheme itself (core::QuantScheme) and its one parser (core::quant_config_from_json) live
// in lib/core, shared with the LibTorch side; this file maps a scheme onto the backends' linear
// kinds and holds the reference weight quantizers.
// Tested in tests/runtime/test_engine.cpp (quantized dirs written by tests/runtime/util.h,
// malformed configs).
#pragma once

#include <cstdint>

#include "core/quant.h"
#include "runtime/backend.h"

namespace shrink::runtime {

/// The activation quantization of a scheme's int8 linears: kNone (W8A16, W4A16), kStatic (one
/// calibrated input_scale per linear) or kDynamic (per token).
ActQuant act_quant_of(const core::QuantScheme& s);

/// Symmetric int8 weight quantization of w [out, in] with `group` inputs per scale (group ==
/// in: per channel): scale = max|w| / 127 over the group (1 for an all-zero group),
/// q = clamp(round_half_even(w * (1 / scale)), -127, 127), the arithmetic of `shrink quantize`
/// (core/quant.h). scale is [out, ceil(in / group)].
void quant_weight_s8(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale);
/// The same with 4 bits (core/quant.h): scale = max|w| / 7, q clamped to [-8, 7].
void quant_weight_s4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale);
/// Asymmetric 4 bits (core/quant.h): per group lo = min(w, 0), hi = max(w, 0),
/// scale = (hi - lo) / 15, zp = clamp(round(-8 - lo / scale), -8, 7),
/// q = clamp(round(w * (1 / scale) + zp), -8, 7); zp is [out, ceil(in / group)].
void quant_weight_u4(const float* w, int64_t out, int64_t in, int64_t group, int8_t* q,
                     float* scale, int8_t* zp);

}  // namespace shrink::runtime
