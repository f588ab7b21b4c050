// The backend interface of the inference engine: where tensors live and how each op of the
// Llama-family forward runs. The engine (engine.cpp) is written once against this interface;
// the CPU backend (backend_cpu.cpp) implements it now, a CUDA backend will later (TODO(#7)).
//
// Why this cut: the engine owns the model's structure (layers, KV-cache bookkeeping, which rows
// attend to what) and never touches numbers itself; a backend owns memory and arithmetic. Every
// pointer passed to an op points into memory the backend allocated (DeviceTensor) unless it is
// marked "host". Weights arrive as host-side LinearDesc / float vectors already converted to
// float32 or int8, and the backend repacks them once, at load, into its kernels' layout.
// Tested through the engine (tests/runtime/test_engine.cpp).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

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

/// One linear layer y = x W^T + b on the host, ready for the backend. Shapes as HF: [out, in].
struct LinearDesc {
  std::string name;  // for messages
  int64_t out = 0, in = 0;
  LinearKind kind = LinearKind::kF32;
  std::vector<float> w;            // kF32: [out, in] (unless w_borrowed)
  const float* w_borrowed = nullptr;  // kF32: weights owned elsewhere (tied lm_head = embedding)
  std::vector<int8_t> q;           // int8: [out, in]
  std::vector<float> scale;        // int8: [out, groups], groups = ceil(in / group)
  int64_t group = 0;               // int8: inputs per scale (== in for per-channel)
  ActQuant act = ActQuant::kNone;  // kW8A8 only
  float input_scale = 0;           // kW8A8 + kStatic
  std::vector<float> bias;         // [out] or empty
};

/// A prepared linear layer (backend-specific layout).
class Linear {
 public:
  virtual ~Linear() = default;
  int64_t out = 0, in = 0;
  LinearKind kind = LinearKind::kF32;
  /// Bytes of weights streamed per use (what decode reads per token).
  uint64_t weight_bytes = 0;
};

/// Where each row of a batch belongs: its KV-cache slot and its position in that sequence.
struct RowPlacement {
  const int32_t* slot = nullptr;  // host, [rows]
  const int32_t* pos = nullptr;   // host, [rows]
};

/// The KV cache of one layer: K and V as [slots, max_seq, kv_heads * head_dim] float32.
struct KvLayer {
  float* k = nullptr;
  float* v = nullptr;
  int64_t slot_stride = 0;  // max_seq * kv_dim
  int64_t kv_dim = 0;
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
  /// Repack a linear layer (takes the host buffers).
  virtual Result<std::unique_ptr<Linear>> linear_create(LinearDesc&& d) = 0;

  // ---- ops (rows are tokens; ld* are row strides in floats) ----
  /// out[r, :] = table[ids[r], :]; ids on the host.
  virtual void embed(const float* table, int64_t dim, const int32_t* ids, int64_t rows,
                     float* out) = 0;
  /// Copy rows src[idx[r]] -> dst[r] (idx on the host), dim floats each.
  virtual void gather_rows(const float* src, int64_t dim, const int32_t* idx, int64_t rows,
                           float* dst) = 0;
  virtual void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
                       float eps) = 0;
  /// y[r, 0:out] = x[r, 0:in] W^T + b, x contiguous [rows, in], y rows at stride ldy.
  virtual void linear(const Linear& l, const float* x, int64_t rows, float* y, int64_t ldy) = 0;
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
};

struct CpuBackendOptions {
  int threads = 1;
  std::string isa;  // "" = best supported; else ref|avx2|avx512|avx512vnni (at most the best)
};
/// The CPU backend (kernels/cpu). Errors: kInvalidInput for an unknown or unsupported ISA.
Result<std::unique_ptr<Backend>> backend_cpu_create(const CpuBackendOptions& opts);

}  // namespace shrink::runtime
