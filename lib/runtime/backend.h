// The backend interface of the inference engine: where tensors live and how each op of the
// Llama-family forward runs. The engine (engine.cpp) is written once against this interface;
// the CPU backend (backend_cpu.cpp) and the CUDA backend (backend_cuda.cpp) implement it.
//
// Why this cut: the engine owns the model's structure (layers, KV-cache bookkeeping, which rows
// attend to what) and never touches numbers itself; a backend owns memory and arithmetic. Every
// pointer passed to an op points into memory the backend allocated (DeviceTensor) unless it is
// marked "host". Weights arrive as host-side LinearDesc / float vectors already converted to
// float32 or int8, and the backend repacks them once, at load, into its kernels' layout.
// A few ops exist only so that a backend can fuse them (rope_kv_write, add_rmsnorm) or keep work
// on the device (argmax_rows, step/graph hooks); their default implementations call the plain
// ops, so the CPU backend computes exactly what it computed before they existed.
// Tested through the engine (tests/runtime/test_engine.cpp, tests/cuda/test_backend.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/sampling.h"
#include "core/status.h"
#include "runtime/tp_comm.h"

namespace shrink::runtime {

/// A block of backend memory holding float32 values (weights, activations, the KV cache).
class DeviceTensor {
 public:
  virtual ~DeviceTensor() = default;
  virtual float* data() = 0;
  virtual int64_t numel() const = 0;
};

enum class LinearKind {
  kF32,    // float32 weights
  kW8A16,  // int8 weights, float activations: dequantised inside the GEMM/GEMV
  kW8A8,   // int8 weights and activations: int8 x int8 -> int32, float epilogue
};
const char* linear_kind_name(LinearKind k);

enum class ActQuant {
  kNone,     // W8A16 / float
  kStatic,   // one scale per tensor, from the checkpoint (input_scale)
  kDynamic,  // per token: max|x_t| / 127
};

/// Int8 activations chosen at run time for a weight-only linear (kW8A16; EngineOptions::
/// act_quant): kOff keeps float activations; kRow quantizes each row (token) with one scale,
/// kBlock32 each 32 inputs (llama.cpp's Q8_0 activations), both symmetric, round half to even.
/// 4-bit weights then run through gemm_w4a8 (either), 8-bit ones through the W8A8 kernels
/// (kRow only). A backend without the kernels keeps float activations.
enum class ActInt8 { kOff, kRow, kBlock32 };

/// One linear layer y = x W^T + b on the host, ready for the backend. Shapes as HF: [out, in].
struct LinearDesc {
  std::string name;  // for messages
  int64_t out = 0, in = 0;
  LinearKind kind = LinearKind::kF32;
  std::vector<float> w;            // kF32: [out, in] (unless w_borrowed, wb or wb_borrowed)
  const float* w_borrowed = nullptr;  // kF32: weights owned elsewhere (tied lm_head = embedding)
  /// kF32 stored as bfloat16 bit patterns [out, in], for a backend whose float_weights_bf16():
  /// a bf16 checkpoint's weights as they are (no float32 copy is made), or owned elsewhere
  /// (wb_borrowed: a tied lm_head reading the bf16 embedding).
  std::vector<uint16_t> wb;
  const uint16_t* wb_borrowed = nullptr;
  std::vector<int8_t> q;           // int8: [out, in]
  int bits = 8;                    // kW8A16: 4 when every q is in [-8, 7] (W4A16); a backend
                                   // may keep such weights at 4 bits or run them as int8
  std::vector<float> scale;        // int8: [out, groups], groups = ceil(in / group)
  std::vector<int8_t> zp;          // 4-bit asymmetric: [out, groups] in [-8, 7], so that
                                   // w = (q - zp) * scale; empty when symmetric
  std::vector<int32_t> perm;       // int8 with g_idx (GPTQ act-order groups): q's column j is
                                   // input column perm[j], so that groups are contiguous in q;
                                   // y = q x[perm]. Empty: the identity
  int64_t group = 0;               // int8: inputs per scale (== in for per-channel)
  ActQuant act = ActQuant::kNone;  // kW8A8 only
  ActInt8 act_int8 = ActInt8::kOff;  // kW8A16 only
  float input_scale = 0;           // kW8A8 + kStatic
  std::vector<float> bias;         // [out] or empty
  /// Tensor parallelism: the layer's inputs are a slice of each row (a row-parallel layer), so
  /// per-token int8 activations take their scale from the whole row's maximum, reduced over the
  /// ranks by the backend's row_absmax_reduce hook.
  bool act_rows_split = false;
  /// Tensor parallelism: the loader read only this rank's region of the stored tensors
  /// (TpRegion: w, wb, q, scale, zp and bias hold it), while out and in are still the whole
  /// layer's; desc_rows / desc_cols then check the split and set the shapes, copying nothing.
  bool sliced = false;
};

/// Fold 4-bit zero points into the values, q - zp (in [-15, 15]), which then run as int8 with the
/// same scales (bits 8, zp empty): for backends without zero-point kernels. Exact.
inline void linear_desc_fold_zero_points(LinearDesc& d) {
  if (d.zp.empty()) return;
  const int64_t G = (d.in + d.group - 1) / d.group;
  for (int64_t n = 0; n < d.out; ++n) {
    for (int64_t k = 0; k < d.in; ++k) {
      int8_t& q = d.q[size_t(n * d.in + k)];
      q = int8_t(q - d.zp[size_t(n * G + k / d.group)]);
    }
  }
  d.zp = {};
  d.bits = 8;
}

/// A prepared linear layer (backend-specific layout).
class Linear {
 public:
  virtual ~Linear() = default;
  int64_t out = 0, in = 0;
  LinearKind kind = LinearKind::kF32;
  /// The int8 activations this layer runs with (kOff: float, or a kW8A8 scheme's own).
  ActInt8 act_int8 = ActInt8::kOff;
  /// Bytes of weights streamed per use (what decode reads per token).
  uint64_t weight_bytes = 0;
};

/// Which of a forward's step arrays (Backend::StepRows, given to step_begin) an op's host ints
/// are, so that a device backend reads the copy it uploaded there, by name and not by comparing
/// addresses. kNone: a direct call (tests): the backend uploads them itself and leaves the
/// step's state alone.
enum class StepArray : uint8_t { kNone, kIds, kPos, kPick };

/// Token ids or row indices an op receives, on the host, and which step array they are.
struct HostInts {
  const int32_t* p = nullptr;
  StepArray step = StepArray::kNone;
  HostInts(const int32_t* p_, StepArray s = StepArray::kNone) : p(p_), step(s) {}  // NOLINT
};

/// Where each row of a batch belongs: its KV-cache slot and its position in that sequence.
struct RowPlacement {
  const int32_t* slot = nullptr;  // host, [rows]
  const int32_t* pos = nullptr;   // host, [rows]
  /// Whether slot and pos are this forward's step arrays (StepRows::slot, pos).
  bool step = false;
};

/// The KV cache of one layer: K and V as [slots, max_seq, kv_heads * head_dim] float32.
enum class KvStorage { kF32, kF16, kInt8 };

struct KvLayer {
  float* k = nullptr;
  float* v = nullptr;
  int64_t slot_stride = 0;  // max_seq * kv_dim (elements)
  int64_t kv_dim = 0;
  /// What k and v hold (EngineOptions::kv_cache; CPU backend only beyond kF32): floats, f16 bit
  /// patterns (uint16_t elements), or int8 values with one float scale per (token, KV head) in
  /// k_scale / v_scale, laid out [slot][pos][n_kv_heads] (head_dim values per scale).
  KvStorage storage = KvStorage::kF32;
  float* k_scale = nullptr;
  float* v_scale = nullptr;
  int64_t head_dim = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  /// "cpu avx512vnni, gemm onednn 2.6.3, 2 threads".
  virtual std::string describe() const = 0;

  // ---- memory ----
  virtual std::unique_ptr<DeviceTensor> tensor_zeros(int64_t n) = 0;
  virtual std::unique_ptr<DeviceTensor> tensor_from_host(std::vector<float>&& host) = 0;
  /// Copy n floats from backend memory to the host.
  virtual void to_host(const float* src, int64_t n, float* dst) = 0;
  /// Copy bytes between backend memory and the host (the KV rows of the server's prefix
  /// cache, Engine::kv_export / kv_import). The CPU backend's memory is the host's: memcpy.
  virtual void bytes_to_host(const void* src, size_t n, void* dst);
  virtual void bytes_from_host(const void* src, size_t n, void* dst);
  /// Whether backend memory is the host's, so that ops may write straight into host buffers
  /// (the engine's logits then go to the caller's vector without a second [rows, vocab] copy).
  virtual bool host_memory() const { return false; }
  /// Repack a linear layer (takes the host buffers).
  virtual Result<std::unique_ptr<Linear>> linear_create(LinearDesc&& d) = 0;

  /// Tensor parallelism: reduces per-row absolute maxima over the ranks (LinearDesc::
  /// act_rows_split), on backend memory. Backends without per-token int8 activations ignore it.
  virtual void set_row_absmax_reduce(std::function<void(float* amax, int64_t rows)> fn) {}
  /// Tensor parallelism: the collectives of the group `host` (joined on the host: Gloo or shared
  /// memory) on this backend's memory. The default, for backends whose memory is the host's, is
  /// `host` itself; the CUDA backend makes an NCCL group on its stream, with `host` carrying the
  /// handshake, and a collective that waits past host->timeout_s fails (the group is aborted).
  virtual Result<std::shared_ptr<TpComm>> tp_group(std::shared_ptr<TpComm> host) {
    return host;
  }
  /// Whether float weights are kept as bfloat16 (LinearDesc::wb, embed_bf16): the engine then
  /// hands a bf16 checkpoint's weights over as they are stored.
  virtual bool float_weights_bf16() const { return false; }

  // ---- ops (rows are tokens; ld* are row strides in floats) ----
  /// out[r, :] = table[ids[r], :]; ids on the host.
  virtual void embed(const float* table, int64_t dim, HostInts ids, int64_t rows,
                     float* out) = 0;
  /// The same from a table of bfloat16 bit patterns, widened to float32 (exact). Only called
  /// where float_weights_bf16(); the default runs on the host (the CPU backend's memory).
  virtual void embed_bf16(const uint16_t* table, int64_t dim, HostInts ids, int64_t rows,
                          float* out);
  /// Copy rows src[idx[r]] -> dst[r] (idx on the host), dim floats each.
  virtual void gather_rows(const float* src, int64_t dim, HostInts idx, int64_t rows,
                           float* dst) = 0;
  virtual void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                       float eps) = 0;
  /// y[r, 0:out] = x[r, 0:in] W^T + b, x contiguous [rows, in], y rows at stride ldy.
  virtual void linear(const Linear& l, const float* x, int64_t rows, float* y, int64_t ldy) = 0;
  /// dst[r, 0:cols] = src[r, 0:cols] for `rows` rows at row strides ldd and lds (floats): the
  /// re-layout of gathered tensor-parallel slices. The default copies on the host.
  virtual void copy_rows(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows,
                         int64_t cols);
  /// x[r] += y[r] elementwise over rows*n floats (both contiguous).
  virtual void add(float* x, const float* y, int64_t n) = 0;
  /// Rotate `heads` heads of head_dim floats starting at x + r*ldx by the row's position, with
  /// tables cos/sin of [max_seq, head_dim/2].
  virtual void rope(float* x, int64_t rows, int64_t ldx, int64_t heads, int64_t head_dim,
                    const RowPlacement& at, const float* cos, const float* sin) = 0;
  /// Store rows of k and v (kv_dim floats each at stride ld) into the cache at their placement.
  virtual void kv_write(const float* k, const float* v, int64_t ld, int64_t rows,
                        const RowPlacement& at, const KvLayer& cache) = 0;
  /// Causal attention of every row over its slot's cached positions [lo, pos], with
  /// lo = pos - window + 1 for a sliding window (else 0). q rows at stride ldq hold n_heads
  /// heads; GQA: head h reads kv head h / (n_heads / n_kv_heads). out [rows, n_heads*head_dim].
  virtual void attention(const float* q, int64_t ldq, int64_t rows, const RowPlacement& at,
                         const KvLayer& cache, int64_t n_heads, int64_t n_kv_heads,
                         int64_t head_dim, int64_t window, float* out) = 0;
  /// y[r, i] = silu(g[r, i]) * g[r, n + i] for i < n, where g rows are [gate | up] of 2n floats.
  virtual void silu_mul(const float* g, int64_t rows, int64_t n, float* y) = 0;

  // ---- fusable sequences (defaults: the plain ops above, in this order) ----
  /// rope(qkv, n_heads), rope(qkv + q_dim, n_kv_heads), kv_write(k = qkv + q_dim,
  /// v = k + kv_dim): RoPE of q and k rows of a fused qkv buffer (row stride ld), then the
  /// rotated k and v into the cache.
  virtual void rope_kv_write(float* qkv, int64_t rows, int64_t ld, int64_t n_heads,
                             int64_t n_kv_heads, int64_t head_dim, const RowPlacement& at,
                             const float* cos, const float* sin, const KvLayer& cache) {
    const int64_t qd = n_heads * head_dim, kvd = n_kv_heads * head_dim;
    rope(qkv, rows, ld, n_heads, head_dim, at, cos, sin);
    rope(qkv + qd, rows, ld, n_kv_heads, head_dim, at, cos, sin);
    kv_write(qkv + qd, qkv + qd + kvd, ld, rows, at, cache);
  }
  /// add(x, d, rows * n), then rmsnorm(x, w, y): the residual add and the next norm.
  virtual void add_rmsnorm(float* x, const float* d, const float* w, float* y, int64_t rows,
                           int64_t n, float eps) {
    add(x, d, rows * n);
    rmsnorm(x, w, y, rows, n, eps);
  }
  /// Greedy tokens: argmax (lowest index on ties, core::argmax) of each of `rows` rows of n
  /// floats, kept by the backend until token_ids_fetch copies them to the host.
  virtual void argmax_rows(const float* x, int64_t rows, int64_t n);
  /// Sampled tokens: row r of the `rows` rows of n floats with parameters and draw p[r]
  /// (host; greedy rows take the argmax), kept like argmax_rows' until token_ids_fetch. The
  /// default copies each row to the host and runs core::sample_pick, the pick that
  /// core::Sampler (and so `shrink generate`) makes; a device backend samples in place, with
  /// the same cuts over the same fixed-point masses (core::sample_select).
  virtual void sample_rows(const float* x, int64_t rows, int64_t n, const core::SampleRow* p);
  /// Copy the first `rows` token ids of the last argmax_rows or sample_rows to the host.
  virtual void token_ids_fetch(int32_t* host, int64_t rows);

  // ---- per-forward hooks (defaults: nothing) ----
  /// The host-side row data of one forward, given before its first op; the arrays stay valid
  /// until the forward returns. A device backend uploads them once here and recognises these
  /// pointers when ops receive them.
  struct StepRows {
    const int32_t* ids = nullptr;   // [rows] token ids
    const int32_t* slot = nullptr;  // [rows]
    const int32_t* pos = nullptr;   // [rows]
    int64_t rows = 0;
    const int32_t* pick = nullptr;  // [picks] rows that get logits
    int64_t picks = 0;
    const core::SampleRow* sample = nullptr;  // [picks] when the forward samples, else null
  };
  virtual void step_begin(const StepRows& /*rows*/) {}
  /// Replay the graph recorded under `key` (every op of one forward); false if there is none.
  virtual bool graph_replay(uint64_t /*key*/) { return false; }
  /// Start recording the following ops under `key` instead of running them; false when the
  /// backend does not record this time (then the ops run as usual).
  virtual bool graph_capture_begin(uint64_t /*key*/) { return false; }
  /// Stop recording and run the recorded graph once. False when recording failed; the ops did
  /// not run then, and the caller runs them again without recording.
  virtual bool graph_capture_end(uint64_t /*key*/) { return false; }
  /// Drop recorded graphs (buffers they refer to are about to be reallocated).
  virtual void graph_reset() {}
  /// The forward that step_begin opened is over: its arrays are no longer valid.
  virtual void step_end() {}
  /// The first error an op hit since the last call (ops return nothing; a device backend
  /// records launch and library failures here, and failed allocations: a null DeviceTensor),
  /// then cleared. The engine checks it after building and per forward.
  virtual Status take_error() { return Status::ok(); }
  /// Named event counts of this backend since it was made (the CUDA backend: cuBLASLt calls,
  /// fallbacks to the GEMV, plans, graph recordings), reported by `bench --format json` as
  /// backend_counters. Empty where a backend counts nothing.
  virtual std::vector<std::pair<std::string, uint64_t>> counters() const { return {}; }

 private:
  std::vector<int32_t> token_ids_;      // the default argmax_rows/sample_rows' picks
  std::vector<float> host_row_;         // the default argmax_rows/sample_rows: one row on the host
  core::SampleScratch sample_scratch_;  // ... and sample_pick's buffers, kept between steps
};

struct CpuBackendOptions {
  int threads = 1;
  std::string isa;  // "" = best supported; else ref|avx2|avx512|avx512vnni (at most the best)
  /// Storage of float linear weights and the embedding: "f32" (exact) or "bf16" (round to
  /// nearest even; half the bytes per decode step, and a bf16 checkpoint's weights exactly as
  /// stored). bf16 decode GEMVs widen the weights in registers and compute in fp32.
  std::string float_weights = "f32";
  /// bf16 weights: activations rounded to bf16 (round to nearest even) on every path, products
  /// summed in fp32, as llama.cpp's and PyTorch's bf16 models compute; prefill then runs
  /// oneDNN's bf16 matmul where the CPU has AVX512_BF16. false: fp32 activations, the weights
  /// widened into fp32 arithmetic (exact to the stored weights).
  bool bf16_gemm = true;
};
/// The CPU backend (kernels/cpu). Errors: kInvalidInput for an unknown or unsupported ISA.
Result<std::unique_ptr<Backend>> backend_cpu_create(const CpuBackendOptions& opts);

struct CudaBackendOptions {
  int device = 0;
  /// Storage of float linear weights: "f16" (default), "bf16" or "f32" (exact fp32 GEMMs, no
  /// TF32: the numerics of the CPU backend, for tests).
  std::string float_weights = "f16";
  /// Decode batches with at most this many rows use the hand-written GEMV (0: the built-in
  /// defaults, 4 for float weights and 16 for int8); larger ones use cuBLASLt.
  int gemv_max_rows = 0;
  bool graphs = true;  // capture the decode step in CUDA graphs
};
/// The CUDA backend (kernels/cuda + cuBLASLt). It lives in a plugin, libshrink_backend_cuda.so,
/// loaded on the first call (backend_cuda_loader.cpp), so that a process on the CPU neither
/// needs the CUDA libraries nor pays for them (linking cuBLASLt alone kept about 146 MiB
/// resident from start-up). Looked up at $SHRINK_CUDA_BACKEND, else beside the executable,
/// else in ../lib from it. Errors: kInvalidInput when the build has no CUDA, the plugin or the
/// CUDA libraries cannot be loaded, no device is present, or for an unknown float_weights.
Result<std::unique_ptr<Backend>> backend_cuda_create(const CudaBackendOptions& opts);

/// The plugin's entry point (extern "C", versioned): a new backend, or null with `*error` set.
/// The caller owns the result.
using BackendCudaCreateFn = Backend* (*)(const CudaBackendOptions* opts, std::string* error);
inline constexpr const char* kBackendCudaSymbol = "shrink_backend_cuda_create_v1";
inline constexpr const char* kBackendCudaLibrary = "libshrink_backend_cuda.so";

}  // namespace shrink::runtime
