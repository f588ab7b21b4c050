// GGUF export; see gguf_export.h.
#include "pipeline/gguf_export.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/json_util.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "core/tokenizer.h"

namespace shrink::pipeline {

namespace fs = std::filesystem;

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::kF32: return "f32";
    case GgmlType::kF16: return "f16";
    case GgmlType::kBF16: return "bf16";
    case GgmlType::kQ8_0: return "q8_0";
    case GgmlType::kQ4_0: return "q4_0";
    case GgmlType::kQ4_1: return "q4_1";
  }
  return "?";
}

uint64_t ggml_row_bytes(GgmlType t, int64_t n) {
  switch (t) {
    case GgmlType::kF32: return uint64_t(n) * 4;
    case GgmlType::kF16:
    case GgmlType::kBF16: return uint64_t(n) * 2;
    case GgmlType::kQ8_0: return uint64_t(n / 32) * 34;
    case GgmlType::kQ4_0: return uint64_t(n / 32) * 18;
    case GgmlType::kQ4_1: return uint64_t(n / 32) * 20;
  }
  return 0;
}

namespace {

constexpr uint64_t kAlign = 32;  // general.alignment's default

bool is_quant(GgmlType t) {
  return t == GgmlType::kQ8_0 || t == GgmlType::kQ4_0 || t == GgmlType::kQ4_1;
}

void put_f16(uint8_t* p, float v) {
  const uint16_t h = core::f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// Rounds v to f16 as a block stores it; tracks the largest relative change.
float f16_round(float v, double* max_rel) {
  const float r = core::f16_to_f32(core::f32_to_f16(v));
  if (v != 0 && max_rel) *max_rel = std::max(*max_rel, double(std::fabs(r - v)) / std::fabs(double(v)));
  return r;
}

}  // namespace

// llama.cpp's quantize_row_q8_0_ref: d = amax / 127, q = round(x / d).
void gguf_quantize_q8_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 34) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(out, d);
    for (int j = 0; j < 32; ++j) out[2 + j] = uint8_t(int8_t(std::lround(x[j] * id)));
  }
}

// quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, u = min(15, int(x / d + 8.5)).
void gguf_quantize_q4_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 18) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(out, d);
    for (int j = 0; j < 16; ++j) {
      const uint8_t lo = uint8_t(std::min(15, int(int8_t(x[j] * id + 8.5f))));
      const uint8_t hi = uint8_t(std::min(15, int(int8_t(x[j + 16] * id + 8.5f))));
      out[2 + j] = uint8_t(lo | (hi << 4));
    }
  }
}

// quantize_row_q4_1_ref: d = (max - min) / 15, m = min, u = min(15, int((x - min) / d + 0.5)).
void gguf_quantize_q4_1(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / 32; ++b, x += 32, out += 20) {
    float mn = x[0], mx = x[0];
    for (int j = 1; j < 32; ++j) {
      mn = std::min(mn, x[j]);
      mx = std::max(mx, x[j]);
    }
    const float d = (mx - mn) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
    put_f16(out, d);
    put_f16(out + 2, mn);
    for (int j = 0; j < 16; ++j) {
      const uint8_t lo = uint8_t(std::min(15, int(int8_t((x[j] - mn) * id + 0.5f))));
      const uint8_t hi = uint8_t(std::min(15, int(int8_t((x[j + 16] - mn) * id + 0.5f))));
      out[4 + j] = uint8_t(lo | (hi << 4));
    }
  }
}

namespace {

// ---- the file ---------------------------------------------------------------------------------

// GGUF's metadata key/value section, serialized as it is built.
class Metadata {
 public:
  enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };
  void u32(const std::string& k, uint32_t v) { key(k, kU32); pod(v); }
  void f32(const std::string& k, float v) { key(k, kF32); pod(v); }
  void boolean(const std::string& k, bool v) { key(k, kBool); pod(uint8_t(v)); }
  void str(const std::string& k, const std::string& v) { key(k, kString); string(v); }
  void strings(const std::string& k, const std::vector<std::string>& v) {
    key(k, kArray);
    pod(uint32_t(kString));
    pod(uint64_t(v.size()));
    for (const std::string& s : v) string(s);
  }
  void i32s(const std::string& k, const std::vector<int32_t>& v) { array(k, kI32, v); }
  void f32s(const std::string& k, const std::vector<float>& v) { array(k, kF32, v); }
  uint64_t count() const { return n_; }
  const std::string& bytes() const { return b_; }

 private:
  template <typename T>
  void pod(T v) { b_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void string(const std::string& s) {
    pod(uint64_t(s.size()));
    b_ += s;
  }
  void key(const std::string& k, uint32_t type) {
    string(k);
    pod(type);
    n_++;
  }
  template <typename T>
  void array(const std::string& k, uint32_t type, const std::vector<T>& v) {
    key(k, kArray);
    pod(type);
    pod(uint64_t(v.size()));
    b_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  }
  std::string b_;
  uint64_t n_ = 0;
};

// The output file: written in order through a buffer to "<path>.tmp-<pid>", renamed by finish();
// removed if never finished.
class OutFile {
 public:
  ~OutFile() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  Status open(const std::string& path) {
    path_ = path;
    tmp_ = path + ".tmp-" + std::to_string(::getpid());
    const fs::path parent = fs::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) fs::create_directories(parent, ec);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    SHRINK_CHECK(fd_ >= 0, StatusCode::kIoError, "%s: cannot create: %s", tmp_.c_str(),
                 std::strerror(errno));
    return Status::ok();
  }
  Status write(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    while (n > 0) {
      const size_t k = std::min(n, kBuf - buf_.size());
      buf_.insert(buf_.end(), b, b + k);
      b += k;
      n -= k;
      if (buf_.size() == kBuf) SHRINK_RETURN_IF_ERROR(flush());
    }
    return Status::ok();
  }
  Status pad() {
    static const uint8_t zeros[kAlign] = {};
    return write(zeros, size_t((kAlign - offset() % kAlign) % kAlign));
  }
  uint64_t offset() const { return written_ + buf_.size(); }
  Status finish() {
    SHRINK_RETURN_IF_ERROR(flush());
    SHRINK_CHECK(::fsync(fd_) == 0, StatusCode::kIoError, "%s: fsync: %s", tmp_.c_str(),
                 std::strerror(errno));
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int e = errno;
      ::unlink(tmp_.c_str());
      return Status(StatusCode::kIoError, path_ + ": cannot rename into place: " + std::strerror(e));
    }
    return Status::ok();
  }

 private:
  static constexpr size_t kBuf = size_t(8) << 20;
  Status flush() {
    SHRINK_RETURN_IF_ERROR(core::pwrite_all(fd_, buf_.data(), buf_.size(), written_, tmp_));
    written_ += buf_.size();
    buf_.clear();
    return Status::ok();
  }
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  std::vector<uint8_t> buf_;
};

// ---- the plan ---------------------------------------------------------------------------------

// One tensor of the file: where its values come from and how they are written.
struct Item {
  std::string name;         // llama.cpp's
  std::string src;          // the checkpoint's tensor ("" for rope_freqs)
  std::string module;       // for a quantized linear: "<module>" of <module>.weight_scale etc.
  int64_t rows = 1, cols = 0;  // [rows, cols] = ggml's ne1, ne0 (1-D: rows 1)
  bool one_d = false;
  GgmlType type = GgmlType::kF32;
  int64_t permute_heads = 0;   // > 0: q/k rows in llama.cpp's RoPE pair order
  int64_t head_dim = 0;
  std::vector<float> values;   // rope_freqs: the values themselves
  bool integer = false;        // the source is shrink's integer weight (I8, maybe 4-bit values)
  bool exact = false;          // ... and maps onto the type's blocks with its own values
  uint64_t offset = 0, nbytes = 0;
};

// llama.cpp's name for a checkpoint tensor.
std::string gguf_name(const core::TensorSpec& t) {
  using R = core::TensorRole;
  const std::string b = "blk." + std::to_string(t.layer) + ".";
  switch (t.role) {
    case R::kEmbed: return "token_embd.weight";
    case R::kFinalNorm: return "output_norm.weight";
    case R::kLmHead: return "output.weight";
    case R::kAttnNorm: return b + "attn_norm.weight";
    case R::kMlpNorm: return b + "ffn_norm.weight";
    case R::kQ: return b + "attn_q.weight";
    case R::kK: return b + "attn_k.weight";
    case R::kV: return b + "attn_v.weight";
    case R::kO: return b + "attn_output.weight";
    case R::kQBias: return b + "attn_q.bias";
    case R::kKBias: return b + "attn_k.bias";
    case R::kVBias: return b + "attn_v.bias";
    case R::kOBias: return b + "attn_output.bias";
    case R::kGate: return b + "ffn_gate.weight";
    case R::kUp: return b + "ffn_up.weight";
    case R::kDown: return b + "ffn_down.weight";
  }
  return t.name;
}

// The requested type, or nullopt for auto.
Result<std::optional<GgmlType>> type_parse(const std::string& s) {
  for (GgmlType t : {GgmlType::kF32, GgmlType::kF16, GgmlType::kBF16, GgmlType::kQ8_0,
                     GgmlType::kQ4_0, GgmlType::kQ4_1}) {
    if (s == ggml_type_name(t)) return std::optional<GgmlType>(t);
  }
  SHRINK_CHECK(s == "auto", StatusCode::kInvalidInput,
               "--type '%s': expected auto, f32, f16, bf16, q8_0, q4_0 or q4_1", s.c_str());
  return std::optional<GgmlType>();
}

GgmlType float_type_of(core::DType d) {
  return d == core::DType::kBF16 ? GgmlType::kBF16 : d == core::DType::kF16 ? GgmlType::kF16
                                                                             : GgmlType::kF32;
}

// The block type shrink's integer weights map onto: Q4_0 (symmetric 4-bit), Q4_1 (asymmetric
// 4-bit), Q8_0 (8-bit).
GgmlType int_type_of(const core::QuantScheme& s) {
  return s.bits == 4 ? (s.symmetric ? GgmlType::kQ4_0 : GgmlType::kQ4_1) : GgmlType::kQ8_0;
}

struct Source {
  core::ModelConfig cfg;
  std::optional<core::QuantScheme> scheme;
  core::Checkpoint ck;
  bool llama_rope = true;  // the "llama" architecture (RoPE on adjacent pairs)
};

// Whether every 32-weight block of `module`'s rows lies inside one scale group with the columns
// in order (no act-order permutation), so that its integer values map onto blocks unchanged.
Result<bool> blocks_align(const Source& s, const std::string& module, int64_t cols) {
  const core::QuantScheme& q = *s.scheme;
  if (cols % 32 != 0) return false;
  if (q.weight_strategy == "group" && q.group_size % 32 != 0) return false;
  if (const core::TensorInfo* gi = s.ck.find(module + ".weight_g_idx")) {
    const std::vector<int64_t> g = core::indices_to_i64(gi->dtype, s.ck.data(*gi), cols);
    SHRINK_ASSIGN_OR_RETURN(std::vector<int32_t> order,
                            core::group_order_from_g_idx(g, q.group_size, module + ".weight_g_idx"));
    if (!order.empty()) return false;
  }
  return true;
}

// Every tensor of the file, typed, in the order written.
Result<std::vector<Item>> plan_make(const Source& s, std::optional<GgmlType> want,
                                    GgufExportResult& r) {
  const core::ModelConfig& c = s.cfg;
  std::vector<Item> items;
  using R = core::TensorRole;
  for (const core::TensorSpec& t : core::expected_tensors(c)) {
    if (t.role == R::kLmHead && c.tie_word_embeddings) continue;  // llama.cpp reuses token_embd
    Item it;
    it.name = gguf_name(t);
    it.src = t.name;
    it.one_d = t.shape.size() == 1;
    it.cols = t.shape.back();
    it.rows = it.one_d ? 1 : t.shape[0];
    const core::TensorInfo* info = s.ck.find(t.name);
    SHRINK_CHECK(info, StatusCode::kInvalidInput, "%s: missing %s", s.ck.dir().c_str(),
                 t.name.c_str());
    if (s.llama_rope && (t.role == R::kQ || t.role == R::kK || t.role == R::kQBias ||
                         t.role == R::kKBias)) {
      it.permute_heads = (t.role == R::kQ || t.role == R::kQBias) ? c.num_heads : c.num_kv_heads;
      it.head_dim = c.head_dim;
    }
    it.integer = info->dtype == core::DType::kI8;
    if (it.one_d) {
      it.type = GgmlType::kF32;
    } else if (it.integer) {
      it.module = t.name.substr(0, t.name.size() - std::string(".weight").size());
      const GgmlType mapped = int_type_of(*s.scheme);
      it.type = want.value_or(mapped);
      if (it.type == mapped) {
        SHRINK_ASSIGN_OR_RETURN(it.exact, blocks_align(s, it.module, it.cols));
      }
    } else if (want && (!is_quant(*want) || core::tensor_role_is_linear(t.role) ||
                        t.role == R::kEmbed || t.role == R::kLmHead)) {
      it.type = *want;
    } else {
      it.type = float_type_of(info->dtype);
    }
    if (is_quant(it.type)) {
      SHRINK_CHECK(it.cols % 32 == 0, StatusCode::kInvalidInput,
                   "%s: rows of %lld weights; %s needs a multiple of 32 (use --type f16 or bf16)",
                   t.name.c_str(), (long long)it.cols, ggml_type_name(it.type));
      if (it.exact) {
        r.exact++;
      } else {
        r.requantized++;
        if (it.integer) {
          r.notes.push_back(it.src + ": " + core::quant_scheme_name(*s.scheme) + " requantized to " +
                            ggml_type_name(it.type) +
                            (it.type == int_type_of(*s.scheme)
                                 ? " (its scale groups do not cover whole 32-weight blocks in order)"
                                 : ""));
        }
      }
    }
    items.push_back(std::move(it));
  }
  // Llama 3 RoPE scaling: per-frequency divisors, as llama.cpp reads it (rope_freqs.weight).
  if (c.rope_scaling.type == core::RopeType::kLlama3) {
    core::ModelConfig base = c;
    base.rope_scaling = core::RopeScaling();
    const std::vector<double> scaled = core::rope_inv_freq(c), plain = core::rope_inv_freq(base);
    Item it;
    it.name = "rope_freqs.weight";
    it.one_d = true;
    it.cols = int64_t(scaled.size());
    for (size_t i = 0; i < scaled.size(); ++i) it.values.push_back(float(plain[i] / scaled[i]));
    items.insert(items.begin(), std::move(it));
  }
  if (s.scheme && s.scheme->activations != "none") {
    r.notes.push_back("the " + s.scheme->activations +
                      " int8 activation scheme is not part of GGUF: llama.cpp quantizes "
                      "activations its own way (input scales dropped)");
  }
  uint64_t off = 0;
  for (Item& it : items) {
    it.nbytes = ggml_row_bytes(it.type, it.cols) * uint64_t(it.rows);
    it.offset = off;
    off += (it.nbytes + kAlign - 1) / kAlign * kAlign;
  }
  return items;
}

// ---- metadata ---------------------------------------------------------------------------------

std::string file_type_name(const std::vector<Item>& items) {
  std::map<GgmlType, int64_t> n;
  for (const Item& it : items)
    if (!it.one_d && it.name.rfind("blk.", 0) == 0) n[it.type]++;
  GgmlType best = GgmlType::kF32;
  int64_t most = -1;
  for (auto& [t, k] : n)
    if (k > most) best = t, most = k;
  return ggml_type_name(best);
}

uint32_t file_type_id(const std::string& name) {
  static const std::map<std::string, uint32_t> ids = {{"f32", 0},  {"f16", 1},  {"q4_0", 2},
                                                      {"q4_1", 3}, {"q8_0", 7}, {"bf16", 32}};
  return ids.at(name);
}

void model_metadata(const Source& s, const std::string& arch, const std::string& file_type,
                    const std::string& model_dir, Metadata& m) {
  const core::ModelConfig& c = s.cfg;
  m.str("general.architecture", arch);
  m.str("general.name", fs::path(model_dir).filename().string());
  m.u32("general.file_type", file_type_id(file_type));
  m.u32("general.quantization_version", 2);
  m.u32("general.alignment", uint32_t(kAlign));
  const std::string a = arch + ".";
  m.u32(a + "context_length", uint32_t(c.max_position_embeddings));
  m.u32(a + "embedding_length", uint32_t(c.hidden_size));
  m.u32(a + "block_count", uint32_t(c.num_layers));
  m.u32(a + "feed_forward_length", uint32_t(c.intermediate_size));
  m.u32(a + "attention.head_count", uint32_t(c.num_heads));
  m.u32(a + "attention.head_count_kv", uint32_t(c.num_kv_heads));
  m.u32(a + "attention.key_length", uint32_t(c.head_dim));
  m.u32(a + "attention.value_length", uint32_t(c.head_dim));
  m.u32(a + "rope.dimension_count", uint32_t(c.head_dim));
  m.f32(a + "rope.freq_base", float(c.rope_theta));
  m.f32(a + "attention.layer_norm_rms_epsilon", float(c.rms_norm_eps));
  m.u32(a + "vocab_size", uint32_t(c.vocab_size));
  if (c.rope_scaling.type == core::RopeType::kLinear) {
    m.str(a + "rope.scaling.type", "linear");
    m.f32(a + "rope.scaling.factor", float(c.rope_scaling.factor));
  }
}

// The pre-tokenizer llama.cpp must apply, from tokenizer.json's split regex.
std::string bpe_pre_name(const nlohmann::json& tok) {
  const std::string pre = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"].dump() : "";
  if (pre.find("\\\\p{N}{1,3}") != std::string::npos) return "llama-bpe";
  if (pre.find("\\\\p{N}") != std::string::npos && pre.find("Split") != std::string::npos) {
    return "qwen2";
  }
  if (pre.find("ByteLevel") != std::string::npos) return "gpt-2";
  return "default";
}

// tokenizer.json (and tokenizer_config.json's chat template) as llama.cpp's tokenizer keys.
Status tokenizer_metadata(const std::string& dir, const core::ModelConfig& c, Metadata& m,
                          GgufExportResult& r) {
  const int64_t V = c.vocab_size;
  const std::string path = dir + "/tokenizer.json";
  // BOS and EOS: config.json's, else the tokenizer's special tokens; none is written as -1 (no
  // token), since llama.cpp's BPE default (11) would make an ordinary token end generation.
  std::optional<core::Tokenizer> t;
  std::string text;  // tokenizer.json, read once for the tokenizer and its vocabulary below
  if (fs::exists(path)) {
    SHRINK_ASSIGN_OR_RETURN(text, core::read_file(path));
    SHRINK_ASSIGN_OR_RETURN(core::Tokenizer loaded, core::Tokenizer::from_json(text, path));
    t = std::move(loaded);
  }
  auto special = [&](const std::optional<int64_t>& cfg_id, std::optional<int32_t> tok_id) {
    if (cfg_id) return uint32_t(*cfg_id);
    return tok_id ? uint32_t(*tok_id) : uint32_t(0xFFFFFFFFu);
  };
  m.u32("tokenizer.ggml.bos_token_id", special(c.bos_token_id, t ? t->bos_id() : std::nullopt));
  m.u32("tokenizer.ggml.eos_token_id", special(c.eos_token_id, t ? t->eos_id() : std::nullopt));
  if (!t) {  // token ids only: a placeholder vocabulary llama.cpp can load
    r.tokenizer = "placeholder";
    std::vector<std::string> tokens;
    for (int64_t i = 0; i < V; ++i) tokens.push_back("<tok_" + std::to_string(i) + ">");
    m.str("tokenizer.ggml.model", "gpt2");
    m.str("tokenizer.ggml.pre", "default");
    m.strings("tokenizer.ggml.tokens", tokens);
    m.i32s("tokenizer.ggml.token_type", std::vector<int32_t>(size_t(V), 1));
    m.strings("tokenizer.ggml.merges", {});
    m.boolean("tokenizer.ggml.add_bos_token", false);
    r.notes.push_back("no tokenizer.json: a placeholder vocabulary of " + std::to_string(V) +
                      " tokens (run token ids)");
    return Status::ok();
  }
  Result<nlohmann::json> parsed = core::json_parse_untrusted(text, path);  // depth-capped, no throw
  const nlohmann::json tok = parsed.is_ok() ? std::move(parsed).value() : nlohmann::json(nlohmann::json::value_t::discarded);
  SHRINK_CHECK(!tok.is_discarded() && tok.is_object() && tok.contains("model") &&
                   tok["model"].is_object(),
               StatusCode::kInvalidInput, "%s: expected a tokenizer.json object with \"model\"",
               path.c_str());
  const nlohmann::json& model = tok["model"];
  SHRINK_CHECK(model.value("type", "") == "BPE" && model.contains("vocab") &&
                   model["vocab"].is_object(),
               StatusCode::kInvalidInput,
               "%s: model.type '%s': GGUF export supports BPE tokenizers (byte-level, or "
               "SentencePiece-style with byte fallback)",
               path.c_str(), model.value("type", "").c_str());
  std::vector<std::string> tokens(static_cast<size_t>(V));
  std::vector<int32_t> types(size_t(V), 0);
  auto put = [&](const std::string& t, int64_t id, int32_t type) -> Status {
    SHRINK_CHECK(id >= 0 && id < V, StatusCode::kInvalidInput,
                 "%s: token '%s' has id %lld, outside the model's vocab_size %lld", path.c_str(),
                 t.c_str(), (long long)id, (long long)V);
    tokens[size_t(id)] = t;
    types[size_t(id)] = type;
    return Status::ok();
  };
  const bool spm = model.value("byte_fallback", false) ||
                   tok.value("pre_tokenizer", nlohmann::json()).dump().find("Metaspace") !=
                       std::string::npos;
  const std::string unk = model.contains("unk_token") && model["unk_token"].is_string()
                              ? model["unk_token"].get<std::string>() : "";
  for (auto& [t, id] : model["vocab"].items()) {
    SHRINK_CHECK(id.is_number_integer(), StatusCode::kInvalidInput,
                 "%s: model.vocab[\"%s\"]: expected an integer id", path.c_str(), t.c_str());
    int32_t type = 1;  // normal
    if (t == unk) type = 2;
    if (spm && t.size() == 6 && t.rfind("<0x", 0) == 0 && t.back() == '>') type = 6;  // byte
    SHRINK_RETURN_IF_ERROR(put(t, id.get<int64_t>(), type));
  }
  if (tok.contains("added_tokens") && tok["added_tokens"].is_array()) {
    for (const nlohmann::json& a : tok["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        return Status(StatusCode::kInvalidInput,
                      path + ": added_tokens: expected objects with an integer id and a content");
      }
      SHRINK_RETURN_IF_ERROR(put(a["content"].get<std::string>(), a["id"].get<int64_t>(),
                                 a.value("special", false) ? 3 : 4));
    }
  }
  for (int64_t i = 0; i < V; ++i) {  // rows of the embedding past the tokenizer's ids
    if (types[size_t(i)] == 0) {
      tokens[size_t(i)] = "[PAD" + std::to_string(i) + "]";
      types[size_t(i)] = 5;  // unused
    }
  }
  std::vector<std::string> merges;
  if (model.contains("merges") && model["merges"].is_array()) {
    for (const nlohmann::json& mg : model["merges"]) {
      if (mg.is_string()) {
        merges.push_back(mg.get<std::string>());
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        merges.push_back(mg[0].get<std::string>() + " " + mg[1].get<std::string>());
      } else {
        return Status(StatusCode::kInvalidInput,
                      path + ": model.merges: expected \"a b\" strings or [a, b] pairs");
      }
    }
  }
  if (spm) {
    r.tokenizer = "llama";
    m.str("tokenizer.ggml.model", "llama");
    std::vector<float> scores(size_t(V), 0.0f);
    for (int64_t i = 0; i < V; ++i) scores[size_t(i)] = -float(i);  // earlier ids merge first
    m.strings("tokenizer.ggml.tokens", tokens);
    m.f32s("tokenizer.ggml.scores", scores);
    m.i32s("tokenizer.ggml.token_type", types);
    if (auto u = t->token_to_id(unk); u && !unk.empty()) m.u32("tokenizer.ggml.unknown_token_id", uint32_t(*u));
  } else {
    r.tokenizer = "gpt2";
    m.str("tokenizer.ggml.model", "gpt2");
    m.str("tokenizer.ggml.pre", bpe_pre_name(tok));
    m.strings("tokenizer.ggml.tokens", tokens);
    m.i32s("tokenizer.ggml.token_type", types);
    m.strings("tokenizer.ggml.merges", merges);
  }
  m.boolean("tokenizer.ggml.add_bos_token", !t->document_prefix().empty());
  // The chat template, as transformers reads it from tokenizer_config.json.
  Result<std::string> cfg_text = core::read_file(dir + "/tokenizer_config.json");
  if (cfg_text.is_ok()) {
    Result<nlohmann::json> parsed = core::json_parse_untrusted(*cfg_text, dir + "/tokenizer_config.json");
    const nlohmann::json tc = parsed.is_ok() ? std::move(parsed).value() : nlohmann::json();
    if (tc.is_object() && tc.contains("chat_template")) {
      const nlohmann::json& ct = tc["chat_template"];
      if (ct.is_string()) {
        m.str("tokenizer.chat_template", ct.get<std::string>());
      } else if (ct.is_array()) {
        for (const nlohmann::json& e : ct)
          if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
              e["template"].is_string())
            m.str("tokenizer.chat_template", e["template"].get<std::string>());
      }
    }
  }
  return Status::ok();
}

// ---- tensor data ------------------------------------------------------------------------------

// The row of the source that lands at row `r` of the file: llama.cpp's RoPE pair order for q/k
// (its converter's reshape(heads, 2, head_dim / 2).swapaxes(1, 2)).
int64_t source_row(const Item& it, int64_t r) {
  if (it.permute_heads == 0) return r;
  const int64_t hd = it.head_dim, h = r / hd, j2 = r % hd;
  return h * hd + (j2 % 2) * (hd / 2) + j2 / 2;
}

// Reads one linear's integer weights, scales, zero points and act-order groups.
struct IntWeights {
  const core::TensorInfo *q = nullptr, *scale = nullptr, *zp = nullptr;
  std::vector<int64_t> g_idx;  // empty: column k is in group k / group
  int64_t group = 0, groups = 1;
  bool per_tensor = false;
};

Result<IntWeights> int_weights(const Source& s, const Item& it) {
  IntWeights w;
  const core::QuantScheme& q = *s.scheme;
  w.q = s.ck.find(it.src);
  w.scale = s.ck.find(it.module + ".weight_scale");
  SHRINK_CHECK(w.scale, StatusCode::kInvalidInput, "%s: missing %s.weight_scale",
               s.ck.dir().c_str(), it.module.c_str());
  w.per_tensor = q.weight_strategy == "tensor";
  w.group = q.weight_strategy == "group" ? q.group_size : it.cols;
  w.groups = w.per_tensor ? 1 : (it.cols + w.group - 1) / w.group;
  if (!q.symmetric) {
    w.zp = s.ck.find(it.module + ".weight_zero_point");
    SHRINK_CHECK(w.zp && w.zp->dtype == core::DType::kI8, StatusCode::kInvalidInput,
                 "%s: %s.weight_zero_point: expected I8 zero points (symmetric: false)",
                 s.ck.dir().c_str(), it.module.c_str());
  }
  if (const core::TensorInfo* gi = s.ck.find(it.module + ".weight_g_idx")) {
    w.g_idx = core::indices_to_i64(gi->dtype, s.ck.data(*gi), it.cols);
    for (int64_t k = 0; k < it.cols; ++k) {
      const int64_t v = w.g_idx[size_t(k)];
      SHRINK_CHECK(v >= 0 && v < w.groups, StatusCode::kInvalidInput,
                   "%s.weight_g_idx[%lld] is %lld; expected a group in [0, %lld)",
                   it.module.c_str(), (long long)k, (long long)v, (long long)w.groups);
    }
  }
  return w;
}

// Writes one tensor's rows in its type, a bounded run of rows at a time.
class TensorWriter {
 public:
  TensorWriter(const Source& s, OutFile& f, GgufExportResult& r) : s_(s), f_(f), r_(r) {}

  Status write(const Item& it) {
    if (!it.values.empty()) return f_.write(it.values.data(), it.values.size() * 4);
    const core::TensorInfo* t = s_.ck.find(it.src);
    std::optional<IntWeights> iw;
    if (it.integer) {
      SHRINK_ASSIGN_OR_RETURN(IntWeights w, int_weights(s_, it));
      iw = std::move(w);
    }
    const uint64_t row_bytes = ggml_row_bytes(it.type, it.cols);
    const int64_t chunk = std::max<int64_t>(1, int64_t((uint64_t(16) << 20) / std::max<uint64_t>(1, row_bytes)));
    std::vector<uint8_t> out;
    std::vector<float> x(size_t(it.cols));
    // A float tensor written in its stored type is copied as it is, bit for bit.
    const bool as_stored = !iw && ((it.type == GgmlType::kF32 && t->dtype == core::DType::kF32) ||
                                   (it.type == GgmlType::kF16 && t->dtype == core::DType::kF16) ||
                                   (it.type == GgmlType::kBF16 && t->dtype == core::DType::kBF16));
    const size_t src_row_bytes = size_t(t->nbytes / uint64_t(it.rows));
    for (int64_t r0 = 0; r0 < it.rows; r0 += chunk) {
      const int64_t n = std::min(chunk, it.rows - r0);
      out.assign(size_t(row_bytes) * size_t(n), 0);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t src = source_row(it, r0 + i);
        uint8_t* dst = out.data() + size_t(i) * row_bytes;
        if (iw && it.exact) {
          blocks_exact(it, *iw, src, dst);
        } else if (as_stored) {
          std::memcpy(dst, s_.ck.data(*t) + size_t(src) * src_row_bytes, src_row_bytes);
        } else {
          if (iw) {
            dequantize_row(it, *iw, src, x.data());
          } else {
            core::convert_to_f32(t->dtype, s_.ck.data(*t) + size_t(src) * src_row_bytes, x.data(),
                                 it.cols);
          }
          encode_row(it, x.data(), dst);
        }
      }
      SHRINK_RETURN_IF_ERROR(f_.write(out.data(), out.size()));
      if (it.permute_heads == 0) release_rows(it, iw ? iw->q : t, r0, n);
    }
    if (it.permute_heads != 0) release_rows(it, iw ? iw->q : t, 0, it.rows);
    return Status::ok();
  }

 private:
  void release_rows(const Item& it, const core::TensorInfo* t, int64_t r0, int64_t n) {
    const uint64_t per = t->nbytes / uint64_t(it.rows);
    s_.ck.release(*t, uint64_t(r0) * per, uint64_t(n) * per);
  }

  // Row `row`'s scales (one per group) as float, and its zero points (null: symmetric).
  const float* row_scales(const IntWeights& w, int64_t row) {
    scales_.resize(size_t(w.groups));
    const int64_t bytes = int64_t(core::dtype_size(w.scale->dtype));
    core::convert_to_f32(w.scale->dtype, s_.ck.data(*w.scale) + (w.per_tensor ? 0 : row * w.groups * bytes),
                         scales_.data(), w.groups);
    return scales_.data();
  }
  const int8_t* row_zps(const IntWeights& w, int64_t row) const {
    return w.zp ? reinterpret_cast<const int8_t*>(s_.ck.data(*w.zp)) + row * w.groups : nullptr;
  }
  int64_t group_of(const IntWeights& w, int64_t k) const {
    if (w.per_tensor) return 0;
    return w.g_idx.empty() ? k / w.group : w.g_idx[size_t(k)];
  }

  // x = (q - zp) * scale, column by column.
  void dequantize_row(const Item& it, const IntWeights& w, int64_t row, float* x) {
    const int8_t* q = reinterpret_cast<const int8_t*>(s_.ck.data(*w.q)) + row * it.cols;
    const float* sc = row_scales(w, row);
    const int8_t* zp = row_zps(w, row);
    for (int64_t k = 0; k < it.cols; ++k) {
      const int64_t g = group_of(w, k);
      x[k] = float(int(q[k]) - (zp ? int(zp[g]) : 0)) * sc[g];
    }
  }

  // The integer values themselves in the type's blocks: d (and m) from the block's group.
  void blocks_exact(const Item& it, const IntWeights& w, int64_t row, uint8_t* dst) {
    const int8_t* q = reinterpret_cast<const int8_t*>(s_.ck.data(*w.q)) + row * it.cols;
    const float* sc = row_scales(w, row);
    const int8_t* zp = row_zps(w, row);
    for (int64_t b = 0; b < it.cols / 32; ++b) {
      const int64_t g = group_of(w, b * 32);
      const float d = f16_round(sc[g], &r_.max_scale_rel_change);
      const int8_t* qb = q + b * 32;
      if (it.type == GgmlType::kQ8_0) {
        uint8_t* o = dst + b * 34;
        put_f16(o, d);
        std::memcpy(o + 2, qb, 32);
      } else {
        uint8_t* o = dst + b * (it.type == GgmlType::kQ4_0 ? 18 : 20);
        put_f16(o, d);
        uint8_t* qs = o + 2;
        if (it.type == GgmlType::kQ4_1) {
          const float m = -float(8 + (zp ? int(zp[g]) : 0)) * sc[g];
          put_f16(o + 2, f16_round(m, &r_.max_scale_rel_change));
          qs = o + 4;
        }
        for (int j = 0; j < 16; ++j) qs[j] = uint8_t((qb[j] + 8) | ((qb[j + 16] + 8) << 4));
      }
    }
  }

  // Floats in the item's type.
  void encode_row(const Item& it, const float* x, uint8_t* dst) const {
    switch (it.type) {
      case GgmlType::kF32: core::convert_from_f32(x, core::DType::kF32, dst, it.cols); break;
      case GgmlType::kF16: core::convert_from_f32(x, core::DType::kF16, dst, it.cols); break;
      case GgmlType::kBF16: core::convert_from_f32(x, core::DType::kBF16, dst, it.cols); break;
      case GgmlType::kQ8_0: gguf_quantize_q8_0(x, it.cols, dst); break;
      case GgmlType::kQ4_0: gguf_quantize_q4_0(x, it.cols, dst); break;
      case GgmlType::kQ4_1: gguf_quantize_q4_1(x, it.cols, dst); break;
    }
  }

  const Source& s_;
  OutFile& f_;
  GgufExportResult& r_;
  std::vector<float> scales_;  // row_scales' buffer
};

Result<Source> source_open(const std::string& dir) {
  Source s;
  SHRINK_ASSIGN_OR_RETURN(s.cfg, core::config_load(dir));
  SHRINK_RETURN_IF_ERROR(core::config_validate(s.cfg, dir + "/config.json"));
  SHRINK_CHECK(s.cfg.head_dim % 2 == 0, StatusCode::kInvalidInput,
               "%s/config.json: head_dim %lld is odd; RoPE needs an even head_dim", dir.c_str(),
               (long long)s.cfg.head_dim);
  if (s.cfg.has_quantization()) {
    Result<core::QuantScheme> q = core::quant_config_from_json(s.cfg.raw["quantization_config"]);
    if (!q.is_ok()) {
      return Status(q.status().code(), dir + "/config.json: " + q.status().message());
    }
    s.scheme = *q;
  }
  SHRINK_ASSIGN_OR_RETURN(s.ck, core::Checkpoint::open(dir));
  SHRINK_RETURN_IF_ERROR(core::checkpoint_check(s.cfg, s.ck));
  // Qwen2 (q/k/v biases, no o bias) runs as llama.cpp's "qwen2", whose RoPE rotates halves as
  // Hugging Face's does; the rest as "llama".
  s.llama_rope = !(s.cfg.arch == core::Arch::kQwen2);
  SHRINK_CHECK(s.llama_rope || !s.cfg.o_bias, StatusCode::kInvalidInput,
               "%s: an o_proj bias is not part of llama.cpp's qwen2 architecture", dir.c_str());
  return s;
}

Status header_write(OutFile& f, const Metadata& m, const std::vector<Item>& items) {
  const uint32_t magic = 0x46554747, version = 3;  // "GGUF" little-endian
  SHRINK_RETURN_IF_ERROR(f.write(&magic, 4));
  SHRINK_RETURN_IF_ERROR(f.write(&version, 4));
  const uint64_t n_tensors = items.size(), n_kv = m.count();
  SHRINK_RETURN_IF_ERROR(f.write(&n_tensors, 8));
  SHRINK_RETURN_IF_ERROR(f.write(&n_kv, 8));
  SHRINK_RETURN_IF_ERROR(f.write(m.bytes().data(), m.bytes().size()));
  for (const Item& it : items) {
    const uint64_t len = it.name.size();
    SHRINK_RETURN_IF_ERROR(f.write(&len, 8));
    SHRINK_RETURN_IF_ERROR(f.write(it.name.data(), len));
    const uint32_t dims = it.one_d ? 1 : 2;
    SHRINK_RETURN_IF_ERROR(f.write(&dims, 4));
    const uint64_t ne[2] = {uint64_t(it.cols), uint64_t(it.rows)};
    SHRINK_RETURN_IF_ERROR(f.write(ne, 8 * dims));
    const uint32_t type = uint32_t(it.type);
    SHRINK_RETURN_IF_ERROR(f.write(&type, 4));
    SHRINK_RETURN_IF_ERROR(f.write(&it.offset, 8));
  }
  return f.pad();
}

}  // namespace

Result<GgufExportResult> gguf_export(const std::string& model_dir, const std::string& out_path,
                                     const GgufExportOptions& o) {
  SHRINK_ASSIGN_OR_RETURN(std::optional<GgmlType> want, type_parse(o.type));
  SHRINK_ASSIGN_OR_RETURN(Source s, source_open(model_dir));
  GgufExportResult r;
  r.arch = s.llama_rope ? "llama" : "qwen2";
  SHRINK_ASSIGN_OR_RETURN(std::vector<Item> items, plan_make(s, want, r));
  r.file_type = file_type_name(items);
  Metadata m;
  model_metadata(s, r.arch, r.file_type, model_dir, m);
  SHRINK_RETURN_IF_ERROR(tokenizer_metadata(model_dir, s.cfg, m, r));
  OutFile f;
  SHRINK_RETURN_IF_ERROR(f.open(out_path));
  SHRINK_RETURN_IF_ERROR(header_write(f, m, items));
  const uint64_t data_start = f.offset();
  TensorWriter w(s, f, r);
  for (size_t i = 0; i < items.size(); ++i) {
    SHRINK_CHECK(f.offset() == data_start + items[i].offset, StatusCode::kInternal,
                 "gguf: %s at %llu, planned %llu", items[i].name.c_str(),
                 (unsigned long long)(f.offset() - data_start),
                 (unsigned long long)items[i].offset);
    SHRINK_RETURN_IF_ERROR(w.write(items[i]));
    SHRINK_RETURN_IF_ERROR(f.pad());
    r.type_counts[ggml_type_name(items[i].type)]++;
    if (o.progress) o.progress(int64_t(i + 1), int64_t(items.size()));
  }
  r.bytes = f.offset();
  r.tensors = int64_t(items.size());
  SHRINK_RETURN_IF_ERROR(f.finish());
  return r;
}

Status gguf_type_check(const std::string& type) { return type_parse(type).status(); }

}  // namespace shrink::pipeline
