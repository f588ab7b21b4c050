// Layer-by-layer evaluation (see streamed.h).
#include "train/streamed.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/fs.h"
#include "core/dataset.h"
#include "train/quant_ops.h"

namespace shrink::train {

namespace {

// Rows [r0, r0 + n) of a 2-D checkpoint tensor: int8 as int8, floats as float32.
torch::Tensor rows_from(const core::Checkpoint& ck, const std::string& name, int64_t r0, int64_t n) {
  const core::TensorInfo* t = ck.find(name);
  if (!t || t->shape.size() != 2) {
    throw Error(StatusCode::kInvalidInput, ck.dir() + ": missing 2-D tensor " + name);
  }
  const int64_t cols = t->shape[1];
  const uint64_t es = core::dtype_size(t->dtype), off = uint64_t(r0 * cols) * es;
  const uint8_t* src = ck.data(*t) + off;
  torch::Tensor out;
  if (t->dtype == core::DType::kI8) {
    out = torch::empty({n, cols}, torch::kInt8);
    std::memcpy(out.data_ptr(), src, size_t(n * cols));
  } else if (core::dtype_is_float(t->dtype)) {
    out = torch::empty({n, cols}, torch::kFloat32);
    core::convert_to_f32(t->dtype, src, out.data_ptr<float>(), n * cols);
  } else {
    throw Error(StatusCode::kInvalidInput, ck.dir() + ": " + name + " is " +
                                               core::dtype_name(t->dtype) + ", expected int8 or a float");
  }
  ck.release(*t, off, uint64_t(n * cols) * es);
  return out;
}

// Windows in the batches nll_over_windows makes: consecutive windows of equal length, at most
// `batch` of them; each batch's hidden states start at token row `row0` of the states buffer.
struct Batch {
  size_t first = 0;
  int64_t B = 0, T = 0;
  uint64_t row0 = 0;
};

std::vector<Batch> batches_of(const std::vector<core::EvalWindow>& w, int64_t batch) {
  std::vector<Batch> out;
  uint64_t row = 0;
  for (size_t i = 0; i < w.size();) {
    size_t j = i + 1;
    while (j < w.size() && int64_t(j - i) < batch && w[j].len == w[i].len) ++j;
    out.push_back({i, int64_t(j - i), w[i].len, row});
    row += uint64_t(j - i) * uint64_t(w[i].len);
    i = j;
  }
  return out;
}

// Predictions the batches score: each window's positions but its last.
uint64_t predictions_of(const std::vector<Batch>& batches) {
  uint64_t n = 0;
  for (const Batch& b : batches) n += uint64_t(b.B * (b.T - 1));
  return n;
}

// The hidden states of every window through one model, batch by batch and layer by layer.
class Hidden {
 public:
  Hidden(const LayerStream& m, const std::vector<Batch>& batches,
         const std::vector<core::EvalWindow>& windows, const int32_t* tokens,
         const StreamedEvalOptions& o)
      : m_(m), batches_(batches), windows_(windows), tokens_(tokens), H_(m.config().hidden_size) {
    uint64_t rows = 0;
    int64_t max_t = 0;
    for (const Batch& b : batches) {
      rows += uint64_t(b.B * b.T);
      max_t = std::max(max_t, b.T);
    }
    const uint64_t bytes = rows * uint64_t(H_) * 4;
    const uint64_t budget = core::bytes_parse(o.max_memory).take_or_throw();
    std::string dir = o.spill_dir;
    if (dir.empty()) dir = std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp";
    states_ = core::ScratchBuffer::create(std::max<uint64_t>(bytes, 4), bytes > budget, dir)
                  .take_or_throw();
    std::tie(cos_, sin_) = rope_tables_for(m.config(), 0, std::max<int64_t>(max_t, 1));
  }

  torch::Tensor of(const Batch& b) {
    return torch::from_blob(data() + b.row0 * uint64_t(H_), {b.B, b.T, H_}, torch::kFloat32);
  }
  float* data() { return reinterpret_cast<float*>(states_.data()); }
  const core::ScratchBuffer& buffer() const { return states_; }

  void embed() {
    for (const Batch& b : batches_) {
      auto ids = torch::empty({b.B, b.T}, torch::kLong);
      int64_t* p = ids.data_ptr<int64_t>();
      for (int64_t k = 0; k < b.B; ++k) {
        const int32_t* src = tokens_ + windows_[b.first + size_t(k)].start;
        for (int64_t t = 0; t < b.T; ++t) p[k * b.T + t] = src[t];
      }
      m_.embed(ids, of(b));
      done(b);
    }
  }
  void layer(int64_t i) {
    DecoderLayer l = m_.layer(i);
    layer(*l);
  }
  void layer(DecoderLayerImpl& l) {
    for (const Batch& b : batches_) {
      torch::Tensor x = of(b);
      x.copy_(l.forward(x, cos_.narrow(0, 0, b.T), sin_.narrow(0, 0, b.T), 0, nullptr, nullptr));
      done(b);
    }
  }
  // These states = those of `o` (the same windows).
  void copy_from(Hidden& o) {
    for (const Batch& b : batches_) {
      of(b).copy_(o.of(b));
      done(b);
      o.done(b);
    }
  }
  void final_norm() {
    for (const Batch& b : batches_) {
      torch::Tensor x = of(b);
      x.copy_(m_.final_norm(x));
      done(b);
    }
  }
  // A spilled batch leaves resident memory once used (it stays in the file).
  void done(const Batch& b) {
    states_.release(b.row0 * uint64_t(H_) * 4, uint64_t(b.B * b.T * H_) * 4);
  }

 private:
  const LayerStream& m_;
  const std::vector<Batch>& batches_;
  const std::vector<core::EvalWindow>& windows_;
  const int32_t* tokens_;
  int64_t H_;
  core::ScratchBuffer states_;
  torch::Tensor cos_, sin_;
};

// lm_head rows per block (head_block_rows) for the largest batch's predictions.
int64_t head_block(const core::ModelConfig& c, const StreamedEvalOptions& o,
                   const std::vector<Batch>& batches) {
  int64_t rows = 1;
  for (const Batch& b : batches) rows = std::max(rows, b.B * (b.T - 1));
  return head_block_rows(c.hidden_size, rows, o.head_block);
}

// The final-normed states of batch b without each window's last position, [B * (T - 1), H].
torch::Tensor predicting_rows(Hidden& h, const Batch& b) {
  return h.of(b).narrow(1, 0, b.T - 1).reshape({-1, h.of(b).size(2)});
}

// Targets of batch b's predictions, [B * (T - 1)] int64.
torch::Tensor targets_of(const Batch& b, const std::vector<core::EvalWindow>& w,
                         const int32_t* tokens) {
  auto t = torch::empty({b.B * (b.T - 1)}, torch::kLong);
  int64_t* p = t.data_ptr<int64_t>();
  for (int64_t k = 0; k < b.B; ++k) {
    const int32_t* src = tokens + w[b.first + size_t(k)].start + 1;
    for (int64_t j = 0; j + 1 < b.T; ++j) p[k * (b.T - 1) + j] = src[j];
  }
  return t;
}

// Pass 1 over the vocabulary: log-sum-exp, target logit and argmax of every prediction.
void head_stats(const LayerStream& m, Hidden& h, const std::vector<Batch>& batches,
                const std::vector<core::EvalWindow>& w, const int32_t* tokens,
                const StreamedEvalOptions& o, RowStats& rs) {
  const int64_t V = m.config().vocab_size, step = head_block(m.config(), o, batches);
  for (int64_t v0 = 0; v0 < V; v0 += step) {
    const int64_t nv = std::min(step, V - v0);
    const torch::Tensor W = m.head_rows(v0, nv);
    uint64_t r0 = 0;
    for (const Batch& b : batches) {
      const torch::Tensor logits = torch::matmul(predicting_rows(h, b), W.t());  // [R, nv]
      h.done(b);
      rs.add(r0, logits, v0, targets_of(b, w, tokens));
      r0 += uint64_t(logits.size(0));
    }
  }
}

// Pass 2: sum over predictions of KL(ref || model), given both models' log-sum-exps.
double head_kl(const LayerStream& m, Hidden& h, const RowStats& rs, const LayerStream& ref,
               Hidden& hr, const RowStats& rr, const std::vector<Batch>& batches,
               const StreamedEvalOptions& o) {
  const int64_t V = m.config().vocab_size, step = head_block(m.config(), o, batches);
  const uint64_t rows = predictions_of(batches);
  std::vector<double> kl(rows, 0.0);
  auto lse_of = [](const RowStats& s, uint64_t r0, int64_t n) {
    auto t = torch::empty({n, 1}, torch::kFloat32);
    for (int64_t r = 0; r < n; ++r) t.data_ptr<float>()[r] = float(s.lse(r0 + uint64_t(r)));
    return t;
  };
  for (int64_t v0 = 0; v0 < V; v0 += step) {
    const int64_t nv = std::min(step, V - v0);
    const torch::Tensor W = m.head_rows(v0, nv), Wr = ref.head_rows(v0, nv);
    uint64_t r0 = 0;
    for (const Batch& b : batches) {
      const torch::Tensor lq = torch::matmul(predicting_rows(h, b), W.t());
      const torch::Tensor lr = torch::matmul(predicting_rows(hr, b), Wr.t());
      h.done(b);
      hr.done(b);
      const int64_t n = lq.size(0);
      const torch::Tensor lpq = lq - lse_of(rs, r0, n), lpr = lr - lse_of(rr, r0, n);
      const torch::Tensor part = (lpr.exp() * (lpr - lpq)).sum(1).to(torch::kFloat64);
      const double* p = part.data_ptr<double>();
      for (int64_t r = 0; r < n; ++r) kl[r0 + uint64_t(r)] += p[r];
      r0 += uint64_t(n);
    }
  }
  double sum = 0;
  for (double v : kl) sum += v;
  return sum;
}

struct Plan {
  std::vector<core::EvalWindow> windows;
  std::vector<Batch> batches;
};

Plan plan_for(uint64_t n, const StreamedEvalOptions& o) {
  if (o.seq_len < 2) {
    throw Error(StatusCode::kInvalidInput, "--seq-len " + std::to_string(o.seq_len) + ": expected >= 2");
  }
  if (o.batch < 1) {
    throw Error(StatusCode::kInvalidInput, "--batch " + std::to_string(o.batch) + ": expected >= 1");
  }
  Plan p;
  p.windows = core::eval_windows(n, o.seq_len);
  p.batches = batches_of(p.windows, o.batch);
  return p;
}

// Every window embedded, through each layer in turn, then the final norm.
void layers_through(const LayerStream& m, Hidden& h, const StreamedEvalOptions& o) {
  const int64_t L = m.config().num_layers;
  h.embed();
  for (int64_t i = 0; i < L; ++i) {
    h.layer(i);
    if (o.progress) o.progress(i + 1, L);
  }
  h.final_norm();
}

}  // namespace

LayerStream::LayerStream(const std::string& dir)
    : cfg_(core::config_load(dir).take_or_throw()), ck_(core::Checkpoint::open(dir).take_or_throw()) {
  throw_if_error(core::checkpoint_check(cfg_, ck_));
  if (cfg_.has_quantization()) {
    scheme_ = core::quant_config_from_json(cfg_.raw["quantization_config"]).take_or_throw();
    tap_ = fake_quant_tap_for(*scheme_);
  }
  norm_ = RMSNorm(cfg_.hidden_size, cfg_.rms_norm_eps);
  param_load("model.norm.weight", norm_->weight);
  head_name_ = cfg_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
}

void LayerStream::param_load(const std::string& name, torch::Tensor& dst) const {
  torch::NoGradGuard ng;
  if (scheme_) {
    quant_param_load(ck_, *scheme_, name, dst, *tap_);
    return;
  }
  const core::TensorInfo* t = ck_.find(name);
  if (!t) throw Error(StatusCode::kInvalidInput, ck_.dir() + ": missing tensor " + name);
  if (t->numel() != dst.numel() || !core::dtype_is_float(t->dtype)) {
    throw Error(StatusCode::kInvalidInput, ck_.dir() + ": tensor '" + name + "' is not a float tensor of " +
                                               std::to_string(dst.numel()) + " elements");
  }
  core::convert_to_f32(t->dtype, ck_.data(*t), dst.data_ptr<float>(), t->numel());
  ck_.release(*t, 0, t->nbytes);
}

DecoderLayer LayerStream::layer(int64_t i) const {
  if (!scheme_) {
    DecoderLayer l = layer_load(cfg_, ck_, i);
    l->eval();
    return l;
  }
  DecoderLayer l(cfg_);
  const std::string pre = "model.layers." + std::to_string(i) + ".";
  for (auto& p : l->named_parameters()) param_load(pre + p.key(), p.value());
  l->self_attn->prefix = pre + "self_attn.";
  l->mlp->prefix = pre + "mlp.";
  if (scheme_->activations != "none") {
    l->self_attn->tap = tap_.get();
    l->mlp->tap = tap_.get();
  }
  l->eval();
  return l;
}

void LayerStream::embed(const torch::Tensor& ids, torch::Tensor out) const {
  embed_rows(cfg_, ck_, ids, std::move(out));
}

torch::Tensor LayerStream::final_norm(const torch::Tensor& h) const { return norm_->forward(h); }

torch::Tensor LayerStream::head_rows(int64_t r0, int64_t n) const {
  torch::NoGradGuard ng;
  const torch::Tensor w = rows_from(ck_, head_name_, r0, n);
  if (w.scalar_type() != torch::kInt8) return w;
  if (!scheme_) {
    throw Error(StatusCode::kInvalidInput, ck_.dir() + ": " + head_name_ +
                                               " is int8 but config.json has no quantization_config");
  }
  const std::string mod = head_name_.substr(0, head_name_.size() - 7);
  QWeight qw{w, rows_from(ck_, mod + ".weight_scale", r0, n),
             scheme_->symmetric ? torch::Tensor() : rows_from(ck_, mod + ".weight_zero_point", r0, n),
             torch::Tensor()};
  if (const core::TensorInfo* g = ck_.find(mod + ".weight_g_idx")) {
    auto gi = torch::empty({g->numel()}, g->dtype == core::DType::kI32 ? torch::kInt32 : torch::kInt64);
    std::memcpy(gi.data_ptr(), ck_.data(*g), size_t(g->nbytes));
    qw.g_idx = gi.to(torch::kInt64);
  }
  return qw.dequantize();
}

RowStats::RowStats(uint64_t n)
    : max(n, -std::numeric_limits<double>::infinity()), sum(n, 0.0), target(n, 0.0),
      best(n, -std::numeric_limits<float>::infinity()), arg(n, -1) {}

void RowStats::add(uint64_t r0, const torch::Tensor& logits, int64_t v0, const torch::Tensor& targets) {
  const int64_t nv = logits.size(1);
  const auto [bmax, barg] = logits.max(1);
  const torch::Tensor bsum = (logits - bmax.unsqueeze(1)).exp().sum(1);
  const torch::Tensor tgt = targets - v0;
  const torch::Tensor in_block = (tgt >= 0).logical_and(tgt < nv);
  const torch::Tensor tl = logits.gather(1, tgt.clamp(0, nv - 1).unsqueeze(1)).squeeze(1);
  const float* mx = bmax.data_ptr<float>();
  const int64_t* ag = barg.data_ptr<int64_t>();
  const float* sm = bsum.data_ptr<float>();
  const bool* ib = in_block.data_ptr<bool>();
  const float* tv = tl.data_ptr<float>();
  for (int64_t r = 0; r < logits.size(0); ++r) {
    const uint64_t k = r0 + uint64_t(r);
    const double m_new = std::max(max[k], double(mx[r]));
    sum[k] = sum[k] * std::exp(max[k] - m_new) + double(sm[r]) * std::exp(double(mx[r]) - m_new);
    max[k] = m_new;
    if (mx[r] > best[k]) {  // strictly: the lowest index wins ties, as argmax does
      best[k] = mx[r];
      arg[k] = v0 + ag[r];
    }
    if (ib[r]) target[k] = tv[r];
  }
}

torch::Tensor states_embed(const core::ModelConfig& c, const core::Checkpoint& ck,
                           const torch::Tensor& ids, core::ScratchBuffer& states) {
  const int64_t N = ids.size(0), T = ids.size(1), H = c.hidden_size;
  torch::Tensor X = torch::from_blob(states.data(), {N, T, H}, torch::kFloat32);
  const uint64_t seq_bytes = uint64_t(T * H) * sizeof(float);
  for (int64_t n = 0; n < N; ++n) {
    embed_rows(c, ck, ids.narrow(0, n, 1), X.narrow(0, n, 1));
    states.release(uint64_t(n) * seq_bytes, seq_bytes);
  }
  return X;
}

int64_t head_block_rows(int64_t hidden, int64_t rows, int64_t requested) {
  if (requested > 0) return requested;
  const int64_t budget = (int64_t(32) << 20) / int64_t(sizeof(float));
  return std::max<int64_t>(64, budget / std::max<int64_t>(hidden, rows) / 8 * 8);
}

struct LayerProbes::Impl {
  Impl(const std::string& dir, std::vector<int32_t> toks, const StreamedEvalOptions& opt)
      : o(opt), tokens(std::move(toks)), p(plan_for(tokens.size(), o)), m(dir),
        ref(m, p.batches, p.windows, tokens.data(), o), s(m, p.batches, p.windows, tokens.data(), o),
        t(m, p.batches, p.windows, tokens.data(), o), rows(predictions_of(p.batches)) {}
  StreamedEvalOptions o;
  std::vector<int32_t> tokens;
  Plan p;
  LayerStream m;
  Hidden ref, s, t;  // the float model's final states; its states at the current layer; a probe's
  uint64_t rows;  // predictions scored
  std::unique_ptr<RowStats> rr;
};

LayerProbes::LayerProbes(const std::string& model_dir, std::vector<int32_t> tokens,
                         const StreamedEvalOptions& o)
    : p_(std::make_unique<Impl>(model_dir, std::move(tokens), o)) {
  torch::NoGradGuard ng;
  Impl& x = *p_;
  StreamedEvalOptions quiet = o;
  quiet.progress = nullptr;
  layers_through(x.m, x.ref, quiet);
  x.rr = std::make_unique<RowStats>(x.rows);
  head_stats(x.m, x.ref, x.p.batches, x.p.windows, x.tokens.data(), o, *x.rr);
  x.s.embed();
}

LayerProbes::~LayerProbes() = default;

double LayerProbes::kl_with(int64_t i, DecoderLayerImpl& layer) {
  torch::NoGradGuard ng;
  Impl& x = *p_;
  x.t.copy_from(x.s);
  x.t.layer(layer);
  for (int64_t j = i + 1; j < x.m.config().num_layers; ++j) x.t.layer(j);
  x.t.final_norm();
  RowStats rs(x.rows);
  head_stats(x.m, x.t, x.p.batches, x.p.windows, x.tokens.data(), x.o, rs);
  const double kl = head_kl(x.m, x.t, rs, x.m, x.ref, *x.rr, x.p.batches, x.o);
  return x.rows ? kl / double(x.rows) : 0.0;
}

void LayerProbes::advance(int64_t i) {
  torch::NoGradGuard ng;
  p_->s.layer(i);
}

StreamedEval nll_streamed(const std::string& model_dir, const int32_t* tokens, uint64_t n,
                          const StreamedEvalOptions& o) {
  torch::NoGradGuard ng;
  const Plan p = plan_for(n, o);
  const LayerStream m(model_dir);
  Hidden h(m, p.batches, p.windows, tokens, o);
  layers_through(m, h, o);
  const uint64_t rows = predictions_of(p.batches);
  RowStats rs(rows);
  head_stats(m, h, p.batches, p.windows, tokens, o, rs);
  StreamedEval r;
  for (uint64_t k = 0; k < rows; ++k) r.nll_sum += rs.lse(k) - rs.target[k];
  r.scored = rows;
  r.states_bytes = h.buffer().size();
  r.states_spilled = h.buffer().spilled();
  r.bytes_read = m.bytes();
  return r;
}

StreamedEval compare_streamed(const std::string& model_dir, const std::string& reference_dir,
                              const int32_t* tokens, uint64_t n, const StreamedEvalOptions& o) {
  torch::NoGradGuard ng;
  const Plan p = plan_for(n, o);
  const LayerStream m(model_dir), ref(reference_dir);
  const core::ModelConfig &a = m.config(), &b = ref.config();
  if (a.vocab_size != b.vocab_size || a.hidden_size != b.hidden_size) {
    throw Error(StatusCode::kInvalidInput,
                model_dir + " and " + reference_dir + " differ in vocabulary or hidden size");
  }
  Hidden h(m, p.batches, p.windows, tokens, o), hr(ref, p.batches, p.windows, tokens, o);
  h.embed();
  hr.embed();
  const int64_t L = std::max(a.num_layers, b.num_layers);
  for (int64_t i = 0; i < L; ++i) {  // side by side; depth-pruned models have fewer layers
    if (i < a.num_layers) h.layer(i);
    if (i < b.num_layers) hr.layer(i);
    if (o.progress) o.progress(i + 1, L);
  }
  h.final_norm();
  hr.final_norm();
  const uint64_t rows = predictions_of(p.batches);
  RowStats rs(rows), rr(rows);
  head_stats(m, h, p.batches, p.windows, tokens, o, rs);
  head_stats(ref, hr, p.batches, p.windows, tokens, o, rr);
  StreamedEval r;
  for (uint64_t k = 0; k < rows; ++k) {
    r.nll_sum += rs.lse(k) - rs.target[k];
    r.ref_nll_sum += rr.lse(k) - rr.target[k];
    r.top1_same += rs.arg[k] == rr.arg[k];
  }
  r.kl_sum = head_kl(m, h, rs, ref, hr, rr, p.batches, o);
  r.scored = rows;
  r.states_bytes = h.buffer().size() + hr.buffer().size();
  r.states_spilled = h.buffer().spilled() || hr.buffer().spilled();
  r.bytes_read = m.bytes() + ref.bytes();
  return r;
}

}  // namespace shrink::train
