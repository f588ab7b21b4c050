// Llama-family decoder in LibTorch, plus create/load/save. See model.h for the design.
// Tested in tests/train/test_model.cpp against a naive per-op reference and against
// transformers-made fixtures (logits, hidden states, greedy ids).
#include "train/model.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "train/model_files.h"
#include "train/quant_ops.h"

namespace shrink::train {

namespace fs = std::filesystem;

namespace {

torch::nn::Linear make_linear(int64_t in, int64_t out, bool bias) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// (x1, x2) -> (-x2, x1) over the last dim halves: the rotate-half RoPE convention of HF.
torch::Tensor rotate_half(const torch::Tensor& x) {
  int64_t h = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

}  // namespace

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * torch::rsqrt(var + eps)).to(x.scalar_type());
}

AttentionImpl::AttentionImpl(const core::ModelConfig& c)
    : n_heads(c.num_heads), n_kv_heads(c.num_kv_heads), head_dim(c.head_dim),
      window(c.sliding_window) {
  q_proj = register_module("q_proj", make_linear(c.hidden_size, c.q_dim(), c.qkv_bias));
  k_proj = register_module("k_proj", make_linear(c.hidden_size, c.kv_dim(), c.qkv_bias));
  v_proj = register_module("v_proj", make_linear(c.hidden_size, c.kv_dim(), c.qkv_bias));
  o_proj = register_module("o_proj", make_linear(c.q_dim(), c.hidden_size, c.o_bias));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                     const torch::Tensor& sin, int64_t start,
                                     torch::Tensor* k_cache, torch::Tensor* v_cache) {
  const int64_t B = x.size(0), T = x.size(1);
  torch::Tensor xq = x;
  if (tap) {
    for (const char* m : {"q_proj", "k_proj", "v_proj"}) tap->on_input(prefix + m, x);
    xq = tap->transform(prefix + "q_proj", x);
  }
  auto q = q_proj(xq).view({B, T, n_heads, head_dim}).transpose(1, 2);
  auto k = k_proj(xq).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);
  auto v = v_proj(xq).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;
  if (k_cache) {
    if (k_cache->defined()) {
      k = torch::cat({*k_cache, k}, 2);
      v = torch::cat({*v_cache, v}, 2);
    }
    *k_cache = k;
    *v_cache = v;
  }
  if (n_kv_heads != n_heads) {
    // GQA/MQA: query head h reads kv head h / (n_heads / n_kv_heads).
    k = k.repeat_interleave(n_heads / n_kv_heads, 1);
    v = v.repeat_interleave(n_heads / n_kv_heads, 1);
  }
  auto out = attend(q, k, v, start).transpose(1, 2).reshape({B, T, n_heads * head_dim});
  if (tap) {
    tap->on_input(prefix + "o_proj", out);
    out = tap->transform(prefix + "o_proj", out);
  }
  return o_proj(out);
}

// softmax(q k^T / sqrt(d) + causal/window mask) v for queries at positions [start, start + T)
// over keys [0, S); q [B,H,T,D], k and v [B,H,S,D]. Each query row's softmax is its own, so a
// block of queries at a time gives the same rows as the whole product.
torch::Tensor AttentionImpl::attend(const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v, int64_t start) const {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), S = k.size(2);
  const double scale = 1.0 / std::sqrt(double(head_dim));
  // A block's queries end at position start + t0 + n - 1: the keys after it are all masked, so
  // a block reads only the keys up to it (a causal block of queries does half the work).
  auto rows = [&](int64_t t0, int64_t n) {
    const int64_t keys = std::min(S, start + t0 + n);
    auto scores = torch::matmul(q.narrow(2, t0, n), k.narrow(2, 0, keys).transpose(-2, -1)) * scale;
    auto qpos = torch::arange(start + t0, start + t0 + n, torch::kLong).unsqueeze(1);
    auto kpos = torch::arange(0, keys, torch::kLong).unsqueeze(0);
    auto masked = kpos > qpos;
    if (window) masked = masked.logical_or(qpos - kpos >= *window);
    scores = scores.to(torch::kFloat32).masked_fill(masked, -std::numeric_limits<float>::infinity());
    return torch::matmul(torch::softmax(scores, -1).to(q.scalar_type()), v.narrow(2, 0, keys));
  };
  const int64_t row_bytes = B * H * S * int64_t(sizeof(float));
  const bool whole = torch::GradMode::is_enabled() || T * row_bytes <= score_block_bytes;
  if (whole) return rows(0, T);
  const int64_t block = std::max<int64_t>(1, score_block_bytes / row_bytes);
  std::vector<torch::Tensor> parts;
  for (int64_t t0 = 0; t0 < T; t0 += block) parts.push_back(rows(t0, std::min(block, T - t0)));
  return torch::cat(parts, 2);
}

MLPImpl::MLPImpl(const core::ModelConfig& c) {
  gate_proj = register_module("gate_proj", make_linear(c.hidden_size, c.intermediate_size, false));
  up_proj = register_module("up_proj", make_linear(c.hidden_size, c.intermediate_size, false));
  down_proj = register_module("down_proj", make_linear(c.intermediate_size, c.hidden_size, false));
}

torch::Tensor MLPImpl::forward(const torch::Tensor& x) {
  if (!tap) return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
  tap->on_input(prefix + "gate_proj", x);
  tap->on_input(prefix + "up_proj", x);
  auto xq = tap->transform(prefix + "gate_proj", x);
  auto h = torch::silu(gate_proj(xq)) * up_proj(xq);
  tap->on_input(prefix + "down_proj", h);
  return down_proj(tap->transform(prefix + "down_proj", h));
}

DecoderLayerImpl::DecoderLayerImpl(const core::ModelConfig& c) {
  self_attn = register_module("self_attn", Attention(c));
  mlp = register_module("mlp", MLP(c));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm =
      register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                        const torch::Tensor& sin, int64_t start,
                                        torch::Tensor* k_cache, torch::Tensor* v_cache) {
  auto h = x + self_attn(input_layernorm(x), cos, sin, start, k_cache, v_cache);
  return h + mlp(post_attention_layernorm(h));
}

DecoderImpl::DecoderImpl(const core::ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(DecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
}

namespace {

torch::Tensor inv_freq_tensor(const core::ModelConfig& c) {
  std::vector<double> f = core::rope_inv_freq(c);
  std::vector<float> ff(f.begin(), f.end());
  return torch::tensor(ff, torch::kFloat32);
}

// As transformers: angles = position (float32) x inv_freq (float32), duplicated for both halves,
// cos/sin in float32.
std::pair<torch::Tensor, torch::Tensor> rope_from(const torch::Tensor& inv_freq, int64_t start,
                                                  int64_t len) {
  auto pos = torch::arange(start, start + len, torch::kFloat32).unsqueeze(1);
  auto ang = pos * inv_freq.unsqueeze(0);
  auto emb = torch::cat({ang, ang}, -1);
  return {emb.cos(), emb.sin()};
}

}  // namespace

CausalLMImpl::CausalLMImpl(core::ModelConfig c) : config_(std::move(c)) {
  model = register_module("model", Decoder(config_));
  if (!config_.tie_word_embeddings) {
    lm_head = register_module("lm_head", make_linear(config_.hidden_size, config_.vocab_size, false));
  }
  inv_freq_ = register_buffer("inv_freq", inv_freq_tensor(config_));
}

torch::Tensor CausalLMImpl::lm_head_weight() {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}


std::pair<torch::Tensor, torch::Tensor> CausalLMImpl::rope_tables(int64_t start, int64_t len) {
  return rope_from(inv_freq_, start, len);
}

std::pair<torch::Tensor, torch::Tensor> rope_tables_for(const core::ModelConfig& c, int64_t start,
                                                        int64_t len) {
  return rope_from(inv_freq_tensor(c), start, len);
}

DecoderLayer layer_load(const core::ModelConfig& c, const core::Checkpoint& ck, int64_t i) {
  DecoderLayer layer(c);
  const std::string pre = "model.layers." + std::to_string(i) + ".";
  layer->self_attn->prefix = pre + "self_attn.";
  layer->mlp->prefix = pre + "mlp.";
  torch::NoGradGuard ng;
  for (auto& p : layer->named_parameters()) {
    const std::string name = pre + p.key();
    const core::TensorInfo* t = ck.find(name);
    if (!t) throw Error(StatusCode::kInvalidInput, ck.dir() + ": missing tensor " + name);
    if (t->numel() != p.value().numel() || !core::dtype_is_float(t->dtype)) {
      throw Error(StatusCode::kInvalidInput,
                  ck.dir() + ": tensor '" + name + "' is not a float tensor of " +
                      std::to_string(p.value().numel()) + " elements");
    }
    core::convert_to_f32(t->dtype, ck.data(*t), p.value().data_ptr<float>(), t->numel());
    ck.release(*t, 0, t->nbytes);
  }
  return layer;
}

torch::Tensor embed_rows(const core::ModelConfig& c, const core::Checkpoint& ck,
                         const torch::Tensor& ids, torch::Tensor out) {
  const core::TensorInfo* t = ck.find("model.embed_tokens.weight");
  if (!t) throw Error(StatusCode::kInvalidInput, ck.dir() + ": missing model.embed_tokens.weight");
  const int64_t H = c.hidden_size;
  auto flat = ids.reshape({-1}).to(torch::kInt64).contiguous();
  std::vector<int64_t> shape(ids.sizes().begin(), ids.sizes().end());
  shape.push_back(H);
  if (!out.defined()) out = torch::empty(shape, torch::kFloat32);
  if (!out.is_contiguous() || out.scalar_type() != torch::kFloat32 ||
      out.numel() != flat.numel() * H) {
    throw Error(StatusCode::kInternal, "embed_rows: the output is not a contiguous float32 [N, T, H]");
  }
  const size_t es = core::dtype_size(t->dtype);
  const int64_t* id = flat.data_ptr<int64_t>();
  for (int64_t r = 0; r < flat.numel(); ++r) {
    if (id[r] < 0 || id[r] >= c.vocab_size) {
      throw Error(StatusCode::kInvalidInput, "token id " + std::to_string(id[r]) +
                                                 " is outside the vocabulary of " +
                                                 std::to_string(c.vocab_size));
    }
    core::convert_to_f32(t->dtype, ck.data(*t) + uint64_t(id[r] * H) * es,
                         out.data_ptr<float>() + r * H, H);
  }
  return out.reshape(shape);
}

ForwardOutput CausalLMImpl::forward(const torch::Tensor& input_ids, bool want_hidden,
                                    KVCache* cache) {
  const int64_t T = input_ids.size(1);
  const int64_t start = cache ? cache->length : 0;
  if (cache && cache->k.empty()) {
    cache->k.resize(size_t(config_.num_layers));
    cache->v.resize(size_t(config_.num_layers));
  }
  auto [cos, sin] = rope_tables(start, T);
  ForwardOutput out;
  auto h = model->embed_tokens(input_ids);
  const int64_t L = config_.num_layers;
  for (int64_t i = 0; i < L; ++i) {
    if (want_hidden) out.hidden_states.push_back(h);
    auto layer = model->layers->ptr<DecoderLayerImpl>(size_t(i));
    h = layer->forward(h, cos, sin, start, cache ? &cache->k[size_t(i)] : nullptr,
                       cache ? &cache->v[size_t(i)] : nullptr);
  }
  h = model->norm(h);
  if (want_hidden) out.hidden_states.push_back(h);
  if (tap_) tap_->on_input("lm_head", h);
  out.logits = torch::matmul(h, lm_head_weight().t()).to(torch::kFloat32);
  if (cache) cache->length += T;
  return out;
}

void CausalLMImpl::set_tap(LinearTap* tap) {
  tap_ = tap;
  for (size_t i = 0; i < model->layers->size(); ++i) {
    auto layer = model->layers->ptr<DecoderLayerImpl>(i);
    layer->self_attn->tap = tap;
    layer->self_attn->prefix = "model.layers." + std::to_string(i) + ".self_attn.";
    layer->mlp->tap = tap;
    layer->mlp->prefix = "model.layers." + std::to_string(i) + ".mlp.";
  }
}

int64_t CausalLMImpl::num_parameters() {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

CausalLM model_create(const core::ModelConfig& c, uint64_t seed) {
  torch::manual_seed(seed);
  CausalLM m(c);
  double std = 0.02;
  if (c.raw.contains("initializer_range") && c.raw["initializer_range"].is_number()) {
    std = c.raw["initializer_range"].get<double>();
  }
  torch::NoGradGuard ng;
  for (auto& p : m->named_parameters()) {
    const std::string& n = p.key();
    if (n.find("norm") != std::string::npos) p.value().fill_(1.0);
    else if (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0) p.value().zero_();
    else p.value().normal_(0.0, std);
  }
  return m;
}

namespace {

core::DType dtype_for(const std::string& name) {
  if (name == "float16" || name == "fp16" || name == "half") return core::DType::kF16;
  if (name == "bfloat16" || name == "bf16") return core::DType::kBF16;
  if (name == "float32" || name == "fp32" || name == "float") return core::DType::kF32;
  throw Error(StatusCode::kInvalidInput,
              "dtype '" + name + "' is not supported; expected float32, float16 or bfloat16");
}

}  // namespace

CausalLM model_load(const std::string& model_dir) {
  core::ModelConfig cfg = core::config_load(model_dir).take_or_throw();
  core::Checkpoint ckpt = core::Checkpoint::open(model_dir).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ckpt));
  CausalLM m(cfg);
  torch::NoGradGuard ng;
  if (cfg.has_quantization()) {  // int8: dequantized weights + fake-quant activations
    quant_load_into(m, ckpt, core::quant_config_from_json(cfg.raw["quantization_config"]).take_or_throw());
    return m;
  }
  for (auto& p : m->named_parameters()) {
    const core::TensorInfo* t = ckpt.find(p.key());
    if (!t) throw Error(StatusCode::kInternal, "parameter " + p.key() + " has no tensor");
    torch::Tensor& dst = p.value();
    if (dst.numel() != t->numel()) {
      throw Error(StatusCode::kInvalidInput, model_dir + ": tensor '" + p.key() + "' has " +
                                                 std::to_string(t->numel()) + " elements, expected " +
                                                 std::to_string(dst.numel()));
    }
    core::convert_to_f32(t->dtype, ckpt.data(*t), dst.data_ptr<float>(), t->numel());
  }
  return m;
}

void model_save(CausalLM& m, const std::string& out_dir, const SaveOptions& opts) {
  auto dir = core::AtomicDir::create(out_dir).take_or_throw();
  model_write(m, dir.path(), opts);
  throw_if_error(dir.commit());
}

void model_write(CausalLM& m, const std::string& dir_path, const SaveOptions& opts) {
  core::ModelConfig cfg = m->config();
  std::string dtype_str = opts.dtype.empty() ? cfg.dtype : opts.dtype;
  core::DType dt = dtype_for(dtype_str);
  cfg.dtype = dt == core::DType::kF32 ? "float32" : dt == core::DType::kF16 ? "float16" : "bfloat16";

  // Convert every parameter into its own buffer, in HF order (core::expected_tensors).
  auto params = m->named_parameters();
  std::vector<std::vector<uint8_t>> buffers;
  std::vector<core::TensorView> views;
  for (const core::TensorSpec& s : core::expected_tensors(cfg)) {
    torch::Tensor* p = params.find(s.name);
    if (!p) throw Error(StatusCode::kInternal, "model has no parameter " + s.name);
    torch::Tensor src = p->detach().to(torch::kFloat32).contiguous();
    const int64_t n = src.numel();
    buffers.emplace_back(size_t(n) * core::dtype_size(dt));
    core::convert_from_f32(src.data_ptr<float>(), dt, buffers.back().data(), n);
    views.push_back({s.name, dt, s.shape, buffers.back().data(), buffers.back().size()});
  }
  throw_if_error(core::checkpoint_write(dir_path, views, {{"format", "pt"}},
                                        opts.max_shard_bytes));
  model_sidecars_write(cfg, dir_path, opts.tokenizer_json, opts.provenance, m->num_parameters());
}

std::pair<double, uint64_t> nll_over_windows(CausalLM& m, const int32_t* tokens, uint64_t n,
                                             int64_t seq_len, int64_t batch,
                                             const std::function<void(uint64_t)>& progress) {
  std::vector<core::EvalWindow> windows = core::eval_windows(n, seq_len);
  torch::NoGradGuard ng;
  double nll_sum = 0.0;
  uint64_t scored = 0, done = 0;
  size_t i = 0;
  while (i < windows.size()) {
    // Batch consecutive windows of equal length (all full ones; the short tail runs alone).
    size_t j = i + 1;
    while (j < windows.size() && int64_t(j - i) < batch && windows[j].len == windows[i].len) ++j;
    const int64_t B = int64_t(j - i), T = windows[i].len;
    auto ids = torch::empty({B, T}, torch::kLong);
    auto* p = ids.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      const int32_t* src = tokens + windows[i + size_t(b)].start;
      for (int64_t t = 0; t < T; ++t) p[b * T + t] = src[t];
    }
    auto logits = m->forward(ids).logits;  // [B,T,V]
    auto logp = torch::log_softmax(logits.narrow(1, 0, T - 1), -1);
    auto tgt = ids.narrow(1, 1, T - 1).unsqueeze(-1);
    nll_sum -= logp.gather(-1, tgt).to(torch::kFloat64).sum().item<double>();
    scored += uint64_t(B * (T - 1));
    done += uint64_t(B * T);
    if (progress) progress(done);
    i = j;
  }
  return {nll_sum, scored};
}

}  // namespace shrink::train
