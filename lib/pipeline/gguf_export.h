// GGUF (v3) export of a Llama-family model directory for llama.cpp (and Ollama, LM Studio on top
// of it): `shrink export MODEL --format gguf --out FILE.gguf --type auto|f32|f16|bf16|q8_0|q4_0|q4_1`.
//
// What the file holds:
//  - the architecture's metadata under llama.cpp's keys: "llama" for Llama and Mistral (Mistral's
//    sliding window is not a llama.cpp hyperparameter: it attends to the whole context), "qwen2"
//    for Qwen2; RoPE base, rms epsilon, head counts, head and context lengths; Llama 3 RoPE
//    scaling as llama.cpp reads it (a `rope_freqs.weight` tensor of per-frequency divisors, the
//    ratio of the unscaled to the scaled inverse frequencies), linear scaling as its two keys;
//  - the tokenizer of tokenizer.json: byte-level BPE as "gpt2" (tokens, token types, merges, and
//    the pre-tokenizer llama.cpp must use: "llama-bpe", "qwen2" or "gpt-2" from the split regex),
//    SentencePiece-style BPE (Metaspace, byte fallback) as "llama" (tokens, scores, types); the
//    special tokens (BOS, EOS, whether BOS is added) and tokenizer_config.json's chat_template.
//    A model without tokenizer.json gets a placeholder vocabulary of its vocab_size ("<tok_N>"),
//    so that llama.cpp loads it and runs token ids;
//  - the tensors under llama.cpp's names (token_embd, blk.N.attn_q, ..., output_norm, output,
//    omitted when tied), in its [in, out] dimension order; for the "llama" architecture, whose
//    RoPE rotates adjacent pairs where Hugging Face rotates halves, the rows of q and k (and their
//    scales, zero points and biases) permuted as llama.cpp's converter permutes them.
//
// Types (ggml's block formats, 32 weights to a block: Q8_0 = f16 d + 32 int8, x = q d; Q4_0 =
// f16 d + 16 bytes of nibbles (weights j and j + 16 of a block share byte j), x = (u - 8) d;
// Q4_1 = f16 d, f16 m + nibbles, x = u d + m):
//  - auto: a float checkpoint keeps its stored float type (bf16, f16 or f32); a quantized one maps
//    shrink's own integer weights exactly: symmetric 4-bit -> Q4_0 (u = q + 8, d = the group's
//    scale), asymmetric 4-bit -> Q4_1 (d = scale, m = -(8 + zero point) scale), 8-bit -> Q8_0
//    (d = scale), whenever each 32-weight block lies inside one scale group (groups of a multiple
//    of 32, per channel or per tensor with rows of a multiple of 32, and no act-order
//    permutation). The only change is the rounding of d and m to f16, measured and reported
//    (max_scale_rel_change). Other layouts (act-order groups, groups of 16) are dequantized and
//    requantized to the same type, and the result says so (requantized, notes). W8A8's input
//    scales are dropped: llama.cpp quantizes activations its own way.
//  - f32/f16/bf16: every weight matrix in that type (integer weights dequantized);
//  - q8_0/q4_0/q4_1: the block linears, the embedding and the head in that type, from floats by
//    llama.cpp's own round-to-nearest rules (quantize_row_q8_0/q4_0/q4_1_ref), from shrink's
//    integer weights exactly where they map (as in auto), else requantized.
//  Norms, biases and rope_freqs stay f32, as llama.cpp's converter keeps 1-D tensors.
// Quantized types need rows of a multiple of 32 weights; another width is refused (kInvalidInput,
// naming the tensor).
//
// The file is written tensor by tensor, through a bounded buffer, to "<out>.tmp-<pid>" and renamed
// when complete; the input's pages are released as read, so memory stays about one tensor's
// conversion buffer whatever the model's size.
// Tested in tests/pipeline/test_gguf.cpp (a reader of the written file: header, metadata, tensor
// table, block bytes against hand-derived values, exact mapping, q/k permutation) and against
// llama.cpp itself by scripts/llamacpp_check.mjs (ctest llamacpp_check).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace shrink::pipeline {

// ggml's type ids (ggml.h), for the types this writer emits.
enum class GgmlType : uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8, kBF16 = 30 };
const char* ggml_type_name(GgmlType t);  // "f32", "q4_0", ...

struct GgufExportOptions {
  std::string type = "auto";  // auto | f32 | f16 | bf16 | q8_0 | q4_0 | q4_1
  std::function<void(int64_t done, int64_t total)> progress;  // tensors written
};

struct GgufExportResult {
  std::string arch;                            // "llama" or "qwen2"
  std::string file_type;                       // the file's general.file_type, by name
  uint64_t bytes = 0;                          // the file's size
  int64_t tensors = 0;
  std::map<std::string, int64_t> type_counts;  // ggml type name -> tensors
  int64_t exact = 0;        // integer weights mapped to blocks with their own values
  int64_t requantized = 0;  // weights quantized here (from float, or from another layout)
  double max_scale_rel_change = 0;  // largest |f16(v) - v| / |v| over the mapped scales/offsets
  std::vector<std::string> notes;   // what was requantized or dropped, and why
  std::string tokenizer;            // "gpt2", "llama" or "placeholder"
};

Result<GgufExportResult> gguf_export(const std::string& model_dir, const std::string& out_path,
                                     const GgufExportOptions& o);
/// kInvalidInput unless `type` is one of GgufExportOptions::type's values (the CLI checks its
/// option with it before any work).
Status gguf_type_check(const std::string& type);

// The block codecs, llama.cpp's reference rules; exposed for tests. `x` and `q` hold n weights,
// n a multiple of 32; `out` receives n / 32 blocks.
void gguf_quantize_q8_0(const float* x, int64_t n, uint8_t* out);
void gguf_quantize_q4_0(const float* x, int64_t n, uint8_t* out);
void gguf_quantize_q4_1(const float* x, int64_t n, uint8_t* out);
/// The bytes per 32-weight block of a quantized type (34, 18, 20), or the element size.
uint64_t ggml_row_bytes(GgmlType t, int64_t n);

}  // namespace shrink::pipeline
