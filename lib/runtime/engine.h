// The inference engine: a Llama-family model (Llama, Mistral, Qwen2) loaded from a model
// directory, memory-mapped, converted once into the backend's layout, with a preallocated KV
// cache of `max_batch` slots of `max_seq_len` positions.
//
// forward() takes a batch of chunks, each (slot, tokens): a chunk of a whole prompt is a prefill,
// a chunk of one token a decode step, and chunks of different lengths for different slots run
// together in one pass (their rows are stacked for every GEMM; attention keeps each row to its
// own slot). The math is that of lib/train/model.cpp (and HF transformers): RMSNorm in float32,
// rotate-half RoPE with float32 angles, GQA/MQA, q/k/v bias, Mistral sliding window, tied
// lm_head. Everything runs in float32 except int8 linears (W8A16, W8A8 static/dynamic).
//
// Why a slot-based cache: sequences of a batch grow independently (different prompt lengths,
// early stops), and eval/bench reuse slots without reallocating.
// The backend is chosen by EngineOptions::device: "cpu" (kernels/cpu) or "cuda" (kernels/cuda,
// with float weights stored as f16/bf16/f32). Decode steps (every chunk one token) are offered
// to the backend as a graph keyed by (rows, greedy), which the CUDA backend records once and
// replays.
// Tested in tests/runtime/test_engine.cpp: HF fixtures' reference logits, decode == full
// forward, mixed batch == separate runs, int8 models against a float reference, bad models;
// tests/cuda/test_backend.cpp: the CUDA backend against the CPU one.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/model_config.h"
#include "core/sample_select.h"
#include "core/status.h"
#include "runtime/backend.h"
#include "runtime/quant.h"
#include "runtime/tp_comm.h"

namespace shrink::runtime {

struct EngineOptions {
  int threads = 1;
  std::string isa;          // "" = best supported (see kernels/cpu/isa.h)
  int64_t max_seq_len = 0;  // 0 = min(max_position_embeddings, 4096)
  int max_batch = 1;        // KV-cache slots
  std::string device = "cpu";  // cpu | cuda
  /// cuda: f16 (default) | bf16 | f32. cpu: auto (default, also ""): as stored, so a bfloat16
  /// checkpoint keeps bf16 weights and embedding (half the memory of float32, no float32 copy)
  /// and rounds the activations of its linears to bf16, summing in fp32 (oneDNN's bf16 matmul
  /// for prefill where the CPU has AVX512_BF16), anything else f32 | exact: as stored, fp32
  /// activations (a bf16 model's logits equal the float32 engine's to float rounding) | f32 |
  /// bf16 (float weights rounded to bf16, activations as auto's).
  std::string float_weights;
  int gemv_max_rows = 0;       // cuda: see CudaBackendOptions
  bool graphs = true;          // cuda: record decode steps in CUDA graphs
  /// Storage of a float lm_head (tied or not): "f32" keeps it exact; "int8" quantizes it at
  /// load to per-channel int8 (W8A16, round half to even), as llama.cpp does for output.weight;
  /// "auto" (the default) is int8 for a quantized checkpoint (config.json has a
  /// quantization_config) and f32 for a float one.
  /// For small int8 models the float head is the largest single read of a decode step (the
  /// smollm-135m shape: 113 MB of f32 head against 106 MB of int8 blocks), so it caps the
  /// int8 speed-up. An lm_head that is already int8 in the checkpoint stays as it is.
  std::string lm_head = "auto";
  /// Int8 activations for weight-only checkpoints (W4A16, W8A16) on the cpu device: "none"
  /// keeps them float; "int8-row" quantizes each token's inputs to a linear with one scale;
  /// "int8-block" with one scale per 32 inputs for 4-bit weights (llama.cpp's Q8_0 activations;
  /// 8-bit weights take int8-row, their kernels scale per row); "auto" (the default) is
  /// kActAuto4 / kActAuto8 (engine.cpp), the measured fast choice, whose accuracy cost the README
  /// states. Symmetric, round half to even; int8 x 4-bit (8-bit) products in exact int32.
  std::string act_quant = "auto";
  /// Storage of the KV cache: "f32", or (cpu) "f16" for half the bytes or "int8" for a quarter:
  /// at long context the cache, not the weights, is most of what a decode step reads (the
  /// smollm-135m shape at 2048 tokens: 94 MB of f32 cache against 129 MB of int8 weights).
  /// f16 rounds keys and values to nearest even (llama.cpp's default cache); int8 quantizes each
  /// token's keys (values) per KV head, symmetric, with a float scale (as llama.cpp's q8_0 cache
  /// per 32 values). Attention computes in float32 either way.
  std::string kv_cache = "f32";
  /// Tensor parallelism: this process's rank of a group joined on the host
  /// (runtime/tp/gloo_comm.h), or null. On cuda the engine runs the forward's collectives on
  /// the backend's NCCL group made from it (Backend::tp_group). A group of one rank runs the
  /// same code with collectives over one rank. Each rank holds whole attention heads (KV heads with their query
  /// groups) and a slice of the MLP channels and of the vocabulary (lm_head); o_proj and
  /// down_proj sum their partial outputs over the ranks, the lm_head's slices are gathered, so
  /// every rank returns the whole model's logits and tokens. Load refuses (kInvalidInput) a
  /// model whose KV heads, MLP channels or quantization groups do not split evenly.
  std::shared_ptr<TpComm> tp;
  /// cuda: the device this process uses (the CLI: LOCAL_RANK under --tp, as PyTorch's ranks
  /// pick theirs), modulo the devices present.
  int cuda_device = 0;
  /// Tests: wraps the backend once it is made (fault injection: a backend whose allocations
  /// fail, as a device's do when its memory is full). Null: the backend as made.
  std::function<std::unique_ptr<Backend>(std::unique_ptr<Backend>)> wrap_backend;
};

/// One sequence's tokens for a forward pass: appended to `slot` at its current length.
struct SeqChunk {
  int slot = 0;
  const int32_t* tokens = nullptr;
  int64_t n = 0;
};

class Engine {
 public:
  /// Load MODEL_DIR (config.json + safetensors, float or compressed-tensors int8). Errors:
  /// kInvalidInput / kNotFound naming the file, tensor or field (exit code 2).
  static Result<std::unique_ptr<Engine>> load(const std::string& model_dir,
                                              const EngineOptions& opts);
  /// A model of the given config with seeded random weights (uniform, std 0.02; norms 1),
  /// stored as `dtype` = f32 | w8a16 | w8a8 (per-channel int8 weights; w8a8 = dynamic
  /// per-token activations). For speed work without files.
  static Result<std::unique_ptr<Engine>> create_random(const core::ModelConfig& cfg,
                                                       const std::string& dtype, uint64_t seed,
                                                       const EngineOptions& opts);
  ~Engine();

  const core::ModelConfig& config() const;
  /// The quantization scheme of config.json; nullopt for a float model.
  const std::optional<core::QuantScheme>& scheme() const;
  int64_t max_seq_len() const;
  int max_batch() const;
  /// "LlamaForCausalLM, w8a8-dynamic, cpu avx512vnni, gemm onednn 2.6.3, 1 thread".
  std::string describe() const;
  /// The backend's event counts (Backend::counters: on CUDA, cuBLASLt calls and fallbacks).
  std::vector<std::pair<std::string, uint64_t>> backend_counters() const;
  /// Bytes of weights read by one decode step (all linears + the rows of the embedding); with
  /// tensor parallelism, this rank's.
  uint64_t weight_bytes() const;
  /// The tensor-parallel group the forward uses (EngineOptions::tp's, or on cuda its NCCL
  /// group, whose host_group() is EngineOptions::tp), or null.
  TpComm* tp() const;
  /// Tensor parallelism: the all-reduce of one token's hidden state alone, `reps` times back to
  /// back on the backend's memory, each waited for: the microseconds of each.
  Result<std::vector<double>> tp_allreduce_alone(int reps);

  /// Run the chunks (distinct slots, n >= 1 each, ids < vocab, length + n <= max_seq_len).
  /// logits receives float32 [rows, vocab]: every position of every chunk in order when
  /// all_logits, else the last position of each chunk.
  Status forward(const std::vector<SeqChunk>& chunks, bool all_logits, std::vector<float>& logits);
  /// As forward(), but returns only the greedy next token of each chunk (core::argmax of its
  /// last position's logits), computed on the backend: no logits cross to the host.
  Status forward_argmax(const std::vector<SeqChunk>& chunks, std::vector<int32_t>& next);
  /// As forward_argmax(), but samples each chunk's next token with rows[i] (one per chunk:
  /// temperature, top-k, top-p and the uniform draw u; core::Sampler::next_row makes them), on
  /// the backend: the CUDA backend samples on the device, the CPU backend runs
  /// core::sample_pick. Errors: kInvalidInput when rows and chunks differ in number.
  Status forward_sample(const std::vector<SeqChunk>& chunks,
                        const std::vector<core::SampleRow>& rows, std::vector<int32_t>& next);
  /// Empty one slot's cache (or all).
  void reset(int slot);
  void reset_all();
  /// Tokens cached in a slot.
  int64_t length(int slot) const;
  /// Keep only a slot's first `len` cached tokens (len <= length): speculative decoding drops
  /// the draft tokens the target rejected. Errors: kInvalidInput when len is out of range.
  Status truncate(int slot, int64_t len);

  /// The KV cache's bytes per cached token, over all layers: K and V rows in the cache's
  /// storage (f32, f16 or int8) and, for int8, their scales.
  uint64_t kv_bytes_per_token() const;
  /// Copy the cached K/V of a slot's positions [begin, begin + n) to `out`
  /// (n * kv_bytes_per_token() bytes), or append such bytes to a slot whose length is `begin`
  /// (its length becomes begin + n). The bytes are the cache's own representation, so rows
  /// imported into any slot give the same attention as the rows that were exported: the
  /// server's prefix cache. Errors: kInvalidInput for a slot or range outside the cache.
  Status kv_export(int slot, int64_t begin, int64_t n, uint8_t* out);
  Status kv_import(int slot, int64_t begin, int64_t n, const uint8_t* in);

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shrink::runtime
