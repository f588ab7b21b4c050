// Tests of lib/export (ONNX writer) without a runtime: the exported graph's inputs, outputs and
// node counts for float, W8A16, W8A8 static and dynamic models; strict shape inference and the
// checker; initializers read back with protobuf and compared bit for bit with the checkpoint
// (transposed linears, int8 weights, scales); external data (aligned offsets, same bytes); the
// Clip that keeps static activations in [-127, 127]; the output directory (atomic, config and
// tokenizer copied); bad inputs (exit code 2 errors naming the problem). Models are the
// transformers-made fixtures in tests/fixtures/hf and int8 variants made by util.h. Numerical
// agreement with shrink-rt is checked in ONNX Runtime by scripts/ort_check.sh (ctest ort_check).
#include <gtest/gtest.h>
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/safetensors.h"
#include "export/onnx_export.h"
#include "tests/export/util.h"

namespace shrink {
namespace {

namespace fs = std::filesystem;
using exporter::ExternalData;
using exporter::OnnxExportOptions;

std::string fixture(const std::string& name) {
  return std::string(SHRINK_FIXTURES_DIR) + "/hf/" + name;
}

std::string temp_dir(const std::string& name) {
  fs::path p = fs::path(::testing::TempDir()) /
               ("shrink_export_" + name + "_" + std::to_string(getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

onnx::ModelProto load(const std::string& path) {
  onnx::ModelProto m;
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  EXPECT_TRUE(m.ParseFromIstream(&f)) << path;
  return m;
}

const onnx::TensorProto* initializer(const onnx::ModelProto& m, const std::string& name) {
  for (const auto& t : m.graph().initializer())
    if (t.name() == name) return &t;
  return nullptr;
}

std::map<std::string, int64_t> op_counts(const onnx::ModelProto& m) {
  std::map<std::string, int64_t> c;
  for (const auto& n : m.graph().node()) ++c[n.op_type()];
  return c;
}

std::vector<std::string> dims(const onnx::ValueInfoProto& v) {
  std::vector<std::string> d;
  for (const auto& x : v.type().tensor_type().shape().dim())
    d.push_back(x.has_dim_value() ? std::to_string(x.dim_value()) : x.dim_param());
  return d;
}

// Float values of a checkpoint tensor.
std::vector<float> ckpt_f32(const core::Checkpoint& ck, const std::string& name) {
  const core::TensorInfo* t = ck.find(name);
  EXPECT_NE(t, nullptr) << name;
  std::vector<float> v(size_t(t->numel()));
  core::convert_to_f32(t->dtype, ck.data(*t), v.data(), t->numel());
  return v;
}

template <typename T>
std::vector<T> transpose(const T* w, int64_t out, int64_t in) {
  std::vector<T> r(size_t(out * in));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < in; ++k) r[size_t(k * out + o)] = w[o * in + k];
  return r;
}

// Raw bytes of an initializer, inline or external (relative to the model's directory).
std::string tensor_bytes(const onnx::TensorProto& t, const std::string& dir) {
  if (t.data_location() != onnx::TensorProto::EXTERNAL) return t.raw_data();
  std::string loc;
  uint64_t off = 0, len = 0;
  for (const auto& e : t.external_data()) {
    if (e.key() == "location") loc = e.value();
    if (e.key() == "offset") off = std::stoull(e.value());
    if (e.key() == "length") len = std::stoull(e.value());
  }
  std::ifstream f(dir + "/" + loc, std::ios::binary);
  f.seekg(std::streamoff(off));
  std::string s(len, '\0');
  f.read(s.data(), std::streamsize(len));
  EXPECT_TRUE(f.good()) << t.name();
  return s;
}

template <typename T>
std::string as_bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

TEST(OnnxExport, FloatGraphInputsOutputsAndNodeCounts) {
  const std::string dir = temp_dir("float");
  auto r = exporter::onnx_export(fixture("llama_gqa_llama3rope"), dir);
  onnx::ModelProto m = load(dir + "/model.onnx");
  core::ModelConfig c = core::config_load(fixture("llama_gqa_llama3rope")).take_or_throw();
  const int64_t L = c.num_layers;
  ASSERT_EQ(m.opset_import_size(), 1);
  EXPECT_EQ(m.opset_import(0).version(), 17);
  EXPECT_EQ(r.scheme, "f32");
  EXPECT_FALSE(r.external);

  const auto& g = m.graph();
  ASSERT_EQ(g.input_size(), 3 + 2 * L);
  EXPECT_EQ(g.input(0).name(), "input_ids");
  EXPECT_EQ(g.input(1).name(), "attention_mask");
  EXPECT_EQ(g.input(2).name(), "position_ids");
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(g.input(i).type().tensor_type().elem_type(), onnx::TensorProto::INT64);
  EXPECT_EQ(dims(g.input(0)), (std::vector<std::string>{"batch_size", "sequence_length"}));
  EXPECT_EQ(dims(g.input(1)), (std::vector<std::string>{"batch_size", "total_sequence_length"}));
  for (int64_t i = 0; i < L; ++i) {
    const auto& k = g.input(int(3 + 2 * i));
    EXPECT_EQ(k.name(), "past_key_values." + std::to_string(i) + ".key");
    EXPECT_EQ(g.input(int(4 + 2 * i)).name(), "past_key_values." + std::to_string(i) + ".value");
    EXPECT_EQ(k.type().tensor_type().elem_type(), onnx::TensorProto::FLOAT);
    EXPECT_EQ(dims(k), (std::vector<std::string>{"batch_size", std::to_string(c.num_kv_heads),
                                                 "past_sequence_length",
                                                 std::to_string(c.head_dim)}));
  }
  ASSERT_EQ(g.output_size(), 1 + 2 * L);
  EXPECT_EQ(g.output(0).name(), "logits");
  EXPECT_EQ(dims(g.output(0)), (std::vector<std::string>{"batch_size", "sequence_length",
                                                         std::to_string(c.vocab_size)}));
  for (int64_t i = 0; i < L; ++i) {
    EXPECT_EQ(g.output(int(1 + 2 * i)).name(), "present." + std::to_string(i) + ".key");
    EXPECT_EQ(g.output(int(2 + 2 * i)).name(), "present." + std::to_string(i) + ".value");
  }

  auto ops = op_counts(m);
  EXPECT_EQ(ops, r.op_counts);
  EXPECT_EQ(ops["MatMul"], 9 * L + 1);  // 7 linears + QK^T + PV per layer, lm_head
  EXPECT_EQ(ops["Softmax"], L);
  EXPECT_EQ(ops["ReduceMean"], 2 * L + 1);  // RMSNorms
  EXPECT_EQ(ops["Sigmoid"], L);
  EXPECT_EQ(ops["Gather"], 3);  // embedding, cos, sin
  EXPECT_EQ(ops.count("DequantizeLinear"), 0u);
  EXPECT_EQ(ops.count("QuantizeLinear"), 0u);
  EXPECT_EQ(ops.count("Add") ? ops["Add"] : 0, L * (2 /*rope*/ + 2 /*residual*/ + 2 /*norms*/) + 1 + 1);
  EXPECT_EQ(r.nodes, g.node_size());
  // Strict shape inference gives logits [batch, seq, vocab].
  bool found = false;
  for (const auto& vi : g.value_info()) found |= vi.name() == "model.norm.weight/out";
  EXPECT_TRUE(found) << "inferred value_info kept in the file";
  EXPECT_NO_THROW(onnx::checker::check_model(dir + "/model.onnx"));
}

TEST(OnnxExport, FloatInitializersRoundTripBitForBit) {
  for (const char* name : {"llama_gqa_llama3rope", "qwen2_bias_tied_bf16", "llama_mha_sharded_f16"}) {
    SCOPED_TRACE(name);
    const std::string dir = temp_dir(std::string("roundtrip_") + name);
    exporter::onnx_export(fixture(name), dir);
    onnx::ModelProto m = load(dir + "/model.onnx");
    core::ModelConfig c = core::config_load(fixture(name)).take_or_throw();
    core::Checkpoint ck = core::Checkpoint::open(fixture(name)).take_or_throw();
    int linears = 0;
    for (const core::TensorSpec& s : core::expected_tensors(c)) {
      std::vector<float> w = ckpt_f32(ck, s.name);
      if (s.role == core::TensorRole::kLmHead && c.tie_word_embeddings) continue;
      if (core::tensor_role_is_linear(s.role) && s.shape.size() == 2) {
        const std::string mod = s.name.substr(0, s.name.size() - 7);
        const onnx::TensorProto* t = initializer(m, exporter::onnx_weight_name(mod));
        ASSERT_NE(t, nullptr) << s.name;
        EXPECT_EQ(t->data_type(), onnx::TensorProto::FLOAT);
        ASSERT_EQ(t->dims_size(), 2);
        EXPECT_EQ(t->dims(0), s.shape[1]);
        EXPECT_EQ(t->dims(1), s.shape[0]);
        EXPECT_EQ(t->raw_data(), as_bytes(transpose(w.data(), s.shape[0], s.shape[1]))) << s.name;
        ++linears;
      } else {
        const onnx::TensorProto* t = initializer(m, s.name);
        ASSERT_NE(t, nullptr) << s.name;
        EXPECT_EQ(t->raw_data(), as_bytes(w)) << s.name;
      }
    }
    EXPECT_EQ(linears, 7 * c.num_layers + (c.tie_word_embeddings ? 0 : 1));
    // Tied: the lm_head is a Transpose of the one embedding initializer.
    if (c.tie_word_embeddings) {
      EXPECT_EQ(initializer(m, exporter::onnx_weight_name("lm_head")), nullptr);
      EXPECT_EQ(op_counts(m)["Transpose"], 1 + 5 * c.num_layers);  // q/k/v heads, K^T, context
    }
  }
}

TEST(OnnxExport, BiasAndSlidingWindowAppearInTheGraph) {
  const std::string dir = temp_dir("bias");
  exporter::onnx_export(fixture("qwen2_bias_tied_bf16"), dir);
  onnx::ModelProto m = load(dir + "/model.onnx");
  EXPECT_NE(initializer(m, "model.layers.0.self_attn.q_proj.bias"), nullptr);
  EXPECT_NE(initializer(m, "model.layers.1.self_attn.v_proj.bias"), nullptr);
  EXPECT_EQ(op_counts(m).count("Less"), 0u);

  const std::string src = temp_dir("window_src");
  test::copy_model(fixture("mistral_mqa_linearrope"), src, 8);
  const std::string out = temp_dir("window");
  exporter::onnx_export(src, out);
  onnx::ModelProto w = load(out + "/model.onnx");
  EXPECT_EQ(op_counts(w)["Less"], 1);  // one window mask shared by every layer
  const onnx::TensorProto* win = nullptr;
  for (const auto& n : w.graph().node())
    if (n.op_type() == "Less") win = initializer(w, n.input(1));
  ASSERT_NE(win, nullptr);
  int64_t v = 0;
  std::memcpy(&v, win->raw_data().data(), 8);
  EXPECT_EQ(v, 8);
}

struct QuantCase {
  const char* name;
  test::QuantSpec spec;
  const char* scheme;
};

class OnnxExportInt8 : public ::testing::TestWithParam<QuantCase> {};

TEST_P(OnnxExportInt8, StructureAndInitializers) {
  const QuantCase& qc = GetParam();
  const std::string src = temp_dir(std::string("q_src_") + qc.name);
  test::quantize_model(fixture("llama_gqa_llama3rope"), src, qc.spec);
  const std::string dir = temp_dir(std::string("q_") + qc.name);
  auto r = exporter::onnx_export(src, dir);
  EXPECT_EQ(r.scheme, qc.scheme);
  onnx::ModelProto m = load(dir + "/model.onnx");
  EXPECT_NO_THROW(onnx::checker::check_model(dir + "/model.onnx"));
  core::ModelConfig c = core::config_load(src).take_or_throw();
  core::Checkpoint ck = core::Checkpoint::open(src).take_or_throw();
  const int64_t L = c.num_layers;
  auto ops = op_counts(m);
  const bool group = qc.spec.group_size > 0;
  // Weights: 7 int8 linears per layer (lm_head stays float).
  EXPECT_EQ(ops["MatMul"], 9 * L + 1);
  // Activations: static ones get a Q/DQ pair per linear after one Clip per distinct input
  // (qkv, o, gate/up, down); dynamic ones one Q/DQ per distinct input.
  const int64_t act_q = qc.spec.activations == "none"     ? 0
                        : qc.spec.activations == "static" ? 7 * L
                                                          : 4 * L;
  EXPECT_EQ(ops.count("QuantizeLinear") ? ops["QuantizeLinear"] : 0, act_q);
  EXPECT_EQ(ops.count("DequantizeLinear") ? ops["DequantizeLinear"] : 0,
            (group ? 0 : 7 * L) + act_q);
  EXPECT_EQ(ops.count("Clip") ? ops["Clip"] : 0, qc.spec.activations == "static" ? 4 * L : 0);
  EXPECT_EQ(ops.count("ReduceMax") ? ops["ReduceMax"] : 0,
            qc.spec.activations == "dynamic" ? 4 * L : 0);
  for (const core::TensorSpec& s : core::expected_tensors(c)) {
    if (!core::tensor_role_is_linear(s.role) || s.shape.size() != 2 ||
        s.role == core::TensorRole::kLmHead)
      continue;
    const std::string mod = s.name.substr(0, s.name.size() - 7);
    const int64_t out = s.shape[0], in = s.shape[1];
    const onnx::TensorProto* t = initializer(m, exporter::onnx_weight_name(mod));
    ASSERT_NE(t, nullptr) << mod;
    EXPECT_EQ(t->data_type(), onnx::TensorProto::INT8);
    const core::TensorInfo* wi = ck.find(s.name);
    const int8_t* q = reinterpret_cast<const int8_t*>(ck.data(*wi));
    std::vector<int8_t> qv(q, q + out * in);
    if (qc.spec.asym) {  // zero points fold into the int8 values: q - zp
      const core::TensorInfo* zi = ck.find(mod + ".weight_zero_point");
      ASSERT_NE(zi, nullptr) << mod;
      const int8_t* z = reinterpret_cast<const int8_t*>(ck.data(*zi));
      const int64_t G = in / qc.spec.group_size;
      for (int64_t o = 0; o < out; ++o)
        for (int64_t k = 0; k < in; ++k)
          qv[size_t(o * in + k)] -= z[o * G + k / qc.spec.group_size];
      EXPECT_TRUE(std::any_of(qv.begin(), qv.end(), [](int8_t v) { return v < -8 || v > 7; }));
    }
    EXPECT_EQ(t->raw_data(), as_bytes(transpose(qv.data(), out, in))) << mod;
    std::vector<float> sc = ckpt_f32(ck, mod + ".weight_scale");
    if (group) {
      const int64_t G = in / qc.spec.group_size;
      const onnx::TensorProto* st = initializer(m, mod + ".weight_scale_t");
      ASSERT_NE(st, nullptr);
      EXPECT_EQ(st->raw_data(), as_bytes(transpose(sc.data(), out, G))) << mod;
    } else {
      const onnx::TensorProto* st = initializer(m, mod + ".weight_scale");
      ASSERT_NE(st, nullptr);
      EXPECT_EQ(st->raw_data(), as_bytes(sc)) << mod;
    }
  }
  if (qc.spec.activations == "static") {
    // Every Clip keeps x / s inside [-127, 127], so QuantizeLinear never saturates to -128.
    const float s = qc.spec.input_scale;
    for (const auto& n : m.graph().node()) {
      if (n.op_type() != "Clip") continue;
      const onnx::TensorProto* lo = initializer(m, n.input(1));
      const onnx::TensorProto* hi = initializer(m, n.input(2));
      ASSERT_TRUE(lo && hi);
      float l, h;
      std::memcpy(&l, lo->raw_data().data(), 4);
      std::memcpy(&h, hi->raw_data().data(), 4);
      EXPECT_EQ(l, -127.0f * s);
      EXPECT_EQ(h, 127.0f * s);
      EXPECT_GE(std::nearbyint(l / s), -127.0f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, OnnxExportInt8,
    ::testing::Values(QuantCase{"w8a16", {"none", 0, 0.02f}, "w8a16"},
                      QuantCase{"w8a16_g16", {"none", 16, 0.02f}, "w8a16/g16"},
                      QuantCase{"static", {"static", 0, 0.02f}, "w8a8-static"},
                      QuantCase{"dynamic", {"dynamic", 0, 0.02f}, "w8a8-dynamic"},
                      QuantCase{"w4a16_g16", {"none", 16, 0.02f, 4}, "w4a16/g16"},
                      QuantCase{"w4a16_asym_g16", {"none", 16, 0.02f, 4, true}, "w4a16-asym/g16"}),
    [](const ::testing::TestParamInfo<QuantCase>& i) { return std::string(i.param.name); });

TEST(OnnxExport, ExternalDataIsAlignedAndHoldsTheSameBytes) {
  const std::string inl = temp_dir("inline"), ext = temp_dir("external");
  exporter::onnx_export(fixture("llama_gqa_llama3rope"), inl);
  OnnxExportOptions o;
  o.external_data = ExternalData::kAlways;
  auto r = exporter::onnx_export(fixture("llama_gqa_llama3rope"), ext, o);
  EXPECT_TRUE(r.external);
  ASSERT_TRUE(fs::exists(ext + "/model.onnx.data"));
  EXPECT_LT(fs::file_size(ext + "/model.onnx"), fs::file_size(inl + "/model.onnx") / 4);
  onnx::ModelProto a = load(inl + "/model.onnx"), b = load(ext + "/model.onnx");
  ASSERT_EQ(a.graph().initializer_size(), b.graph().initializer_size());
  int external = 0;
  for (const auto& t : b.graph().initializer()) {
    const onnx::TensorProto* ta = initializer(a, t.name());
    ASSERT_NE(ta, nullptr);
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      ++external;
      for (const auto& e : t.external_data()) {
        if (e.key() == "offset") {
          EXPECT_EQ(std::stoull(e.value()) % 4096, 0u) << t.name();
        }
      }
    }
    EXPECT_EQ(tensor_bytes(t, ext), ta->raw_data()) << t.name();
  }
  EXPECT_GT(external, 10);
  EXPECT_NO_THROW(onnx::checker::check_model(ext + "/model.onnx"));
  // The checker follows external locations: a missing data file is an error.
  fs::remove(ext + "/model.onnx.data");
  EXPECT_ANY_THROW(onnx::checker::check_model(ext + "/model.onnx"));
}

TEST(OnnxExport, ExportDirIsAtomicAndCopiesConfigAndTokenizer) {
  const std::string src = temp_dir("dir_src");
  test::copy_model(fixture("llama_gqa_llama3rope"), src, 0);
  ASSERT_TRUE(core::write_file_atomic(src + "/tokenizer.json", "{\"model\": {}}").is_ok());
  const std::string parent = temp_dir("dir_out");
  const std::string out = parent + "/onnx";
  auto r = exporter::onnx_export_dir(src, out);
  for (const char* f : {"model.onnx", "config.json", "tokenizer.json"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  EXPECT_EQ(core::read_file(out + "/tokenizer.json").take_or_throw(), "{\"model\": {}}");
  int entries = 0;
  for (const auto& e : fs::directory_iterator(parent)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1) << "no temporary directory left behind";
  EXPECT_EQ(std::count(r.files.begin(), r.files.end(), "tokenizer.json"), 1);
}

TEST(OnnxExport, BadInputsAreInvalidInputNamingTheProblem) {
  const std::string out = temp_dir("bad_out");
  try {
    exporter::onnx_export_dir(out + "/does-not-exist", out + "/x");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(exit_code_for(e.code()), 2);
    EXPECT_NE(std::string(e.what()).find("does-not-exist"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out + "/x"));

  // An int8 model whose weight_scale is missing.
  const std::string q = temp_dir("bad_q");
  test::quantize_model(fixture("llama_gqa_llama3rope"), q, {"none", 0, 0.02f});
  {
    core::Checkpoint ck = core::Checkpoint::open(q).take_or_throw();
    std::vector<core::TensorView> views;
    for (const std::string& n : ck.names()) {
      if (n == "model.layers.1.mlp.up_proj.weight_scale") continue;
      const core::TensorInfo* t = ck.find(n);
      views.push_back({n, t->dtype, t->shape, ck.data(*t), t->nbytes});
    }
    const std::string q2 = temp_dir("bad_q2");
    ASSERT_TRUE(core::checkpoint_write(q2, views).is_ok());
    fs::copy_file(q + "/config.json", q2 + "/config.json");
    try {
      exporter::onnx_export(q2, temp_dir("bad_q2_out"));
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(exit_code_for(e.code()), 2);
      EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight_scale"),
                std::string::npos)
          << e.what();
    }
  }
  // Int8 weights without a quantization_config.
  {
    const std::string q3 = temp_dir("bad_q3");
    core::Checkpoint ck = core::Checkpoint::open(q).take_or_throw();
    std::vector<core::TensorView> views;
    for (const std::string& n : ck.names()) {
      const core::TensorInfo* t = ck.find(n);
      views.push_back({n, t->dtype, t->shape, ck.data(*t), t->nbytes});
    }
    ASSERT_TRUE(core::checkpoint_write(q3, views).is_ok());
    fs::copy_file(fixture("llama_gqa_llama3rope") + "/config.json", q3 + "/config.json");
    try {
      exporter::onnx_export(q3, temp_dir("bad_q3_out"));
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(exit_code_for(e.code()), 2) << e.what();
    }
  }
  // Inline-only export of a model over the 2 GiB limit is refused before writing anything.
  OnnxExportOptions o;
  o.external_data = ExternalData::kAuto;
  o.external_threshold_bytes = 1;  // everything counts as "large"
  auto r = exporter::onnx_export(fixture("llama_gqa_llama3rope"), temp_dir("auto_ext"), o);
  EXPECT_TRUE(r.external);
}

}  // namespace
}  // namespace shrink
