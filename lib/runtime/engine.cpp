// Engine implementation (see engine.h): loading (validation, conversion, q/k/v and gate/up
// fusion), the random-weight models, and the forward pass written against runtime::Backend.
#include "runtime/engine.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <numeric>
#include <map>
#include <optional>
#include <set>

#include "core/checked_math.h"
#include "core/dtype.h"
#include "core/fs.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "runtime/tp_slice.h"

namespace shrink::runtime {

namespace {

// --act-quant auto: the int8 activations of weight-only 4-bit and 8-bit linears (measured:
// README "int8 activations").
constexpr ActInt8 kActAuto4 = ActInt8::kBlock32;
constexpr ActInt8 kActAuto8 = ActInt8::kRow;

// ---- tensor sources: a checkpoint on disk, or random weights made on demand -----------------

struct SrcTensor {
  core::DType dtype = core::DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Rows `rows` (all when null) and columns [c0, c1) of a row-major [R, C] tensor (a vector is
// [R, 1]), copied as stored into buf: under --tp a rank reads only its own bytes of the mapping.
SrcTensor src_region(const SrcTensor& t, const std::vector<int64_t>* rows, int64_t c0, int64_t c1,
                     std::vector<uint8_t>& buf) {
  const int64_t R = t.shape.empty() ? 1 : t.shape[0];
  const int64_t C = t.shape.size() >= 2 ? t.shape[1] : 1;
  const int64_t n = rows ? int64_t(rows->size()) : R, w = c1 - c0;
  const size_t es = core::dtype_size(t.dtype);
  buf.resize(size_t(n * w) * es);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows ? (*rows)[size_t(i)] : i;
    std::memcpy(buf.data() + size_t(i * w) * es, t.data + size_t(r * C + c0) * es, size_t(w) * es);
  }
  SrcTensor v = t;
  v.shape = t.shape.size() >= 2 ? std::vector<int64_t>{n, w} : std::vector<int64_t>{n};
  v.data = buf.data();
  return v;
}

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool find(const std::string& name, SrcTensor* out) = 0;
  virtual void release(const std::string& /*name*/) {}
  /// Bytes [offset, offset + n) of the tensor's data, once read.
  virtual void release(const std::string& /*name*/, uint64_t /*offset*/, uint64_t /*n*/) {}
  virtual std::vector<std::string> names() const = 0;
  virtual std::string origin() const = 0;
  /// A tensor's dtype and shape, without reading (or unpacking) its data.
  virtual bool shape_of(const std::string& name, core::DType* dtype, std::vector<int64_t>* shape) {
    SrcTensor t;
    if (!find(name, &t)) return false;
    *dtype = t.dtype;
    *shape = t.shape;
    return true;
  }
  /// src_region of a tensor: only those bytes read (a tensor-parallel rank's part).
  virtual bool find_region(const std::string& name, const std::vector<int64_t>* rows, int64_t c0,
                           int64_t c1, SrcTensor* out, std::vector<uint8_t>& buf) {
    SrcTensor t;
    if (!find(name, &t)) return false;
    *out = src_region(t, rows, c0, c1, buf);
    return true;
  }
};

class CheckpointSource : public TensorSource {
 public:
  explicit CheckpointSource(core::Checkpoint c) : c_(std::move(c)) {}
  bool find(const std::string& name, SrcTensor* out) override {
    const core::TensorInfo* t = c_.find(name);
    if (!t) return false;
    *out = {t->dtype, t->shape, c_.data(*t)};
    return true;
  }
  // The tensor's pages leave resident memory once its copy is made (they stay mapped): without
  // this the whole checkpoint stayed resident beside the engine's copy until load returned.
  void release(const std::string& name) override {
    if (const core::TensorInfo* t = c_.find(name)) c_.release(*t, 0, t->nbytes);
  }
  void release(const std::string& name, uint64_t offset, uint64_t n) override {
    if (const core::TensorInfo* t = c_.find(name)) c_.release(*t, offset, n);
  }
  std::vector<std::string> names() const override { return c_.names(); }
  std::string origin() const override { return c_.dir(); }
  bool shape_of(const std::string& name, core::DType* dtype, std::vector<int64_t>* shape) override {
    const core::TensorInfo* t = c_.find(name);
    if (!t) return false;
    *dtype = t->dtype;
    *shape = t->shape;
    return true;
  }
  // A 4-bit packed weight's region is unpacked from its own bytes (not the whole tensor).
  bool find_region(const std::string& name, const std::vector<int64_t>* rows, int64_t c0, int64_t c1,
                   SrcTensor* out, std::vector<uint8_t>& buf) override {
    const core::TensorInfo* t = c_.find(name);
    if (!t) return false;
    if (c_.packed_of(name) && t->shape.size() == 2) {
      const int64_t n = rows ? int64_t(rows->size()) : t->shape[0];
      buf.resize(size_t(n * (c1 - c0)));
      if (c_.unpack_region(name, rows, c0, c1, reinterpret_cast<int8_t*>(buf.data()))) {
        *out = {core::DType::kI8, {n, c1 - c0}, buf.data()};
        return true;
      }
    }
    return TensorSource::find_region(name, rows, c0, c1, out, buf);
  }
  const core::Checkpoint& checkpoint() const { return c_; }

 private:
  core::Checkpoint c_;
};

// Random weights: uniform in [-a, a] with a = 0.02 * sqrt(3) (std 0.02, as HF's init), from a
// counter-based hash (splitmix64) of (seed, tensor name, index), so any tensor is reproducible
// on its own. Linear weights come as I8 + weight_scale when int8 is requested.
class RandomSource : public TensorSource {
 public:
  // A float model without a scheme; else int8 linears of scheme->bits (4: values in [-8, 7], as
  // a W4A16 checkpoint presents them), one scale per output channel or per group, and for
  // asymmetric schemes 4-bit zero points too (I8 [out, groups], uniform in [-8, 7]).
  RandomSource(const core::ModelConfig& c, const std::optional<core::QuantScheme>& scheme,
               uint64_t seed)
      : int8_(scheme.has_value()), seed_(seed), bits_(scheme ? scheme->bits : 8) {
    const int64_t group = scheme && scheme->weight_strategy == "group" ? scheme->group_size : 0;
    const bool asym = scheme && !scheme->symmetric;
    for (const core::TensorSpec& s : core::expected_tensors(c)) {
      specs_[s.name] = s;
      if (int8_ && core::tensor_role_is_linear(s.role) && s.shape.size() == 2) {
        std::string m = s.name.substr(0, s.name.size() - 7);  // strip ".weight"
        core::TensorSpec sc = s;
        sc.name = m + ".weight_scale";
        sc.shape = {s.shape[0], group > 0 ? (s.shape[1] + group - 1) / group : 1};
        specs_[sc.name] = sc;
        if (asym) {
          sc.name = m + ".weight_zero_point";
          specs_[sc.name] = sc;
        }
      }
    }
  }
  bool find(const std::string& name, SrcTensor* out) override {
    auto it = specs_.find(name);
    if (it == specs_.end()) return false;
    const core::TensorSpec& s = it->second;
    auto& buf = bufs_[name];
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    const bool is_scale = name.size() > 13 && name.compare(name.size() - 13, 13, ".weight_scale") == 0;
    const bool is_q = int8_ && !is_scale && core::tensor_role_is_linear(s.role) && s.shape.size() == 2;
    const bool is_norm = name.find("norm") != std::string::npos;
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    uint64_t h = seed_;
    for (char ch : name) h = mix(h ^ uint64_t(uint8_t(ch)));
    const float a = 0.02f * std::sqrt(3.0f);
    if (is_q) {
      buf.resize(size_t(n));
      int8_t* p = reinterpret_cast<int8_t*>(buf.data());
      const uint64_t levels = bits_ == 4 ? 16 : 255;
      const int64_t low = bits_ == 4 ? 8 : 127;
      for (int64_t i = 0; i < n; ++i) p[i] = int8_t(int64_t(mix(h + uint64_t(i)) % levels) - low);
      *out = {core::DType::kI8, s.shape, buf.data()};
      return true;
    }
    buf.resize(size_t(n) * 4);
    float* p = reinterpret_cast<float*>(buf.data());
    for (int64_t i = 0; i < n; ++i) {
      if (is_scale)
        p[i] = a / (bits_ == 4 ? 7.0f : 127.0f);
      else if (is_norm) p[i] = 1.0f;
      else if (is_bias) p[i] = 0.0f;
      else p[i] = (float(mix(h + uint64_t(i)) >> 40) / float(1ull << 24) * 2.0f - 1.0f) * a;
    }
    *out = {core::DType::kF32, s.shape, buf.data()};
    return true;
  }
  void release(const std::string& name) override { bufs_.erase(name); }
  std::vector<std::string> names() const override {
    std::vector<std::string> v;
    for (const auto& kv : specs_) v.push_back(kv.first);
    return v;
  }
  std::string origin() const override { return "random"; }

 private:
  static uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }
  bool int8_;
  uint64_t seed_;
  int bits_;
  std::map<std::string, core::TensorSpec> specs_;
  std::map<std::string, std::vector<uint8_t>> bufs_;
};

// n bytes of tensor `name` (data t) into dst, 64 MiB at a time, each piece's source pages released
// once copied: a large tensor (an embedding, an untied head) is never resident twice.
void copy_releasing(TensorSource& src, const std::string& name, const SrcTensor& t, void* dst,
                    uint64_t n) {
  constexpr uint64_t kPiece = uint64_t(64) << 20;
  for (uint64_t off = 0; off < n; off += kPiece) {
    const uint64_t m = std::min(kPiece, n - off);
    std::memcpy(static_cast<uint8_t*>(dst) + off, t.data + off, m);
    src.release(name, off, m);
  }
}

std::vector<float> to_f32(const SrcTensor& t) {
  std::vector<float> v(size_t(t.numel()));
  core::convert_to_f32(t.dtype, t.data, v.data(), t.numel());
  return v;
}


// The KV cache (K and V, every layer, every batch slot, the whole context, f32 at most) must
// have a size that fits in int64 and in the machine's memory: refuse it here with the numbers,
// rather than overflow a product or die in an allocation.
Status check_kv_cache_size(const core::ModelConfig& c, const EngineOptions& opts, int64_t max_seq,
                           const std::string& origin) {
  const std::optional<int64_t> bytes =
      core::checked_mul({int64_t(opts.max_batch), max_seq, c.kv_dim(), c.num_layers, 2, 4});
  SHRINK_CHECK(bytes.has_value(), StatusCode::kInvalidInput,
               "%s: a KV cache for %d sequences of %lld tokens overflows 64 bits; expected a "
               "smaller context (--ctx) or batch",
               origin.c_str(), opts.max_batch, (long long)max_seq);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) {
    const double ram = double(pages) * double(page);
    SHRINK_CHECK(double(*bytes) <= ram, StatusCode::kInvalidInput,
                 "%s: a KV cache for %d sequences of %lld tokens takes %.1f GiB (f32), more than "
                 "this machine's %.1f GiB of memory; expected a smaller context (--ctx) or batch",
                 origin.c_str(), opts.max_batch, (long long)max_seq, double(*bytes) / (1 << 30),
                 ram / (1 << 30));
  }
  return Status::ok();
}

}  // namespace

// ---- the engine ------------------------------------------------------------------------------

struct LayerW {
  std::unique_ptr<DeviceTensor> attn_norm, mlp_norm;
  std::vector<std::unique_ptr<Linear>> qkv;  // one fused linear, or q, k, v when not fusable
  std::unique_ptr<Linear> o, down;
  std::vector<std::unique_ptr<Linear>> gate_up;  // fused [gate; up], or gate, up
  std::unique_ptr<DeviceTensor> k_cache, v_cache;
  std::unique_ptr<DeviceTensor> k_scale, v_scale;  // int8 cache: [slot][pos][kv head]
  KvLayer cache;  // the views of the above that the backend's attention ops take
  // --tp: o_proj kept whole on every rank, which gathers the heads' outputs first (act-order
  // groups that mix the heads of different ranks), instead of summing partial outputs.
  bool o_whole = false;
};

// Tensor parallelism's share of the model for one rank (EngineOptions::tp): whole attention
// heads, a slice of the MLP channels (in the order down_proj's columns read them) and of the
// vocabulary, padded to vpad rows per rank so that the gathered logits are [ranks, rows, vpad].
struct TpShare {
  int rank = 0, size = 1;
  int64_t hq0 = 0, hkv0 = 0;  // first query and KV head
  int64_t v0 = 0, vl = 0, vpad = 0;
};

struct Engine::Impl {
  core::ModelConfig cfg;         // this rank's shapes (heads, MLP channels) under --tp
  core::ModelConfig cfg_global;  // the model's
  std::shared_ptr<TpComm> tp;
  TpShare share;
  // --tp scratch, grown as needed: the gathered [ranks, rows, width] of tp_gather_rows, this
  // rank's [rows, vpad] logits, and o_whole's [rows, q_dim] attention outputs.
  std::unique_ptr<DeviceTensor> tp_gather, tp_logits, tp_att;
  int64_t cap_tp_gather = 0, cap_tp_logits = 0, cap_tp_att = 0;
  std::optional<core::QuantScheme> scheme;  // nullopt: a float model
  EngineOptions opts;
  int64_t max_seq = 0;
  std::unique_ptr<Backend> be;
  std::unique_ptr<DeviceTensor> embed, final_norm, rope_cos, rope_sin;
  std::vector<int32_t> embed_ids;  // --tp: the step's ids in this rank's rows of embed
  bool embed_bf16 = false;  // embed holds bf16 bit patterns, two to a float
  std::unique_ptr<Linear> lm_head;
  std::vector<LayerW> layers;
  std::vector<int64_t> lengths;  // per slot
  uint64_t weight_bytes = 0;
  // Int8 activations for the weight-only block linears (EngineOptions::act_quant), by weight
  // bits, and what the backend ran them with (the first linear's choice, for describe()).
  ActInt8 act4 = ActInt8::kOff, act8 = ActInt8::kOff;
  ActInt8 act_used = ActInt8::kOff;
  // Activations, grown to the largest batch seen.
  int64_t cap_rows = 0;
  std::unique_ptr<DeviceTensor> x, xn, qkv, att, tmp, gu, act, sel, logits;
  int64_t cap_logit_rows = 0;

  Status build(TensorSource& src);
  Result<LinearDesc> linear_desc(TensorSource& src, const std::string& module, int64_t out,
                                 int64_t in, bool bias, const TpRegion* region = nullptr);
  using Slicer = std::function<Status(LinearDesc& d, size_t module)>;
  /// regions: --tp, the part of each module this rank reads (see TpRegion; null: all of it).
  Status add_linears(TensorSource& src, const std::vector<std::string>& modules,
                     const std::vector<int64_t>& outs, int64_t in, bool bias,
                     std::vector<std::unique_ptr<Linear>>* dst, const Slicer& slice = nullptr,
                     const std::vector<TpRegion>* regions = nullptr);
  void tp_head(const float* xn, int64_t rows, float* logits);
  const float* tp_att_whole(const float* att_local, int64_t rows);
  void tp_gather_rows(const float* local, int64_t rows, int64_t width, float* out, int64_t ld,
                      const std::function<std::pair<int64_t, int64_t>(int rank)>& span);
  float* tp_scratch(std::unique_ptr<DeviceTensor>& t, int64_t& cap, int64_t n);
  bool ensure_rows(int64_t rows);
  Status allocations_check();
  Status buffers_check(bool backend_logits);
  Status run(const std::vector<SeqChunk>& chunks, bool all_logits, std::vector<float>* logits,
             std::vector<int32_t>* next, const core::SampleRow* sample);
};

Result<LinearDesc> Engine::Impl::linear_desc(TensorSource& src, const std::string& module,
                                             int64_t out, int64_t in, bool bias,
                                             const TpRegion* region) {
  LinearDesc d;
  d.name = module;
  d.out = out;
  d.in = in;
  SrcTensor w;
  core::DType wdtype;
  std::vector<int64_t> wshape;
  SHRINK_CHECK(src.shape_of(module + ".weight", &wdtype, &wshape), StatusCode::kInvalidInput,
               "%s: missing %s.weight", src.origin().c_str(), module.c_str());
  // --tp: read only the rank's region (a packed 4-bit weight: unpack only it), except under
  // act-order groups (whose columns the slicer picks in group order from the whole). d.out and
  // d.in stay the layer's; ro x ri is what is read.
  SrcTensor probe;
  const bool part = region && !src.find(module + ".weight_g_idx", &probe) &&
                    wshape == std::vector<int64_t>{out, in};
  const std::vector<int64_t>* rows = part && !region->rows.empty() ? &region->rows : nullptr;
  const int64_t c0 = part ? region->c0 : 0, c1 = part && region->c1 >= 0 ? region->c1 : in;
  const int64_t ro = rows ? int64_t(rows->size()) : out, ri = c1 - c0;
  std::vector<uint8_t> wbuf, sbuf, zbuf, bbuf;
  if (part) {
    SHRINK_CHECK(src.find_region(module + ".weight", rows, c0, c1, &w, wbuf),
                 StatusCode::kInvalidInput, "%s: missing %s.weight", src.origin().c_str(),
                 module.c_str());
    d.sliced = true;
  } else {
    SHRINK_CHECK(src.find(module + ".weight", &w), StatusCode::kInvalidInput,
                 "%s: missing %s.weight", src.origin().c_str(), module.c_str());
  }
  if (w.dtype == core::DType::kI8) {
    SHRINK_CHECK(scheme.has_value(), StatusCode::kInvalidInput,
                 "%s: %s.weight is I8 but config.json has no quantization_config",
                 src.origin().c_str(), module.c_str());
    d.act = act_quant_of(*scheme);
    d.kind = d.act == ActQuant::kNone ? LinearKind::kW8A16 : LinearKind::kW8A8;
    d.q.assign(reinterpret_cast<const int8_t*>(w.data),
               reinterpret_cast<const int8_t*>(w.data) + ro * ri);
    if (scheme->bits == 4) {
      for (size_t i = 0; i < d.q.size(); ++i) {
        SHRINK_CHECK(d.q[i] >= core::kQMin4 && d.q[i] <= core::kQMax4, StatusCode::kInvalidInput,
                     "%s: %s.weight[%zu, %zu] is %d; expected a 4-bit value in [-8, 7] "
                     "(config.json says pack-quantized)",
                     src.origin().c_str(), module.c_str(),
                     size_t(rows ? (*rows)[i / size_t(ri)] : int64_t(i / size_t(ri))),
                     size_t(c0) + i % size_t(ri), int(d.q[i]));
      }
      d.bits = 4;
      if (d.act == ActQuant::kDynamic) {
        // W4A8: the checkpoint's int8 activations per token run through the weight-only 4-bit
        // linears' int8-activation kernels (whatever --act-quant says: the model was calibrated
        // for them).
        d.act = ActQuant::kNone;
        d.kind = LinearKind::kW8A16;
        d.act_int8 = ActInt8::kRow;
      }
    }
    SrcTensor sc;
    SHRINK_CHECK(src.find(module + ".weight_scale", &sc), StatusCode::kInvalidInput,
                 "%s: missing %s.weight_scale", src.origin().c_str(), module.c_str());
    // The region's scales (and zero points): its rows, and under groups the groups its columns
    // fall in (a split that cuts a group is refused by desc_cols after this read).
    const bool grouped = scheme->weight_strategy == "group" && scheme->group_size > 0;
    const int64_t g0 = grouped ? c0 / scheme->group_size : 0;
    const int64_t g1 = grouped ? (c1 + scheme->group_size - 1) / scheme->group_size : 1;
    auto region_of = [&](const SrcTensor& t, std::vector<uint8_t>& buf) {
      const int64_t cols = t.shape.size() >= 2 ? t.shape[1] : 1;
      const bool fits = t.shape.size() >= 1 && t.shape[0] == out && (grouped ? cols >= g1 : true);
      return part && fits ? src_region(t, rows, grouped ? g0 : 0, grouped ? g1 : cols, buf) : t;
    };
    const bool per_tensor = scheme->weight_strategy == "tensor";
    std::vector<float> s = to_f32(per_tensor ? sc : region_of(sc, sbuf));
    if (scheme->weight_strategy == "group") {
      d.group = scheme->group_size;
      d.scale = std::move(s);
    } else {
      d.group = in;
      d.scale = per_tensor ? std::vector<float>(size_t(ro), s[0]) : std::move(s);
    }
    if (d.act == ActQuant::kStatic) {
      SrcTensor is;
      SHRINK_CHECK(src.find(module + ".input_scale", &is), StatusCode::kInvalidInput,
                   "%s: missing %s.input_scale", src.origin().c_str(), module.c_str());
      d.input_scale = to_f32(is)[0];
      SHRINK_CHECK(d.input_scale > 0 && std::isfinite(d.input_scale), StatusCode::kInvalidInput,
                   "%s: %s.input_scale is %g; expected a positive finite scale",
                   src.origin().c_str(), module.c_str(), double(d.input_scale));
    }
    for (float v : d.scale) {
      SHRINK_CHECK(std::isfinite(v), StatusCode::kInvalidInput,
                   "%s: %s.weight_scale holds a non-finite value", src.origin().c_str(),
                   module.c_str());
    }
    src.release(module + ".weight_scale");
    if (scheme->symmetric) {  // stored zero points must be zeros (compressed-tensors writes some)
      SrcTensor zt;
      if (src.find(module + ".weight_zero_point", &zt)) {
        const bool zero =
            core::dtype_size(zt.dtype) > 0 &&
            std::all_of(zt.data, zt.data + zt.numel() * int64_t(core::dtype_size(zt.dtype)),
                        [](uint8_t b) { return b == 0; });
        SHRINK_CHECK(zero, StatusCode::kInvalidInput,
                     "%s: %s.weight_zero_point holds non-zero zero points, but config.json says "
                     "symmetric: true; expected zeros, or symmetric: false (4-bit weights)",
                     src.origin().c_str(), module.c_str());
        src.release(module + ".weight_zero_point");
      }
    } else {  // 4-bit zero points (core::checkpoint_check checked the shape)
      SrcTensor zt;
      const bool found = src.find(module + ".weight_zero_point", &zt);
      if (found) zt = region_of(zt, zbuf);
      SHRINK_CHECK(found && zt.dtype == core::DType::kI8 &&
                       zt.numel() == int64_t(d.scale.size()),
                   StatusCode::kInvalidInput,
                   "%s: %s.weight_zero_point: expected I8 [%lld, %lld] (symmetric: false)",
                   src.origin().c_str(), module.c_str(), (long long)out,
                   (long long)(int64_t(d.scale.size()) / out));
      const int8_t* z = reinterpret_cast<const int8_t*>(zt.data);
      d.zp.assign(z, z + zt.numel());
      for (size_t i = 0; i < d.zp.size(); ++i) {
        SHRINK_CHECK(d.zp[i] >= core::kQMin4 && d.zp[i] <= core::kQMax4, StatusCode::kInvalidInput,
                     "%s: %s.weight_zero_point[%zu, %zu] is %d; expected a 4-bit value in [-8, 7]",
                     src.origin().c_str(), module.c_str(), i / size_t(d.scale.size() / size_t(out)),
                     i % size_t(d.scale.size() / size_t(out)), int(d.zp[i]));
      }
      src.release(module + ".weight_zero_point");
    }
    SrcTensor gi;
    if (src.find(module + ".weight_g_idx", &gi)) {  // GPTQ act-order groups
      SHRINK_CHECK(
          (gi.dtype == core::DType::kI32 || gi.dtype == core::DType::kI64) && gi.numel() == in,
          StatusCode::kInvalidInput, "%s: %s.weight_g_idx: expected I32 or I64 [%lld]",
          src.origin().c_str(), module.c_str(), (long long)in);
      const std::vector<int64_t> g = core::indices_to_i64(gi.dtype, gi.data, in);
      SHRINK_ASSIGN_OR_RETURN(
          d.perm,
          core::group_order_from_g_idx(g, d.group, src.origin() + ": " + module + ".weight_g_idx"));
      if (!d.perm.empty()) {  // q's columns in group order
        std::vector<int8_t> qp(d.q.size());
        for (int64_t n = 0; n < out; ++n)
          for (int64_t j = 0; j < in; ++j)
            qp[size_t(n * in + j)] = d.q[size_t(n * in + d.perm[size_t(j)])];
        d.q = std::move(qp);
      }
      src.release(module + ".weight_g_idx");
    }
  } else {
    d.kind = LinearKind::kF32;
    if (be->float_weights_bf16() && w.dtype == core::DType::kBF16) {
      d.wb.resize(size_t(w.numel()));  // as stored: no float32 copy
      copy_releasing(src, module + ".weight", w, d.wb.data(), d.wb.size() * 2);
    } else {
      d.w = to_f32(w);
    }
  }
  src.release(module + ".weight");
  if (bias) {
    SrcTensor b;
    SHRINK_CHECK(src.find(module + ".bias", &b), StatusCode::kInvalidInput, "%s: missing %s.bias",
                 src.origin().c_str(), module.c_str());
    d.bias = to_f32(rows && b.numel() == out ? src_region(b, rows, 0, 1, bbuf) : b);
    src.release(module + ".bias");
  }
  return d;
}

// Load `modules` (same input) and fuse them into one linear when they have the same kind,
// grouping and activation scale (always true for float and dynamic/W8A16 int8), else keep them
// apart; either way the outputs land side by side in one row.
Status Engine::Impl::add_linears(TensorSource& src, const std::vector<std::string>& modules,
                                 const std::vector<int64_t>& outs, int64_t in, bool bias,
                                 std::vector<std::unique_ptr<Linear>>* dst, const Slicer& slice,
                                 const std::vector<TpRegion>* regions) {
  std::vector<LinearDesc> ds;
  for (size_t i = 0; i < modules.size(); ++i) {
    SHRINK_ASSIGN_OR_RETURN(LinearDesc d, linear_desc(src, modules[i], outs[i], in, bias,
                                                      regions ? &(*regions)[i] : nullptr));
    if (d.kind == LinearKind::kW8A16 && d.act_int8 == ActInt8::kOff) d.act_int8 = d.bits == 4 ? act4 : act8;
    if (slice) SHRINK_RETURN_IF_ERROR(slice(d, i));
    ds.push_back(std::move(d));
  }
  bool fusable = true;
  for (const LinearDesc& d : ds) {
    fusable &= d.wb.empty() == ds[0].wb.empty() && d.kind == ds[0].kind && d.group == ds[0].group && d.act == ds[0].act &&
               d.input_scale == ds[0].input_scale && d.bits == ds[0].bits &&
               d.zp.empty() == ds[0].zp.empty() && d.perm == ds[0].perm;
  }
  if (!fusable) {
    for (LinearDesc& d : ds) {
      SHRINK_ASSIGN_OR_RETURN(auto l, be->linear_create(std::move(d)));
      if (act_used == ActInt8::kOff) act_used = l->act_int8;
      weight_bytes += l->weight_bytes;
      dst->push_back(std::move(l));
    }
    return Status::ok();
  }
  LinearDesc f = std::move(ds[0]);
  f.name += "+";
  // Exact capacities: growing by insert would leave up to a third of each fused matrix as
  // unused capacity (q, then k and v: 33% of q+k+v's bytes on the llama-1b shape).
  auto reserve = [&](auto member) {
    size_t n = 0;
    for (size_t i = 1; i < ds.size(); ++i) n += (ds[i].*member).size();
    (f.*member).reserve((f.*member).size() + n);
  };
  reserve(&LinearDesc::w);
  reserve(&LinearDesc::wb);
  reserve(&LinearDesc::q);
  reserve(&LinearDesc::scale);
  reserve(&LinearDesc::zp);
  reserve(&LinearDesc::bias);
  for (size_t i = 1; i < ds.size(); ++i) {
    f.out += ds[i].out;
    f.w.insert(f.w.end(), ds[i].w.begin(), ds[i].w.end());
    f.wb.insert(f.wb.end(), ds[i].wb.begin(), ds[i].wb.end());
    f.q.insert(f.q.end(), ds[i].q.begin(), ds[i].q.end());
    f.scale.insert(f.scale.end(), ds[i].scale.begin(), ds[i].scale.end());
    f.zp.insert(f.zp.end(), ds[i].zp.begin(), ds[i].zp.end());
    f.bias.insert(f.bias.end(), ds[i].bias.begin(), ds[i].bias.end());
    ds[i] = LinearDesc();
  }
  SHRINK_ASSIGN_OR_RETURN(auto l, be->linear_create(std::move(f)));
  if (act_used == ActInt8::kOff) act_used = l->act_int8;
  weight_bytes += l->weight_bytes;
  dst->push_back(std::move(l));
  return Status::ok();
}

namespace {

// Per-output-channel symmetric int8 of a float [out, in] matrix (quant_weight_s8), the scheme
// `shrink quantize` writes.
// A float [out, in] source tensor quantized per channel to int8 (W8A16, --lm-head int8), a
// block of rows at a time: no float32 copy of it is made (a 128k x 2048 head would be 1 GiB,
// held beside everything else while the model loads).
void desc_quantize_w8a16(LinearDesc& d, const SrcTensor& t) {
  d.q.resize(size_t(d.out * d.in));
  d.scale.resize(size_t(d.out));
  const size_t es = core::dtype_size(t.dtype);
  const int64_t rows = std::max<int64_t>(1, (int64_t(16) << 20) / (4 * d.in));
  std::vector<float> block;
  for (int64_t r0 = 0; r0 < d.out; r0 += rows) {
    const int64_t n = std::min(rows, d.out - r0);
    block.resize(size_t(n * d.in));
    core::convert_to_f32(t.dtype, t.data + uint64_t(r0 * d.in) * es, block.data(), n * d.in);
    quant_weight_s8(block.data(), n, d.in, d.in, d.q.data() + r0 * d.in, d.scale.data() + r0);
  }
  d.kind = LinearKind::kW8A16;
  d.group = d.in;
  d.w.clear();
  d.w.shrink_to_fit();
  d.w_borrowed = nullptr;
  d.wb_borrowed = nullptr;
}

}  // namespace

namespace {

// Rows [r0, r0 + n) of a [rows, cols] source tensor, as a tensor of their own (a view).
SrcTensor src_rows(const SrcTensor& t, int64_t r0, int64_t n) {
  SrcTensor v = t;
  v.shape = {n, t.shape[1]};
  v.data += uint64_t(r0 * t.shape[1]) * core::dtype_size(t.dtype);
  return v;
}

// first, first + 1, ..., first + n - 1.
std::vector<int64_t> index_range(int64_t first, int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

// A row-parallel layer's input row is split over the ranks, so per-token int8 activations take
// their scale from the whole row's maximum, reduced over the ranks (LinearDesc::act_rows_split):
// W8A8 dynamic, and 8-bit or 4-bit weights with int8 activations per token (--act-quant
// int8-row, W4A8 checkpoints). Per 32 inputs needs nothing: a rank's columns hold whole blocks.
Status tp_row_parallel_check(LinearDesc& d) {
  d.act_rows_split = (d.kind == LinearKind::kW8A8 && d.act == ActQuant::kDynamic) ||
                     d.act_int8 == ActInt8::kRow;
  return Status::ok();
}

}  // namespace

Status Engine::Impl::build(TensorSource& src) {
  const core::ModelConfig& c = cfg;  // this rank's shapes
  const core::ModelConfig& g = cfg_global;
  const int64_t H = c.hidden_size, I = g.intermediate_size;
  const TpShare& ts = share;
  if (tp) {
    be->set_row_absmax_reduce(
        [comm = tp](float* amax, int64_t rows) { comm->allreduce_max(amax, rows); });
  }
  SHRINK_CHECK(opts.lm_head == "auto" || opts.lm_head == "f32" || opts.lm_head == "int8",
               StatusCode::kInvalidInput, "--lm-head '%s': expected auto, f32 or int8",
               opts.lm_head.c_str());
  const bool head_int8 = opts.lm_head == "int8" || (opts.lm_head == "auto" && scheme.has_value());
  const KvStorage kv = opts.kv_cache == "f16"    ? KvStorage::kF16
                       : opts.kv_cache == "int8" ? KvStorage::kInt8
                                                 : KvStorage::kF32;  // checked in impl_create
  std::optional<LinearDesc> tied_head_int8;  // a tied head quantized from the embedding
  {
    SrcTensor e;
    SHRINK_CHECK(src.find("model.embed_tokens.weight", &e), StatusCode::kInvalidInput,
                 "%s: missing model.embed_tokens.weight", src.origin().c_str());
    SHRINK_CHECK(e.shape.size() == 2 && e.shape[0] == c.vocab_size && e.shape[1] == H,
                 StatusCode::kInvalidInput, "%s: model.embed_tokens.weight is not [%lld, %lld]",
                 src.origin().c_str(), (long long)c.vocab_size, (long long)H);
    if (head_int8 && c.tie_word_embeddings) {
      tied_head_int8.emplace();
      tied_head_int8->name = "lm_head (tied, int8)";
      tied_head_int8->out = ts.vl;  // this rank's vocabulary rows (all of them without --tp)
      tied_head_int8->in = H;
      desc_quantize_w8a16(*tied_head_int8, src_rows(e, ts.v0, ts.vl));
    }
    embed_bf16 = be->float_weights_bf16() && e.dtype == core::DType::kBF16;
    // --tp: vocab-parallel, as the head: this rank's rows [v0, v0 + vl) and one zero row after
    // them, which the tokens of the other ranks' rows look up (forward sums the ranks' lookups).
    const bool vsplit = ts.size > 1;
    const SrcTensor mine = vsplit ? src_rows(e, ts.v0, ts.vl) : e;
    const int64_t kept = (mine.shape[0] + (vsplit ? 1 : 0)) * H;
    if (embed_bf16) {  // as stored, two bf16 values to a float of backend memory
      std::vector<float> packed(size_t((kept + 1) / 2), 0.0f);
      copy_releasing(src, "model.embed_tokens.weight", mine, packed.data(),
                     uint64_t(mine.numel()) * 2);
      embed = be->tensor_from_host(std::move(packed));
    } else {
      std::vector<float> v = to_f32(mine);
      v.resize(size_t(kept), 0.0f);
      embed = be->tensor_from_host(std::move(v));
    }
    src.release("model.embed_tokens.weight");
    weight_bytes += uint64_t(H) * (embed_bf16 ? 2 : 4);  // one embedding row per token
    // A tied head borrows this tensor: a failed allocation must stop the load here, with the
    // backend's reason, not later as a head without weights.
    if (!embed->data()) return allocations_check();
  }
  auto vec = [&](const std::string& n) -> Result<std::unique_ptr<DeviceTensor>> {
    SrcTensor t;
    SHRINK_CHECK(src.find(n, &t), StatusCode::kInvalidInput, "%s: missing %s", src.origin().c_str(),
                 n.c_str());
    auto v = to_f32(t);
    src.release(n);
    return be->tensor_from_host(std::move(v));
  };
  layers.resize(size_t(c.num_layers));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerW& L = layers[size_t(l)];
    SHRINK_ASSIGN_OR_RETURN(L.attn_norm, vec(p + "input_layernorm.weight"));
    SHRINK_ASSIGN_OR_RETURN(L.mlp_norm, vec(p + "post_attention_layernorm.weight"));
    const bool tp_on = ts.size > 1;
    const int64_t hd = c.head_dim;
    // Column-parallel q/k/v: this rank's heads' rows.
    auto qkv_rows = [&](LinearDesc& d, size_t i) {
      const int64_t first = i == 0 ? ts.hq0 : ts.hkv0;
      desc_rows(d, index_range(first * hd, i == 0 ? c.q_dim() : c.kv_dim()));
      return Status::ok();
    };
    // Under --tp each module reads only the rank's part of the checkpoint (TpRegion).
    const std::vector<TpRegion> qkv_reg = {{index_range(ts.hq0 * hd, c.q_dim())},
                                           {index_range(ts.hkv0 * hd, c.kv_dim())},
                                           {index_range(ts.hkv0 * hd, c.kv_dim())}};
    SHRINK_RETURN_IF_ERROR(add_linears(
        src, {p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"},
        {g.q_dim(), g.kv_dim(), g.kv_dim()}, H, c.qkv_bias, &L.qkv,
        tp_on ? Slicer(qkv_rows) : nullptr, tp_on ? &qkv_reg : nullptr));
    std::vector<std::unique_ptr<Linear>> one;
    // Row-parallel o_proj: the columns of this rank's heads (under act-order, the columns whose
    // groups hold exactly those heads' channels, read through a local permutation).
    auto o_cols = [&](LinearDesc& d, size_t) -> Status {
      const LinearDesc whole = d.perm.empty() ? LinearDesc() : d;
      SHRINK_RETURN_IF_ERROR(tp_row_parallel_check(d));
      const int64_t c0 = ts.hq0 * hd, n = c.q_dim();
      std::vector<int32_t> ch;
      SHRINK_RETURN_IF_ERROR(desc_cols(d, c0, c0 + n, &ch));
      bool natural = true;
      for (int64_t j = 0; j < n; ++j) natural &= ch[size_t(j)] == c0 + j;
      if (!natural) {
        std::vector<int32_t> sorted = ch;
        std::sort(sorted.begin(), sorted.end());
        bool own = true;
        for (int64_t j = 0; j < n; ++j) own &= sorted[size_t(j)] == c0 + j;
        if (!own) {  // groups mix heads of several ranks: keep o_proj whole (see LayerW)
          d = std::move(whole);
          L.o_whole = true;
          return Status::ok();
        }
        d.perm.resize(size_t(n));
        for (int64_t j = 0; j < n; ++j) d.perm[size_t(j)] = int32_t(ch[size_t(j)] - c0);
      }
      if (ts.rank != 0) d.bias.clear();  // added once, by rank 0
      return Status::ok();
    };
    const std::vector<TpRegion> o_reg = {{{}, ts.hq0 * hd, ts.hq0 * hd + c.q_dim()}};
    SHRINK_RETURN_IF_ERROR(add_linears(src, {p + "self_attn.o_proj"}, {H}, g.q_dim(), c.o_bias,
                                       &one, tp_on ? Slicer(o_cols) : nullptr,
                                       tp_on ? &o_reg : nullptr));
    L.o = std::move(one[0]);
    // Row-parallel down_proj first: its columns (whole groups, in group order under act-order)
    // name the MLP channels this rank owns, which gate/up then produce in that order.
    std::vector<int32_t> channels;
    auto down_cols = [&](LinearDesc& d, size_t) -> Status {
      SHRINK_RETURN_IF_ERROR(tp_row_parallel_check(d));
      const int64_t n = c.intermediate_size;
      return desc_cols(d, ts.rank * n, (ts.rank + 1) * n, &channels);
    };
    one.clear();
    const std::vector<TpRegion> down_reg = {
        {{}, ts.rank * c.intermediate_size, (ts.rank + 1) * c.intermediate_size}};
    SHRINK_RETURN_IF_ERROR(add_linears(src, {p + "mlp.down_proj"}, {H}, I, false, &one,
                                       tp_on ? Slicer(down_cols) : nullptr,
                                       tp_on ? &down_reg : nullptr));
    L.down = std::move(one[0]);
    auto gate_up_rows = [&](LinearDesc& d, size_t) {
      desc_rows(d, std::vector<int64_t>(channels.begin(), channels.end()));
      return Status::ok();
    };
    const std::vector<int64_t> own(channels.begin(), channels.end());
    const std::vector<TpRegion> gate_up_reg = {{own}, {own}};
    SHRINK_RETURN_IF_ERROR(add_linears(src, {p + "mlp.gate_proj", p + "mlp.up_proj"}, {I, I}, H,
                                       false, &L.gate_up, tp_on ? Slicer(gate_up_rows) : nullptr,
                                       tp_on ? &gate_up_reg : nullptr));
    const int64_t cache = int64_t(opts.max_batch) * max_seq * c.kv_dim();
    // f16 and int8 elements packed 2 and 4 to a float of the backend's tensors.
    const int64_t floats = kv == KvStorage::kF16    ? (cache + 1) / 2
                           : kv == KvStorage::kInt8 ? (cache + 3) / 4
                                                    : cache;
    L.k_cache = be->tensor_zeros(floats);
    L.v_cache = be->tensor_zeros(floats);
    L.cache = KvLayer{L.k_cache->data(), L.v_cache->data(), max_seq * c.kv_dim(), c.kv_dim()};
    L.cache.storage = kv;
    L.cache.head_dim = c.head_dim;
    if (kv == KvStorage::kInt8) {
      L.k_scale = be->tensor_zeros(int64_t(opts.max_batch) * max_seq * c.num_kv_heads);
      L.v_scale = be->tensor_zeros(int64_t(opts.max_batch) * max_seq * c.num_kv_heads);
      L.cache.k_scale = L.k_scale->data();
      L.cache.v_scale = L.v_scale->data();
    }
  }
  SHRINK_ASSIGN_OR_RETURN(final_norm, vec("model.norm.weight"));
  if (c.tie_word_embeddings) {
    LinearDesc d;
    d.name = "lm_head (tied)";
    d.out = ts.vl;  // this rank's vocabulary rows (all of them without --tp)
    d.in = H;
    if (embed_bf16) {  // the rank's rows are the embedding it keeps (all of them without --tp)
      d.wb_borrowed = reinterpret_cast<const uint16_t*>(embed->data());
    } else {
      d.w_borrowed = embed->data();
    }
    if (tied_head_int8) d = std::move(*tied_head_int8);
    SHRINK_ASSIGN_OR_RETURN(lm_head, be->linear_create(std::move(d)));
    weight_bytes += lm_head->weight_bytes;
  } else {
    SrcTensor h;
    const bool float_head = src.find("lm_head.weight", &h) && core::dtype_is_float(h.dtype) &&
                            h.shape == std::vector<int64_t>{c.vocab_size, H};
    LinearDesc d;
    if (head_int8 && float_head) {  // quantized from the stored rows, no float32 copy
      d.name = "lm_head (int8)";
      d.out = ts.vl;
      d.in = H;
      desc_quantize_w8a16(d, src_rows(h, ts.v0, ts.vl));
      src.release("lm_head.weight");
    } else {
      const TpRegion vocab{index_range(ts.v0, ts.vl)};  // vocab-parallel: the rank's rows
      SHRINK_ASSIGN_OR_RETURN(
          d, linear_desc(src, "lm_head", c.vocab_size, H, false, ts.size > 1 ? &vocab : nullptr));
      if (ts.size > 1) desc_rows(d, index_range(ts.v0, ts.vl));
    }
    SHRINK_ASSIGN_OR_RETURN(lm_head, be->linear_create(std::move(d)));
    weight_bytes += lm_head->weight_bytes;
  }
  // RoPE tables as transformers builds them: angle = float32(position) * float32(inv_freq),
  // cos/sin of that float32 angle.
  const std::vector<double> inv = core::rope_inv_freq(c);
  const int64_t half = c.head_dim / 2;
  std::vector<float> cs(size_t(max_seq * half)), sn(size_t(max_seq * half));
  for (int64_t p = 0; p < max_seq; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float a = float(p) * float(inv[size_t(i)]);
      cs[size_t(p * half + i)] = float(std::cos(double(a)));
      sn[size_t(p * half + i)] = float(std::sin(double(a)));
    }
  }
  rope_cos = be->tensor_from_host(std::move(cs));
  rope_sin = be->tensor_from_host(std::move(sn));
  lengths.assign(size_t(opts.max_batch), 0);
  return allocations_check();
}

// After build: a backend that could not allocate (a device out of memory) hands out null
// tensors and records why; the load fails with that reason before any op runs on them.
Status Engine::Impl::allocations_check() {
  Status st = be->take_error();
  if (!st.is_ok()) return st;
  auto null = [](const std::unique_ptr<DeviceTensor>& t) { return t && !t->data(); };
  bool any = !embed || null(embed) || null(final_norm) || null(rope_cos) || null(rope_sin);
  for (const LayerW& L : layers) {
    any = any || null(L.k_cache) || null(L.v_cache) || null(L.k_scale) || null(L.v_scale) ||
          null(L.attn_norm) || null(L.mlp_norm);
  }
  SHRINK_CHECK(!any, StatusCode::kInternal, "the backend could not allocate the model's tensors");
  return Status::ok();
}

// Before a forward's first op: the activation buffers (and the logits, when the backend holds
// them) exist. A failed allocation clears the capacities so that the next forward retries.
Status Engine::Impl::buffers_check(bool backend_logits) {
  bool null = !x->data() || !xn->data() || !tmp->data() || !qkv->data() || !att->data() ||
              !gu->data() || !act->data();
  if (backend_logits) null = null || !logits || !logits->data();
  Status st = be->take_error();
  if (!null && st.is_ok()) return Status::ok();
  const int64_t rows = cap_rows;
  cap_rows = 0;
  cap_logit_rows = 0;
  if (!st.is_ok()) return st;
  return internal_error("the backend could not allocate the activation buffers of " +
                        std::to_string(rows) + " rows");
}

bool Engine::Impl::ensure_rows(int64_t rows) {
  if (rows <= cap_rows) return false;
  const core::ModelConfig& c = cfg;
  cap_rows = rows;
  x = be->tensor_zeros(rows * c.hidden_size);
  xn = be->tensor_zeros(rows * c.hidden_size);
  tmp = be->tensor_zeros(rows * c.hidden_size);
  qkv = be->tensor_zeros(rows * (c.q_dim() + 2 * c.kv_dim()));
  att = be->tensor_zeros(rows * c.q_dim());
  gu = be->tensor_zeros(rows * 2 * c.intermediate_size);
  act = be->tensor_zeros(rows * c.intermediate_size);
  return true;
}

// A --tp scratch tensor of at least n floats (kept across calls).
float* Engine::Impl::tp_scratch(std::unique_ptr<DeviceTensor>& t, int64_t& cap, int64_t n) {
  if (n > cap) {
    t = be->tensor_zeros(n);
    cap = n;
  }
  return t->data();
}

// Every rank's [rows, width] `local` gathered, and laid out side by side in `out` ([rows, ld]),
// on the backend's memory: span(r) = (first column, columns) of rank r's part of each row.
void Engine::Impl::tp_gather_rows(const float* local, int64_t rows, int64_t width, float* out,
                                  int64_t ld,
                                  const std::function<std::pair<int64_t, int64_t>(int)>& span) {
  float* all = tp_scratch(tp_gather, cap_tp_gather, int64_t(share.size) * rows * width);
  tp->allgather(local, rows * width, all);
  for (int r = 0; r < share.size; ++r) {
    const auto [c0, n] = span(r);
    be->copy_rows(all + int64_t(r) * rows * width, width, out + c0, ld, rows, n);
  }
}

// Vocab-parallel lm_head: this rank's [rows, vpad] slice of the logits, gathered into the whole
// [rows, V] (the last ranks' slices may hold fewer than vpad real rows).
void Engine::Impl::tp_head(const float* xn_rows, int64_t rows, float* logits) {
  const int64_t V = cfg.vocab_size, P = share.vpad;
  float* local = tp_scratch(tp_logits, cap_tp_logits, rows * P);
  be->linear(*lm_head, xn_rows, rows, local, P);
  tp_gather_rows(local, rows, P, logits, V, [&](int r) {
    const int64_t v0 = std::min<int64_t>(V, r * P);
    return std::make_pair(v0, std::min<int64_t>(V, v0 + P) - v0);
  });
}

// The attention outputs of every rank's heads, [rows, q_dim] in head order, for a whole o_proj.
const float* Engine::Impl::tp_att_whole(const float* att_local, int64_t rows) {
  const int64_t qdl = cfg.q_dim(), qd = cfg_global.q_dim();
  float* att = tp_scratch(tp_att, cap_tp_att, rows * qd);
  tp_gather_rows(att_local, rows, qdl, att, qd,
                 [&](int r) { return std::make_pair(r * qdl, qdl); });
  return att;
}

namespace {

// stored_bf16: the checkpoint's float tensors are bfloat16 (what float_weights "auto" keeps).
// EngineOptions::act_quant as (4-bit, 8-bit) choices for the weight-only linears.
Result<std::pair<ActInt8, ActInt8>> act_int8_choice(const EngineOptions& opts) {
  const std::string& a = opts.act_quant;
  SHRINK_CHECK(a == "auto" || a.empty() || a == "none" || a == "int8-row" || a == "int8-block",
               StatusCode::kInvalidInput,
               "--act-quant '%s': expected auto, none, int8-row or int8-block", a.c_str());
  const bool cuda = opts.device == "cuda";
  SHRINK_CHECK(!cuda || a == "auto" || a.empty() || a == "none", StatusCode::kInvalidInput,
               "--act-quant %s: int8 activations for weight-only checkpoints run on the cpu "
               "device only so far (cuda: none)",
               a.c_str());
  if (cuda || a == "none") return std::make_pair(ActInt8::kOff, ActInt8::kOff);
  if (a == "int8-row") return std::make_pair(ActInt8::kRow, ActInt8::kRow);
  if (a == "int8-block") return std::make_pair(ActInt8::kBlock32, ActInt8::kRow);
  return std::make_pair(kActAuto4, kActAuto8);
}

// This rank's share of the model under tensor parallelism, and its shapes (local: heads, KV
// heads and MLP channels divided by the ranks). Refuses what does not split evenly, naming it.
Status tp_share_plan(const core::ModelConfig& cfg, const EngineOptions& opts,
                     const std::string& origin, TpShare& ts, core::ModelConfig& local) {
  const int n = opts.tp->size();
  ts.rank = opts.tp->rank();
  ts.size = n;
  SHRINK_CHECK(cfg.num_kv_heads % n == 0, StatusCode::kInvalidInput,
               "%s: num_key_value_heads %lld cannot be split over --tp %d ranks (each rank holds "
               "whole KV heads with their query heads); expected a divisor of %lld",
               origin.c_str(), (long long)cfg.num_kv_heads, n, (long long)cfg.num_kv_heads);
  SHRINK_CHECK(cfg.intermediate_size % n == 0, StatusCode::kInvalidInput,
               "%s: intermediate_size %lld cannot be split over --tp %d ranks evenly",
               origin.c_str(), (long long)cfg.intermediate_size, n);
  SHRINK_CHECK(cfg.vocab_size >= n, StatusCode::kInvalidInput,
               "%s: vocab_size %lld is smaller than --tp %d", origin.c_str(),
               (long long)cfg.vocab_size, n);
  local.num_heads = cfg.num_heads / n;
  local.num_kv_heads = cfg.num_kv_heads / n;
  local.intermediate_size = cfg.intermediate_size / n;
  ts.hq0 = ts.rank * local.num_heads;
  ts.hkv0 = ts.rank * local.num_kv_heads;
  ts.vpad = (cfg.vocab_size + n - 1) / n;
  ts.v0 = std::min<int64_t>(cfg.vocab_size, ts.rank * ts.vpad);
  ts.vl = std::min<int64_t>(cfg.vocab_size, ts.v0 + ts.vpad) - ts.v0;
  SHRINK_CHECK(ts.vl > 0, StatusCode::kInvalidInput,
               "%s: vocab_size %lld leaves rank %d of --tp %d no rows", origin.c_str(),
               (long long)cfg.vocab_size, ts.rank, n);
  return Status::ok();
}

// Under --tp, every rank has loaded its share before any returns: the ranks load at different
// speeds, and the first forward (a benchmark's timed prefill) must not absorb the difference.
Status tp_barrier(TpComm* tp) {
  if (!tp) return Status::ok();
  float one = 1;
  try {
    tp->host_group().allreduce_sum(&one, 1);
  } catch (const TpError& e) {
    return Status(StatusCode::kInternal, e.what());
  }
  tp->host_group().stats_reset();
  tp->stats_reset();
  return Status::ok();
}

// The backend of opts.device: cuda (the plugin) or cpu, with the float storage asked for.
Result<std::unique_ptr<Backend>> backend_make(const EngineOptions& opts, bool stored_bf16) {
  if (opts.device == "cuda") {
    CudaBackendOptions co;
    if (!opts.float_weights.empty()) co.float_weights = opts.float_weights;
    co.gemv_max_rows = opts.gemv_max_rows;
    co.graphs = opts.graphs;
    co.device = opts.cuda_device;
    return backend_cuda_create(co);
  }
  SHRINK_CHECK(opts.device == "cpu" || opts.device.empty(), StatusCode::kInvalidInput,
               "device '%s' is unknown; expected cpu or cuda", opts.device.c_str());
  CpuBackendOptions bo;
  bo.threads = opts.threads;
  bo.isa = opts.isa;
  if (opts.float_weights.empty() || opts.float_weights == "auto" ||
      opts.float_weights == "exact") {
    // As stored: a bf16 checkpoint keeps its float weights in bf16 (half the bytes of float32,
    // and no float32 copy of the model). auto rounds its activations to bf16 and sums in fp32
    // (oneDNN's bf16 matmul for prefill where the CPU has AVX512_BF16), as llama.cpp and
    // PyTorch compute a bf16 model; exact keeps fp32 activations (the weights widened).
    bo.float_weights = stored_bf16 ? "bf16" : "f32";
    bo.bf16_gemm = opts.float_weights != "exact";
  } else {
    bo.float_weights = opts.float_weights;
  }
  return backend_cpu_create(bo);
}

Result<std::unique_ptr<Engine::Impl>> impl_create(const core::ModelConfig& cfg,
                                                  const EngineOptions& opts,
                                                  const std::string& origin, bool stored_bf16) {
  auto impl = std::make_unique<Engine::Impl>();
  impl->cfg = cfg;
  impl->cfg_global = cfg;
  impl->opts = opts;
  SHRINK_RETURN_IF_ERROR(core::config_validate(cfg, origin));
  impl->share.vl = cfg.vocab_size;
  impl->share.vpad = cfg.vocab_size;
  if (opts.tp) {
    SHRINK_RETURN_IF_ERROR(tp_share_plan(cfg, opts, origin, impl->share, impl->cfg));
    impl->tp = opts.tp;
  }
  SHRINK_CHECK(opts.max_batch >= 1, StatusCode::kInvalidInput, "max batch %d: expected >= 1",
               opts.max_batch);
  SHRINK_CHECK(cfg.head_dim % 2 == 0, StatusCode::kInvalidInput,
               "%s: head_dim %lld is odd; rotate-half RoPE needs an even head_dim", origin.c_str(),
               (long long)cfg.head_dim);
  impl->max_seq = opts.max_seq_len > 0 ? opts.max_seq_len
                                       : std::min<int64_t>(cfg.max_position_embeddings, 4096);
  SHRINK_CHECK(impl->max_seq >= 1, StatusCode::kInvalidInput, "max sequence length %lld",
               (long long)impl->max_seq);
  SHRINK_RETURN_IF_ERROR(check_kv_cache_size(impl->cfg, opts, impl->max_seq, origin));
  SHRINK_CHECK(opts.kv_cache == "f32" || opts.kv_cache == "f16" || opts.kv_cache == "int8",
               StatusCode::kInvalidInput, "--kv-cache '%s': expected f32, f16 or int8",
               opts.kv_cache.c_str());
  SHRINK_ASSIGN_OR_RETURN(const auto acts, act_int8_choice(opts));
  impl->act4 = acts.first;
  impl->act8 = acts.second;
  SHRINK_ASSIGN_OR_RETURN(impl->be, backend_make(opts, stored_bf16));
  if (opts.wrap_backend) impl->be = opts.wrap_backend(std::move(impl->be));
  // Under --tp the forward's collectives run where the activations live: on cuda, the
  // backend's NCCL group on its stream, made with the host group's handshake.
  if (impl->tp) {
    SHRINK_ASSIGN_OR_RETURN(impl->tp, impl->be->tp_group(impl->tp));
  }
  return impl;
}

// config.json's quantization scheme (nullopt: a float model); errors name the file.
Result<std::optional<core::QuantScheme>> scheme_of_config(const core::ModelConfig& cfg,
                                                          const std::string& origin) {
  if (!cfg.has_quantization()) return std::optional<core::QuantScheme>();
  Result<core::QuantScheme> s = core::quant_config_from_json(cfg.raw["quantization_config"]);
  if (!s.is_ok()) return s.status().with_context(origin);
  return std::optional<core::QuantScheme>(std::move(s).value());
}

// The scheme of a random model's --dtype: f32 (none), w8a16 or w8a8 (dynamic) per channel, or
// w4a16[-asym] or w4a8 with the groups `shrink quantize` picks.
Result<std::optional<core::QuantScheme>> scheme_of_dtype(const core::ModelConfig& cfg,
                                                         const std::string& dtype) {
  core::QuantScheme s;
  if (dtype == "w8a16" || dtype == "w8a8") {
    s.activations = dtype == "w8a8" ? "dynamic" : "none";
  } else if (dtype == "w4a16" || dtype == "w4a16-asym" || dtype == "w4a8") {
    s.bits = 4;
    s.symmetric = dtype != "w4a16-asym";
    if (dtype == "w4a8") s.activations = "dynamic";
    s.weight_strategy = "group";
    s.group_size = core::int4_default_group({cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size});
  } else {
    SHRINK_CHECK(dtype == "f32", StatusCode::kInvalidInput,
                 "--dtype '%s' is not supported; expected f32, w8a16, w4a16, w4a16-asym, w4a8 or w8a8",
                 dtype.c_str());
    return std::optional<core::QuantScheme>();
  }
  return std::optional<core::QuantScheme>(std::move(s));
}

// W4A8 needs the int8-activation 4-bit kernels, which only the cpu backend has so far.
Status w4a8_device_check(const std::optional<core::QuantScheme>& s, const EngineOptions& opts,
                         const std::string& origin) {
  SHRINK_CHECK(!(s && s->bits == 4 && s->activations == "dynamic" && opts.device == "cuda"),
               StatusCode::kInvalidInput,
               "%s: 4-bit weights with int8 activations (w4a8) run on the cpu device only so far; "
               "quantize with --scheme w4a16 for cuda",
               origin.c_str());
  return Status::ok();
}

}  // namespace

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::load(const std::string& model_dir,
                                             const EngineOptions& opts) {
  SHRINK_ASSIGN_OR_RETURN(core::ModelConfig cfg, core::config_load(model_dir));
  const std::string origin = model_dir + "/config.json";
  SHRINK_ASSIGN_OR_RETURN(std::optional<core::QuantScheme> scheme, scheme_of_config(cfg, origin));
  SHRINK_ASSIGN_OR_RETURN(core::Checkpoint ckpt, core::Checkpoint::open(model_dir));
  SHRINK_RETURN_IF_ERROR(core::checkpoint_check(cfg, ckpt));
  const core::TensorInfo* embedding = ckpt.find("model.embed_tokens.weight");
  const bool stored_bf16 = embedding && embedding->dtype == core::DType::kBF16;
  CheckpointSource src(std::move(ckpt));
  SHRINK_RETURN_IF_ERROR(w4a8_device_check(scheme, opts, origin));
  SHRINK_ASSIGN_OR_RETURN(auto impl, impl_create(cfg, opts, origin, stored_bf16));
  impl->scheme = std::move(scheme);
  SHRINK_RETURN_IF_ERROR(impl->build(src));
  core::memory_return();
  SHRINK_RETURN_IF_ERROR(tp_barrier(impl->tp.get()));
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Result<std::unique_ptr<Engine>> Engine::create_random(const core::ModelConfig& cfg,
                                                      const std::string& dtype, uint64_t seed,
                                                      const EngineOptions& opts) {
  SHRINK_ASSIGN_OR_RETURN(std::optional<core::QuantScheme> scheme, scheme_of_dtype(cfg, dtype));
  SHRINK_RETURN_IF_ERROR(w4a8_device_check(scheme, opts, "random model"));
  SHRINK_ASSIGN_OR_RETURN(auto impl, impl_create(cfg, opts, "random model", false));
  impl->scheme = scheme;
  RandomSource src(cfg, scheme, seed);
  SHRINK_RETURN_IF_ERROR(impl->build(src));
  SHRINK_RETURN_IF_ERROR(tp_barrier(impl->tp.get()));
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const core::ModelConfig& Engine::config() const { return impl_->cfg_global; }
TpComm* Engine::tp() const { return impl_->tp.get(); }

Result<std::vector<double>> Engine::tp_allreduce_alone(int reps) {
  Impl& m = *impl_;
  SHRINK_CHECK(m.tp, StatusCode::kInvalidInput, "tp_allreduce_alone: no tensor-parallel group");
  auto h = m.be->tensor_zeros(m.cfg.hidden_size);
  SHRINK_RETURN_IF_ERROR(m.be->take_error());
  std::vector<double> us;
  float probe = 0;
  try {
    for (int i = 0; i < reps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      m.tp->allreduce_sum(h->data(), m.cfg.hidden_size);
      m.be->to_host(h->data(), 1, &probe);  // waits for the collective on a device
      us.push_back(
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
  } catch (const TpError& e) {
    return Status(StatusCode::kInternal, e.what());
  }
  SHRINK_RETURN_IF_ERROR(m.be->take_error());
  m.tp->stats_reset();
  return us;
}
const std::optional<core::QuantScheme>& Engine::scheme() const { return impl_->scheme; }
int64_t Engine::max_seq_len() const { return impl_->max_seq; }
int Engine::max_batch() const { return impl_->opts.max_batch; }
uint64_t Engine::weight_bytes() const { return impl_->weight_bytes; }
std::vector<std::pair<std::string, uint64_t>> Engine::backend_counters() const {
  return impl_->be->counters();
}

std::string Engine::describe() const {
  const std::string scheme = impl_->scheme ? core::quant_scheme_name(*impl_->scheme) : "f32";
  const ActInt8 act = impl_->act_used;
  return std::string(core::arch_name(impl_->cfg.arch)) + ", " + scheme +
         (act == ActInt8::kRow       ? ", int8 activations per row"
          : act == ActInt8::kBlock32 ? ", int8 activations per 32"
                                     : "") +
         (impl_->lm_head->kind == LinearKind::kW8A16 ? ", int8 lm_head" : "") +
         (impl_->opts.kv_cache == "f32" ? "" : ", " + impl_->opts.kv_cache + " kv cache") + ", " +
         impl_->be->describe();
}
void Engine::reset(int slot) {
  if (slot >= 0 && slot < int(impl_->lengths.size())) impl_->lengths[size_t(slot)] = 0;
}
void Engine::reset_all() { std::fill(impl_->lengths.begin(), impl_->lengths.end(), 0); }
int64_t Engine::length(int slot) const {
  return slot >= 0 && slot < int(impl_->lengths.size()) ? impl_->lengths[size_t(slot)] : 0;
}

namespace {

size_t kv_element_bytes(KvStorage s) {
  return s == KvStorage::kF16 ? 2 : s == KvStorage::kInt8 ? 1 : 4;
}

// The pieces of one layer's cache that a token owns, as (base, bytes per token): K rows, V rows
// and, for int8, the K and V scales.
template <typename F>
void kv_pieces(const KvLayer& c, int64_t n_kv_heads, int slot, int64_t max_seq, F&& f) {
  const size_t es = kv_element_bytes(c.storage);
  const size_t row = size_t(c.kv_dim) * es;
  const size_t first = (size_t(slot) * size_t(c.slot_stride)) * es;
  f(reinterpret_cast<uint8_t*>(c.k) + first, row);
  f(reinterpret_cast<uint8_t*>(c.v) + first, row);
  if (c.storage == KvStorage::kInt8) {
    const size_t srow = size_t(n_kv_heads) * 4;
    const size_t sfirst = size_t(slot) * size_t(max_seq) * srow;
    f(reinterpret_cast<uint8_t*>(c.k_scale) + sfirst, srow);
    f(reinterpret_cast<uint8_t*>(c.v_scale) + sfirst, srow);
  }
}

}  // namespace

uint64_t Engine::kv_bytes_per_token() const {
  uint64_t total = 0;
  for (const LayerW& L : impl_->layers)
    kv_pieces(L.cache, impl_->cfg.num_kv_heads, 0, impl_->max_seq,
              [&](uint8_t*, size_t row) { total += row; });
  return total;
}

Status Engine::kv_export(int slot, int64_t begin, int64_t n, uint8_t* out) {
  Impl& m = *impl_;
  SHRINK_CHECK(slot >= 0 && slot < int(m.lengths.size()), StatusCode::kInvalidInput,
               "kv_export: slot %d is outside [0, %zu)", slot, m.lengths.size());
  SHRINK_CHECK(begin >= 0 && n >= 0 && begin + n <= m.lengths[size_t(slot)],
               StatusCode::kInvalidInput, "kv_export: positions [%lld, %lld) of slot %d, which holds %lld",
               (long long)begin, (long long)(begin + n), slot, (long long)m.lengths[size_t(slot)]);
  for (const LayerW& L : m.layers) {
    kv_pieces(L.cache, m.cfg.num_kv_heads, slot, m.max_seq, [&](uint8_t* base, size_t row) {
      m.be->bytes_to_host(base + size_t(begin) * row, size_t(n) * row, out);
      out += size_t(n) * row;
    });
  }
  return m.be->take_error();
}

Status Engine::kv_import(int slot, int64_t begin, int64_t n, const uint8_t* in) {
  Impl& m = *impl_;
  SHRINK_CHECK(slot >= 0 && slot < int(m.lengths.size()), StatusCode::kInvalidInput,
               "kv_import: slot %d is outside [0, %zu)", slot, m.lengths.size());
  SHRINK_CHECK(begin == m.lengths[size_t(slot)] && n >= 0 && begin + n <= m.max_seq,
               StatusCode::kInvalidInput,
               "kv_import: positions [%lld, %lld) into slot %d, which holds %lld of at most %lld "
               "(rows are appended)",
               (long long)begin, (long long)(begin + n), slot, (long long)m.lengths[size_t(slot)],
               (long long)m.max_seq);
  for (const LayerW& L : m.layers) {
    kv_pieces(L.cache, m.cfg.num_kv_heads, slot, m.max_seq, [&](uint8_t* base, size_t row) {
      m.be->bytes_from_host(in, size_t(n) * row, base + size_t(begin) * row);
      in += size_t(n) * row;
    });
  }
  SHRINK_RETURN_IF_ERROR(m.be->take_error());
  m.lengths[size_t(slot)] = begin + n;
  return Status::ok();
}

Status Engine::truncate(int slot, int64_t len) {
  SHRINK_CHECK(slot >= 0 && slot < int(impl_->lengths.size()), StatusCode::kInvalidInput,
               "truncate: slot %d is outside [0, %zu)", slot, impl_->lengths.size());
  SHRINK_CHECK(len >= 0 && len <= impl_->lengths[size_t(slot)], StatusCode::kInvalidInput,
               "truncate: slot %d holds %lld tokens; cannot keep %lld", slot,
               (long long)impl_->lengths[size_t(slot)], (long long)len);
  impl_->lengths[size_t(slot)] = len;
  return Status::ok();
}

Status Engine::forward(const std::vector<SeqChunk>& chunks, bool all_logits,
                       std::vector<float>& logits) {
  return impl_->run(chunks, all_logits, &logits, nullptr, nullptr);
}

Status Engine::forward_argmax(const std::vector<SeqChunk>& chunks, std::vector<int32_t>& next) {
  return impl_->run(chunks, false, nullptr, &next, nullptr);
}

Status Engine::forward_sample(const std::vector<SeqChunk>& chunks,
                              const std::vector<core::SampleRow>& rows,
                              std::vector<int32_t>& next) {
  SHRINK_CHECK(rows.size() == chunks.size(), StatusCode::kInvalidInput,
               "forward_sample: %zu sampling rows for %zu sequences", rows.size(), chunks.size());
  for (const core::SampleRow& r : rows) {
    SHRINK_CHECK(r.temperature <= 0 || (r.top_p > 0 && r.top_p <= 1 && r.top_k >= 0 &&
                                        r.u >= 0 && r.u < 1),
                 StatusCode::kInvalidInput,
                 "forward_sample: expected top-k >= 0, 0 < top-p <= 1 and 0 <= u < 1");
  }
  return impl_->run(chunks, false, nullptr, &next, rows.data());
}

Status Engine::Impl::run(const std::vector<SeqChunk>& chunks, bool all_logits,
                         std::vector<float>* logits_out, std::vector<int32_t>* next_out,
                         const core::SampleRow* sample) {
  Impl& m = *this;
  const core::ModelConfig& c = m.cfg;
  SHRINK_CHECK(!chunks.empty(), StatusCode::kInvalidInput, "forward: no sequences");
  std::vector<int32_t> slot, pos, ids;
  std::set<int> seen;
  bool decode = true;  // every chunk one token: a step the backend may record as a graph
  for (const SeqChunk& ch : chunks) {
    SHRINK_CHECK(ch.slot >= 0 && ch.slot < m.opts.max_batch, StatusCode::kInvalidInput,
                 "forward: slot %d is outside [0, %d)", ch.slot, m.opts.max_batch);
    SHRINK_CHECK(seen.insert(ch.slot).second, StatusCode::kInvalidInput,
                 "forward: slot %d appears twice in one batch", ch.slot);
    SHRINK_CHECK(ch.n >= 1 && ch.tokens, StatusCode::kInvalidInput,
                 "forward: slot %d has no tokens", ch.slot);
    const int64_t start = m.lengths[size_t(ch.slot)];
    SHRINK_CHECK(start + ch.n <= m.max_seq, StatusCode::kInvalidInput,
                 "forward: slot %d would hold %lld tokens; the KV cache holds %lld (max sequence "
                 "length)", ch.slot, (long long)(start + ch.n), (long long)m.max_seq);
    decode &= ch.n == 1;
    for (int64_t t = 0; t < ch.n; ++t) {
      const int32_t id = ch.tokens[t];
      SHRINK_CHECK(id >= 0 && id < c.vocab_size, StatusCode::kInvalidInput,
                   "token %d is outside the vocabulary (vocab_size %lld)", id,
                   (long long)c.vocab_size);
      slot.push_back(ch.slot);
      pos.push_back(int32_t(start + t));
      ids.push_back(id);
    }
  }
  const int64_t M = int64_t(ids.size());
  // Rows that need logits.
  std::vector<int32_t> pick;
  if (all_logits) {
    for (int64_t r = 0; r < M; ++r) pick.push_back(int32_t(r));
  } else {
    int64_t r = 0;
    for (const SeqChunk& ch : chunks) {
      r += ch.n;
      pick.push_back(int32_t(r - 1));
    }
  }
  const int64_t R = int64_t(pick.size()), V = c.vocab_size;
  bool realloc = m.ensure_rows(M);
  // Logits asked for on a backend whose memory is the host's go straight into the caller's
  // vector: one [R, V] buffer, not a backend one and its copy (64 MiB each for a window's chunk
  // of a 128k vocabulary).
  const bool logits_direct = logits_out && !next_out && m.be->host_memory();
  if (logits_direct) {
    logits_out->resize(size_t(R * V));
  } else if (R > m.cap_logit_rows) {
    m.logits = be->tensor_zeros(R * V);
    m.cap_logit_rows = R;
    realloc = true;
  }
  SHRINK_RETURN_IF_ERROR(m.buffers_check(!logits_direct));
  float* const logits = logits_direct ? logits_out->data() : m.logits->data();
  Backend& be = *m.be;
  if (realloc) be.graph_reset();
  const int64_t H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t ldqkv = qd + 2 * kvd;
  const float eps = float(c.rms_norm_eps);
  const RowPlacement at{slot.data(), pos.data(), /*step=*/true};
  float* x = m.x->data();
  float* xn = m.xn->data();
  float* qkv = m.qkv->data();
  float* tmp = m.tmp->data();
  // --tp: each rank looks up the tokens of its vocabulary rows and the zero row for the others';
  // the sum over the ranks is the whole table's lookup, exactly (one nonzero term per value).
  // These local ids are the step's ids (the only op that reads ids is the lookup).
  const int32_t* step_ids = ids.data();
  if (m.tp) {
    m.embed_ids.resize(size_t(M));
    const int64_t v0 = m.share.v0, vl = m.share.vl;
    for (int64_t i = 0; i < M; ++i) {
      const int64_t id = ids[size_t(i)];
      m.embed_ids[size_t(i)] = int32_t(id >= v0 && id < v0 + vl ? id - v0 : vl);
    }
    step_ids = m.embed_ids.data();
  }
  Backend::StepRows step;
  step.ids = step_ids;
  step.slot = slot.data();
  step.pos = pos.data();
  step.rows = M;
  step.pick = pick.data();
  step.picks = R;
  step.sample = next_out ? sample : nullptr;
  be.step_begin(step);
  struct StepEnd {  // the step's arrays are valid until this forward returns, on every path
    Backend& b;
    ~StepEnd() { b.step_end(); }
  } step_end{be};
  const HostInts embed_ids(step_ids, StepArray::kIds);
  auto ops = [&] {
    if (m.embed_bf16) {
      be.embed_bf16(reinterpret_cast<const uint16_t*>(m.embed->data()), H, embed_ids, M, x);
    } else {
      be.embed(m.embed->data(), H, embed_ids, M, x);
    }
    if (m.tp) m.tp->allreduce_sum(x, M * H);
    for (size_t l = 0; l < m.layers.size(); ++l) {
      LayerW& L = m.layers[l];
      if (l == 0) be.rmsnorm(x, L.attn_norm->data(), xn, M, H, eps);
      int64_t off = 0;
      for (auto& lin : L.qkv) {
        be.linear(*lin, xn, M, qkv + off, ldqkv);
        off += lin->out;
      }
      be.rope_kv_write(qkv, M, ldqkv, c.num_heads, c.num_kv_heads, c.head_dim, at,
                       m.rope_cos->data(), m.rope_sin->data(), L.cache);
      be.attention(qkv, ldqkv, M, at, L.cache, c.num_heads, c.num_kv_heads, c.head_dim,
                   c.sliding_window ? *c.sliding_window : 0, m.att->data());
      if (L.o_whole) {  // every rank: the whole o_proj over all heads' outputs
        be.linear(*L.o, m.tp_att_whole(m.att->data(), M), M, tmp, H);
      } else {
        be.linear(*L.o, m.att->data(), M, tmp, H);
        if (m.tp) m.tp->allreduce_sum(tmp, M * H);  // row-parallel: the heads' partial sums
      }
      be.add_rmsnorm(x, tmp, L.mlp_norm->data(), xn, M, H, eps);
      off = 0;
      for (auto& lin : L.gate_up) {
        be.linear(*lin, xn, M, m.gu->data() + off, 2 * I);
        off += lin->out;
      }
      be.silu_mul(m.gu->data(), M, I, m.act->data());
      be.linear(*L.down, m.act->data(), M, tmp, H);
      if (m.tp) m.tp->allreduce_sum(tmp, M * H);
      if (l + 1 < m.layers.size()) {
        be.add_rmsnorm(x, tmp, m.layers[l + 1].attn_norm->data(), xn, M, H, eps);
      } else {
        be.add(x, tmp, M * H);
      }
    }
    be.gather_rows(x, H, HostInts(pick.data(), StepArray::kPick), R, xn);
    be.rmsnorm(xn, m.final_norm->data(), xn, R, H, eps);
    if (m.tp) {
      m.tp_head(xn, R, logits);
    } else {
      be.linear(*m.lm_head, xn, R, logits, V);
    }
    if (next_out && sample) {
      be.sample_rows(logits, R, V, sample);
    } else if (next_out) {
      be.argmax_rows(logits, R, V);
    }
  };
  // One graph per rows and output kind (logits, argmax, sampled): sampling parameters and
  // draws are data the step uploads, not part of the graph.
  const uint64_t key = (uint64_t(M) << 2) | (next_out ? (sample ? 2u : 1u) : 0u);
  bool done = decode && be.graph_replay(key);
  if (!done && decode && be.graph_capture_begin(key)) {
    ops();
    done = be.graph_capture_end(key);
  }
  if (!done) {
    try {
      ops();
    } catch (const TpError& e) {  // a collective of --tp failed: a peer rank died or stalled
      return Status(StatusCode::kInternal, e.what());
    }
  }
  SHRINK_RETURN_IF_ERROR(be.take_error());
  if (next_out) {
    next_out->resize(size_t(R));
    be.token_ids_fetch(next_out->data(), R);
  } else if (!logits_direct) {
    logits_out->resize(size_t(R * V));
    be.to_host(logits, R * V, logits_out->data());
  }
  SHRINK_RETURN_IF_ERROR(be.take_error());
  for (const SeqChunk& ch : chunks) m.lengths[size_t(ch.slot)] += ch.n;
  return Status::ok();
}

}  // namespace shrink::runtime
