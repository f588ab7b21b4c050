// Pruning: the per-matrix algorithms (prune_ops.h), layer-by-layer calibration, structured
// (Minitron-style) pruning and the `shrink prune` driver (prune.h). See the headers for the
// design; tests in tests/train/test_prune.cpp.
#include "train/prune.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <cstring>
#include <functional>
#include <map>
#include <regex>
#include <set>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/progress.h"
#include "train/api.h"
#include "core/tensor_blocks.h"
#include "train/prune_ops.h"
#include "train/streamed.h"
#include "train/model_files.h"
#include "train/prune_common.h"
#include "train/quantize_common.h"

namespace shrink::train {

namespace fs = std::filesystem;
using torch::indexing::None;
using torch::indexing::Slice;

namespace {

[[noreturn]] void bad(const std::string& msg) { throw Error(StatusCode::kInvalidInput, msg); }

int64_t round_count(double s, int64_t n) { return std::clamp<int64_t>(std::llround(s * double(n)), 0, n); }

// Keep-mask with the `k` lowest entries of each row of `scores` dropped.
torch::Tensor drop_lowest_rows(const torch::Tensor& scores, int64_t k) {
  auto keep = torch::ones(scores.sizes(), torch::kBool);
  if (k <= 0) return keep;
  auto idx = std::get<1>(scores.topk(k, 1, /*largest=*/false));
  return keep.scatter_(1, idx, false);
}

torch::Tensor mask_nm(const torch::Tensor& scores, NMPattern nm) {
  const int64_t out = scores.size(0), in = scores.size(1);
  if (in % nm.m != 0) {
    bad("pattern " + std::to_string(nm.n) + ":" + std::to_string(nm.m) + " needs input widths "
        "divisible by " + std::to_string(nm.m) + ", but a matrix has " + std::to_string(in));
  }
  auto g = scores.reshape({out, in / nm.m, nm.m});
  auto idx = std::get<1>(g.topk(nm.m - nm.n, 2, /*largest=*/false));
  auto keep = torch::ones(g.sizes(), torch::kBool).scatter_(2, idx, false);
  return keep.reshape({out, in});
}

}  // namespace

// ---- Masks ----------------------------------------------------------------------------------------

NMPattern nm_parse(const std::string& s) {
  NMPattern p;
  if (s.empty()) return p;
  size_t c = s.find(':');
  try {
    if (c == std::string::npos) throw std::invalid_argument(s);
    size_t u1 = 0, u2 = 0;
    p.n = std::stoll(s.substr(0, c), &u1);
    p.m = std::stoll(s.substr(c + 1), &u2);
    if (u1 != c || u2 != s.size() - c - 1) throw std::invalid_argument(s);
  } catch (const std::exception&) {
    bad("--pattern '" + s + "': expected N:M such as 2:4 or 4:8");
  }
  if (p.m < 1 || p.n < 1 || p.n >= p.m) {
    bad("--pattern '" + s + "': N:M keeps N of every M weights, so 1 <= N < M (e.g. 2:4)");
  }
  return p;
}

torch::Tensor mask_rows(const torch::Tensor& scores, double sparsity, NMPattern nm) {
  if (nm.on()) return mask_nm(scores, nm);
  return drop_lowest_rows(scores, round_count(sparsity, scores.size(1)));
}

torch::Tensor mask_matrix(const torch::Tensor& scores, double sparsity, NMPattern nm) {
  if (nm.on()) return mask_nm(scores, nm);
  auto flat = scores.reshape({1, -1});
  return drop_lowest_rows(flat, round_count(sparsity, flat.size(1))).reshape(scores.sizes());
}

torch::Tensor mask_magnitude(const torch::Tensor& w, double sparsity, NMPattern nm) {
  return mask_matrix(w.abs(), sparsity, nm);
}

torch::Tensor mask_wanda(const torch::Tensor& w, const torch::Tensor& col_sq_sum, double sparsity,
                         NMPattern nm) {
  auto norm = col_sq_sum.to(torch::kFloat64).sqrt().to(torch::kFloat32).unsqueeze(0);
  return mask_rows(w.abs() * norm, sparsity, nm);
}

// SparseGPT N:M: in the group of m columns from i of one row (its values updated so far), the
// m - n lowest w^2 / U_jj^2 are pruned (ties: the earlier column); keep[i..i+m) says which.
namespace {
void sparsegpt_nm_choose(const float* row, const float* u1, int64_t ldu, int64_t i, NMPattern nm,
                         bool* keep) {
  thread_local std::vector<int64_t> order;
  thread_local std::vector<float> score;
  order.resize(size_t(nm.m));
  score.resize(size_t(nm.m));
  for (int64_t t = 0; t < nm.m; ++t) {
    const float d = u1[(i + t) * ldu + i + t];
    score[size_t(t)] = row[i + t] * row[i + t] / (d * d);
    order[size_t(t)] = t;
    keep[i + t] = true;
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return score[size_t(a)] < score[size_t(b)]; });
  for (int64_t t = 0; t < nm.m - nm.n; ++t) keep[i + order[size_t(t)]] = false;
}
}  // namespace

torch::Tensor sparsegpt_prune_(torch::Tensor& w, torch::Tensor H, double sparsity, NMPattern nm,
                               int64_t block_size, double damp) {
  torch::NoGradGuard ng;
  const int64_t cols = w.size(1);
  if (nm.on() && (cols % nm.m != 0 || block_size % nm.m != 0)) {
    bad("SparseGPT with pattern " + std::to_string(nm.n) + ":" + std::to_string(nm.m) +
        " needs the input width (" + std::to_string(cols) + ") and --block-size (" +
        std::to_string(block_size) + ") divisible by " + std::to_string(nm.m));
  }
  const int64_t rows = w.size(0);
  auto W = w.to(torch::kFloat32, /*non_blocking=*/false, /*copy=*/true).contiguous();
  torch::Tensor dead;
  const auto U = obs_inverse_factor(H, damp, &dead);
  H = torch::Tensor();
  // Inputs that never fire: their weights cannot matter to the output; prune them for free.
  W.index_put_({Slice(), dead}, 0.0);
  auto keep = torch::ones(W.sizes(), torch::kBool);
  float* wp = W.data_ptr<float>();
  const float* up = U.data_ptr<float>();
  bool* kp = keep.data_ptr<bool>();
  for (int64_t i1 = 0; i1 < cols; i1 += block_size) {
    const int64_t i2 = std::min(i1 + block_size, cols), cnt = i2 - i1;
    const float* u1 = up + i1 * cols + i1;  // the block's diagonal block of U
    if (!nm.on()) {  // the block's mask: its lowest w^2 / U_jj^2, exactly round(s * numel)
      auto W1 = W.narrow(1, i1, cnt);
      auto d1 = U.diagonal().narrow(0, i1, cnt);
      auto score = W1.pow(2) / d1.pow(2).unsqueeze(0);
      keep.narrow(1, i1, cnt)
          .copy_(drop_lowest_rows(score.reshape({1, -1}), round_count(sparsity, score.numel()))
                     .reshape(W1.sizes()));
    }
    auto err = torch::empty({rows, cnt}, torch::kFloat32);
    obs_block_sweep(wp + i1, cols, rows, cnt, u1, cols, err.data_ptr<float>(),
                    [&](int64_t r, int64_t i, const float* row) {
                      bool* kr = kp + r * cols + i1;
                      if (nm.on() && i % nm.m == 0) sparsegpt_nm_choose(row, u1, cols, i, nm, kr);
                      return kr[i] ? row[i] : 0.0f;
                    });
    if (i2 < cols) {
      W.narrow(1, i2, cols - i2).addmm_(err, U.narrow(0, i1, cnt).narrow(1, i2, cols - i2), 1.0, -1.0);
    }
  }
  w.copy_(W.to(w.scalar_type()));  // pruned entries are exactly zero
  return keep;
}

// ---- Structured -------------------------------------------------------------------------------------

int64_t structured_param_count(const core::ModelConfig& c, int64_t layers, int64_t groups,
                               int64_t mlp, int64_t hidden) {
  const int64_t rep = c.num_heads / c.num_kv_heads, hd = c.head_dim;
  const int64_t q = groups * rep * hd, kv = groups * hd;
  int64_t per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * mlp + 2 * hidden;
  if (c.qkv_bias) per_layer += q + 2 * kv;
  if (c.o_bias) per_layer += hidden;
  int64_t n = layers * per_layer + c.vocab_size * hidden + hidden;
  if (!c.tie_word_embeddings) n += c.vocab_size * hidden;
  return n;
}

std::pair<core::ModelConfig, std::vector<TensorSlice>> structured_slices(const core::ModelConfig& c,
                                                                         const StructuredPlan& plan) {
  core::ModelConfig nc = core::config_keep_layers(c, plan.layers).take_or_throw();
  const int64_t groups = int64_t(plan.kv_groups.at(size_t(plan.layers[0])).size());
  const int64_t mlp = int64_t(plan.mlp_channels.at(size_t(plan.layers[0])).size());
  const int64_t H = c.hidden_size, Hn = int64_t(plan.hidden.size());
  for (int64_t l : plan.layers) {
    if (int64_t(plan.kv_groups[size_t(l)].size()) != groups ||
        int64_t(plan.mlp_channels[size_t(l)].size()) != mlp) {
      throw Error(StatusCode::kInternal, "structured plan: widths differ between layers");
    }
  }
  const int64_t rep = c.num_heads / c.num_kv_heads, hd = c.head_dim;
  nc.num_kv_heads = groups;
  nc.num_heads = groups * rep;
  nc.head_dim = hd;
  nc.intermediate_size = mlp;
  nc.hidden_size = Hn;
  nc.rms_norm_eps = c.rms_norm_eps * double(H) / double(Hn);
  throw_if_error(core::config_validate(nc, "pruned config"));
  const std::vector<int64_t>& hid = plan.hidden;
  const double norm_scale = std::sqrt(double(H) / double(Hn));
  std::vector<TensorSlice> out;
  out.push_back({"model.embed_tokens.weight", "model.embed_tokens.weight", {}, hid, 1.0});
  for (size_t j = 0; j < plan.layers.size(); ++j) {
    const int64_t l = plan.layers[j];
    const std::string s = "model.layers." + std::to_string(l) + ".";
    const std::string d = "model.layers." + std::to_string(j) + ".";
    std::vector<int64_t> qrows, kvrows;
    for (int64_t g : plan.kv_groups[size_t(l)]) {
      for (int64_t r = 0; r < rep; ++r) {
        for (int64_t e = 0; e < hd; ++e) qrows.push_back((g * rep + r) * hd + e);
      }
      for (int64_t e = 0; e < hd; ++e) kvrows.push_back(g * hd + e);
    }
    const std::vector<int64_t>& ch = plan.mlp_channels[size_t(l)];
    auto add = [&](const std::string& n, std::vector<int64_t> rows, std::vector<int64_t> cols,
                   double scale = 1.0) {
      out.push_back({s + n, d + n, std::move(rows), std::move(cols), scale});
    };
    add("self_attn.q_proj.weight", qrows, hid);
    add("self_attn.k_proj.weight", kvrows, hid);
    add("self_attn.v_proj.weight", kvrows, hid);
    add("self_attn.o_proj.weight", hid, qrows);
    if (c.qkv_bias) {
      add("self_attn.q_proj.bias", qrows, {});
      add("self_attn.k_proj.bias", kvrows, {});
      add("self_attn.v_proj.bias", kvrows, {});
    }
    if (c.o_bias) add("self_attn.o_proj.bias", hid, {});
    add("mlp.gate_proj.weight", ch, hid);
    add("mlp.up_proj.weight", ch, hid);
    add("mlp.down_proj.weight", hid, ch);
    for (const char* n : {"input_layernorm.weight", "post_attention_layernorm.weight"}) {
      add(n, hid, {}, norm_scale);
    }
  }
  out.push_back({"model.norm.weight", "model.norm.weight", hid, {}, norm_scale});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", "lm_head.weight", {}, hid, 1.0});
  return {nc, out};
}

CausalLM structured_apply(CausalLM& m, const StructuredPlan& plan) {
  auto [nc, slices] = structured_slices(m->config(), plan);
  CausalLM out(nc);
  auto src = m->named_parameters();
  auto dst = out->named_parameters();
  torch::NoGradGuard ng;
  for (const TensorSlice& sl : slices) {
    torch::Tensor t = *src.find(sl.from);
    if (!sl.rows.empty()) t = t.index_select(0, torch::tensor(sl.rows, torch::kLong));
    if (!sl.cols.empty()) t = t.index_select(1, torch::tensor(sl.cols, torch::kLong));
    if (sl.scale != 1.0) t = t * sl.scale;
    torch::Tensor* d = dst.find(sl.to);
    if (!d || !d->sizes().equals(t.sizes())) {
      throw Error(StatusCode::kInternal, "structured_apply: shape mismatch for " + sl.to);
    }
    d->copy_(t);
  }
  return out;
}

// ---- Schedules and validation ----------------------------------------------------------------------

double sparsity_at(double si, double sf, int64_t start, int64_t end, int64_t step) {
  if (step <= start) return si;
  if (step >= end || end <= start) return sf;
  double t = 1.0 - double(step - start) / double(end - start);
  return sf + (si - sf) * t * t * t;
}

namespace {

std::vector<std::pair<std::regex, double>> parse_sparsity_map(const std::string& spec) {
  std::vector<std::pair<std::regex, double>> out;
  size_t pos = 0;
  while (!spec.empty() && pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    std::string item = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t eq = item.rfind('=');
    double v = -1;
    if (eq != std::string::npos) {
      try {
        v = std::stod(item.substr(eq + 1));
      } catch (const std::exception&) {
        v = -1;
      }
    }
    if (eq == std::string::npos || !(v >= 0 && v < 1)) {
      bad("--sparsity-map item '" + item + "': expected REGEX=S with 0 <= S < 1");
    }
    try {
      out.emplace_back(std::regex(item.substr(0, eq)), v);
    } catch (const std::regex_error& e) {
      bad("--sparsity-map item '" + item + "': bad regex: " + e.what());
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::regex make_regex(const std::string& re, const char* flag) {
  try {
    return std::regex(re);
  } catch (const std::regex_error& e) {
    bad(std::string(flag) + " '" + re + "': bad regex: " + e.what());
  }
}

}  // namespace

int64_t prune_count(double s, int64_t n) { return round_count(s, n); }

PruneTargets::PruneTargets(const PruneOptions& o)
    : nm(o.method == "structured" ? NMPattern{} : nm_parse(o.pattern)),
      sparsity(o.sparsity),
      targets(make_regex(o.targets, "--targets")),
      has_ignore(!o.ignore.empty()),
      ignore(has_ignore ? make_regex(o.ignore, "--ignore") : std::regex()),
      map(parse_sparsity_map(o.sparsity_map)) {}

bool prune_is_model_free(const PruneOptions& o) {
  return !o.load_model && o.method == "magnitude";
}

void prune_validate(const PruneOptions& o) {
  if (o.model.empty()) bad("a model directory is required");
  if (o.out.empty()) bad("--out is required");
  const std::string& m = o.method;
  if (m != "magnitude" && m != "wanda" && m != "sparsegpt" && m != "structured") {
    bad("--method '" + m + "': expected magnitude, wanda, sparsegpt or structured");
  }
  if (m != "structured") {
    if (!(o.sparsity >= 0 && o.sparsity < 1)) {
      bad("--sparsity " + std::to_string(o.sparsity) + ": expected a fraction in [0, 1)");
    }
    nm_parse(o.pattern);
    if (o.scope != "layer" && o.scope != "global") {
      bad("--scope '" + o.scope + "': expected layer or global");
    }
    if (o.scope == "global" && m != "magnitude") bad("--scope global applies to --method magnitude");
    parse_sparsity_map(o.sparsity_map);
    make_regex(o.targets, "--targets");
    if (!o.ignore.empty()) make_regex(o.ignore, "--ignore");
    if (o.block_size < 1) bad("--block-size must be >= 1");
    if (!(o.damp >= 0)) bad("--damp must be >= 0");
  } else {
    for (auto [v, name] : {std::pair{o.keep_heads, "--keep-heads"}, {o.keep_mlp, "--keep-mlp"},
                           {o.keep_hidden, "--keep-hidden"}, {o.keep_layers, "--keep-layers"}}) {
      if (!(v > 0 && v <= 1)) bad(std::string(name) + " " + std::to_string(v) + ": expected a fraction in (0, 1]");
    }
    if (!(o.target_params >= 0 && o.target_params < 1)) {
      bad("--target-params " + std::to_string(o.target_params) + ": expected a fraction in (0, 1)");
    }
    if (o.depth_metric != "bi" && o.depth_metric != "ppl") {
      bad("--depth-metric '" + o.depth_metric + "': expected bi or ppl");
    }
    if (o.channel_multiple < 1) bad("--channel-multiple must be >= 1");
  }
  if (o.calib_samples < 1 || o.calib_len < 2) bad("--calib-samples must be >= 1 and --calib-len >= 2");
  if (auto mm = core::bytes_parse(o.max_memory); !mm.is_ok()) bad("--max-memory: " + mm.status().message());
}

// ---- Calibration ------------------------------------------------------------------------------------

namespace {

// Input groups: q/k/v share the input, as do gate/up, so their statistics are collected once.
std::string input_group(const std::string& module) {
  for (const char* s : {"q_proj", "k_proj", "v_proj"}) {
    size_t p = module.rfind(s);
    if (p != std::string::npos && p + 6 == module.size()) return module.substr(0, p) + "qkv";
  }
  for (const char* s : {"gate_proj", "up_proj"}) {
    size_t p = module.rfind(s);
    if (p != std::string::npos && p + std::strlen(s) == module.size()) return module.substr(0, p) + "gate_up";
  }
  return module;
}

// Collects per-input-group column sums of squares (Wanda) or Hessians X^T X (SparseGPT).
struct StatsTap : LinearTap {
  bool hessian = false;
  std::set<std::string> wanted;  // input groups to observe
  std::map<std::string, torch::Tensor> stats;     // Wanda
  std::map<std::string, HessianSum> hessians;     // SparseGPT
  std::string last_group;
  const void* last_ptr = nullptr;
  void on_input(const std::string& module, const torch::Tensor& x) override {
    std::string g = input_group(module);
    if (!wanted.count(g)) return;
    if (g == last_group && x.data_ptr() == last_ptr) return;  // q/k/v: same tensor, once
    last_group = g;
    last_ptr = x.data_ptr();
    // SparseGPT's Hessian in float32 (its reference keeps it so; float64 products took most of
    // the time and twice the memory), Wanda's column sums of squares in float64.
    auto f = x.reshape({-1, x.size(-1)});
    if (hessian) {
      hessians[g].add(f);
      return;
    }
    torch::Tensor add = f.to(torch::kFloat64).pow(2).sum(0);
    auto it = stats.find(g);
    if (it == stats.end()) stats.emplace(g, add);
    else it->second.add_(add);
  }
};

std::vector<int32_t> calibration_tokens(const PruneOptions& o, int64_t* n_seq) {
  core::TokenSource src;
  src.data = o.data.empty() ? core::kDefaultCorpus : o.data;
  src.tokenizer = o.tokenizer;
  src.split = "train";  // calibrate on training data; perplexity is measured on val
  src.max_tokens = uint64_t(o.calib_samples * o.calib_len);
  const int64_t vocab_size = core::config_load(o.model).take_or_throw().vocab_size;
  core::LoadedTokens t = core::tokens_load(o.model, vocab_size, src, o.progress).take_or_throw();
  *n_seq = int64_t(t.tokens.size()) / o.calib_len;
  if (*n_seq < 1) {
    bad(src.data + ": " + std::to_string(t.tokens.size()) + " calibration tokens are fewer than "
        "one sequence of --calib-len " + std::to_string(o.calib_len));
  }
  t.tokens.resize(size_t(*n_seq * o.calib_len));
  return t.tokens;
}

double val_nll(CausalLM& m, const std::vector<int32_t>& val, int64_t seq_len) {
  if (val.size() < 2) return NAN;
  torch::NoGradGuard ng;
  m->eval();
  auto [sum, n] = nll_over_windows(m, val.data(), val.size(), seq_len, 8);
  return sum / double(n);
}

// Mean next-token NLL of the calibration sequences with layer `skip` left out (-1: none).
double calib_nll_skipping(CausalLM& m, const torch::Tensor& ids, int64_t skip) {
  torch::NoGradGuard ng;
  const int64_t N = ids.size(0), L = ids.size(1);
  auto [cos, sin] = m->rope_tables(0, L);
  double sum = 0;
  const int64_t batch = calib_batch(L);
  for (int64_t b = 0; b < N; b += batch) {
    auto x = ids.narrow(0, b, std::min<int64_t>(batch, N - b));
    auto h = m->model->embed_tokens(x);
    for (int64_t i = 0; i < m->config().num_layers; ++i) {
      if (i == skip) continue;
      h = m->model->layers->ptr<DecoderLayerImpl>(size_t(i))->forward(h, cos, sin, 0, nullptr, nullptr);
    }
    auto logits = torch::matmul(m->model->norm(h), m->lm_head_weight().t());
    auto loss = torch::nn::functional::cross_entropy(
        logits.narrow(1, 0, L - 1).reshape({-1, logits.size(-1)}), x.narrow(1, 1, L - 1).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    sum += loss.item<double>();
  }
  return sum / double(N * (L - 1));
}

std::vector<int64_t> top_sorted(const torch::Tensor& importance, int64_t k) {
  auto idx = std::get<1>(importance.to(torch::kFloat64).topk(k)).to(torch::kLong);
  idx = std::get<0>(idx.sort());
  return std::vector<int64_t>(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
}

int64_t round_width(double keep, int64_t full, int64_t multiple) {
  if (keep >= 1.0) return full;
  int64_t w = int64_t(std::llround(keep * double(full) / double(multiple))) * multiple;
  if (full < 2 * multiple) w = std::llround(keep * double(full));
  return std::clamp<int64_t>(w, 1, full);
}

// Minitron-style importance over the calibration data.
struct ImportanceTap : LinearTap {
  int64_t heads = 0, head_dim = 0;
  std::vector<torch::Tensor> head, mlp;  // per layer: [n_heads], [I]
  torch::Tensor hidden;                  // [H]
  void on_input(const std::string& module, const torch::Tensor& x) override {
    auto f = x.reshape({-1, x.size(-1)}).to(torch::kFloat64);
    auto layer_of = [&]() {
      size_t a = std::strlen("model.layers."), b = module.find('.', a);
      return size_t(std::stoll(module.substr(a, b - a)));
    };
    auto acc = [](torch::Tensor& t, const torch::Tensor& v) {
      if (t.defined()) t.add_(v);
      else t = v.clone();
    };
    if (module.size() > 6 && module.compare(module.size() - 6, 6, "o_proj") == 0) {
      size_t l = layer_of();
      if (head.size() <= l) head.resize(l + 1);
      acc(head[l], f.reshape({f.size(0), heads, head_dim}).norm(2, -1).sum(0));
    } else if (module.size() > 9 && module.compare(module.size() - 9, 9, "down_proj") == 0) {
      size_t l = layer_of();
      if (mlp.size() <= l) mlp.resize(l + 1);
      acc(mlp[l], f.abs().sum(0));
    } else if (module == "lm_head" || (module.size() > 6 && module.compare(module.size() - 6, 6, "q_proj") == 0) ||
               (module.size() > 9 && module.compare(module.size() - 9, 9, "gate_proj") == 0)) {
      acc(hidden, f.abs().sum(0));
    }
  }
};

nlohmann::json sparsity_report(CausalLM& m, const std::regex& targets) {
  nlohmann::json per = nlohmann::json::object();
  int64_t zeros = 0, total = 0;
  for (auto& p : m->named_parameters()) {
    if (p.value().dim() != 2) continue;
    std::string mod = p.key().substr(0, p.key().rfind('.'));
    if (!std::regex_match(mod, targets)) continue;
    int64_t z = (p.value() == 0).sum().item<int64_t>();
    per[mod] = double(z) / double(p.value().numel());
    zeros += z;
    total += p.value().numel();
  }
  return {{"per_module", per}, {"targeted_sparsity", total ? double(zeros) / double(total) : 0.0},
          {"targeted_zeros", zeros}, {"targeted_params", total}};
}

int64_t model_bytes(CausalLM& m, const std::string& dtype) {
  int64_t per = dtype == "float32" ? 4 : 2;
  return m->num_parameters() * per;
}

}  // namespace

// ---- Driver --------------------------------------------------------------------------------------

namespace {

// Validation tokens for before/after perplexity (the val split; same definition as eval).
std::vector<int32_t> validation_tokens(const PruneOptions& o, int64_t vocab_size) {
  if (o.eval_tokens == 0) return {};
  core::TokenSource src;
  src.data = o.data.empty() ? core::kDefaultCorpus : o.data;
  src.tokenizer = o.tokenizer;
  src.split = "val";
  src.max_tokens = o.eval_tokens;
  return core::tokens_load(o.model, vocab_size, src).take_or_throw().tokens;
}

// Magnitude pruning of the target matrices: each by its own threshold, or all under one
// (--scope global, unstructured).
void prune_magnitude(const PruneOptions& o, const PruneTargets& pt, CausalLM& m) {
  auto params = m->named_parameters();
  std::vector<std::pair<std::string, torch::Tensor>> mats;
  for (auto& p : params) {
    std::string mod = p.key().substr(0, p.key().rfind('.'));
    if (p.value().dim() == 2 && p.key().size() > 7 &&
        p.key().compare(p.key().size() - 7, 7, ".weight") == 0 && pt.has(mod)) {
      mats.emplace_back(mod, p.value());
    }
  }
  if (mats.empty()) bad("--targets '" + o.targets + "' matches no linear layer of " + o.model);
  if (o.scope == "global" && !pt.nm.on()) {
    std::vector<torch::Tensor> flat;
    for (auto& [mod, w] : mats) flat.push_back(w.abs().reshape({-1}));
    auto all = torch::cat(flat).unsqueeze(0);
    auto keep = drop_lowest_rows(all, round_count(o.sparsity, all.size(1))).reshape({-1});
    int64_t off = 0;
    for (auto& [mod, w] : mats) {
      w.mul_(keep.narrow(0, off, w.numel()).reshape(w.sizes()).to(w.scalar_type()));
      off += w.numel();
    }
  } else {
    for (auto& [mod, w] : mats) {
      w.mul_(mask_magnitude(w, pt.sparsity_of(mod), pt.nm).to(w.scalar_type()));
    }
  }
}

// The calibration sequences and the hidden states entering the current decoder layer.
struct CalibState {
  torch::Tensor ids;  // [N, calib_len] int64
  torch::Tensor X;    // [N, calib_len, H]
  torch::Tensor cos, sin;
  // Streaming: X's buffer, spilled to a file beyond --max-memory; each batch is then dropped
  // from resident memory once used.
  core::ScratchBuffer* states = nullptr;
  int64_t n() const { return ids.size(0); }
};

CalibState calib_start(const PruneOptions& o, CausalLM& m) {
  CalibState c;
  int64_t N = 0;
  std::vector<int32_t> calib = calibration_tokens(o, &N);
  c.ids = torch::from_blob(calib.data(), {N, o.calib_len}, torch::kInt32).to(torch::kLong);
  std::tie(c.cos, c.sin) = m->rope_tables(0, o.calib_len);
  c.X = m->model->embed_tokens(c.ids);
  return c;
}

// The same without a model: the embedding rows gathered from the checkpoint into `states`, a
// buffer that spills beyond --max-memory (the streaming stages).
CalibState calib_start(const PruneOptions& o, const core::ModelConfig& cfg,
                       const core::Checkpoint& ck, core::ScratchBuffer& states) {
  CalibState c;
  int64_t N = 0;
  std::vector<int32_t> calib = calibration_tokens(o, &N);
  c.ids = torch::from_blob(calib.data(), {N, o.calib_len}, torch::kInt32).to(torch::kLong);
  std::tie(c.cos, c.sin) = rope_tables_for(cfg, 0, o.calib_len);
  states = calibration_states(o.out, o.max_memory, uint64_t(N * o.calib_len * cfg.hidden_size) * 4);
  c.states = &states;
  c.X = states_embed(cfg, ck, c.ids, states);
  return c;
}

// The calibration hidden states through one decoder layer, calib_batch(length) sequences at a
// time:
// each_batch(x, y) gets a batch's input (a view of c.X) and the layer's output for it.
template <typename F>
void layer_over_batches(DecoderLayerImpl& layer, const CalibState& c, F&& each_batch) {
  const int64_t N = c.n();
  const int64_t batch = calib_batch(c.X.size(1));
  for (int64_t b = 0; b < N; b += batch) {
    auto x = c.X.narrow(0, b, std::min<int64_t>(batch, N - b));
    each_batch(x, layer.forward(x, c.cos, c.sin, 0, nullptr, nullptr));
    if (c.states && c.states->spilled()) {
      c.states->release(uint64_t(b) * uint64_t(x.nbytes() / x.size(0)), uint64_t(x.nbytes()));
    }
  }
}

// The target matrices of decoder layer i, by module name.
std::vector<std::pair<std::string, torch::Tensor>> layer_targets(DecoderLayerImpl& layer,
                                                                 int64_t i,
                                                                 const PruneTargets& pt) {
  std::vector<std::pair<std::string, torch::Tensor>> mats;
  for (auto& p : layer.named_parameters()) {
    std::string mod =
        "model.layers." + std::to_string(i) + "." + p.key().substr(0, p.key().rfind('.'));
    if (p.value().dim() == 2 && pt.has(mod)) mats.emplace_back(mod, p.value());
  }
  return mats;
}

// Prune one layer's target matrices by the statistics of their inputs on the calibration states:
// Wanda's column norms or SparseGPT's Hessians, through the tap.
void layer_prune(const PruneOptions& o, const PruneTargets& pt, DecoderLayerImpl& layer,
                 std::vector<std::pair<std::string, torch::Tensor>>& mats,
                 const CalibState& c, StatsTap& tap) {
  tap.wanted.clear();
  tap.stats.clear();
  tap.hessians.clear();
  for (auto& [mod, w] : mats) tap.wanted.insert(input_group(mod));
  if (!mats.empty()) {
    layer_over_batches(layer, c, [&](const torch::Tensor&, const torch::Tensor&) {
      tap.last_ptr = nullptr;
    });
    for (size_t k = 0; k < mats.size(); ++k) {
      auto& [mod, w] = mats[k];
      const std::string group = input_group(mod);
      if (o.method == "wanda") {
        w.mul_(mask_wanda(w, tap.stats.at(group), pt.sparsity_of(mod), pt.nm).to(w.scalar_type()));
      } else {
        sparsegpt_prune_(w, tap.hessians.at(group).get(), pt.sparsity_of(mod), pt.nm, o.block_size,
                         o.damp);
      }
      // The group's statistics (SparseGPT: an in x in float32 Hessian) once its last module is done.
      if (k + 1 == mats.size() || input_group(mats[k + 1].first) != group) {
        tap.stats.erase(group);
        tap.hessians.erase(group);
      }
    }
  }
  tap.wanted.clear();
}

// ---- Streaming Wanda and SparseGPT ----------------------------------------------------------------
// Only decoder layer i is in memory (layer_load, float32): the calibration states pass through it
// with the tap observing its linear inputs, it is pruned exactly as prune_calibrated prunes it
// (layer_prune), its outputs (computed with the pruned layer) become the next layer's inputs, and
// its tensors are written through the CheckpointWriter and freed.

// Layer i's tensors in the output dtype, written at their planned places, with the zeros of its
// 2-D modules that --targets matches and the nonzeros of every tensor counted.
void layer_write(DecoderLayerImpl& layer, int64_t i, const std::vector<core::TensorSpec>& specs,
                 const PruneTargets& pt, core::DType dt, core::CheckpointWriter& w,
                 PruneCounts& counts) {
  const std::string pre = "model.layers." + std::to_string(i) + ".";
  auto params = layer.named_parameters();
  std::vector<uint8_t> buf;
  for (const core::TensorSpec& spec : specs) {
    if (spec.layer != i) continue;
    torch::Tensor p = params.find(spec.name.substr(pre.size()))->contiguous();
    const int64_t n = p.numel(), zeros = (p == 0).sum().item<int64_t>();
    const std::string mod = spec.name.substr(0, spec.name.rfind('.'));
    if (spec.shape.size() == 2 && std::regex_match(mod, pt.targets)) counts.zeros[mod] = zeros;
    counts.nonzero += n - zeros;
    buf.resize(size_t(n) * core::dtype_size(dt));
    core::convert_from_f32(p.data_ptr<float>(), dt, buf.data(), n);
    throw_if_error(w.write(spec.name, buf.data(), buf.size()));
  }
}

// The tensors outside the decoder layers, converted as they are, their nonzeros counted.
void outer_write(const core::Checkpoint& ck, const std::vector<core::TensorSpec>& specs,
                 core::DType dt, core::CheckpointWriter& w, PruneCounts& counts, int threads) {
  std::vector<core::TensorView> outer;
  for (const core::TensorSpec& spec : specs) {
    if (spec.layer >= 0) continue;
    const core::TensorInfo* t = ck.find(spec.name);
    counts.nonzero += float_nonzeros(ck.data(*t), t->dtype, t->numel());
    outer.push_back({spec.name, dt, spec.shape, nullptr, 0});
  }
  throw_if_error(core::tensors_convert_write(ck, outer, w, threads));
}

PruneResult prune_calibrated_streaming(const PruneOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  torch::NoGradGuard ng;
  torch::manual_seed(o.seed);
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  if (cfg.has_quantization()) {
    bad(o.model + ": the model is quantized (quantization_config in config.json); prune works on "
                  "float models");
  }
  const core::Checkpoint ck = core::Checkpoint::open(o.model).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ck));
  const PruneTargets pt(o);
  const core::DType dt = float_dtype(cfg);
  const std::vector<core::TensorSpec> specs = core::expected_tensors(cfg);
  std::vector<core::TensorView> plan;
  std::vector<std::string> reported;
  for (const core::TensorSpec& spec : specs) {
    uint64_t n = core::dtype_size(dt);
    for (int64_t d : spec.shape) n *= uint64_t(d);
    plan.push_back({spec.name, dt, spec.shape, nullptr, n});
    const std::string mod = spec.name.substr(0, spec.name.rfind('.'));
    if (spec.shape.size() == 2 && std::regex_match(mod, pt.targets)) reported.push_back(mod);
  }
  auto dir = core::AtomicDir::create(o.out).take_or_throw();
  auto w = core::CheckpointWriter::create(dir.path(), plan, {{"format", "pt"}},
                                          core::kDefaultMaxShardBytes)
               .take_or_throw();

  core::ScratchBuffer states;
  const CalibState c = calib_start(o, cfg, ck, states);
  StatsTap tap;
  tap.hessian = o.method == "sparsegpt";
  PruneCounts counts;
  std::vector<double> layer_seconds;
  int64_t matched = 0;
  core::Progress prog("prune " + o.method, uint64_t(cfg.num_layers), "layers", o.progress);
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    const auto l0 = std::chrono::steady_clock::now();
    DecoderLayer layer = layer_load(cfg, ck, i);
    layer->eval();
    layer->self_attn->tap = layer->mlp->tap = &tap;
    auto mats = layer_targets(*layer, i, pt);
    matched += int64_t(mats.size());
    layer_prune(o, pt, *layer, mats, c, tap);
    layer->self_attn->tap = layer->mlp->tap = nullptr;
    layer_over_batches(*layer, c, [](torch::Tensor& x, const torch::Tensor& y) { x.copy_(y); });
    layer_write(*layer, i, specs, pt, dt, *w, counts);
    layer_seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - l0).count());
    prog.update(uint64_t(i + 1));
  }
  prog.finish();
  if (matched == 0) bad("--targets '" + o.targets + "' matches no linear layer of " + o.model);
  outer_write(ck, specs, dt, *w, counts, o.threads);
  nlohmann::json report = {{"method", o.method},
                           {"model", o.model},
                           {"streaming", true},
                           {"calibration",
                            {{"sequences", c.n()},
                             {"seq_len", o.calib_len},
                             {"states_bytes", states.size()},
                             {"states_spilled", states.spilled()}}},
                           {"layer_seconds", layer_seconds}};
  return prune_output_finish(o, cfg, ck, *w, dir, counts, reported, std::move(report), t0);
}

// Wanda or SparseGPT, layer by layer: each layer is pruned on the calibration states that the
// pruned layers before it produce. Returns the calibration's report.
nlohmann::json prune_calibrated(const PruneOptions& o, const PruneTargets& pt, CausalLM& m) {
  const int64_t num_layers = m->config().num_layers;
  CalibState c = calib_start(o, m);
  StatsTap tap;
  tap.hessian = o.method == "sparsegpt";
  m->set_tap(&tap);
  core::Progress prog("prune " + o.method, uint64_t(num_layers), "layers", o.progress);
  int64_t matched = 0;
  for (int64_t i = 0; i < num_layers; ++i) {
    DecoderLayerImpl& layer = *m->model->layers->ptr<DecoderLayerImpl>(size_t(i));
    auto mats = layer_targets(layer, i, pt);
    matched += int64_t(mats.size());
    layer_prune(o, pt, layer, mats, c, tap);
    // The pruned layer's outputs are the next layer's inputs.
    layer_over_batches(layer, c, [](torch::Tensor& x, const torch::Tensor& y) { x.copy_(y); });
    prog.update(uint64_t(i + 1));
  }
  prog.finish();
  m->set_tap(nullptr);
  if (matched == 0) bad("--targets '" + o.targets + "' matches no linear layer of " + o.model);
  return {{"sequences", c.n()}, {"seq_len", o.calib_len}};
}

// Structured importance from one streaming pass: Minitron's activation importance through the
// tap, and Block Influence (1 - cos(layer input, layer output), averaged over tokens) per layer.
struct Importance {
  ImportanceTap tap;
  std::vector<double> bi;
};

// Layer i of the model being measured (a loaded model's, or one read from the checkpoint).
using LayerAt = std::function<DecoderLayer(int64_t)>;

Importance importance_measure(const PruneOptions& o, const core::ModelConfig& cfg,
                              const LayerAt& layer_at, RMSNorm& final_norm, const CalibState& c) {
  Importance imp;
  imp.tap.heads = cfg.num_heads;
  imp.tap.head_dim = cfg.head_dim;
  imp.bi.assign(size_t(cfg.num_layers), 0.0);
  core::Progress prog("importance", uint64_t(cfg.num_layers), "layers", o.progress);
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    DecoderLayer layer = layer_at(i);
    layer->self_attn->tap = layer->mlp->tap = &imp.tap;
    double& bi = imp.bi[size_t(i)];
    layer_over_batches(*layer, c, [&](torch::Tensor& x, const torch::Tensor& y) {
      auto cs = torch::nn::functional::cosine_similarity(
          x.reshape({-1, x.size(-1)}), y.reshape({-1, y.size(-1)}),
          torch::nn::functional::CosineSimilarityFuncOptions().dim(-1));
      bi += (1.0 - cs).sum().item<double>();
      x.copy_(y);
    });
    layer->self_attn->tap = layer->mlp->tap = nullptr;
    bi /= double(c.n() * o.calib_len);
    prog.update(uint64_t(i + 1));
  }
  prog.finish();
  // The lm_head's inputs, calib_batch sequences at a time (as the layers see them).
  const int64_t batch = calib_batch(o.calib_len);
  for (int64_t b = 0; b < c.n(); b += batch) {
    imp.tap.on_input("lm_head", final_norm(c.X.narrow(0, b, std::min<int64_t>(batch, c.n() - b))));
  }
  return imp;
}

Importance importance_measure(const PruneOptions& o, CausalLM& m, const CalibState& c) {
  return importance_measure(
      o, m->config(),
      [&](int64_t i) {
        auto l = m->model->layers->ptr<DecoderLayerImpl>(size_t(i));
        l->self_attn->prefix = "model.layers." + std::to_string(i) + ".self_attn.";
        l->mlp->prefix = "model.layers." + std::to_string(i) + ".mlp.";
        return DecoderLayer(l);
      },
      m->model->norm, c);
}

// The structured-pruned model's sizes.
struct StructuredSizes {
  int64_t layers = 0, kv_groups = 0, mlp = 0, hidden = 0;
  double budget_ratio = 0;  // with --target-params: the MLP/hidden ratio that meets it
};

// From the keep ratios, or the widest uniform MLP/hidden ratio that meets --target-params.
StructuredSizes structured_sizes(const PruneOptions& o, const core::ModelConfig& cfg,
                                 int64_t params_before) {
  StructuredSizes s;
  s.layers = std::max<int64_t>(1, std::llround(o.keep_layers * double(cfg.num_layers)));
  s.kv_groups = std::max<int64_t>(1, std::llround(o.keep_heads * double(cfg.num_kv_heads)));
  s.mlp = round_width(o.keep_mlp, cfg.intermediate_size, o.channel_multiple);
  s.hidden = round_width(o.keep_hidden, cfg.hidden_size, o.channel_multiple);
  if (o.target_params > 0) {
    const double budget = o.target_params * double(params_before);
    double lo = 0.0, hi = 1.0;
    for (int it = 0; it < 40; ++it) {
      double r = 0.5 * (lo + hi);
      int64_t n = structured_param_count(cfg, s.layers, s.kv_groups,
                                         round_width(r, cfg.intermediate_size, o.channel_multiple),
                                         round_width(r, cfg.hidden_size, o.channel_multiple));
      (double(n) <= budget ? lo : hi) = r;
    }
    s.mlp = round_width(lo, cfg.intermediate_size, o.channel_multiple);
    s.hidden = round_width(lo, cfg.hidden_size, o.channel_multiple);
    if (double(structured_param_count(cfg, s.layers, s.kv_groups, s.mlp, s.hidden)) >
            budget * 1.0001 ||
        lo <= 0) {
      bad("--target-params " + std::to_string(o.target_params) + " cannot be met by shrinking the "
          "MLP and hidden widths alone; also lower --keep-heads or --keep-layers");
    }
    s.budget_ratio = lo;
  }
  return s;
}

// Depth importance per layer (only when layers are dropped): Block Influence, or how much the
// calibration NLL rises without the layer (--depth-metric ppl).
std::vector<double> depth_scores(const PruneOptions& o, CausalLM& m, const CalibState& c,
                                 const std::vector<double>& bi, int64_t keep_layers) {
  const int64_t num_layers = m->config().num_layers;
  std::vector<double> score(static_cast<size_t>(num_layers));
  if (keep_layers >= num_layers) return score;
  if (o.depth_metric == "bi") return bi;
  double base = calib_nll_skipping(m, c.ids, -1);
  for (int64_t i = 0; i < num_layers; ++i) {
    score[size_t(i)] = calib_nll_skipping(m, c.ids, i) - base;
  }
  return score;
}

// ---- --depth-metric ppl, streamed ---------------------------------------------------------------
// The calibration NLL without layer i, for every i, with one decoder layer in memory at a time:
// the full model's states S run through the layers once; before layer i takes them, a copy T runs
// through layers i + 1 .. L - 1 and is scored, so the NLL without layer i needs no earlier layer
// again (L (L + 1) / 2 layer passes, against the whole-model path's L^2). The logits are
// taken a block of lm_head rows at a time, the log-sum-exp combined in float64 (as
// nll_streamed), so the scores equal the whole-model path's to float rounding (tested).

// Mean NLL of each next token of c.ids given the last layer's states X [N, T, H].
double calib_nll_of_states(const LayerStream& ls, const CalibState& c, const torch::Tensor& X) {
  const int64_t N = c.n(), T = c.ids.size(1), V = ls.config().vocab_size;
  const int64_t batch = calib_batch(T);
  const int64_t step = head_block_rows(ls.config().hidden_size, batch * (T - 1));
  const uint64_t rows = uint64_t(N * (T - 1));
  RowStats rs(rows);
  const torch::Tensor targets = c.ids.narrow(1, 1, T - 1).reshape({-1});
  for (int64_t v0 = 0; v0 < V; v0 += step) {
    const torch::Tensor W = ls.head_rows(v0, std::min(step, V - v0));
    for (int64_t b = 0; b < N; b += batch) {
      const int64_t nb = std::min<int64_t>(batch, N - b);
      const torch::Tensor h = ls.final_norm(X.narrow(0, b, nb)).narrow(1, 0, T - 1).reshape({-1, X.size(2)});
      rs.add(uint64_t(b * (T - 1)), torch::matmul(h, W.t()), v0,
             targets.narrow(0, b * (T - 1), nb * (T - 1)));
    }
  }
  double nll = 0;
  for (uint64_t k = 0; k < rows; ++k) nll += rs.lse(k) - rs.target[k];
  return nll / double(rows);
}

// States [N, T, H] through decoder layer i of the stream, calib_batch sequences at a time, in place.
void states_through(const LayerStream& ls, int64_t i, const CalibState& c, const torch::Tensor& X,
                    core::ScratchBuffer* buf) {
  DecoderLayer layer = ls.layer(i);
  CalibState v = c;
  v.X = X;
  v.states = buf;
  layer_over_batches(*layer, v, [](torch::Tensor& x, const torch::Tensor& y) { x.copy_(y); });
}

// dst = src, calib_batch sequences at a time; spilled buffers' pages leave resident memory once copied.
void states_copy(const torch::Tensor& src, core::ScratchBuffer* sb, const torch::Tensor& dst,
                 core::ScratchBuffer* db) {
  const int64_t N = src.size(0);
  const uint64_t per = uint64_t(src.nbytes() / uint64_t(N));
  const int64_t batch = calib_batch(src.size(1));
  for (int64_t b = 0; b < N; b += batch) {
    const int64_t nb = std::min<int64_t>(batch, N - b);
    dst.narrow(0, b, nb).copy_(src.narrow(0, b, nb));
    for (core::ScratchBuffer* buf : {sb, db}) {
      if (buf->spilled()) buf->release(uint64_t(b) * per, uint64_t(nb) * per);
    }
  }
}

// Per layer, how much the calibration NLL rises without it (--depth-metric ppl), streamed.
std::vector<double> depth_ppl_streamed(const PruneOptions& o, const core::ModelConfig& cfg,
                                       const core::Checkpoint& ck) {
  const LayerStream ls(o.model);
  const int64_t L = cfg.num_layers;
  core::ScratchBuffer full_buf, skip_buf;
  const CalibState c = calib_start(o, cfg, ck, full_buf);
  skip_buf = calibration_states(o.out, o.max_memory, full_buf.size());
  const torch::Tensor S = c.X;
  const torch::Tensor T = torch::from_blob(skip_buf.data(), S.sizes(), torch::kFloat32);
  std::vector<double> without(static_cast<size_t>(L));
  core::Progress prog("depth ppl", uint64_t(L * (L + 1) / 2), "layer passes", o.progress);
  uint64_t passes = 0;
  for (int64_t i = 0; i < L; ++i) {
    states_copy(S, &full_buf, T, &skip_buf);
    for (int64_t j = i + 1; j < L; ++j) {
      states_through(ls, j, c, T, &skip_buf);
      prog.update(++passes);
    }
    without[size_t(i)] = calib_nll_of_states(ls, c, T);
    states_through(ls, i, c, S, &full_buf);
    prog.update(++passes);
  }
  prog.finish();
  const double base = calib_nll_of_states(ls, c, S);
  for (double& v : without) v -= base;
  return without;
}

// What the smaller model keeps: the most important layers, hidden channels, and per layer KV
// groups (whole GQA groups) and MLP channels, each in their original order.
StructuredPlan structured_plan(const core::ModelConfig& cfg, const Importance& imp,
                               const std::vector<double>& depth, const StructuredSizes& s) {
  StructuredPlan plan;
  plan.layers = top_sorted(torch::tensor(depth, torch::kFloat64), s.layers);
  plan.hidden = top_sorted(imp.tap.hidden, s.hidden);
  const int64_t rep = cfg.num_heads / cfg.num_kv_heads;
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    auto g = imp.tap.head[size_t(i)].reshape({cfg.num_kv_heads, rep}).sum(1);
    plan.kv_groups.push_back(top_sorted(g, s.kv_groups));
    plan.mlp_channels.push_back(top_sorted(imp.tap.mlp[size_t(i)], s.mlp));
  }
  return plan;
}

// Structured pruning: measure importance, size the smaller model, choose what it keeps, build
// it. Adds the structure and the calibration to the report.
CausalLM prune_structured(const PruneOptions& o, CausalLM& m, int64_t params_before,
                          nlohmann::json& report) {
  const core::ModelConfig cfg = m->config();
  const CalibState c = calib_start(o, m);
  const Importance imp = importance_measure(o, m, c);
  const StructuredSizes sizes = structured_sizes(o, cfg, params_before);
  if (o.target_params > 0) report["budget_ratio"] = sizes.budget_ratio;
  const std::vector<double> depth = depth_scores(o, m, c, imp.bi, sizes.layers);
  const StructuredPlan plan = structured_plan(cfg, imp, depth, sizes);
  CausalLM out = structured_apply(m, plan);
  const int64_t rep = cfg.num_heads / cfg.num_kv_heads;
  report["structured"] = {{"layers_kept", plan.layers},
                          {"num_hidden_layers", sizes.layers},
                          {"num_key_value_heads", sizes.kv_groups},
                          {"num_attention_heads", sizes.kv_groups * rep},
                          {"intermediate_size", sizes.mlp},
                          {"hidden_size", sizes.hidden},
                          {"block_influence", imp.bi},
                          {"depth_metric", o.depth_metric},
                          {"depth_scores", depth}};
  report["calibration"] = {{"sequences", c.n()}, {"seq_len", o.calib_len}};
  return out;
}

// ---- Streaming structured pruning ------------------------------------------------------------------
// Importance from one pass with only decoder layer i in memory (layer_load), the states running
// through the unpruned layers as they do on a loaded model; then the smaller model written tensor
// by tensor, each one's kept rows and columns read from the checkpoint a block at a time.

// Tensor slice sl of the checkpoint, converted to dt and written as sl.to, a block of kept rows
// (about 16 MiB of float32) at a time; the source pages released once read.
void slice_write(const core::Checkpoint& ck, const TensorSlice& sl, core::DType dt,
                 core::CheckpointWriter& w) {
  const core::TensorInfo* t = ck.find(sl.from);
  if (!t || t->shape.empty() || t->shape.size() > 2 || !core::dtype_is_float(t->dtype)) {
    throw Error(StatusCode::kInvalidInput, ck.dir() + ": " + sl.from + ": expected a float tensor of 1 or 2 dimensions");
  }
  const int64_t R = t->shape[0], C = t->shape.size() == 2 ? t->shape[1] : 1;
  const int64_t out_rows = sl.rows.empty() ? R : int64_t(sl.rows.size());
  const int64_t out_cols = sl.cols.empty() ? C : int64_t(sl.cols.size());
  const uint64_t es = core::dtype_size(t->dtype), os = core::dtype_size(dt);
  const int64_t block = std::max<int64_t>(1, (int64_t(16) << 20) / (4 * std::max(C, out_cols)));
  const float scale = float(sl.scale);
  std::vector<float> row(static_cast<size_t>(C)), out(static_cast<size_t>(std::min(block, out_rows) * out_cols));
  std::vector<uint8_t> bytes;
  for (int64_t j0 = 0; j0 < out_rows; j0 += block) {
    const int64_t n = std::min(block, out_rows - j0);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t src = sl.rows.empty() ? j0 + r : sl.rows[size_t(j0 + r)];
      core::convert_to_f32(t->dtype, ck.data(*t) + uint64_t(src * C) * es, row.data(), C);
      float* o = out.data() + r * out_cols;
      for (int64_t k = 0; k < out_cols; ++k) o[k] = row[size_t(sl.cols.empty() ? k : sl.cols[size_t(k)])];
      if (sl.scale != 1.0) {
        for (int64_t k = 0; k < out_cols; ++k) o[k] *= scale;
      }
    }
    bytes.resize(size_t(n * out_cols) * os);
    core::convert_from_f32(out.data(), dt, bytes.data(), n * out_cols);
    throw_if_error(w.write(sl.to, bytes.data(), bytes.size(), uint64_t(j0 * out_cols) * os));
    if (sl.rows.empty()) ck.release(*t, uint64_t(j0 * C) * es, uint64_t(n * C) * es);  // read in order
  }
  ck.release(*t, 0, t->nbytes);
}

PruneResult prune_structured_streaming(const PruneOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  torch::NoGradGuard ng;
  torch::manual_seed(o.seed);
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  if (cfg.has_quantization()) {
    bad(o.model + ": the model is quantized (quantization_config in config.json); prune works on "
                  "float models");
  }
  const core::Checkpoint ck = core::Checkpoint::open(o.model).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ck));
  const int64_t params_before = config_parameters(cfg);
  const StructuredSizes sizes = structured_sizes(o, cfg, params_before);

  // --depth-metric ppl first: its two state buffers are gone before importance's is made.
  const bool drop_layers = sizes.layers < cfg.num_layers;
  std::vector<double> depth = drop_layers && o.depth_metric == "ppl"
                                  ? depth_ppl_streamed(o, cfg, ck)
                                  : std::vector<double>(size_t(cfg.num_layers), 0.0);
  core::ScratchBuffer states;
  const CalibState c = calib_start(o, cfg, ck, states);
  RMSNorm norm(cfg.hidden_size, cfg.rms_norm_eps);
  {
    const core::TensorInfo* t = ck.find("model.norm.weight");
    core::convert_to_f32(t->dtype, ck.data(*t), norm->weight.data_ptr<float>(), t->numel());
  }
  std::vector<double> layer_seconds;
  auto last = std::chrono::steady_clock::now();
  const Importance imp = importance_measure(
      o, cfg,
      [&](int64_t i) {
        const auto now = std::chrono::steady_clock::now();
        if (i > 0) layer_seconds.push_back(std::chrono::duration<double>(now - last).count());
        last = now;
        DecoderLayer l = layer_load(cfg, ck, i);
        l->eval();
        return l;
      },
      norm, c);
  layer_seconds.push_back(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - last).count());
  if (drop_layers && o.depth_metric == "bi") depth = imp.bi;
  const StructuredPlan plan = structured_plan(cfg, imp, depth, sizes);
  auto [nc, slices] = structured_slices(cfg, plan);

  const core::DType dt = float_dtype(cfg);
  nc.dtype = dt == core::DType::kF32 ? "float32" : dt == core::DType::kF16 ? "float16" : "bfloat16";
  std::vector<core::TensorView> views;
  for (const core::TensorSpec& spec : core::expected_tensors(nc)) {
    uint64_t n = core::dtype_size(dt);
    for (int64_t d : spec.shape) n *= uint64_t(d);
    views.push_back({spec.name, dt, spec.shape, nullptr, n});
  }
  auto dir = core::AtomicDir::create(o.out).take_or_throw();
  auto w = core::CheckpointWriter::create(dir.path(), views, {{"format", "pt"}},
                                          core::kDefaultMaxShardBytes)
               .take_or_throw();
  for (const TensorSlice& sl : slices) slice_write(ck, sl, dt, *w);
  throw_if_error(w->finish());
  const int64_t params_after = config_parameters(nc);
  const int64_t per = dt == core::DType::kF32 ? 4 : 2;
  const int64_t rep = cfg.num_heads / cfg.num_kv_heads;
  nlohmann::json report = {{"method", o.method}, {"model", o.model}, {"streaming", true}};
  if (o.target_params > 0) report["budget_ratio"] = sizes.budget_ratio;
  report["structured"] = {{"layers_kept", plan.layers},
                          {"num_hidden_layers", sizes.layers},
                          {"num_key_value_heads", sizes.kv_groups},
                          {"num_attention_heads", sizes.kv_groups * rep},
                          {"intermediate_size", sizes.mlp},
                          {"hidden_size", sizes.hidden},
                          {"block_influence", imp.bi},
                          {"depth_metric", o.depth_metric},
                          {"depth_scores", depth}};
  report["calibration"] = {{"sequences", c.n()},
                           {"seq_len", o.calib_len},
                           {"states_bytes", states.size()},
                           {"states_spilled", states.spilled()}};
  report["layer_seconds"] = layer_seconds;
  report["params_before"] = params_before;
  report["params_after"] = params_after;
  report["bytes_before"] = params_before * per;
  report["bytes_after"] = params_after * per;
  report["bytes_read"] = ck.total_bytes();
  report["bytes_written"] = w->bytes_written();
  model_sidecars_write(nc, dir.path(), prune_tokenizer(o),
                       {{"stage", "prune"}, {"method", o.method}, {"from", o.model}}, params_after);
  return prune_report_commit(o, dir, std::move(report), t0);
}

// The pruned model and prune.json, written atomically to --out.
void pruned_write(const PruneOptions& o, CausalLM& out, const nlohmann::json& report) {
  auto dir = core::AtomicDir::create(o.out).take_or_throw();
  SaveOptions so;
  so.tokenizer_json = prune_tokenizer(o);
  so.provenance = {{"stage", "prune"}, {"method", o.method}, {"from", o.model}};
  if (o.method != "structured") {
    so.provenance["sparsity"] = report.at("sparsity").at("targeted_sparsity");
  }
  model_write(out, dir.path(), so);
  throw_if_error(core::write_file_atomic(dir.path() + "/prune.json", report.dump(2) + "\n"));
  throw_if_error(dir.commit());
}

// What pruning removed: parameters and bytes, and (unstructured) the sparsity per module, overall
// and in nonzero parameters.
void report_removed(const PruneOptions& o, const PruneTargets& pt, CausalLM& m, CausalLM& out,
                    int64_t params_before, nlohmann::json& report) {
  const std::string dtype = m->config().dtype;
  report["params_before"] = params_before;
  report["params_after"] = out->num_parameters();
  report["bytes_before"] = model_bytes(m, dtype);
  report["bytes_after"] = model_bytes(out, dtype);
  if (o.method == "structured") return;
  report["sparsity"] = sparsity_report(out, pt.targets);
  report["pattern"] = o.pattern.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.pattern);
  report["target_sparsity"] = o.sparsity;
  int64_t nnz = 0;
  for (auto& p : out->parameters()) nnz += (p != 0).sum().item<int64_t>();
  report["nonzero_params_after"] = nnz;
}

}  // namespace

void prune_eval_dirs(const PruneOptions& o, const std::string& pruned_dir, nlohmann::json& report) {
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  const std::vector<int32_t> val = validation_tokens(o, cfg.vocab_size);
  if (val.size() < 2) return;
  StreamedEvalOptions so;
  so.seq_len = o.eval_seq_len;
  so.max_memory = o.max_memory;
  so.spill_dir = fs::path(o.out).parent_path().string();
  auto nll = [&](const std::string& dir) {
    const StreamedEval e = nll_streamed(dir, val.data(), val.size(), so);
    return e.nll_sum / double(e.scored);
  };
  const double nll_before = nll(o.model);
  const double nll_after = nll(pruned_dir);
  report["val_tokens"] = val.size();
  report["val_seq_len"] = o.eval_seq_len;
  report["perplexity_before"] = std::exp(nll_before);
  report["perplexity_after"] = std::exp(nll_after);
}

PruneResult prune_run(const PruneOptions& o) {
  prune_validate(o);
  if (prune_is_model_free(o)) return prune_model_free(o);
  if (!o.load_model && (o.method == "wanda" || o.method == "sparsegpt")) {
    return prune_calibrated_streaming(o);
  }
  if (!o.load_model && o.method == "structured") {
    return prune_structured_streaming(o);
  }
  auto t0 = std::chrono::steady_clock::now();
  torch::NoGradGuard ng;
  torch::manual_seed(o.seed);
  CausalLM m = model_load(o.model);
  m->eval();
  const std::vector<int32_t> val = validation_tokens(o, m->config().vocab_size);
  const int64_t params_before = m->num_parameters();
  const double nll_before = val_nll(m, val, o.eval_seq_len);

  nlohmann::json report = {{"method", o.method}, {"model", o.model}};
  const PruneTargets pt(o);
  CausalLM out = m;  // the unstructured methods prune in place
  if (o.method == "magnitude") {
    prune_magnitude(o, pt, m);
  } else if (o.method == "wanda" || o.method == "sparsegpt") {
    report["calibration"] = prune_calibrated(o, pt, m);
  } else {
    out = prune_structured(o, m, params_before, report);
  }

  const double nll_after = val_nll(out, val, o.eval_seq_len);
  report_removed(o, pt, m, out, params_before, report);
  if (!val.empty()) {
    report["val_tokens"] = val.size();
    report["val_seq_len"] = o.eval_seq_len;
    report["perplexity_before"] = std::exp(nll_before);
    report["perplexity_after"] = std::exp(nll_after);
  }
  report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  pruned_write(o, out, report);
  return {report};
}

}  // namespace shrink::train
