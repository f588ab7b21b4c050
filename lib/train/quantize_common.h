// What the two paths of `shrink quantize` share: the LibTorch path (quantize.cpp: calibration,
// GPTQ, SmoothQuant, AWQ, static activations, sensitivity) and the model-free path
// (quantize_model_free.cpp: round to nearest, tensor by tensor from the memory-mapped input).
// The format they write (scheme, module selection, config.json, provenance, quantize.json's
// header) is defined once here, so their outputs are the same bytes (tested in
// tests/train/test_quantize.cpp). No LibTorch in this header.
#pragma once

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "train/quantize.h"

namespace shrink::train {

/// Each input group of a decoder layer by its first module.
constexpr const char* kGroupHeads[] = {"self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj",
                                       "mlp.down_proj"};

/// The scheme config.json records for these options on this model (4-bit groups default to the
/// largest of 128, 64, 32 dividing every input width); validated against the model's widths.
core::QuantScheme quant_scheme_for(const QuantizeOptions& o, const core::ModelConfig& cfg);

/// Whether --targets (minus --ignore) selects `lm_head`, as llm-compressor's targets may: the
/// head is then written quantized in the scheme's weight format, rounded to nearest whatever
/// --method is (it has no following layer to carry a GPTQ update). Weight-only schemes only.
bool head_targeted(const QuantizeOptions& o);
/// The output's config: the input's, but untied when the head is quantized, so that the
/// embedding stays float and lm_head is stored quantized beside it (made from the embedding).
core::ModelConfig output_config(const core::ModelConfig& in, bool head);
/// The input tensor that output tensor `name` is made from: the embedding for the lm_head of a
/// tied input, else the same name.
std::string source_name(const core::ModelConfig& in, const std::string& name);

/// The quantized input groups (--targets minus --ignore) by their heads, in layer order.
std::vector<std::string> quant_heads(const QuantizeOptions& o, int64_t num_layers);
/// "qkv", "o", "gate_up" or "down" for a group head.
std::string short_group(const std::string& head);
/// The modules of the input group headed by `head` (q/k/v, gate/up, or the head alone).
std::vector<std::string> group_modules(const std::string& head);

/// The modules written quantized: the quantized groups' but for those kept float, which the
/// scheme names as ignored (with lm_head, never quantized).
struct ModuleSplit {
  std::set<std::string> quantized;
  std::vector<std::string> ignore = {"lm_head"};
};
ModuleSplit modules_split(const std::vector<std::string>& heads,
                          const std::set<std::string>& kept_float, bool head = false);

/// The tensors outside the decoder layers (embedding, final norm, lm_head) of output config
/// `out`, made from the checkpoint `ck` of input config `in`: float ones as stored, in the
/// model's float dtype, and a quantized lm_head rounded to nearest in scheme `s`, a block of rows
/// at a time on `threads` workers (the model-free path's jobs).
void outer_tensors_write(const core::Checkpoint& ck, const core::ModelConfig& in,
                         const core::ModelConfig& out, const core::QuantScheme& s,
                         const std::set<std::string>& quantized, core::CheckpointWriter& w,
                         int threads);

/// The dtype the model's float tensors are written in (config.json's).
core::DType float_dtype(const core::ModelConfig& cfg);

/// The tensors of the quantized checkpoint in the order the LibTorch path writes them (data left
/// null), for writers that fix the layout up front: per quantized module its int8 weight, or the
/// 4-bit packed weight, shape record and (asymmetric) packed zero points; then its scales, its
/// g_idx (act-order groups) and its static input scale; every other tensor in config.json's
/// float dtype.
std::vector<core::TensorView> quantized_plan(const core::ModelConfig& cfg,
                                             const core::QuantScheme& s,
                                             const std::set<std::string>& quantized);
/// What a plan's weights take: every tensor but the 4-bit shape records.
uint64_t quantized_plan_bytes(const std::vector<core::TensorView>& plan);

/// quantize.json's account of the format: scheme, activations, weights, group size, bits,
/// symmetry, observer, SmoothQuant and rounding, and the method.
nlohmann::json quant_format_report(const QuantizeOptions& o, const core::QuantScheme& s);

/// Everything of the quantized directory `dir` but its weights and quantize.json: config.json
/// with its quantization_config (the scheme with `ignore`), the tokenizer, the model's other
/// sidecars, and the provenance in shrink.json.
void quantized_sidecars_write(const QuantizeOptions& o, core::QuantScheme scheme,
                              const std::vector<std::string>& ignore, core::ModelConfig cfg,
                              const std::string& dir);

/// The buffer of a layer-by-layer path's calibration states (`bytes`): in memory within
/// --max-memory, else an unlinked temporary file beside `out` (core::ScratchBuffer).
/// Calibration sequences per forward batch (quantize and prune, streamed or whole-model alike):
/// 8, or fewer so that a batch holds at most 4,096 tokens. The LibTorch attention holds a batch's
/// scores whole (batch x heads x len^2 floats: 8 sequences of 2,048 tokens with 32 heads would be
/// 4 GiB, and its softmax as much again); at 2,048 tokens a batch is 2 sequences.
inline int64_t calib_batch(int64_t seq_len) {
  return std::clamp<int64_t>(4096 / std::max<int64_t>(seq_len, 1), 1, 8);
}

core::ScratchBuffer calibration_states(const std::string& out, const std::string& max_memory,
                                       uint64_t bytes);


/// True when the options need no calibration and no model: round to nearest, no SmoothQuant or
/// AWQ, no static activation scales, no sensitivity analysis, and --load-model not given.
bool quantize_is_model_free(const QuantizeOptions& o);
/// The model-free path (quantize_model_free.cpp).
QuantizeResult quantize_model_free(const QuantizeOptions& o);

/// In quantize.cpp (LibTorch): perplexity, KL and top-1 agreement of the quantized model in
/// `quant_dir` against the float model o.model on o.eval_tokens validation tokens, into
/// `report`.
void accuracy_report_dirs(const QuantizeOptions& o, const std::string& quant_dir,
                          nlohmann::json& report);

}  // namespace shrink::train
