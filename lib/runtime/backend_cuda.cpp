// The CUDA backend of the runtime: the same Backend interface as the CPU one (so the engine's
// model code is shared), over kernels/cuda and cuBLASLt.
//
// Memory: activations are float32 device buffers, as the interface defines; the KV cache f32,
// f16 or int8 (the CPU's layouts); float linear weights are stored as f16 (default), bf16 or
// f32; int8 weights stay int8 [out, in] with float scales [out, groups]; symmetric 4-bit weights
// are packed two to a byte (WType::kS4; asymmetric ones run as int8 q - zp). The tied lm_head
// gets its own 16-bit copy of the embedding.
//
// Linear layers, by rows M:
//   M <= gemv rows (4 for float weights, 16 for int8 by default; W8A16 up to 4x that, in
//   chunks): the skinny GEMV
//     (kernels/cuda/gemv.cu): float/f16/bf16 weights, W8A16 and W4A16 dequantised in
//     registers, W8A8 as
//     int8 x int8 dp4a on the per-token quantised row;
//   larger M: cuBLASLt (kernels/cuda/gemm_lt.h) in the TN form: f16/bf16 (or exact f32) GEMM
//     into the float output rows; W8A16 dequantises the int8 weights into a 16-bit scratch
//     first (prefill is compute-bound, that pass costs N*K against M*N*K); W8A8 per-channel
//     runs CUDA_R_8I x CUDA_R_8I -> int32 with CUBLAS_COMPUTE_32I and a dequant epilogue
//     kernel; group-wise W8A8 and shapes cuBLASLt rejects run the GEMV 16 rows at a time.
// Fusion: rmsnorm / add_rmsnorm / silu_mul write, besides their float rows, the copies the next
// linear needs (the 16-bit copy for cuBLASLt, the int8 row + per-token scale for dynamic W8A8);
// linear() uses them when its input is that buffer (InputCopies), so quantisation costs no extra
// pass. rope_kv_write is one kernel; attention is split-K for decode, tiled for prefill.
// Per forward, step_begin uploads ids/slots/positions/picks/attention tiles in one copy, from
// one of two pinned staging buffers (each reused only after an event says its last copy ended);
// ops told that their host arrays are the step's (HostInts::step, RowPlacement::step) use the
// device copies; direct calls (tests) upload their own and leave the step alone. Decode steps
// are recorded into a CUDA graph per (rows, output) key from the key's second use (the first
// runs eagerly, so one-time work such as cuBLASLt heuristics stays outside the recording; the
// grid of every kernel depends only on the rows and max_seq, positions are read from device
// memory) and replayed; any buffer reallocation drops the graphs. A buffer that would have to
// grow while recording aborts the recording and the engine reruns the step eagerly; a failed
// recording is logged and retried (host_policy.h GraphPolicy).
// Errors: ops record the first CUDA/cuBLASLt failure; the engine collects it (take_error). A
// failed allocation records "out of device memory: needed X, free Y" and hands out a null
// tensor, which the engine checks before running anything.
// Counters (cuBLASLt calls, fallbacks to the GEMV, graph recordings): counters(), reported by
// bench --format json.
// Tested in tests/cuda/test_backend.cpp (every op against the CPU backend, engine greedy
// tokens on the HF fixtures and a random model, graphs vs eager).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include "core/dtype.h"
#include "core/sample_select.h"
#include "runtime/backend.h"

#ifdef SHRINK_HAVE_CUDA

#include <cuda_runtime.h>

#include "kernels/cuda/device.h"
#include "kernels/cuda/gemm_lt.h"
#include "kernels/cuda/host_policy.h"
#include "kernels/cuda/ops.h"
#include "runtime/backend_cuda_nccl.h"

namespace shrink::runtime {

namespace {

namespace cuda_kernels = shrink::cuda;

class CudaTensor : public DeviceTensor {
 public:
  CudaTensor(float* p, int64_t n) : p_(p), n_(n) {}
  ~CudaTensor() override { cudaFree(p_); }
  float* data() override { return p_; }
  int64_t numel() const override { return n_; }

 private:
  float* p_;
  int64_t n_;
};

class CudaLinear : public Linear {
 public:
  ~CudaLinear() override {
    if (own_w) cudaFree(w);
    cudaFree(scale);
    cudaFree(bias);
    cudaFree(perm);
  }
  cuda_kernels::WType wt = cuda_kernels::WType::kF32;
  void* w = nullptr;
  bool own_w = true;
  float* scale = nullptr;  // int8: [out, G]
  int64_t group = 0;
  ActQuant act = ActQuant::kNone;
  float input_scale = 0;
  float* bias = nullptr;
  int32_t* perm = nullptr;  // [in]: act-order groups, q's column j reads input perm[j]
  bool rows_split = false;  // LinearDesc::act_rows_split: per-token scales over the ranks
};

// A device scratch buffer that only grows.
struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
};

class CudaBackend : public Backend {
 public:
  CudaBackend() = default;
  ~CudaBackend() override {
    graph_reset();
    for (Buf* b : {&step_buf_, &xh_, &xq_, &xs_, &acc_, &wdq_, &part_, &token_ids_, &xperm_}) {
      cudaFree(b->p);
    }
    for (Buf& b : adhoc_) cudaFree(b.p);
    for (Pinned& p : pinned_) {
      if (p.done) cudaEventSynchronize(p.done);
      if (p.h) cudaFreeHost(p.h);
      if (p.done) cudaEventDestroy(p.done);
    }
    lt_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  Status init(const CudaBackendOptions& o) {
    const int count = cuda_kernels::device_count();
    SHRINK_CHECK(count > 0 && o.device >= 0, StatusCode::kInvalidInput,
                 "--device cuda: no CUDA device %d is present (found %d)", o.device, count);
    // --tp ranks on one machine take LOCAL_RANK's device; more ranks than devices share them
    // (which NCCL refuses, with its own error).
    device_ = o.device % count;
    SHRINK_RETURN_IF_ERROR(cuda_ok(cudaSetDevice(device_), "cudaSetDevice"));
    if (o.float_weights == "f16") {
      float_wt_ = cuda_kernels::WType::kF16;
    } else if (o.float_weights == "bf16") {
      float_wt_ = cuda_kernels::WType::kBF16;
    } else if (o.float_weights == "f32") {
      float_wt_ = cuda_kernels::WType::kF32;
    } else {
      return invalid_input("float weights '" + o.float_weights +
                           "' are not supported on cuda; expected f16, bf16 or f32");
    }
    gemv_max_rows_float_ = o.gemv_max_rows > 0 ? o.gemv_max_rows : 4;
    gemv_max_rows_int8_ = o.gemv_max_rows > 0 ? o.gemv_max_rows : 16;
    gemv_max_rows_float_ = std::min<int>(gemv_max_rows_float_, int(cuda_kernels::kGemvMaxRows));
    gemv_max_rows_int8_ = std::min<int>(gemv_max_rows_int8_, int(cuda_kernels::kGemvMaxRows));
    graphs_ = cuda_kernels::GraphPolicy(o.graphs, [](const std::string& m) {
      std::fprintf(stderr, "shrink-rt: warning: %s\n", m.c_str());
    });
    summary_ = cuda_kernels::device_summary(device_);
    SHRINK_RETURN_IF_ERROR(cuda_ok(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                                   "cudaStreamCreate"));
    for (Pinned& p : pinned_) {
      SHRINK_RETURN_IF_ERROR(
          cuda_ok(cudaEventCreateWithFlags(&p.done, cudaEventDisableTiming), "cudaEventCreate"));
    }
    SHRINK_ASSIGN_OR_RETURN(lt_, cuda_kernels::GemmLt::create(size_t(32) << 20));
    return Status::ok();
  }

  std::string describe() const override {
    return "cuda " + summary_ + ", " + cuda_kernels::wtype_name(float_wt_) + " weights, " +
           lt_->version() + ", gemv <= " + std::to_string(gemv_max_rows_float_) + "/" +
           std::to_string(gemv_max_rows_int8_) + " rows (float/int8), graphs " +
           (graphs_.on() ? "on" : "off") + nccl_describe();
  }

  // ---- tensor parallelism --------------------------------------------------------------------
  Result<std::shared_ptr<TpComm>> tp_group(std::shared_ptr<TpComm> host) override {
    SHRINK_ASSIGN_OR_RETURN(std::shared_ptr<NcclGroup> g, NcclGroup::join(std::move(host), stream_));
    nccl_ = g;
    return std::shared_ptr<TpComm>(std::move(g));
  }
  void set_row_absmax_reduce(std::function<void(float* amax, int64_t rows)> fn) override {
    row_absmax_reduce_ = std::move(fn);
  }
  void copy_rows(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows,
                 int64_t cols) override {
    if (rows <= 0 || cols <= 0) return;
    check(cudaMemcpy2DAsync(dst, size_t(ldd) * 4, src, size_t(lds) * 4, size_t(cols) * 4,
                            size_t(rows), cudaMemcpyDeviceToDevice, stream_),
          "copy_rows");
  }

  std::vector<std::pair<std::string, uint64_t>> counters() const override {
    cuda_kernels::CudaCounters c = lt_->counters();
    c.lt_fallback = counts_.lt_fallback;
    c.graph_captures = counts_.graph_captures;
    c.graph_capture_failures = counts_.graph_capture_failures;
    c.graph_replays = counts_.graph_replays;
    return c.named(lt_->plans_cached());
  }

  // ---- memory --------------------------------------------------------------------------------
  // A failed allocation records why (take_error) and returns a null tensor, which the engine
  // checks before any op runs (Engine::Impl::allocations_check, buffers_check).
  std::unique_ptr<DeviceTensor> tensor_zeros(int64_t n) override {
    float* p = nullptr;
    const Status st = device_alloc(reinterpret_cast<void**>(&p), size_t(std::max<int64_t>(n, 1)) * 4);
    if (!st.is_ok()) {
      if (err_.is_ok()) err_ = st;
      return std::make_unique<CudaTensor>(nullptr, 0);
    }
    // On stream_: it is non-blocking, so nothing orders it after the legacy stream.
    check(cudaMemsetAsync(p, 0, size_t(std::max<int64_t>(n, 1)) * 4, stream_), "cudaMemset");
    return std::make_unique<CudaTensor>(p, n);
  }
  std::unique_ptr<DeviceTensor> tensor_from_host(std::vector<float>&& host) override {
    auto t = tensor_zeros(int64_t(host.size()));
    if (t->data() && !host.empty()) {
      check(h2d(t->data(), host.data(), host.size() * 4), "upload");
    }
    return t;
  }
  void bytes_to_host(const void* src, size_t n, void* dst) override {
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, stream_), "download");
    stream_wait("download");
  }
  void bytes_from_host(const void* src, size_t n, void* dst) override {
    check(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream_), "upload");
    stream_wait("upload");
  }
  void to_host(const float* src, int64_t n, float* dst) override {
    check(cudaMemcpyAsync(dst, src, size_t(n) * 4, cudaMemcpyDeviceToHost, stream_), "download");
    stream_wait("download");
  }

  Result<std::unique_ptr<Linear>> linear_create(LinearDesc&& d) override {
    linear_desc_fold_zero_points(d);  // 4-bit asymmetric runs as int8 q - zp (bits 8 after)
    auto l = std::make_unique<CudaLinear>();
    l->out = d.out;
    l->in = d.in;
    l->kind = d.kind;
    const int64_t NK = d.out * d.in;
    SHRINK_CHECK(d.bias.empty() || int64_t(d.bias.size()) == d.out, StatusCode::kInternal,
                 "%s: bias has %zu values, expected %lld", d.name.c_str(), d.bias.size(),
                 (long long)d.out);
    if (!d.bias.empty()) {
      SHRINK_ASSIGN_OR_RETURN(l->bias, upload(d.bias.data(), d.bias.size() * 4));
    }
    if (d.kind == LinearKind::kF32) {
      const float* src_dev = d.w_borrowed;  // a device tensor (the embedding) when tied
      if (!src_dev) {
        SHRINK_CHECK(int64_t(d.w.size()) == NK, StatusCode::kInternal, "%s: %zu weights for [%lld, %lld]",
                     d.name.c_str(), d.w.size(), (long long)d.out, (long long)d.in);
      }
      l->wt = float_wt_;
      if (float_wt_ == cuda_kernels::WType::kF32) {
        if (src_dev) {
          l->w = const_cast<float*>(src_dev);
          l->own_w = false;
        } else {
          SHRINK_ASSIGN_OR_RETURN(l->w, upload(d.w.data(), size_t(NK) * 4));
        }
      } else if (src_dev) {  // the tied embedding, on the device: converted there
        SHRINK_RETURN_IF_ERROR(device_alloc(&l->w, size_t(NK) * 2));
        cuda_kernels::convert_f32(src_dev, NK, l->w, float_wt_, stream_);
        SHRINK_RETURN_IF_ERROR(stream_done("convert weights"));
      } else {  // host weights: rounded to 16 bits on the host, so half the bytes cross the bus
        // and no float32 staging copy stays on the device (round to nearest even, as the
        // device's __float2half_rn / __float2bfloat16_rn)
        std::vector<uint16_t> h(static_cast<size_t>(NK));
        core::convert_from_f32(d.w.data(),
                               float_wt_ == cuda_kernels::WType::kBF16 ? core::DType::kBF16
                                                                       : core::DType::kF16,
                               h.data(), NK);
        SHRINK_ASSIGN_OR_RETURN(l->w, upload(h.data(), size_t(NK) * 2));
      }
      d.w = std::vector<float>();
      l->weight_bytes = uint64_t(NK) * uint64_t(cuda_kernels::wtype_bytes(float_wt_));
      return std::unique_ptr<Linear>(std::move(l));
    }
    SHRINK_CHECK(d.group > 0, StatusCode::kInternal, "%s: int8 group size %lld", d.name.c_str(),
                 (long long)d.group);
    const int64_t G = (d.in + d.group - 1) / d.group;
    SHRINK_CHECK(int64_t(d.q.size()) == NK && int64_t(d.scale.size()) == d.out * G,
                 StatusCode::kInternal, "%s: inconsistent int8 weights", d.name.c_str());
    l->wt = cuda_kernels::WType::kS8;
    l->group = d.group;
    l->act = d.act;
    l->input_scale = d.input_scale;
    l->rows_split = d.act_rows_split;
    if (d.kind == LinearKind::kW8A16 && d.bits == 4 && d.in % 2 == 0) {
      // Symmetric 4-bit (asymmetric was folded into int8 above): packed two to a byte, half the
      // bytes of int8 for the decode GEMV to read.
      std::vector<int8_t> packed(static_cast<size_t>(NK / 2));
      for (int64_t i = 0; i < NK / 2; ++i) {
        const int lo = d.q[size_t(2 * i)] + 8, hi = d.q[size_t(2 * i + 1)] + 8;
        packed[size_t(i)] = int8_t(uint8_t(lo | (hi << 4)));
      }
      l->wt = cuda_kernels::WType::kS4;
      SHRINK_ASSIGN_OR_RETURN(l->w, upload(packed.data(), packed.size()));
      SHRINK_ASSIGN_OR_RETURN(l->scale, upload(d.scale.data(), d.scale.size() * 4));
      if (!d.perm.empty()) {
        SHRINK_CHECK(int64_t(d.perm.size()) == d.in, StatusCode::kInternal,
                     "%s: act-order permutation has %zu entries, expected %lld", d.name.c_str(),
                     d.perm.size(), (long long)d.in);
        SHRINK_ASSIGN_OR_RETURN(l->perm, upload(d.perm.data(), d.perm.size() * 4));
      }
      l->weight_bytes = uint64_t(NK / 2) + uint64_t(d.out * G) * 4;
      return std::unique_ptr<Linear>(std::move(l));
    }
    SHRINK_ASSIGN_OR_RETURN(l->w, upload(d.q.data(), size_t(NK)));
    SHRINK_ASSIGN_OR_RETURN(l->scale, upload(d.scale.data(), d.scale.size() * 4));
    if (!d.perm.empty()) {  // act-order groups: linear() gathers the inputs into q's order
      SHRINK_CHECK(int64_t(d.perm.size()) == d.in, StatusCode::kInternal,
                   "%s: act-order permutation has %zu entries, expected %lld", d.name.c_str(),
                   d.perm.size(), (long long)d.in);
      SHRINK_ASSIGN_OR_RETURN(l->perm, upload(d.perm.data(), d.perm.size() * 4));
    }
    if (d.kind == LinearKind::kW8A8 && d.act == ActQuant::kDynamic) want_q_ = true;
    l->weight_bytes = uint64_t(NK) + uint64_t(d.out * G) * 4;
    return std::unique_ptr<Linear>(std::move(l));
  }

  // ---- per-forward hooks ---------------------------------------------------------------------
  void step_begin(const StepRows& s) override {
    step_ = s;
    all_single_ = attention_tiles(s.rows, s.slot, s.pos, &tiles_);
    // Sampling rows (24 bytes each) go last, 8-byte aligned.
    const size_t n_int = size_t(3 * s.rows + s.picks) + tiles_.size();
    const size_t sample_at = (n_int + 1) & ~size_t(1);
    const size_t n = s.sample ? sample_at + size_t(s.picks) * (sizeof(core::SampleRow) / 4) : n_int;
    // The staging buffer of two steps ago: its copy was queued then, and may still be pending
    // if that forward failed before the blocking fetch that usually follows; wait for it.
    Pinned& pin = pinned_[pinned_next_++ % 2];
    if (!stream_done("staging buffer", pin.done).is_ok()) return;
    if (n > pin.n) {
      if (pin.h) cudaFreeHost(pin.h);
      pin.h = nullptr;
      pin.n = 0;
      if (!check(cudaMallocHost(reinterpret_cast<void**>(&pin.h), n * 4), "cudaMallocHost")) return;
      pin.n = n;
    }
    int32_t* h = pin.h;
    std::memcpy(h, s.ids, size_t(s.rows) * 4);
    std::memcpy(h + s.rows, s.slot, size_t(s.rows) * 4);
    std::memcpy(h + 2 * s.rows, s.pos, size_t(s.rows) * 4);
    if (s.picks) std::memcpy(h + 3 * s.rows, s.pick, size_t(s.picks) * 4);
    if (!tiles_.empty()) std::memcpy(h + 3 * s.rows + s.picks, tiles_.data(), tiles_.size() * 4);
    if (s.sample) std::memcpy(h + sample_at, s.sample, size_t(s.picks) * sizeof(core::SampleRow));
    auto dev = grow(step_buf_, n * 4);
    if (!dev.is_ok()) return;
    int32_t* d = static_cast<int32_t*>(dev.value());
    check(cudaMemcpyAsync(d, h, n * 4, cudaMemcpyHostToDevice, stream_), "upload step");
    check(cudaEventRecord(pin.done, stream_), "staging buffer event");
    d_ids_ = d;
    d_slot_ = d + s.rows;
    d_pos_ = d + 2 * s.rows;
    d_pick_ = d + 3 * s.rows;
    d_tiles_ = d + 3 * s.rows + s.picks;
    d_sample_ = s.sample ? reinterpret_cast<const core::SampleRow*>(d + sample_at) : nullptr;
    // The token ids output (argmax_rows, sample_rows), sized before any recording.
    (void)grow(token_ids_, size_t(std::max<int64_t>(s.picks, 1)) * 4);
  }

  void step_end() override {
    step_ = StepRows();
    d_ids_ = d_slot_ = d_pos_ = d_pick_ = d_tiles_ = nullptr;
    d_sample_ = nullptr;
  }

  bool graph_replay(uint64_t key) override {
    if (!graphs_.on()) return false;
    auto it = graph_execs_.find(key);
    if (it == graph_execs_.end()) return false;
    if (!check(cudaGraphLaunch(it->second, stream_), "cudaGraphLaunch")) return false;
    ++counts_.graph_replays;
    return true;
  }

  // A key records from its second use (GraphPolicy): its first runs eagerly.
  bool graph_capture_begin(uint64_t key) override {
    if (!err_.is_ok() || !graphs_.should_capture(key)) return false;
    const cudaError_t e = cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
      cudaGetLastError();
      capture_failed(key, std::string("cudaStreamBeginCapture: ") + cudaGetErrorString(e));
      return false;
    }
    capturing_ = true;
    capture_bad_ = capture_grew_ = false;
    return true;
  }

  bool graph_capture_end(uint64_t key) override {
    cudaGraph_t g = nullptr;
    const cudaError_t e = cudaStreamEndCapture(stream_, &g);
    capturing_ = false;
    if (e != cudaSuccess || capture_bad_ || capture_grew_ || !err_.is_ok() || !g) {
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      // A buffer that had to grow is expected once after a reallocation: not a failure.
      // Anything else (an op that needed a host upload, a CUDA error) is logged and counted, so
      // a step that can never be recorded ends up eager instead of recording every time.
      if (e != cudaSuccess || capture_bad_ || !err_.is_ok() || (!g && !capture_grew_)) {
        capture_failed(key, e != cudaSuccess ? std::string("cudaStreamEndCapture: ") +
                                                   cudaGetErrorString(e)
                            : !err_.is_ok() ? err_.message()
                            : capture_bad_  ? std::string("an op needed a host upload")
                                            : std::string("no graph"));
      }
      err_ = Status::ok();  // nothing ran; the engine reruns the step eagerly
      input_copies_ = InputCopies();
      return false;
    }
    cudaGraphExec_t exec = nullptr;
    const cudaError_t ie = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);
    if (ie != cudaSuccess) {
      cudaGetLastError();
      capture_failed(key, std::string("cudaGraphInstantiate: ") + cudaGetErrorString(ie));
      input_copies_ = InputCopies();
      return false;  // the engine reruns the step eagerly
    }
    graph_execs_[key] = exec;
    ++counts_.graph_captures;
    return check(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
  }

  void graph_reset() override {
    if (!graph_execs_.empty()) stream_wait("graph reset");
    for (auto& kv : graph_execs_) cudaGraphExecDestroy(kv.second);
    graph_execs_.clear();
  }

  Status take_error() override {
    if (err_.is_ok()) check(cudaGetLastError(), "kernel launch");
    Status s = err_;
    err_ = Status::ok();
    return s;
  }

  // ---- ops -----------------------------------------------------------------------------------
  void embed(const float* table, int64_t dim, HostInts ids, int64_t rows, float* out) override {
    input_copies_ = InputCopies();
    const int32_t* d = dev_ints(ids, rows);
    if (!d) return;
    cuda_kernels::embed_f32(table, dim, d, rows, out, stream_);
    launched("embed");
  }

  void gather_rows(const float* src, int64_t dim, HostInts idx, int64_t rows,
                   float* dst) override {
    input_copies_ = InputCopies();
    const int32_t* d = dev_ints(idx, rows);
    if (!d) return;
    cuda_kernels::gather_rows_f32(src, dim, d, rows, dst, stream_);
    launched("gather_rows");
  }

  void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
               float eps) override {
    norm(const_cast<float*>(x), nullptr, w, y, rows, n, eps);
  }

  void add_rmsnorm(float* x, const float* d, const float* w, float* y, int64_t rows, int64_t n,
                   float eps) override {
    norm(x, d, w, y, rows, n, eps);
  }

  void add(float* x, const float* y, int64_t n) override {
    input_copies_ = InputCopies();
    cuda_kernels::add_f32(x, y, n, stream_);
    launched("add");
  }

  void silu_mul(const float* g, int64_t rows, int64_t n, float* y) override {
    input_copies_ = InputCopies();
    void* yh = nullptr;
    int8_t* yq = nullptr;
    float* ys = nullptr;
    if (!input_copy_buffers(rows, n, &yh, &yq, &ys)) return;
    cuda_kernels::silu_mul_f32(g, rows, n, y, yh, half_type(), yq, ys, stream_);
    if (launched("silu_mul")) input_copies_ = {y, rows, n, yh != nullptr, yq != nullptr};
  }

  void rope(float* x, int64_t rows, int64_t ldx, int64_t heads, int64_t head_dim,
            const RowPlacement& at, const float* cos, const float* sin) override {
    input_copies_ = InputCopies();
    const int32_t* pos = dev_pos(at, rows);
    if (!pos) return;
    cuda_kernels::rope_kv_f32(x, rows, ldx, int(heads), 0, int(head_dim), nullptr, pos, cos, sin,
                              cuda_kernels::CacheView(), stream_);
    launched("rope");
  }

  void kv_write(const float* k, const float* v, int64_t ld, int64_t rows, const RowPlacement& at,
                const KvLayer& c) override {
    input_copies_ = InputCopies();
    const int32_t* slot = dev_slot(at, rows);
    const int32_t* pos = dev_pos(at, rows);
    if (!slot || !pos || !cache_ok(c)) return;
    cuda_kernels::kv_write_f32(k, v, ld, rows, slot, pos, cache_view(c), c.kv_dim,
                               int(c.head_dim), stream_);
    launched("kv_write");
  }

  void rope_kv_write(float* qkv, int64_t rows, int64_t ld, int64_t n_heads, int64_t n_kv_heads,
                     int64_t head_dim, const RowPlacement& at, const float* cos, const float* sin,
                     const KvLayer& c) override {
    input_copies_ = InputCopies();
    const int32_t* slot = dev_slot(at, rows);
    const int32_t* pos = dev_pos(at, rows);
    if (!slot || !pos || !cache_ok(c)) return;
    cuda_kernels::rope_kv_f32(qkv, rows, ld, int(n_heads), int(n_kv_heads), int(head_dim), slot,
                              pos, cos, sin, cache_view(c), stream_);
    launched("rope_kv_write");
  }

  void attention(const float* q, int64_t ldq, int64_t rows, const RowPlacement& at,
                 const KvLayer& c, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                 int64_t window, float* out) override {
    input_copies_ = InputCopies();
    if (!cache_ok(c)) return;
    if (head_dim > 256) {  // the prefill kernel's register tile
      if (err_.is_ok()) {
        err_ = invalid_input("cuda attention: head_dim " + std::to_string(head_dim) +
                             " is not supported (at most 256)");
      }
      return;
    }
    cuda_kernels::AttentionArgs a;
    a.q = q;
    a.ldq = ldq;
    a.rows = rows;
    bool all_single = all_single_;
    const int32_t* tiles = d_tiles_;
    int64_t n_tiles = int64_t(tiles_.size() / 2);
    if (!(at.step && rows == step_.rows)) {
      // A direct call (tests): its own tiles and uploads; the step's state stays as it is.
      if (capturing_) {
        capture_bad_ = true;
        return;
      }
      std::vector<int32_t> own;
      all_single = attention_tiles(rows, at.slot, at.pos, &own);
      n_tiles = int64_t(own.size() / 2);
      tiles = static_cast<const int32_t*>(adhoc_upload(own.data(), own.size() * 4));
      if (!tiles) return;
    }
    a.slot = dev_slot(at, rows);
    a.pos = dev_pos(at, rows);
    if (!a.slot || !a.pos) return;
    a.k_cache = c.k;
    a.v_cache = c.v;
    a.k_scale = c.k_scale;
    a.v_scale = c.v_scale;
    a.cache_type = cache_view(c).type;
    a.slot_stride = c.slot_stride;
    a.kv_dim = c.kv_dim;
    a.n_heads = int(n_heads);
    a.n_kv_heads = int(n_kv_heads);
    a.head_dim = int(head_dim);
    a.window = window;
    a.scale = float(1.0 / std::sqrt(double(head_dim)));
    a.out = out;
    const int64_t max_seq = c.slot_stride / c.kv_dim;
    if (all_single) {
      const int64_t need =
          cuda_kernels::attention_decode_scratch(rows, int(n_heads), int(head_dim), max_seq);
      auto part = grow(part_, size_t(need) * 4);
      if (!part.is_ok()) return;
      cuda_kernels::attention_decode(a, max_seq, static_cast<float*>(part.value()), stream_);
      launched("attention (decode)");
    } else {
      cuda_kernels::attention_prefill(a, tiles, n_tiles, stream_);
      launched("attention (prefill)");
    }
  }

  void linear(const Linear& base, const float* x, int64_t M, float* y, int64_t ldy) override {
    const CudaLinear& l = static_cast<const CudaLinear&>(base);
    const int64_t N = l.out, K = l.in;
    if (l.perm) {  // act-order groups: the inputs in q's column order (one pass over M x K)
      auto xp = grow(xperm_, size_t(M * K) * 4);
      if (!xp.is_ok()) return;
      cuda_kernels::gather_cols(x, M, K, l.perm, static_cast<float*>(xp.value()), stream_);
      x = static_cast<const float*>(xp.value());
    }
    cuda_kernels::GemvArgs g;
    g.M = M;
    g.N = N;
    g.K = K;
    g.x = x;
    g.w = l.w;
    g.wt = l.wt;
    g.scale = l.scale;
    g.group = l.group;
    g.bias = l.bias;
    g.y = y;
    g.ldy = ldy;
    switch (l.kind) {
      case LinearKind::kF32:
      case LinearKind::kW8A16: {
        const bool int8 = l.kind == LinearKind::kW8A16;
        // W8A16 up to 4x the GEMV rows (decode batches) runs the GEMV in chunks: it reads the
        // int8 weights once per chunk, 1 byte per weight per 16 rows, where the cuBLASLt path
        // below would write and read back a 16-bit dequantised copy (5 bytes per weight).
        if (M <= (int8 ? 4 * gemv_max_rows_int8_ : gemv_max_rows_float_)) {
          gemv_in_chunks(g);
          break;
        }
        // cuBLASLt: x (and, for W8A16, the dequantised weights) in the GEMM's input type.
        const cuda_kernels::WType t = float_wt_;
        const void* xin = x;
        if (t != cuda_kernels::WType::kF32) {
          xin = half_of(x, M, K);
          if (!xin) return;
        }
        const void* w = l.w;
        if (int8) {
          auto wd = grow(wdq_, size_t(N * K) * size_t(cuda_kernels::wtype_bytes(t)));
          if (!wd.is_ok()) return;
          if (l.wt == cuda_kernels::WType::kS4) {
            cuda_kernels::dequant_s4(static_cast<const uint8_t*>(l.w), l.scale, N, K, l.group,
                                     wd.value(), t, stream_);
          } else {
            cuda_kernels::dequant_s8(static_cast<const int8_t*>(l.w), l.scale, N, K, l.group,
                                     wd.value(), t, stream_);
          }
          w = wd.value();
        }
        if (!lt_->gemm_float(t, M, N, K, xin, w, y, ldy, stream_).is_ok()) {
          ++counts_.lt_fallback;  // cuBLASLt refused the shape (remembered per plan key)
          g.wt = l.wt;
          gemv_in_chunks(g);  // the GEMV, 16 rows at a time
          break;
        }
        if (l.bias) cuda_kernels::bias_add(y, M, N, ldy, l.bias, stream_);
        break;
      }
      case LinearKind::kW8A8: {
        const int8_t* xq = nullptr;
        const float* xs = nullptr;
        // A row split over --tp ranks takes its per-token scales from the whole row: this
        // rank's maxima, reduced over the ranks (on the stream), then quantized with them.
        const bool split = l.act == ActQuant::kDynamic && l.rows_split && row_absmax_reduce_;
        if (!split && l.act == ActQuant::kDynamic && input_copies_.has_s8 &&
            input_copies_.of(x, M, K)) {
          xq = static_cast<const int8_t*>(xq_.p);
          xs = static_cast<const float*>(xs_.p);
        } else if (split) {
          input_copies_ = InputCopies();
          auto q = grow(xq_, size_t(M * K));
          auto s = grow(xs_, size_t(M) * 4);
          if (!q.is_ok() || !s.is_ok()) return;
          xq = static_cast<const int8_t*>(q.value());
          xs = static_cast<const float*>(s.value());
          cuda_kernels::row_absmax(x, M, K, K, const_cast<float*>(xs), stream_);
          row_absmax_reduce_(const_cast<float*>(xs), M);
          cuda_kernels::quantize_s8_by_absmax(x, M, K, K, const_cast<int8_t*>(xq),
                                              const_cast<float*>(xs), stream_);
        } else {
          input_copies_ = InputCopies();  // the scratch below is about to be overwritten
          auto q = grow(xq_, size_t(M * K));
          auto s = grow(xs_, size_t(M) * 4);
          if (!q.is_ok() || !s.is_ok()) return;
          xq = static_cast<const int8_t*>(q.value());
          xs = static_cast<const float*>(s.value());
          cuda_kernels::quantize_s8(x, M, K, K, l.act == ActQuant::kStatic ? l.input_scale : 0.0f,
                                    const_cast<int8_t*>(xq), const_cast<float*>(xs), stream_);
        }
        g.x = nullptr;
        g.xq = xq;
        g.xs = xs;
        // Per-channel weights past the GEMV's rows: cuBLASLt's int8 GEMM, unless it refuses
        // (imma_refusal: N or K not a multiple of 4, misaligned operands) or has no algorithm;
        // then the GEMV, counted as a fallback. Group-wise W8A8 runs the GEMV by design.
        if (M > gemv_max_rows_int8_ && l.group >= K) {
          auto acc = grow(acc_, size_t(M * N) * 4);
          if (!acc.is_ok()) return;
          int32_t* a = static_cast<int32_t*>(acc.value());
          if (lt_->gemm_s8(M, N, K, xq, static_cast<const int8_t*>(l.w), a, stream_).is_ok()) {
            cuda_kernels::epilogue_s32(a, M, N, l.scale, xs, l.bias, y, ldy, stream_);
            break;
          }
          ++counts_.lt_fallback;
        }
        gemv_in_chunks(g);
        break;
      }
    }
    launched("linear");
    // The output may overwrite the buffer whose copies are recorded.
    if (input_copies_.overlapped_by(y, M * ldy)) {
      input_copies_ = InputCopies();
    }
  }

  void argmax_rows(const float* x, int64_t rows, int64_t n) override {
    auto out = grow(token_ids_, size_t(rows) * 4);
    if (!out.is_ok()) return;
    cuda_kernels::argmax_rows(x, rows, n, static_cast<int32_t*>(out.value()), stream_);
    launched("argmax");
  }

  void sample_rows(const float* x, int64_t rows, int64_t n, const core::SampleRow* p) override {
    auto out = grow(token_ids_, size_t(rows) * 4);
    if (!out.is_ok()) return;
    const core::SampleRow* dp = nullptr;
    if (p == step_.sample && rows <= step_.picks) {
      dp = d_sample_;
    } else if (capturing_) {
      capture_bad_ = true;
      return;
    } else {  // a direct call (tests): upload the rows here
      dp = static_cast<const core::SampleRow*>(
          adhoc_upload(p, size_t(rows) * sizeof(core::SampleRow)));
      if (!dp) return;
    }
    cuda_kernels::sample_rows(x, rows, n, n, dp, static_cast<int32_t*>(out.value()), stream_);
    launched("sample");
  }

  void token_ids_fetch(int32_t* host, int64_t rows) override {
    check(cudaMemcpyAsync(host, token_ids_.p, size_t(rows) * 4, cudaMemcpyDeviceToHost, stream_),
          "download");
    stream_wait("token ids");
  }

 private:
  // The copies of one float activation buffer (src, rows x n) that the fused rmsnorm/silu_mul
  // kernels wrote alongside it in the next linear's input types: a 16-bit copy in xh_ (for
  // cuBLASLt) and int8 rows with per-row scales in xq_/xs_ (for dynamic W8A8).
  struct InputCopies {
    const float* src = nullptr;
    int64_t rows = 0, n = 0;
    bool has_half = false, has_s8 = false;
    // Whether these are copies of x as rows x n.
    bool of(const float* x, int64_t x_rows, int64_t x_n) const {
      return src == x && rows == x_rows && n == x_n;
    }
    // Whether y (y_floats from y on) overlaps src, so that writing y makes the copies stale.
    bool overlapped_by(const float* y, int64_t y_floats) const {
      return src && y < src + rows * n && src < y + y_floats;
    }
  };

  cuda_kernels::WType half_type() const {
    return float_wt_ == cuda_kernels::WType::kBF16 ? cuda_kernels::WType::kBF16
                                                   : cuda_kernels::WType::kF16;
  }

  Status cuda_ok(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return Status::ok();
    cudaGetLastError();
    return internal_error(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
  }
  bool check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return true;
    cudaGetLastError();
    if (err_.is_ok()) err_ = internal_error(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
    return false;
  }
  bool launched(const char* what) { return check(cudaPeekAtLastError(), what); }

  // Waits for the stream's work (ev null) or for an event on it. Under --tp it may hold NCCL
  // collectives, which wait for their peers without end: the group's wait fails past
  // --dist-timeout and aborts it. The first failure is recorded (take_error) and returned.
  Status stream_done(const char* what, cudaEvent_t ev = nullptr) {
    Status st;
    if (auto g = nccl_.lock()) {
      st = g->wait_until([&] { return ev ? cudaEventQuery(ev) : cudaStreamQuery(stream_); }, what);
    } else {
      st = cuda_ok(ev ? cudaEventSynchronize(ev) : cudaStreamSynchronize(stream_), what);
    }
    if (!st.is_ok() && err_.is_ok()) err_ = st;
    return st;
  }
  bool stream_wait(const char* what) { return stream_done(what).is_ok(); }
  std::string nccl_describe() const {
    auto g = nccl_.lock();
    return g ? ", tp " + std::to_string(g->size()) + " over " + g->version() : "";
  }

  // A host -> device copy ordered on stream_ and complete on return. A plain cudaMemcpy runs on
  // the legacy stream, which the non-blocking stream_ does not wait for, and from pageable
  // memory it may return before the data has landed: kernels on stream_ could read it early.
  cudaError_t h2d(void* dst, const void* src, size_t bytes) {
    const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_);
    if (e != cudaSuccess) return e;
    return stream_wait("upload") ? cudaSuccess : cudaErrorUnknown;
  }
  template <typename T>
  Result<T*> upload(const T* host, size_t bytes) {
    void* p = nullptr;
    SHRINK_RETURN_IF_ERROR(device_alloc(&p, std::max<size_t>(bytes, 1)));
    const Status st = cuda_ok(h2d(p, host, bytes), "upload");
    if (!st.is_ok()) cudaFree(p);
    SHRINK_RETURN_IF_ERROR(st);
    return static_cast<T*>(p);
  }

  // Grow a scratch buffer (never while recording a graph: that aborts the recording).
  Result<void*> grow(Buf& b, size_t bytes) {
    if (bytes <= b.bytes) return b.p;
    if (capturing_) {
      capture_grew_ = true;
      return internal_error("buffer growth while recording");
    }
    graph_reset();
    stream_wait("buffer growth");
    const size_t want = std::max(bytes, b.bytes * 3 / 2);
    cudaFree(b.p);
    b.p = nullptr;
    b.bytes = 0;
    size_t got = want;
    Status st = device_alloc(&b.p, got);
    if (!st.is_ok() && want > bytes) st = device_alloc(&b.p, got = bytes);  // no headroom
    if (!st.is_ok()) {
      if (err_.is_ok()) err_ = st;
      return st;
    }
    b.bytes = got;
    return b.p;
  }

  // The device copy of host ints: the step array they are said to be (uploaded by step_begin),
  // else an immediate upload (a direct call; not while recording).
  const int32_t* dev_ints(HostInts h, int64_t n) {
    switch (h.step) {
      case StepArray::kIds:
        if (d_ids_ && n <= step_.rows) return d_ids_;
        break;
      case StepArray::kPos:
        if (d_pos_ && n <= step_.rows) return d_pos_;
        break;
      case StepArray::kPick:
        if (d_pick_ && n <= step_.picks) return d_pick_;
        break;
      case StepArray::kNone:
        break;
    }
    if (h.step != StepArray::kNone) {  // said to be the step's, but no step holds that many
      if (err_.is_ok()) err_ = internal_error("cuda: an op was given step arrays outside a step");
      return nullptr;
    }
    if (capturing_) {
      capture_bad_ = true;
      return nullptr;
    }
    return static_cast<const int32_t*>(adhoc_upload(h.p, size_t(n) * 4));
  }
  const int32_t* dev_slot(const RowPlacement& at, int64_t n) {
    if (at.step) {
      if (d_slot_ && n <= step_.rows) return d_slot_;
      if (err_.is_ok()) err_ = internal_error("cuda: an op was given step rows outside a step");
      return nullptr;
    }
    return dev_ints(HostInts(at.slot), n);
  }
  const int32_t* dev_pos(const RowPlacement& at, int64_t n) {
    return dev_ints(HostInts(at.pos, at.step ? StepArray::kPos : StepArray::kNone), n);
  }

  // Attention tiles of rows at (slot, pos): runs of rows of one slot at consecutive positions,
  // cut every kAttnTileRows rows, as (first row, rows) pairs. True when every run is one row
  // (a decode step: the split-K decode kernel runs).
  static bool attention_tiles(int64_t rows, const int32_t* slot, const int32_t* pos,
                              std::vector<int32_t>* tiles) {
    tiles->clear();
    bool all_single = true;
    for (int64_t r = 0; r < rows;) {
      int64_t e = r + 1;
      while (e < rows && slot[e] == slot[r] && pos[e] == pos[e - 1] + 1) ++e;
      if (e - r > 1) all_single = false;
      for (int64_t t = r; t < e; t += cuda_kernels::kAttnTileRows) {
        tiles->push_back(int32_t(t));
        tiles->push_back(int32_t(std::min<int64_t>(cuda_kernels::kAttnTileRows, e - t)));
      }
      r = e;
    }
    return all_single;
  }

  // cudaMalloc, or "out of device memory: needed X, free Y of Z".
  Status device_alloc(void** p, size_t bytes) {
    const cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess) return Status::ok();
    cudaGetLastError();
    *p = nullptr;
    if (e != cudaErrorMemoryAllocation) return cuda_ok(e, "cudaMalloc");
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    return internal_error(cuda_kernels::out_of_memory_message(bytes, free_b, total_b));
  }

  // The kernels' view of one layer's cache: float32, f16, or int8 with per-(token, KV head)
  // scales (the CPU's layouts, so the prefix cache's exported rows mean the same on both).
  static cuda_kernels::CacheView cache_view(const KvLayer& c) {
    cuda_kernels::CacheView v;
    v.k = c.k;
    v.v = c.v;
    v.slot_stride = c.slot_stride;
    v.type = c.storage == KvStorage::kF16    ? cuda_kernels::CacheType::kF16
             : c.storage == KvStorage::kInt8 ? cuda_kernels::CacheType::kS8
                                             : cuda_kernels::CacheType::kF32;
    if (c.storage == KvStorage::kInt8) {
      v.k_scale = c.k_scale;
      v.v_scale = c.v_scale;
    }
    return v;
  }
  // An int8 cache needs its scales and one head's values per scale (head_dim; 32 lanes each).
  bool cache_ok(const KvLayer& c) {
    if (c.storage != KvStorage::kInt8 || (c.k_scale && c.v_scale && c.head_dim > 0)) return true;
    if (err_.is_ok()) err_ = internal_error("cuda: an int8 KV cache without its scales");
    return false;
  }

  void capture_failed(uint64_t key, const std::string& why) {
    ++counts_.graph_capture_failures;
    graphs_.capture_failed(key, why);
  }

  // An immediate upload (not while recording) into a ring of buffers: one op may upload two
  // arrays (slots and positions). Null on failure (recorded in err_).
  const void* adhoc_upload(const void* host, size_t bytes) {
    Buf& b = adhoc_[adhoc_next_++ % kAdhoc];
    auto d = grow(b, std::max<size_t>(bytes, 4));
    if (!d.is_ok() || !check(h2d(d.value(), host, bytes), "upload")) return nullptr;
    return d.value();
  }

  // The buffers of the input copies the next linear may want: the 16-bit copy when cuBLASLt
  // with 16-bit inputs will run (rows above the GEMV limit), the int8 row when the model has
  // dynamic W8A8 layers.
  bool input_copy_buffers(int64_t rows, int64_t n, void** yh, int8_t** yq, float** ys) {
    if (float_wt_ != cuda_kernels::WType::kF32 &&
        rows > std::min(gemv_max_rows_float_, gemv_max_rows_int8_)) {
      auto h = grow(xh_, size_t(rows * n) * 2);
      if (!h.is_ok()) return false;
      *yh = h.value();
    }
    if (want_q_) {
      auto q = grow(xq_, size_t(rows * n));
      auto s = grow(xs_, size_t(rows) * 4);
      if (!q.is_ok() || !s.is_ok()) return false;
      *yq = static_cast<int8_t*>(q.value());
      *ys = static_cast<float*>(s.value());
    }
    return true;
  }

  void norm(float* x, const float* d, const float* w, float* y, int64_t rows, int64_t n,
            float eps) {
    input_copies_ = InputCopies();
    void* yh = nullptr;
    int8_t* yq = nullptr;
    float* ys = nullptr;
    if (!input_copy_buffers(rows, n, &yh, &yq, &ys)) return;
    cuda_kernels::rmsnorm_f32(x, d, w, y, rows, n, eps, yh, half_type(), yq, ys, stream_);
    if (launched("rmsnorm")) input_copies_ = {y, rows, n, yh != nullptr, yq != nullptr};
  }

  // The 16-bit copy of x for cuBLASLt: the recorded copy, else a conversion.
  const void* half_of(const float* x, int64_t M, int64_t K) {
    if (input_copies_.has_half && input_copies_.of(x, M, K)) return xh_.p;
    auto h = grow(xh_, size_t(M * K) * 2);
    if (!h.is_ok()) return nullptr;
    input_copies_.has_half = false;  // the copy in xh_ no longer belongs to the recorded buffer
    cuda_kernels::convert_f32(x, M * K, h.value(), half_type(), stream_);
    return h.value();
  }

  // The GEMV over any M, in launches of at most kGemvMaxRows rows.
  void gemv_in_chunks(cuda_kernels::GemvArgs g) {
    const int64_t M = g.M;
    for (int64_t m0 = 0; m0 < M; m0 += cuda_kernels::kGemvMaxRows) {
      cuda_kernels::GemvArgs c = g;
      c.M = std::min<int64_t>(cuda_kernels::kGemvMaxRows, M - m0);
      if (g.x) c.x = g.x + m0 * g.K;
      if (g.xq) c.xq = g.xq + m0 * g.K;
      if (g.xs) c.xs = g.xs + m0;
      c.y = g.y + m0 * g.ldy;
      cuda_kernels::gemv(c, stream_);
    }
  }

  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda_kernels::GemmLt> lt_;
  std::string summary_;
  int device_ = 0;
  std::weak_ptr<NcclGroup> nccl_;  // --tp: the group Engine owns (destroyed before this backend)
  std::function<void(float* amax, int64_t rows)> row_absmax_reduce_;  // --tp: over the ranks
  cuda_kernels::WType float_wt_ = cuda_kernels::WType::kF16;
  int gemv_max_rows_float_ = 4, gemv_max_rows_int8_ = 16;
  bool want_q_ = false;
  Status err_;
  InputCopies input_copies_;
  // Step arrays.
  StepRows step_;
  std::vector<int32_t> tiles_;
  bool all_single_ = true;
  // Two pinned staging buffers for the step arrays, used in turn; `done` is recorded after the
  // copy out of the buffer, and waited for before the buffer is written again.
  struct Pinned {
    int32_t* h = nullptr;
    size_t n = 0;
    cudaEvent_t done = nullptr;
  };
  Pinned pinned_[2];
  unsigned pinned_next_ = 0;
  int32_t *d_ids_ = nullptr, *d_slot_ = nullptr, *d_pos_ = nullptr, *d_pick_ = nullptr,
          *d_tiles_ = nullptr;
  const core::SampleRow* d_sample_ = nullptr;
  // Scratch.
  Buf step_buf_, xh_, xq_, xs_, acc_, wdq_, part_, token_ids_, xperm_;
  static constexpr int kAdhoc = 4;
  Buf adhoc_[kAdhoc];
  unsigned adhoc_next_ = 0;
  // Graphs.
  cuda_kernels::GraphPolicy graphs_{true, nullptr};
  std::map<uint64_t, cudaGraphExec_t> graph_execs_;
  // While recording: capture_grew_ when a buffer had to grow (the recording is dropped and
  // retried at the next use), capture_bad_ when an op needed something a graph cannot hold.
  bool capturing_ = false, capture_bad_ = false, capture_grew_ = false;
  cuda_kernels::CudaCounters counts_;  // the backend's own: fallbacks, graphs
};

}  // namespace

}  // namespace shrink::runtime

// The plugin's entry point (backend.h: BackendCudaCreateFn), the one symbol it exports.
extern "C" __attribute__((visibility("default"))) shrink::runtime::Backend*
shrink_backend_cuda_create_v1(const shrink::runtime::CudaBackendOptions* opts, std::string* error) {
  auto b = std::make_unique<shrink::runtime::CudaBackend>();
  const shrink::Status st = b->init(*opts);
  if (!st.is_ok()) {
    *error = st.message();
    return nullptr;
  }
  return b.release();
}

#endif  // SHRINK_HAVE_CUDA
