// ONNX writer for Llama-family decoders: graph construction, weights (inline or external),
// validation. The design, the graph's contract and the int8 forms are described in
// onnx_export.h. Tested in tests/export/test_export.cpp and by scripts/ort_check.mjs (ONNX
// Runtime against shrink-rt).
#include "export/onnx_export.h"

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace shrink::exporter {

namespace {

constexpr int kOpset = 17;     // the newest opset libonnx 1.12 (Debian 12) validates
constexpr int kIrVersion = 8;  // the IR version that goes with opset 17
constexpr uint64_t kExternalMinBytes = 1024;  // smaller tensors stay inline (shapes, scalars)
constexpr uint64_t kExternalAlign = 4096;     // page alignment, so ORT can map the data
constexpr uint64_t kProtobufLimit = uint64_t(2) << 30;
const char* kDataFile = "model.onnx.data";

[[noreturn]] void fail(StatusCode c, const std::string& m) { throw Error(c, m); }

// Appends tensor bytes to model.onnx.data at aligned offsets.
class ExternalWriter {
 public:
  explicit ExternalWriter(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "wb")) {
    if (!f_) fail(StatusCode::kIoError, path + ": cannot create: " + std::strerror(errno));
  }
  ~ExternalWriter() {
    if (f_) std::fclose(f_);
  }
  uint64_t append(const void* data, uint64_t n) {
    const uint64_t at = begin();
    write(data, n);
    return at;
  }
  /// Pad to the next aligned offset, where the next tensor starts; returns it.
  uint64_t begin() {
    static const char zeros[kExternalAlign] = {};
    const uint64_t pad = (kExternalAlign - offset_ % kExternalAlign) % kExternalAlign;
    if (pad && std::fwrite(zeros, 1, pad, f_) != pad) write_error();
    offset_ += pad;
    core::test_kill_after_bytes(pad);  // fault injection (core/fs.h); a no-op normally
    return offset_;
  }
  /// Append n bytes of the current tensor.
  void write(const void* data, uint64_t n) {
    if (n && std::fwrite(data, 1, n, f_) != n) write_error();
    offset_ += n;
    core::test_kill_after_bytes(n);
  }
  void close() {
    if (f_ && std::fclose(f_) != 0) {
      f_ = nullptr;
      write_error();
    }
    f_ = nullptr;
  }

 private:
  [[noreturn]] void write_error() {
    fail(StatusCode::kIoError, path_ + ": write failed: " + std::strerror(errno));
  }
  std::string path_;
  FILE* f_ = nullptr;
  uint64_t offset_ = 0;
};

using Attrs = std::function<void(onnx::NodeProto*)>;

void attr_int(onnx::NodeProto* n, const char* name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
void attr_ints(onnx::NodeProto* n, const char* name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

// Builds the graph: unique value names, nodes, initializers (inline or external), and
// deduplicated small constants.
// dst [cols, rows] (row stride ld, default rows) = src [rows, cols]^T, in tiles that stay in
// cache.
template <typename T>
void transpose(const T* src, int64_t rows, int64_t cols, T* dst, int64_t ld = 0) {
  constexpr int64_t kTile = 64;
  if (ld == 0) ld = rows;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const int64_t r1 = std::min(rows, r0 + kTile);
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) dst[c * ld + r] = src[r * cols + c];
    }
  }
}

// Large float weights are converted and written in pieces of about this size.
constexpr uint64_t kPieceBytes = uint64_t(16) << 20;

class Builder {
 public:
  Builder(onnx::GraphProto* g, ExternalWriter* ext) : g_(g), ext_(ext) {}

  std::string fresh(const std::string& hint) {
    int& n = counters_[hint];
    return n++ == 0 ? hint : hint + "_" + std::to_string(n - 1);
  }

  /// One node with one output named after `hint`; returns that output.
  std::string op(const std::string& type, const std::vector<std::string>& inputs,
                 const std::string& hint, const Attrs& attrs = nullptr) {
    std::string out = fresh(hint);
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(type);
    n->set_name(out + "/" + type);
    for (const auto& i : inputs) n->add_input(i);
    n->add_output(out);
    if (attrs) attrs(n);
    return out;
  }
  /// A node writing a given output name (graph outputs).
  void op_to(const std::string& type, const std::vector<std::string>& inputs,
             const std::string& out, const Attrs& attrs = nullptr) {
    onnx::NodeProto* n = g_->add_node();
    n->set_op_type(type);
    n->set_name(out + "/" + type);
    for (const auto& i : inputs) n->add_input(i);
    n->add_output(out);
    if (attrs) attrs(n);
  }

  /// An initializer from raw little-endian bytes.
  std::string init(const std::string& name, onnx::TensorProto::DataType dt,
                   const std::vector<int64_t>& dims, const void* data, uint64_t nbytes) {
    return init_filled(name, dt, dims, nbytes, nbytes,
                       [data](uint64_t off, uint64_t n, uint8_t* dst) {
                         std::memcpy(dst, static_cast<const uint8_t*>(data) + off, n);
                       });
  }
  /// Writes bytes [offset, offset + n) of a tensor into dst.
  using Fill = std::function<void(uint64_t offset, uint64_t n, uint8_t* dst)>;
  /// An initializer of nbytes produced in pieces of at most `piece` bytes by `fill`: into the
  /// external data file through one piece-sized buffer, or (inline) straight into the proto's
  /// raw_data, so that no second copy of the whole tensor is ever made.
  std::string init_filled(const std::string& name, onnx::TensorProto::DataType dt,
                          const std::vector<int64_t>& dims, uint64_t nbytes, uint64_t piece,
                          const Fill& fill) {
    onnx::TensorProto* t = g_->add_initializer();
    t->set_name(name);
    t->set_data_type(dt);
    for (int64_t d : dims) t->add_dims(d);
    piece = std::max<uint64_t>(1, std::min(piece, nbytes));
    if (ext_ && nbytes >= kExternalMinBytes) {
      const uint64_t off = ext_->begin();
      std::vector<uint8_t> buf(static_cast<size_t>(piece));
      for (uint64_t o = 0; o < nbytes; o += piece) {
        const uint64_t n = std::min(piece, nbytes - o);
        fill(o, n, buf.data());
        ext_->write(buf.data(), n);
      }
      t->set_data_location(onnx::TensorProto::EXTERNAL);
      auto kv = [&](const char* k, const std::string& v) {
        auto* e = t->add_external_data();
        e->set_key(k);
        e->set_value(v);
      };
      kv("location", kDataFile);
      kv("offset", std::to_string(off));
      kv("length", std::to_string(nbytes));
    } else {
      std::string* raw = t->mutable_raw_data();
      raw->resize(size_t(nbytes));
      for (uint64_t o = 0; o < nbytes; o += piece) {
        fill(o, std::min(piece, nbytes - o), reinterpret_cast<uint8_t*>(raw->data()) + o);
      }
    }
    bytes_ += nbytes;
    return name;
  }
  std::string init_f32(const std::string& name, const std::vector<int64_t>& dims,
                       const std::vector<float>& v) {
    return init(name, onnx::TensorProto::FLOAT, dims, v.data(), v.size() * 4);
  }
  /// A deduplicated int64 vector constant.
  std::string i64(const std::vector<int64_t>& v) {
    std::string key;
    for (int64_t x : v) key += std::to_string(x) + "_";
    auto it = consts_.find("i64:" + key);
    if (it != consts_.end()) return it->second;
    std::string name = fresh("const_i64");
    init(name, onnx::TensorProto::INT64, {int64_t(v.size())}, v.data(), v.size() * 8);
    return consts_["i64:" + key] = name;
  }
  /// A deduplicated float32 scalar constant.
  std::string f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    const std::string key = "f32:" + std::to_string(bits);
    auto it = consts_.find(key);
    if (it != consts_.end()) return it->second;
    std::string name = fresh("const_f32");
    init(name, onnx::TensorProto::FLOAT, {}, &v, 4);
    return consts_[key] = name;
  }
  /// The int8 zero point (a scalar 0).
  std::string zero_i8() {
    if (zero_i8_.empty()) {
      int8_t z = 0;
      zero_i8_ = init("const_zero_i8", onnx::TensorProto::INT8, {}, &z, 1);
    }
    return zero_i8_;
  }
  uint64_t bytes() const { return bytes_; }

 private:
  onnx::GraphProto* g_;
  ExternalWriter* ext_;
  std::map<std::string, int> counters_;
  std::map<std::string, std::string> consts_;
  std::string zero_i8_;
  uint64_t bytes_ = 0;
};

void add_value_info(google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>* list,
                    const std::string& name, onnx::TensorProto::DataType dt,
                    const std::vector<std::string>& dims) {
  onnx::ValueInfoProto* vi = list->Add();
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(dt);
  auto* sh = tt->mutable_shape();
  for (const std::string& d : dims) {
    auto* dim = sh->add_dim();
    if (!d.empty() && d.find_first_not_of("0123456789") == std::string::npos) {
      dim->set_dim_value(std::stoll(d));
    } else {
      dim->set_dim_param(d);
    }
  }
}

// The exporter proper: reads the checkpoint and emits the decoder.
class DecoderExport {
 public:
  DecoderExport(const core::ModelConfig& c, const core::Checkpoint& ck,
                const core::QuantScheme* scheme, Builder& b)
      : c_(c), ck_(ck), scheme_(scheme), b_(b) {}

  void build();

 private:
  const core::TensorInfo& tensor(const std::string& name) const {
    const core::TensorInfo* t = ck_.find(name);
    if (!t) fail(StatusCode::kInvalidInput, ck_.dir() + ": missing tensor " + name);
    return *t;
  }
  // Float tensor t as a float32 initializer of the same layout, converted piece by piece.
  std::string init_float(const std::string& name, const core::TensorInfo& t) {
    expect_float(t);
    const int64_t cols = t.shape.empty() ? 1 : t.shape.back(), rows = t.numel() / std::max<int64_t>(1, cols);
    const uint64_t es = core::dtype_size(t.dtype), row_bytes = uint64_t(cols) * 4;
    const uint64_t piece = std::max<uint64_t>(1, kPieceBytes / row_bytes) * row_bytes;
    const uint8_t* src = ck_.data(t);
    std::string r = b_.init_filled(name, onnx::TensorProto::FLOAT, t.shape, uint64_t(rows) * row_bytes,
                                   piece, [&](uint64_t off, uint64_t n, uint8_t* dst) {
                                     core::convert_to_f32(t.dtype, src + off / 4 * es,
                                                          reinterpret_cast<float*>(dst), int64_t(n / 4));
                                     ck_.release(t, off / 4 * es, n / 4 * es);
                                   });
    ck_.release(t, 0, t.nbytes);
    return r;
  }
  // Float weight t [out, in] as the float32 initializer W^T [in, out], converted and transposed
  // a band of W's columns at a time.
  std::string init_transposed(const std::string& name, const core::TensorInfo& t, int64_t out,
                              int64_t in) {
    expect_float(t);
    const uint64_t es = core::dtype_size(t.dtype), row_bytes = uint64_t(out) * 4;
    const int64_t band = std::max<int64_t>(1, int64_t(kPieceBytes / row_bytes));
    const uint8_t* src = ck_.data(t);
    std::vector<float> tile;
    std::string r = b_.init_filled(
        name, onnx::TensorProto::FLOAT, {in, out}, uint64_t(in) * row_bytes, uint64_t(band) * row_bytes,
        [&](uint64_t off, uint64_t n, uint8_t* dst) {
          const int64_t k0 = int64_t(off / row_bytes), kc = int64_t(n / row_bytes);
          float* d = reinterpret_cast<float*>(dst);  // [kc, out]
          constexpr int64_t kRows = 64;  // rows of W converted together, then transposed
          tile.resize(size_t(kRows * kc));
          for (int64_t o0 = 0; o0 < out; o0 += kRows) {
            const int64_t oc = std::min(kRows, out - o0);
            for (int64_t o = 0; o < oc; ++o) {
              core::convert_to_f32(t.dtype, src + (uint64_t(o0 + o) * uint64_t(in) + uint64_t(k0)) * es,
                                   tile.data() + o * kc, kc);
            }
            transpose(tile.data(), oc, kc, d + o0, out);
          }
        });
    ck_.release(t, 0, t.nbytes);
    return r;
  }
  void expect_float(const core::TensorInfo& t) const {
    if (!core::dtype_is_float(t.dtype)) {
      fail(StatusCode::kInvalidInput, ck_.dir() + ": " + t.name + " is " +
                                          core::dtype_name(t.dtype) + "; expected a float dtype");
    }
  }
  std::vector<float> f32(const core::TensorInfo& t) const {
    expect_float(t);
    std::vector<float> v(size_t(t.numel()));
    core::convert_to_f32(t.dtype, ck_.data(t), v.data(), t.numel());
    ck_.release(t, 0, t.nbytes);  // read once: its pages need not stay resident
    return v;
  }
  void expect_shape(const core::TensorInfo& t, const std::vector<int64_t>& shape) const {
    if (t.shape != shape) {
      auto s = [](const std::vector<int64_t>& v) {
        std::string r = "[";
        for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + std::to_string(v[i]);
        return r + "]";
      };
      fail(StatusCode::kInvalidInput, ck_.dir() + ": " + t.name + " has shape " + s(t.shape) +
                                          "; expected " + s(shape));
    }
  }
  std::string rmsnorm(const std::string& x, const std::string& weight_name);
  std::string linear(const std::string& x, const std::string& module, int64_t out, int64_t in,
                     bool bias);
  std::string weight(const std::string& module, int64_t out, int64_t in);
  std::string quant_act(const std::string& x, const std::string& module, int64_t in);
  std::string heads(const std::string& x, int64_t n, const std::string& hint);
  std::string rope(const std::string& x, const std::string& hint);
  void layer(int64_t i, std::string& h);

  const core::ModelConfig& c_;
  const core::Checkpoint& ck_;
  const core::QuantScheme* scheme_;  // null: float model
  Builder& b_;
  std::string cos_, sin_, allowed_, lowest_;
  std::map<std::string, std::string> act_cache_;  // (input, scale) -> dequantized input
};

std::string DecoderExport::rmsnorm(const std::string& x, const std::string& weight_name) {
  const core::TensorInfo& t = tensor(weight_name);
  expect_shape(t, {c_.hidden_size});
  std::string w = b_.init_f32(weight_name, {c_.hidden_size}, f32(t));
  std::string sq = b_.op("Mul", {x, x}, weight_name + "/sq");
  std::string ms = b_.op("ReduceMean", {sq}, weight_name + "/ms", [](onnx::NodeProto* n) {
    attr_ints(n, "axes", {-1});
    attr_int(n, "keepdims", 1);
  });
  std::string var = b_.op("Add", {ms, b_.f32(float(c_.rms_norm_eps))}, weight_name + "/var");
  std::string rs = b_.op("Sqrt", {var}, weight_name + "/rms");
  std::string inv = b_.op("Reciprocal", {rs}, weight_name + "/inv");
  std::string xn = b_.op("Mul", {x, inv}, weight_name + "/xn");
  return b_.op("Mul", {xn, w}, weight_name + "/out");
}

// The dequantized (or float) W^T [in, out] of a linear.
std::string DecoderExport::weight(const std::string& module, int64_t out, int64_t in) {
  const core::TensorInfo& t = tensor(module + ".weight");
  expect_shape(t, {out, in});
  if (t.dtype != core::DType::kI8) {
    return init_transposed(onnx_weight_name(module), t, out, in);
  }
  if (!scheme_) {
    fail(StatusCode::kInvalidInput, ck_.dir() + ": " + module +
                                        ".weight is I8 but config.json has no quantization_config");
  }
  const int8_t* q = reinterpret_cast<const int8_t*>(ck_.data(t));
  std::vector<int8_t> qt(size_t(out * in));
  transpose(q, out, in, qt.data());
  ck_.release(t, 0, t.nbytes);
  // GPTQ act-order groups (weight_g_idx): the rows of W^T go in group order, so the groups are
  // contiguous for the dequantization below, and a Gather puts them back afterwards.
  std::vector<int32_t> order;
  if (const core::TensorInfo* gi = ck_.find(module + ".weight_g_idx")) {
    if ((gi->dtype != core::DType::kI32 && gi->dtype != core::DType::kI64) || gi->numel() != in) {
      fail(StatusCode::kInvalidInput, ck_.dir() + ": " + gi->name + " is " +
                                          core::dtype_name(gi->dtype) + ", expected I32 [" +
                                          std::to_string(in) + "]");
    }
    const std::vector<int64_t> g = core::indices_to_i64(gi->dtype, ck_.data(*gi), in);
    const int64_t gs = scheme_->weight_strategy == "group" ? scheme_->group_size : in;
    Result<std::vector<int32_t>> o =
        core::group_order_from_g_idx(g, gs, ck_.dir() + ": " + gi->name);
    if (!o.is_ok()) fail(o.status().code(), o.status().message());
    order = std::move(o).value();
    if (!order.empty()) {
      std::vector<int8_t> qg(qt.size());
      for (int64_t j = 0; j < in; ++j)
        std::memcpy(qg.data() + j * out, qt.data() + int64_t(order[size_t(j)]) * out, size_t(out));
      qt = std::move(qg);
    }
  }
  if (!scheme_->symmetric) {
    // 4-bit zero points fold into the stored values: (q - zp) is in [-15, 15], an int8 with the
    // same scales, so the graph is the symmetric one. Row j of qt is in group j / g (after the
    // act-order reordering above).
    const core::TensorInfo& zt = tensor(module + ".weight_zero_point");
    const int64_t g = scheme_->weight_strategy == "group" ? scheme_->group_size : in;
    expect_shape(zt, {out, in / g});
    if (zt.dtype != core::DType::kI8) {
      fail(StatusCode::kInvalidInput,
           ck_.dir() + ": " + zt.name + " is " + core::dtype_name(zt.dtype) + ", expected I8");
    }
    const int8_t* z = reinterpret_cast<const int8_t*>(ck_.data(zt));
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < in; ++j) qt[size_t(j * out + o)] -= z[o * (in / g) + j / g];
  }
  auto unorder = [&](const std::string& w) {
    if (order.empty()) return w;
    std::vector<int64_t> inv(static_cast<size_t>(in));
    for (int64_t j = 0; j < in; ++j) inv[size_t(order[size_t(j)])] = j;
    return b_.op("Gather", {w, b_.i64(inv)}, module + "/w_deq_input_order",
                 [](onnx::NodeProto* n) { attr_int(n, "axis", 0); });
  };
  std::string wq = b_.init(onnx_weight_name(module), onnx::TensorProto::INT8, {in, out}, qt.data(),
                           qt.size());
  const core::TensorInfo& st = tensor(module + ".weight_scale");
  std::vector<float> s = f32(st);
  for (float v : s) {
    if (!std::isfinite(v)) {
      fail(StatusCode::kInvalidInput, ck_.dir() + ": " + st.name + " holds a non-finite value");
    }
  }
  if (scheme_->weight_strategy == "group") {
    const int64_t g = scheme_->group_size;
    if (g <= 0 || in % g != 0) {
      fail(StatusCode::kInvalidInput,
           ck_.dir() + ": " + module + ": group_size " + std::to_string(g) + " does not divide " +
               std::to_string(in) + " input features (the ONNX form needs whole groups)");
    }
    const int64_t G = in / g;
    expect_shape(st, {out, G});
    std::vector<float> sT(size_t(G * out));  // [G, 1, out]
    for (int64_t o = 0; o < out; ++o)
      for (int64_t j = 0; j < G; ++j) sT[size_t(j * out + o)] = s[size_t(o * G + j)];
    std::string sc = b_.init_f32(module + ".weight_scale_t", {G, 1, out}, sT);
    std::string wf = b_.op("Cast", {wq}, module + "/w_f32",
                           [](onnx::NodeProto* n) { attr_int(n, "to", onnx::TensorProto::FLOAT); });
    std::string w3 = b_.op("Reshape", {wf, b_.i64({G, g, out})}, module + "/w_groups");
    std::string d3 = b_.op("Mul", {w3, sc}, module + "/w_deq_groups");
    return unorder(b_.op("Reshape", {d3, b_.i64({in, out})}, module + "/w_deq"));
  }
  if (st.numel() != out || !(st.shape == std::vector<int64_t>{out, 1} ||
                             st.shape == std::vector<int64_t>{out})) {
    expect_shape(st, {out, 1});
  }
  std::string sc = b_.init_f32(module + ".weight_scale", {out}, s);
  std::vector<int8_t> zp(size_t(out), 0);
  std::string z = b_.init(module + ".weight_zero_point", onnx::TensorProto::INT8, {out}, zp.data(),
                          zp.size());
  return b_.op("DequantizeLinear", {wq, sc, z}, module + "/w_deq",
               [](onnx::NodeProto* n) { attr_int(n, "axis", 1); });
}

// The activation x as the int8 path sees it (quantized and dequantized), or x itself.
std::string DecoderExport::quant_act(const std::string& x, const std::string& module, int64_t in) {
  if (!scheme_ || scheme_->activations == "none") return x;
  if (tensor(module + ".weight").dtype != core::DType::kI8) return x;  // float (ignored) module
  if (scheme_->activations == "static") {
    const core::TensorInfo& t = tensor(module + ".input_scale");
    std::vector<float> v = f32(t);
    if (v.size() != 1 || !(v[0] > 0) || !std::isfinite(v[0])) {
      fail(StatusCode::kInvalidInput, ck_.dir() + ": " + t.name +
                                          ": expected one positive finite scale");
    }
    const float s = v[0];
    uint32_t bits;
    std::memcpy(&bits, &s, 4);
    const std::string key = x + "|" + std::to_string(bits);
    auto it = act_cache_.find(key);
    // Clip to the symmetric range first (shared by the linears reading x): see onnx_export.h
    // (ONNX int8 saturates at -128).
    const std::string xc =
        it != act_cache_.end()
            ? it->second
            : act_cache_[key] = b_.op("Clip", {x, b_.f32(-127.0f * s), b_.f32(127.0f * s)},
                                      module + "/x_clip");
    // A QuantizeLinear -> DequantizeLinear pair per consuming linear: ORT fuses Q -> DQ ->
    // MatMul into an int8 MatMulIntegerToFloat only when the pair feeds that one MatMul.
    // The scale and zero point are the module's own initializers (not shared constants), so
    // ORT's common-subexpression elimination does not merge the pairs of q, k and v back.
    const std::string ms = b_.init(module + ".input_scale", onnx::TensorProto::FLOAT, {}, &s, 4);
    const int8_t zero = 0;
    const std::string mz =
        b_.init(module + ".input_zero_point", onnx::TensorProto::INT8, {}, &zero, 1);
    std::string xq = b_.op("QuantizeLinear", {xc, ms, mz}, module + "/x_q");
    return b_.op("DequantizeLinear", {xq, ms, mz}, module + "/x_deq");
  }
  // Dynamic per token: s_t = max|x_t| / 127, 1 for an all-zero row.
  const std::string key = x + "|dynamic";
  auto it = act_cache_.find(key);
  if (it != act_cache_.end()) return it->second;
  std::string x2 = b_.op("Reshape", {x, b_.i64({-1, in})}, module + "/x_rows");
  std::string ax = b_.op("Abs", {x2}, module + "/x_abs");
  std::string amax = b_.op("ReduceMax", {ax}, module + "/x_amax", [](onnx::NodeProto* n) {
    attr_ints(n, "axes", {1});
    attr_int(n, "keepdims", 0);
  });
  std::string pos = b_.op("Greater", {amax, b_.f32(0.0f)}, module + "/x_nonzero");
  std::string div = b_.op("Div", {amax, b_.f32(127.0f)}, module + "/x_amax_127");
  std::string sc = b_.op("Where", {pos, div, b_.f32(1.0f)}, module + "/x_scale");
  std::string zp = b_.op("ConstantOfShape", {b_.op("Shape", {sc}, module + "/x_scale_shape")},
                         module + "/x_zero_point", [](onnx::NodeProto* n) {
                           auto* a = n->add_attribute();
                           a->set_name("value");
                           a->set_type(onnx::AttributeProto::TENSOR);
                           onnx::TensorProto* t = a->mutable_t();
                           t->set_data_type(onnx::TensorProto::INT8);
                           t->add_dims(1);
                           t->set_raw_data(std::string(1, '\0'));
                         });
  auto axis0 = [](onnx::NodeProto* n) { attr_int(n, "axis", 0); };
  std::string xq = b_.op("QuantizeLinear", {x2, sc, zp}, module + "/x_q", axis0);
  std::string xd = b_.op("DequantizeLinear", {xq, sc, zp}, module + "/x_deq_rows", axis0);
  std::string shape = b_.op("Shape", {x}, module + "/x_shape");
  return act_cache_[key] = b_.op("Reshape", {xd, shape}, module + "/x_deq");
}

std::string DecoderExport::linear(const std::string& x, const std::string& module, int64_t out,
                                  int64_t in, bool bias) {
  std::string xa = quant_act(x, module, in);
  std::string w = weight(module, out, in);
  std::string y = b_.op("MatMul", {xa, w}, module + "/out");
  if (!bias) return y;
  const core::TensorInfo& bt = tensor(module + ".bias");
  expect_shape(bt, {out});
  return b_.op("Add", {y, b_.init_f32(module + ".bias", {out}, f32(bt))}, module + "/out_bias");
}

// [B, S, n*D] -> [B, n, S, D]
std::string DecoderExport::heads(const std::string& x, int64_t n, const std::string& hint) {
  std::string r = b_.op("Reshape", {x, b_.i64({0, 0, n, c_.head_dim})}, hint + "/heads");
  return b_.op("Transpose", {r}, hint + "/bhsd",
               [](onnx::NodeProto* nd) { attr_ints(nd, "perm", {0, 2, 1, 3}); });
}

// x * cos + rotate_half(x) * sin over [B, n, S, D], rotate_half(x1, x2) = (-x2, x1).
std::string DecoderExport::rope(const std::string& x, const std::string& hint) {
  const int64_t h = c_.head_dim / 2;
  auto slice = [&](int64_t lo, int64_t hi, const char* tag) {
    return b_.op("Slice", {x, b_.i64({lo}), b_.i64({hi}), b_.i64({-1})}, hint + tag);
  };
  std::string x1 = slice(0, h, "/x1"), x2 = slice(h, c_.head_dim, "/x2");
  std::string n2 = b_.op("Neg", {x2}, hint + "/neg_x2");
  std::string rot = b_.op("Concat", {n2, x1}, hint + "/rot",
                          [](onnx::NodeProto* n) { attr_int(n, "axis", -1); });
  std::string a = b_.op("Mul", {x, cos_}, hint + "/xcos");
  std::string bsn = b_.op("Mul", {rot, sin_}, hint + "/rotsin");
  return b_.op("Add", {a, bsn}, hint + "/rope");
}

void DecoderExport::layer(int64_t i, std::string& h) {
  const std::string p = "model.layers." + std::to_string(i) + ".";
  const int64_t H = c_.hidden_size, D = c_.head_dim, NH = c_.num_heads, KV = c_.num_kv_heads;
  const int64_t rep = NH / KV;
  std::string xn = rmsnorm(h, p + "input_layernorm.weight");
  std::string q = linear(xn, p + "self_attn.q_proj", c_.q_dim(), H, c_.qkv_bias);
  std::string k = linear(xn, p + "self_attn.k_proj", c_.kv_dim(), H, c_.qkv_bias);
  std::string v = linear(xn, p + "self_attn.v_proj", c_.kv_dim(), H, c_.qkv_bias);
  q = rope(heads(q, NH, p + "q"), p + "q");
  k = rope(heads(k, KV, p + "k"), p + "k");
  v = heads(v, KV, p + "v");
  const std::string si = std::to_string(i);
  auto cat2 = [](onnx::NodeProto* n) { attr_int(n, "axis", 2); };
  b_.op_to("Concat", {"past_key_values." + si + ".key", k}, "present." + si + ".key", cat2);
  b_.op_to("Concat", {"past_key_values." + si + ".value", v}, "present." + si + ".value", cat2);
  // GQA without copies: query heads grouped per kv head, [B, KV, rep, S, D] against
  // [B, KV, 1, T, D].
  std::string q5 = b_.op("Reshape", {q, b_.i64({0, KV, rep, -1, D})}, p + "q/groups");
  std::string k5 = b_.op("Unsqueeze", {"present." + si + ".key", b_.i64({2})}, p + "k/groups");
  std::string v5 = b_.op("Unsqueeze", {"present." + si + ".value", b_.i64({2})}, p + "v/groups");
  std::string kt = b_.op("Transpose", {k5}, p + "k/t",
                         [](onnx::NodeProto* n) { attr_ints(n, "perm", {0, 1, 2, 4, 3}); });
  std::string sc = b_.op("MatMul", {q5, kt}, p + "attn/qk");
  sc = b_.op("Mul", {sc, b_.f32(float(1.0 / std::sqrt(double(D))))}, p + "attn/scores");
  sc = b_.op("Where", {allowed_, sc, lowest_}, p + "attn/masked");
  std::string pr = b_.op("Softmax", {sc}, p + "attn/probs",
                         [](onnx::NodeProto* n) { attr_int(n, "axis", -1); });
  std::string ctx = b_.op("MatMul", {pr, v5}, p + "attn/ctx");
  ctx = b_.op("Reshape", {ctx, b_.i64({0, NH, -1, D})}, p + "attn/ctx_heads");
  ctx = b_.op("Transpose", {ctx}, p + "attn/ctx_bshd",
              [](onnx::NodeProto* n) { attr_ints(n, "perm", {0, 2, 1, 3}); });
  ctx = b_.op("Reshape", {ctx, b_.i64({0, 0, NH * D})}, p + "attn/ctx_flat");
  std::string o = linear(ctx, p + "self_attn.o_proj", H, c_.q_dim(), c_.o_bias);
  h = b_.op("Add", {h, o}, p + "attn_residual");
  std::string xm = rmsnorm(h, p + "post_attention_layernorm.weight");
  const int64_t I = c_.intermediate_size;
  std::string g = linear(xm, p + "mlp.gate_proj", I, H, false);
  std::string u = linear(xm, p + "mlp.up_proj", I, H, false);
  std::string sg = b_.op("Sigmoid", {g}, p + "mlp/sigmoid");
  std::string act = b_.op("Mul", {b_.op("Mul", {g, sg}, p + "mlp/silu"), u}, p + "mlp/act");
  std::string d = linear(act, p + "mlp.down_proj", H, I, false);
  h = b_.op("Add", {h, d}, p + "mlp_residual");
}

void DecoderExport::build() {
  const int64_t D = c_.head_dim, maxpos = c_.max_position_embeddings;
  // RoPE tables [maxpos, D] (halves duplicated), as the runtime builds them.
  {
    const std::vector<double> inv = core::rope_inv_freq(c_);
    const int64_t half = D / 2;
    std::vector<float> cs(size_t(maxpos * D)), sn(size_t(maxpos * D));
    for (int64_t p = 0; p < maxpos; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const float a = float(p) * float(inv[size_t(i)]);
        const float cv = float(std::cos(double(a))), sv = float(std::sin(double(a)));
        cs[size_t(p * D + i)] = cs[size_t(p * D + half + i)] = cv;
        sn[size_t(p * D + i)] = sn[size_t(p * D + half + i)] = sv;
      }
    }
    std::string ct = b_.init_f32("rope.cos", {maxpos, D}, cs);
    std::string st = b_.init_f32("rope.sin", {maxpos, D}, sn);
    auto table = [&](const std::string& t, const char* hint) {
      std::string g = b_.op("Gather", {t, "position_ids"}, hint);  // [B, S, D]
      return b_.op("Unsqueeze", {g, b_.i64({1})}, std::string(hint) + "_heads");  // [B,1,S,D]
    };
    cos_ = table(ct, "rope/cos");
    sin_ = table(st, "rope/sin");
  }
  // The mask [B, 1, 1, S, T]: key j visible to query i when j <= past + i, within the sliding
  // window, and attention_mask[b, j] != 0.
  {
    auto shape_dim = [&](const std::string& x, int64_t d, const char* hint) {
      return b_.op("Shape", {x}, hint, [d](onnx::NodeProto* n) {
        attr_int(n, "start", d);
        attr_int(n, "end", d + 1);
      });
    };
    std::string S = shape_dim("input_ids", 1, "mask/seq");
    std::string P = shape_dim("past_key_values.0.key", 2, "mask/past");
    std::string T = b_.op("Add", {P, S}, "mask/total");
    auto scalar = [&](const std::string& x, const char* hint) {
      return b_.op("Squeeze", {x, b_.i64({0})}, hint);
    };
    std::string one = b_.op("Squeeze", {b_.i64({1}), b_.i64({0})}, "mask/one");
    std::string zero = b_.op("Squeeze", {b_.i64({0}), b_.i64({0})}, "mask/zero");
    std::string Ts = scalar(T, "mask/total_s");
    std::string kidx = b_.op("Range", {zero, Ts, one}, "mask/key_index");
    std::string qidx = b_.op("Range", {scalar(P, "mask/past_s"), Ts, one}, "mask/query_index");
    std::string kr = b_.op("Unsqueeze", {kidx, b_.i64({0})}, "mask/key_row");    // [1, T]
    std::string qc = b_.op("Unsqueeze", {qidx, b_.i64({1})}, "mask/query_col");  // [S, 1]
    std::string causal = b_.op("LessOrEqual", {kr, qc}, "mask/causal");          // [S, T]
    if (c_.sliding_window) {
      std::string dist = b_.op("Sub", {qc, kr}, "mask/distance");
      std::string in = b_.op("Less", {dist, b_.i64({*c_.sliding_window})}, "mask/in_window");
      causal = b_.op("And", {causal, in}, "mask/causal_window");
    }
    std::string pad = b_.op("Cast", {"attention_mask"}, "mask/keep", [](onnx::NodeProto* n) {
      attr_int(n, "to", onnx::TensorProto::BOOL);
    });
    pad = b_.op("Reshape", {pad, b_.i64({0, 1, 1, 1, -1})}, "mask/keep_5d");
    allowed_ = b_.op("And", {causal, pad}, "mask/allowed");
    lowest_ = b_.f32(std::numeric_limits<float>::lowest());
  }
  const core::TensorInfo& et = tensor("model.embed_tokens.weight");
  expect_shape(et, {c_.vocab_size, c_.hidden_size});
  std::string emb = init_float("model.embed_tokens.weight", et);
  std::string h = b_.op("Gather", {emb, "input_ids"}, "embed");
  for (int64_t i = 0; i < c_.num_layers; ++i) layer(i, h);
  h = rmsnorm(h, "model.norm.weight");
  const core::TensorInfo* lm = ck_.find("lm_head.weight");
  if (c_.tie_word_embeddings && (!lm || lm->dtype != core::DType::kI8)) {
    std::string wt = b_.op("Transpose", {emb}, "lm_head/weight_t",
                           [](onnx::NodeProto* n) { attr_ints(n, "perm", {1, 0}); });
    b_.op_to("MatMul", {h, wt}, "logits");
  } else {
    std::string y = linear(h, "lm_head", c_.vocab_size, c_.hidden_size, false);
    b_.op_to("Identity", {y}, "logits");
  }
}

// onnx::checker on a model in memory or on a written file (`what` names it in the error).
template <typename ModelOrPath>
void checker_run(const ModelOrPath& m, const std::string& what) {
  try {
    onnx::checker::check_model(m);
  } catch (const std::exception& e) {
    fail(StatusCode::kInternal, std::string("onnx::checker rejected ") + what + ": " + e.what());
  }
}

uint64_t estimate_bytes(const core::ModelConfig& c, const core::Checkpoint& ck) {
  uint64_t n = uint64_t(c.max_position_embeddings) * uint64_t(c.head_dim) * 8;  // rope tables
  for (const std::string& name : ck.names()) {
    const core::TensorInfo* t = ck.find(name);
    n += uint64_t(t->numel()) * (core::dtype_is_float(t->dtype) ? 4 : core::dtype_size(t->dtype));
  }
  return n;
}

// 4-bit weights export as int8 DequantizeLinear inputs holding values in [-8, 7] (opset 17 has
// no int4 type): the same numbers, stored at 8 bits, so the scheme keeps its name.
std::string scheme_name(const core::QuantScheme* s) {
  return s ? core::quant_scheme_name(*s) : "f32";
}

}  // namespace

std::string onnx_weight_name(const std::string& module) { return module + ".weight_t"; }

OnnxExportResult onnx_export(const std::string& model_dir, const std::string& out_dir,
                             const OnnxExportOptions& opts) {
  core::ModelConfig cfg = core::config_load(model_dir).take_or_throw();
  throw_if_error(core::config_validate(cfg, model_dir + "/config.json"));
  if (cfg.head_dim % 2 != 0) {
    fail(StatusCode::kInvalidInput, model_dir + "/config.json: head_dim " +
                                        std::to_string(cfg.head_dim) +
                                        " is odd; rotate-half RoPE needs an even head_dim");
  }
  std::unique_ptr<core::QuantScheme> scheme;
  if (cfg.has_quantization()) {
    Result<core::QuantScheme> s = core::quant_config_from_json(cfg.raw["quantization_config"]);
    const Status st = s.is_ok() ? core::quant_scheme_check_channel_or_group(*s) : s.status();
    if (!st.is_ok()) fail(st.code(), model_dir + "/config.json: " + st.message());
    scheme = std::make_unique<core::QuantScheme>(s.value());
  }
  core::Checkpoint ck = core::Checkpoint::open(model_dir).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ck));  // the one validator, quantized or not

  const uint64_t est = estimate_bytes(cfg, ck);
  bool external = opts.external_data == ExternalData::kAlways ||
                  (opts.external_data == ExternalData::kAuto && est > opts.external_threshold_bytes);
  if (!external && est >= kProtobufLimit) {
    fail(StatusCode::kInvalidInput,
         model_dir + ": the weights take " + std::to_string(est >> 20) +
             " MiB, over protobuf's 2 GiB limit for one file; allow external data");
  }

  onnx::ModelProto model;
  model.set_ir_version(kIrVersion);
  model.set_producer_name("shrink");
  model.set_producer_version(SHRINK_VERSION);
  model.set_doc_string(std::string(core::arch_name(cfg.arch)) + " decoder with KV cache, " +
                       scheme_name(scheme.get()) + ", exported from " + model_dir);
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOpset);
  onnx::GraphProto* g = model.mutable_graph();
  g->set_name("shrink_decoder");

  const std::string kv = std::to_string(cfg.num_kv_heads), hd = std::to_string(cfg.head_dim);
  add_value_info(g->mutable_input(), "input_ids", onnx::TensorProto::INT64,
                 {"batch_size", "sequence_length"});
  add_value_info(g->mutable_input(), "attention_mask", onnx::TensorProto::INT64,
                 {"batch_size", "total_sequence_length"});
  add_value_info(g->mutable_input(), "position_ids", onnx::TensorProto::INT64,
                 {"batch_size", "sequence_length"});
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    for (const char* kind : {"key", "value"}) {
      add_value_info(g->mutable_input(),
                     "past_key_values." + std::to_string(i) + "." + kind,
                     onnx::TensorProto::FLOAT, {"batch_size", kv, "past_sequence_length", hd});
    }
  }
  add_value_info(g->mutable_output(), "logits", onnx::TensorProto::FLOAT,
                 {"batch_size", "sequence_length", std::to_string(cfg.vocab_size)});
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    for (const char* kind : {"key", "value"}) {
      add_value_info(g->mutable_output(), "present." + std::to_string(i) + "." + kind,
                     onnx::TensorProto::FLOAT, {"batch_size", kv, "total_sequence_length", hd});
    }
  }

  OnnxExportResult res;
  res.scheme = scheme_name(scheme.get());
  res.opset = kOpset;
  res.external = external;
  {
    std::unique_ptr<ExternalWriter> ext;
    if (external) ext = std::make_unique<ExternalWriter>(out_dir + "/" + kDataFile);
    Builder b(g, ext.get());
    DecoderExport(cfg, ck, scheme.get(), b).build();
    if (ext) ext->close();
    res.initializer_bytes = b.bytes();
  }
  if (!external && res.initializer_bytes + uint64_t(64 << 20) >= kProtobufLimit) {
    fail(StatusCode::kInvalidInput, model_dir + ": the graph would exceed protobuf's 2 GiB "
                                                "limit; allow external data");
  }
  res.nodes = g->node_size();
  res.initializers = g->initializer_size();
  for (const auto& n : g->node()) ++res.op_counts[n.op_type()];

  const std::string path = out_dir + "/model.onnx";
  if (opts.validate) {
    try {
      onnx::ShapeInferenceOptions so(/*check_type=*/true, /*strict_mode=*/1,
                                     /*data_prop=*/false);
      onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), so);
    } catch (const std::exception& e) {
      fail(StatusCode::kInternal, std::string("ONNX shape inference rejected the graph: ") + e.what());
    }
    // A single-file model is checked where it is, in memory: checking the written file would
    // parse a second copy of every weight. With external data the file is small, and checking
    // it also checks the data locations (below).
    if (!external) checker_run(model, path);
  }
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    if (!f || !model.SerializeToOstream(&f)) {
      fail(StatusCode::kIoError, path + ": cannot write the model");
    }
    f.close();
    if (!f) fail(StatusCode::kIoError, path + ": write failed");
  }
  if (opts.validate && external) checker_run(path, path);
  res.files.push_back("model.onnx");
  if (external) res.files.push_back(kDataFile);
  return res;
}

OnnxExportResult onnx_export_dir(const std::string& model_dir, const std::string& out_dir,
                                 const OnnxExportOptions& opts) {
  if (!core::is_directory(model_dir)) {
    fail(StatusCode::kNotFound, model_dir + ": no such model directory");
  }
  if (!core::path_exists(model_dir + "/config.json")) {
    fail(StatusCode::kNotFound, model_dir + "/config.json: not found; expected a Hugging Face "
                                            "model directory (config.json + safetensors)");
  }
  core::AtomicDir dir = core::AtomicDir::create(out_dir).take_or_throw();
  OnnxExportResult r = onnx_export(model_dir, dir.path(), opts);
  for (const char* extra : {"config.json", "tokenizer.json", "tokenizer_config.json",
                            "generation_config.json"}) {
    const std::string src = model_dir + "/" + extra;
    if (!core::path_exists(src)) continue;
    throw_if_error(core::write_file_atomic(dir.path() + "/" + extra,
                                           core::read_file(src).take_or_throw()));
    r.files.push_back(extra);
  }
  throw_if_error(dir.commit());
  return r;
}

}  // namespace shrink::exporter
