// ONNX export of a Llama-family model directory (float or compressed-tensors int8) as one decoder
// graph with a KV cache, in the form ONNX Runtime, TensorRT and Optimum read.
//
// The graph (opset 17, ir_version 8; the Debian libonnx 1.12 knows opsets up to 17):
//   inputs   input_ids [batch, seq] int64, attention_mask [batch, past+seq] int64,
//            position_ids [batch, seq] int64,
//            past_key_values.N.key / .value [batch, kv_heads, past, head_dim] float32
//   outputs  logits [batch, seq, vocab] float32 (every position),
//            present.N.key / .value [batch, kv_heads, past+seq, head_dim] float32
// A first call passes past tensors with past = 0. Keys attend causally by cache index (key j is
// visible to query i when j <= past + i, and past + i - j < sliding_window for Mistral) and only
// where attention_mask is 1; RoPE uses position_ids through precomputed cos/sin tables of
// max_position_embeddings rows, built exactly as the runtime builds them (float32 angle, cos/sin
// in double), so positions past max_position_embeddings are out of range. The math is that of
// lib/train/model.cpp and lib/runtime/engine.cpp: RMSNorm in float32, rotate-half RoPE, GQA by
// grouping query heads per kv head (no K/V copies), q/k/v/o bias, tied lm_head (a Transpose of
// the embedding, so the file holds one copy).
//
// Linears are MatMul(x, W^T) with W^T stored [in, out] (the layout ORT's QDQ fusions expect):
//   float    W^T float32 ("<m>.weight_t")
//   int8     DequantizeLinear(W^T int8, weight_scale [out], axis=1) (per channel), or a scalar
//            scale (strategy tensor), or Cast * scale per group (opset 17 has no blocked
//            DequantizeLinear; TODO(#9) use block_size once libonnx knows opset 21)
//   static   activations: Clip(x, -127 s, 127 s) -> QuantizeLinear(s) -> DequantizeLinear(s).
//            ONNX saturates int8 to [-128, 127] while our scheme clamps to [-127, 127]: without
//            the Clip an input below -127.5 s (beyond the calibrated range, routine with the
//            percentile/mse/entropy observers) would become -128 here and -127 in shrink-rt.
//            With it, x / s >= -127 (to an ulp) and round-half-even never yields -128.
//            ORT keeps the Clip (its Clip->Q removal needs the clip range to cover [-128 s,
//            127 s]) and still fuses DQ -> MatMul into an int8 MatMul.
//   dynamic  per-token activations (what shrink-rt does; ONNX's DynamicQuantizeLinear is
//            per-tensor, asymmetric uint8, so it would not reproduce our numbers):
//            s_t = max|x_t| / 127 (1 when the row is zero), computed in the graph, then
//            QuantizeLinear / DequantizeLinear with the [tokens] scale on axis 0 of x viewed as
//            [tokens, in]. |x / s_t| <= 127 (to an ulp), so -128 never occurs.
// Static: each linear gets its own QuantizeLinear/DequantizeLinear pair after a shared Clip
// (the pair-per-consumer form ORT fuses into an int8 MatMulIntegerToFloat); dynamic: one scale
// computation and Q/DQ per distinct input (q/k/v share one).
//
// In ONNX Runtime 1.30 (scripts/ort_check.mjs) every scheme reproduces shrink-rt's logits to
// ~1e-6 with graph optimizations off. With them on, ORT rewrites int8 DequantizeLinear ->
// MatMul into MatMulNBits, whose default accuracy level 4 quantizes activations per block (a
// different model; the check sets session.qdq_matmulnbits_accuracy_level=1), and static Q/DQ
// pairs into MatMulIntegerToFloat (logits within ~2e-3 relative of shrink-rt on the 7M teacher).
//
// Weights over 2 GB (protobuf's message limit) go to external data: model.onnx.data next to
// model.onnx, each tensor 4096-byte aligned (so ORT can map it), written as the graph is built
// so the weights are never held in memory twice.
//
// Validation: ONNX shape inference in strict mode (errors throw; inferred value_info is kept in
// the file), then onnx::checker::check_model: on the model in memory for a single file (parsing
// the written file again would hold every weight twice), on the written file with external data
// (which also checks the data locations).
// Memory: a single file holds its initializers in the protobuf until written (at most
// external_threshold_bytes); with external data each weight is converted, appended and dropped,
// and the input's pages are released once read, so peak memory is about one weight matrix.
// Tested in tests/export/test_export.cpp (structure, node counts, checker, initializer round
// trip bit for bit, external data) and against ONNX Runtime by scripts/ort_check.mjs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace shrink::exporter {  // "export" is a C++ keyword, hence "exporter"

enum class ExternalData {
  kAuto,    // external when the weights exceed external_threshold_bytes
  kAlways,  // every initializer of at least 1 KiB external (tests use this on tiny models)
  kNever,   // one file; fails (kInvalidInput) when the model would exceed 2 GB
};

struct OnnxExportOptions {
  ExternalData external_data = ExternalData::kAuto;
  /// kAuto switches to external data above this many bytes of initializers: protobuf refuses
  /// messages of 2 GiB, and the graph itself needs some room.
  uint64_t external_threshold_bytes = uint64_t(1800) << 20;
  /// Run strict shape inference and the checker (always on in the CLI; off only for tests of
  /// the builder itself).
  bool validate = true;
};

struct OnnxExportResult {
  std::string scheme;  // f32, w8a16, w8a8-static, w8a8-dynamic (+ /g<N>, /tensor)
  int opset = 17;
  int64_t nodes = 0;
  int64_t initializers = 0;
  uint64_t initializer_bytes = 0;
  bool external = false;
  std::vector<std::string> files;         // written, relative to the output dir
  std::map<std::string, int64_t> op_counts;  // op_type -> nodes
};

/// Export MODEL_DIR (config.json + safetensors, float or compressed-tensors int8) to
/// OUT_DIR/model.onnx (+ model.onnx.data). OUT_DIR must exist; the caller makes it atomic.
/// Throws shrink::Error: kInvalidInput / kNotFound for a bad model (naming the file, tensor or
/// field), kInternal when the checker rejects the graph (a bug), kIoError on write failures.
OnnxExportResult onnx_export(const std::string& model_dir, const std::string& out_dir,
                             const OnnxExportOptions& opts = {});

/// What `shrink export --format onnx` writes: OUT_DIR, built in a temporary sibling and renamed
/// into place only when complete (core::AtomicDir), holding model.onnx (+ model.onnx.data) and
/// copies of config.json, tokenizer.json, tokenizer_config.json and generation_config.json
/// where the model has them. Errors as onnx_export(); a missing MODEL_DIR is kNotFound.
OnnxExportResult onnx_export_dir(const std::string& model_dir, const std::string& out_dir,
                                 const OnnxExportOptions& opts = {});

/// The name of the initializer holding a linear's transposed weight ("<module>.weight_t").
std::string onnx_weight_name(const std::string& module);

}  // namespace shrink::exporter
