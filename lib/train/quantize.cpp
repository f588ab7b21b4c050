// Int8 post-training quantization: the tensor ops (quant_ops.h) and the `shrink quantize`
// driver (quantize.h). See the headers for the design.
#include "train/quantize.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <regex>

#include "core/dataset.h"
#include "core/dtype.h"
#include "core/fs.h"
#include "core/progress.h"
#include "train/api.h"
#include "train/distill.h"
#include "train/obs.h"
#include "train/quant_ops.h"
#include "train/streamed.h"
#include "train/model_files.h"
#include "train/quantize_common.h"
#include "core/tensor_blocks.h"

namespace shrink::train {

namespace fs = std::filesystem;

namespace {
[[noreturn]] void bad(const std::string& msg) { throw Error(StatusCode::kInvalidInput, msg); }
}  // namespace

// ---- Tensor ops -------------------------------------------------------------------------------------

namespace {
int qmax_of(int bits) {
  return bits == 4 ? core::kQMax4 : core::kQMax;
}
int qmin_of(int bits) {
  return bits == 4 ? core::kQMin4 : -core::kQMax;
}
// One row's quantization group of n weights (as weight_qparams computes a group): the scale,
// and with `zp` the zero point (asymmetric, 4 bits).
void group_qparams(const float* v, int64_t n, int bits, int8_t* zp, float* scale) {
  if (!zp) {
    float amax = 0.0f;
    for (int64_t t = 0; t < n; ++t) amax = std::max(amax, std::fabs(v[t]));
    *scale = amax > 0 ? amax / float(qmax_of(bits)) : 1.0f;
    return;
  }
  float lo = 0.0f, hi = 0.0f;
  for (int64_t t = 0; t < n; ++t) {
    lo = std::min(lo, v[t]);
    hi = std::max(hi, v[t]);
  }
  const float range = hi - lo;
  *scale = range > 0 ? range / float(core::kQMax4 - core::kQMin4) : 1.0f;
  *zp = int8_t(std::clamp(std::nearbyint(float(core::kQMin4) - lo / *scale), float(core::kQMin4),
                          float(core::kQMax4)));
}
}  // namespace

std::pair<torch::Tensor, torch::Tensor> quantize_weight(const torch::Tensor& w, int64_t gs,
                                                        int bits) {
  auto wf = w.detach().to(torch::kFloat32);
  const int64_t out = wf.size(0), in = wf.size(1);
  auto view = gs > 0 ? wf.reshape({out, in / gs, gs}) : wf.reshape({out, 1, in});
  auto amax = view.abs().amax(-1);  // [out, groups]
  auto scale = torch::where(amax > 0, amax / float(qmax_of(bits)), torch::ones_like(amax));
  auto inv = 1.0f / scale;  // x * (1/scale): the runtime's arithmetic
  auto q = torch::round(view * inv.unsqueeze(-1)).clamp(qmin_of(bits), qmax_of(bits));
  return {q.reshape({out, in}).to(torch::kInt8), scale.contiguous()};
}

torch::Tensor dequantize_weight(const torch::Tensor& q, const torch::Tensor& scale,
                                const torch::Tensor& zp) {
  const int64_t out = q.size(0), in = q.size(1), groups = scale.size(1);
  auto v = q.to(torch::kFloat32).reshape({out, groups, in / groups});
  if (zp.defined()) v = v - zp.to(torch::kFloat32).unsqueeze(-1);
  return (v * scale.to(torch::kFloat32).unsqueeze(-1)).reshape({out, in});
}

std::pair<torch::Tensor, torch::Tensor> weight_qparams(const torch::Tensor& w, int64_t gs, int bits,
                                                       bool asym, const torch::Tensor& clip) {
  auto wf = w.detach().to(torch::kFloat32);
  const int64_t out = wf.size(0), in = wf.size(1);
  auto view = gs > 0 ? wf.reshape({out, in / gs, gs}) : wf.reshape({out, 1, in});
  if (!asym) {
    auto amax = view.abs().amax(-1);  // [out, groups]
    if (clip.defined()) amax = amax * clip;
    return {
        torch::where(amax > 0, amax / float(qmax_of(bits)), torch::ones_like(amax)).contiguous(),
        torch::Tensor()};
  }
  if (bits != 4) throw Error(StatusCode::kInternal, "asymmetric weights need 4 bits");
  auto lo = view.amin(-1).clamp_max(0.0), hi = view.amax(-1).clamp_min(0.0);
  if (clip.defined()) {
    lo = lo * clip;
    hi = hi * clip;
  }
  auto range = hi - lo;
  auto scale =
      torch::where(range > 0, range / float(core::kQMax4 - core::kQMin4), torch::ones_like(range));
  auto zp = torch::round(float(core::kQMin4) - lo / scale).clamp(core::kQMin4, core::kQMax4);
  return {scale.contiguous(), zp.to(torch::kInt8).contiguous()};
}

torch::Tensor quantize_with_params(const torch::Tensor& w, const torch::Tensor& scale,
                                   const torch::Tensor& zp, int bits) {
  auto wf = w.detach().to(torch::kFloat32);
  const int64_t out = wf.size(0), in = wf.size(1), groups = scale.size(1);
  auto inv = 1.0f / scale.to(torch::kFloat32);
  auto v = wf.reshape({out, groups, in / groups}) * inv.unsqueeze(-1);
  if (zp.defined()) v = v + zp.to(torch::kFloat32).unsqueeze(-1);
  return torch::round(v).clamp(qmin_of(bits), qmax_of(bits)).reshape({out, in}).to(torch::kInt8);
}

torch::Tensor QWeight::dequantize() const {
  if (!g_idx.defined()) return dequantize_weight(q, scale, zp);
  // Columns sorted by group are contiguous groups; dequantize there and put them back.
  auto order = std::get<1>(g_idx.to(torch::kInt64).sort(/*stable=*/true, 0, false));
  return dequantize_weight(q.index_select(1, order), scale, zp)
      .index_select(1, torch::argsort(order));
}

QWeight rtn_quantize(const torch::Tensor& w, int64_t gs, int bits, bool asym) {
  if (!asym) {
    auto [q, s] = quantize_weight(w, gs, bits);
    return {q, s, torch::Tensor()};
  }
  auto [s, z] = weight_qparams(w, gs, bits, true);
  return {quantize_with_params(w, s, z, bits), s, z};
}

QWeight gptq_quantize(const torch::Tensor& w, const torch::Tensor& H, const GptqOptions& o) {
  torch::NoGradGuard ng;
  const int64_t rows = w.size(0), cols = w.size(1), gs = o.group_size;
  if (gs < 0 || (gs > 0 && (cols % gs != 0 || o.block_size % gs != 0)) || o.block_size < 1) {
    bad("GPTQ: --block-size " + std::to_string(o.block_size) + " must be a positive multiple of the group size " +
        std::to_string(gs) + ", which must divide the input width " + std::to_string(cols));
  }
  if (H.dim() != 2 || H.size(0) != cols || H.size(1) != cols) {
    throw Error(StatusCode::kInternal, "GPTQ: Hessian shape does not match the weight's input width");
  }
  auto W = w.detach().to(torch::kFloat32).clone();
  auto Hd = H.to(torch::kFloat32);
  torch::Tensor perm, inv;
  if (o.act_order) {
    perm = std::get<1>(Hd.diagonal().sort(/*stable=*/true, 0, /*descending=*/true));
    inv = torch::argsort(perm);
    W = W.index_select(1, perm);
    Hd = Hd.index_select(0, perm).index_select(1, perm);
  }
  const auto U = obs_inverse_factor(Hd, o.damp);
  Hd = torch::Tensor();
  // The scales (zero points) as stored, [rows, groups]: the original weights' (act order without
  // groups, per channel), or each group's own from its weights as updated so far ("lazy").
  auto [scale, zp] = weight_qparams(w, gs, o.bits, o.asym);
  const bool lazy = gs > 0 && (!o.act_order || o.act_order_groups);
  const int64_t groups = scale.size(1);
  std::vector<int64_t> col_group(size_t(cols), 0);  // column j (processing order) -> its group
  if (gs > 0) {
    const int64_t* pp = o.act_order ? perm.data_ptr<int64_t>() : nullptr;
    for (int64_t j = 0; j < cols; ++j) col_group[size_t(j)] = lazy ? j / gs : (pp ? pp[j] : j) / gs;
  }
  W = W.contiguous();
  auto Q = torch::empty({rows, cols}, torch::kInt8);
  float* wp = W.data_ptr<float>();
  const float* up = U.data_ptr<float>();
  float* sp = scale.data_ptr<float>();
  int8_t* zpp = o.asym ? zp.data_ptr<int8_t>() : nullptr;
  int8_t* qp = Q.data_ptr<int8_t>();
  const float qlo = float(qmin_of(o.bits)), qhi = float(qmax_of(o.bits));
  for (int64_t i1 = 0; i1 < cols; i1 += o.block_size) {
    const int64_t i2 = std::min(i1 + o.block_size, cols), cnt = i2 - i1;
    auto err = torch::empty({rows, cnt}, torch::kFloat32);
    obs_block_sweep(wp + i1, cols, rows, cnt, up + i1 * cols + i1, cols, err.data_ptr<float>(),
                    [&](int64_t r, int64_t i, const float* row) {
                      const int64_t j = i1 + i, g = col_group[size_t(j)];
                      float* sr = sp + r * groups;
                      int8_t* zr = zpp ? zpp + r * groups : nullptr;
                      if (lazy && j % gs == 0) group_qparams(row + i, gs, o.bits, zr ? zr + g : nullptr, sr + g);
                      const float sc = sr[g], z = zr ? float(zr[g]) : 0.0f;
                      const float q = std::clamp(std::nearbyint(row[i] * (1.0f / sc) + z), qlo, qhi);
                      qp[r * cols + j] = int8_t(q);
                      return (q - z) * sc;
                    });
    if (i2 < cols) {
      W.narrow(1, i2, cols - i2).addmm_(err, U.narrow(0, i1, cnt).narrow(1, i2, cols - i2), 1.0, -1.0);
    }
  }
  if (o.act_order) Q = Q.index_select(1, inv);
  QWeight r{Q, scale.contiguous(), o.asym ? zp.contiguous() : torch::Tensor(),
            torch::Tensor()};
  if (o.act_order && o.act_order_groups && gs > 0) {  // column perm[i] is in group i / gs
    r.g_idx = torch::div(torch::arange(cols, torch::kInt64), gs, "floor")
                  .index_select(0, inv)
                  .to(torch::kInt32)
                  .contiguous();
  }
  return r;
}

double layer_output_error(const torch::Tensor& w, const torch::Tensor& wq, const torch::Tensor& H) {
  auto e = w.to(torch::kFloat64) - wq.to(torch::kFloat64);
  return (e.matmul(H.to(torch::kFloat64)) * e).sum().item<double>();
}

torch::Tensor quantize_with_scale(const torch::Tensor& w, const torch::Tensor& scale, int bits) {
  return quantize_with_params(w, scale, torch::Tensor(), bits);
}

namespace {

// ||X e^T||^2 = sum of e H e^T for e = w - wq, in float32 (H given as float32): the candidates'
// errors differ far above float32's rounding, and float64 GEMMs were most of the search's time.
double output_error_f32(const torch::Tensor& w, const torch::Tensor& wq, const torch::Tensor& H32) {
  auto e = w.to(torch::kFloat32) - wq.to(torch::kFloat32);
  return (e.matmul(H32) * e).sum(1).to(torch::kFloat64).sum().item<double>();
}

}  // namespace

AwqScale awq_search_scale(const std::vector<torch::Tensor>& ws, const torch::Tensor& x_mean,
                          const torch::Tensor& H, int64_t gs, int bits, int grid, int64_t tied,
                          int64_t head_dim, bool asym) {
  torch::NoGradGuard ng;
  auto H32 = H.to(torch::kFloat32);
  const int64_t in = x_mean.size(0);
  auto mx = x_mean.to(torch::kFloat64);
  // wm: per input channel, the mean over every output row of |w| / max|w| of its group.
  auto wcat = torch::cat(ws, 0).detach().to(torch::kFloat64);
  const int64_t g = gs > 0 ? gs : in;
  auto wv = wcat.abs().reshape({wcat.size(0), in / g, g});
  auto wm = (wv / wv.amax(-1, true).clamp_min(1e-12)).reshape({wcat.size(0), in}).mean(0);
  if (tied > 1) {  // channels [kv, tied, head_dim]: average over the tied heads
    auto tie = [&](const torch::Tensor& v) {
      const std::vector<int64_t> shape = {in / (tied * head_dim), tied, head_dim};
      return v.reshape(shape).mean(1, true).expand(shape).reshape({in}).contiguous();
    };
    mx = tie(mx);
    wm = tie(wm);
  }
  AwqScale best;
  best.s = torch::ones({in}, torch::kFloat32);
  best.err = INFINITY;
  for (bool duo : {false, true}) {
    for (int k = 0; k < grid; ++k) {
      const double r = double(k) / grid;
      auto s = mx.pow(r);
      if (duo) s = s / (wm.pow(1.0 - r) + 1e-4);
      s = s.clamp_min(1e-4);
      s = s / (s.max() * s.min()).sqrt();
      auto s32 = s.to(torch::kFloat32);
      double err = 0;
      for (const auto& w : ws) {
        auto wf = w.detach().to(torch::kFloat32);
        auto q = rtn_quantize(wf * s32.unsqueeze(0), gs, bits, asym);
        err += output_error_f32(wf, q.dequantize() / s32.unsqueeze(0), H32);
      }
      if (!duo && k == 0) best.err_rtn = err;  // s = 1: round to nearest
      if (err < best.err) {
        best.err = err;
        best.ratio = r;
        best.duo = duo;
        best.s = s32;
      }
    }
  }
  return best;
}

torch::Tensor awq_clip_scale(const torch::Tensor& w, const torch::Tensor& H, int64_t gs, int bits,
                             int grid) {
  return awq_clip_quantize(w, H, gs, bits, false, grid).scale;
}

QWeight awq_clip_quantize(const torch::Tensor& w, const torch::Tensor& H, int64_t gs, int bits,
                          bool asym, int grid) {
  torch::NoGradGuard ng;
  using torch::indexing::Slice;
  auto wf = w.detach().to(torch::kFloat32);
  auto H32 = H.to(torch::kFloat32);
  const int64_t out = wf.size(0), in = wf.size(1), g = gs > 0 ? gs : in, groups = in / g;
  auto [best_scale, best_zp] = weight_qparams(wf, gs, bits, asym);
  auto best_err = torch::full({out, groups}, INFINITY, torch::kFloat64);
  for (int k = 0; k < grid / 2; ++k) {  // c = 1, 0.95, .., 0.55
    const float c = 1.0f - float(k) / float(grid);
    auto [scale, zp] = weight_qparams(wf, gs, bits, asym, torch::full({1}, c));
    auto q = quantize_with_params(wf, scale, zp, bits);
    auto e = (wf - dequantize_weight(q, scale, zp)).reshape({out, groups, g});
    auto err = torch::empty({out, groups}, torch::kFloat64);
    for (int64_t j = 0; j < groups; ++j) {
      auto ej = e.select(1, j);
      auto Hj = H32.index({Slice(j * g, (j + 1) * g), Slice(j * g, (j + 1) * g)});
      err.select(1, j).copy_((ej.matmul(Hj) * ej).sum(1));
    }
    auto better = err < best_err;
    best_err = torch::where(better, err, best_err);
    best_scale = torch::where(better, scale, best_scale);
    if (asym) best_zp = torch::where(better, zp, best_zp);
  }
  best_scale = best_scale.contiguous();
  if (asym) best_zp = best_zp.contiguous();
  return {quantize_with_params(wf, best_scale, best_zp, bits), best_scale, best_zp};
}

torch::Tensor fake_quant_per_token(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto amax = xf.abs().amax(-1, /*keepdim=*/true);
  auto scale = amax / float(core::kQMax);
  auto inv = torch::where(amax > 0, 1.0f / scale, torch::zeros_like(scale));
  auto q = torch::round(xf * inv).clamp(-core::kQMax, core::kQMax);
  return (q * scale).to(x.scalar_type());
}

torch::Tensor fake_quant_static(const torch::Tensor& x, float scale) {
  auto xf = x.to(torch::kFloat32);
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  auto q = torch::round(xf * inv).clamp(-core::kQMax, core::kQMax);
  return (q * scale).to(x.scalar_type());
}

torch::Tensor FakeQuantTap::transform(const std::string& module, const torch::Tensor& x) {
  if (!modules.count(module)) return x;
  if (mode == "static") {
    auto it = input_scales.find(module);
    if (it == input_scales.end()) {
      throw Error(StatusCode::kInternal, "no input scale for " + module);
    }
    return fake_quant_static(x, it->second);
  }
  return fake_quant_per_token(x);
}

namespace {

torch::Tensor smooth_factor(const torch::Tensor& a, const torch::Tensor& b, double alpha) {
  auto s = a.to(torch::kFloat64).pow(alpha) / b.to(torch::kFloat64).pow(1.0 - alpha);
  auto ok = (a > 0).logical_and(b > 0);
  s = torch::where(ok, s.clamp_min(1e-5), torch::ones_like(s));
  return s.to(torch::kFloat32);
}

}  // namespace

void scale_layer_inputs(DecoderLayerImpl& L, const std::map<std::string, torch::Tensor>& s,
                        int64_t nh, int64_t nkv, int64_t hd) {
  torch::NoGradGuard ng;
  auto& at = *L.self_attn;
  auto& mlp = *L.mlp;
  {  // q/k/v: fold 1/s into input_layernorm.
    const auto& f = s.at("qkv");
    L.input_layernorm->weight.div_(f);
    for (auto* lin : {&at.q_proj, &at.k_proj, &at.v_proj}) (*lin)->weight.mul_(f.unsqueeze(0));
  }
  {  // gate/up: fold into post_attention_layernorm.
    const auto& f = s.at("gate_up");
    L.post_attention_layernorm->weight.div_(f);
    mlp.gate_proj->weight.mul_(f.unsqueeze(0));
    mlp.up_proj->weight.mul_(f.unsqueeze(0));
  }
  {  // o_proj input = attention output; channel (h, d) comes from v channel (h / rep, d), so one
     // factor per (kv group, d), shared by the group's query heads, folds into v_proj rows.
    const int64_t rep = nh / nkv;
    auto f = s.at("o").reshape({nkv, hd});
    at.v_proj->weight.div_(f.reshape({nkv * hd, 1}));
    if (at.v_proj->bias.defined()) at.v_proj->bias.div_(f.reshape({nkv * hd}));
    auto fx = f.unsqueeze(1).expand({nkv, rep, hd}).reshape({nh * hd});
    at.o_proj->weight.mul_(fx.unsqueeze(0));
  }
  {  // down_proj input = silu(gate) * up: fold 1/s into up_proj rows.
    const auto& f = s.at("down");
    mlp.up_proj->weight.div_(f.unsqueeze(1));
    mlp.down_proj->weight.mul_(f.unsqueeze(0));
  }
}

void smoothquant_layer(DecoderLayerImpl& L, const std::map<std::string, torch::Tensor>& act_max,
                       double alpha, int64_t nh, int64_t nkv, int64_t hd) {
  torch::NoGradGuard ng;
  auto& at = *L.self_attn;
  auto& mlp = *L.mlp;
  const int64_t rep = nh / nkv;
  std::map<std::string, torch::Tensor> s;
  auto bq = torch::cat({at.q_proj->weight, at.k_proj->weight, at.v_proj->weight}, 0).abs().amax(0);
  s["qkv"] = smooth_factor(act_max.at("qkv"), bq, alpha);
  auto bg = torch::cat({mlp.gate_proj->weight, mlp.up_proj->weight}, 0).abs().amax(0);
  s["gate_up"] = smooth_factor(act_max.at("gate_up"), bg, alpha);
  auto ao = act_max.at("o").reshape({nkv, rep, hd}).amax(1);
  auto bo = at.o_proj->weight.abs().amax(0).reshape({nkv, rep, hd}).amax(1);
  s["o"] = smooth_factor(ao, bo, alpha).reshape({nkv * hd});
  s["down"] = smooth_factor(act_max.at("down"), mlp.down_proj->weight.abs().amax(0), alpha);
  scale_layer_inputs(L, s, nh, nkv, hd);
}

namespace {

torch::Tensor tensor_from(const core::Checkpoint& ck, const std::string& name) {
  const core::TensorInfo* t = ck.find(name);
  if (!t) throw Error(StatusCode::kInvalidInput, ck.dir() + ": missing tensor " + name);
  std::vector<int64_t> shape(t->shape.begin(), t->shape.end());
  if (t->dtype == core::DType::kI8) {
    auto out = torch::empty(shape, torch::kInt8);
    std::memcpy(out.data_ptr(), ck.data(*t), size_t(t->nbytes));
    return out;
  }
  if (t->dtype == core::DType::kI32 || t->dtype == core::DType::kI64) {  // g_idx
    auto out = torch::empty(shape, t->dtype == core::DType::kI32 ? torch::kInt32 : torch::kInt64);
    std::memcpy(out.data_ptr(), ck.data(*t), size_t(t->nbytes));
    return out;
  }
  auto out = torch::empty(shape, torch::kFloat32);
  core::convert_to_f32(t->dtype, ck.data(*t), out.data_ptr<float>(), t->numel());
  return out;
}

// The first module of a linear's input group: the name the fake-quant tap sees.
std::string group_head(const std::string& module) {
  for (const char* s : {"k_proj", "v_proj"}) {
    size_t p = module.rfind(s);
    if (p != std::string::npos && p + 6 == module.size()) return module.substr(0, p) + "q_proj";
  }
  size_t p = module.rfind("up_proj");
  if (p != std::string::npos && p + 7 == module.size() && (p == 0 || module[p - 1] == '.')) {
    return module.substr(0, p) + "gate_proj";
  }
  return module;
}

}  // namespace

std::shared_ptr<FakeQuantTap> fake_quant_tap_for(const core::QuantScheme& s) {
  throw_if_error(core::quant_scheme_check_channel_or_group(s));
  auto tap = std::make_shared<FakeQuantTap>();
  tap->mode = s.activations;
  return tap;
}

void quant_param_load(const core::Checkpoint& ck, const core::QuantScheme& s, const std::string& name,
                      torch::Tensor& dst, FakeQuantTap& tap) {
  torch::NoGradGuard ng;
  const core::TensorInfo* t = ck.find(name);
  if (!t) throw Error(StatusCode::kInvalidInput, ck.dir() + ": missing tensor " + name);
  if (t->dtype != core::DType::kI8) {
    dst.copy_(tensor_from(ck, name).reshape(dst.sizes()));
    ck.release(*t, 0, t->nbytes);
    return;
  }
  const std::string mod = name.substr(0, name.size() - 7);
  QWeight qw{tensor_from(ck, name), tensor_from(ck, mod + ".weight_scale"),
             s.symmetric ? torch::Tensor() : tensor_from(ck, mod + ".weight_zero_point"),
             torch::Tensor()};
  if (ck.find(mod + ".weight_g_idx")) {  // GPTQ act-order groups: validated, then kept
    auto g = tensor_from(ck, mod + ".weight_g_idx").to(torch::kInt64).contiguous();
    const int64_t* gp = g.data_ptr<int64_t>();
    auto o = core::group_order_from_g_idx(std::vector<int64_t>(gp, gp + g.numel()),
                                          s.weight_strategy == "group" ? s.group_size : qw.q.size(1),
                                          ck.dir() + ": " + mod + ".weight_g_idx");
    if (!o.is_ok()) throw Error(o.status().code(), o.status().message());
    if (!o->empty()) qw.g_idx = g;  // not the contiguous grouping
  }
  dst.copy_(qw.dequantize());
  ck.release(*t, 0, t->nbytes);
  tap.modules.insert(group_head(mod));
  if (s.activations == "static") {
    tap.input_scales[group_head(mod)] =
        tensor_from(ck, mod + ".input_scale").reshape({-1})[0].item<float>();
  }
}

void quant_load_into(CausalLM& m, const core::Checkpoint& ck, const core::QuantScheme& s) {
  std::shared_ptr<FakeQuantTap> tap = fake_quant_tap_for(s);
  for (auto& p : m->named_parameters()) quant_param_load(ck, s, p.key(), p.value(), *tap);
  if (s.activations != "none") {
    m->owned_tap = tap;
    m->set_tap(tap.get());
  }
}

// ---- Validation ---------------------------------------------------------------------------------------

void quantize_validate(const QuantizeOptions& o) {
  if (o.model.empty()) bad("a model directory is required");
  if (o.out.empty()) bad("--out is required");
  if (o.scheme != "w8a8" && o.scheme != "w8a16" && o.scheme != "w4a16" && o.scheme != "w4a8") {
    bad("--scheme '" + o.scheme + "': expected w8a8, w8a16, w4a16 or w4a8");
  }
  const bool four = o.scheme == "w4a16" || o.scheme == "w4a8";
  if (o.bits != 8 && !(o.bits == 4 && four)) {
    bad("--bits " + std::to_string(o.bits) + " is not supported with --scheme " + o.scheme +
        "; expected 8 (4-bit weights: --scheme w4a16 or w4a8)");
  }
  if (head_targeted(o)) {
    if (o.scheme != "w8a16" && o.scheme != "w4a16") {
      bad("--targets selects lm_head: only the weight-only schemes (w8a16, w4a16) quantize the "
          "head; with --scheme " + o.scheme + " its input activations would be quantized too");
    }
    if (o.load_model) {
      bad("--targets selects lm_head: --load-model does not quantize the head; leave --load-model "
          "out (the model-free and layer-by-layer paths do)");
    }
  }
  if (o.scheme == "w8a8" && o.activations != "dynamic" && o.activations != "static") {
    bad("--activations '" + o.activations + "': expected dynamic (per token) or static (per tensor)");
  }
  if (o.scheme == "w4a8" && o.activations != "dynamic") {
    bad("--activations '" + o.activations + "': w4a8 quantizes activations per token at run time "
        "(dynamic); static per-tensor scales are for w8a8");
  }
  const std::string& ob = o.observer;
  if (ob != "minmax" && ob != "ema" && ob != "percentile" && ob != "mse" && ob != "entropy") {
    bad("--observer '" + ob + "' is unknown; expected minmax, ema, percentile, mse or entropy");
  }
  if (!(o.percentile > 50 && o.percentile <= 100)) bad("--percentile must be in (50, 100]");
  if (o.group_size != 0 && o.group_size != 32 && o.group_size != 64 && o.group_size != 128) {
    bad("--group-size " + std::to_string(o.group_size) +
        ": expected 32, 64 or 128 (0: per channel" +
        (four ? "; " + o.scheme + " picks 128, 64 or 32 by default)" : ")"));
  }
  if (o.group_size != 0 && o.scheme == "w8a8") {
    bad("--group-size applies to w8a16; w8a8 uses one scale per output channel");
  }
  if (!o.smoothquant.empty() && o.smoothquant != "auto") {
    double a = -1;
    try {
      size_t used = 0;
      a = std::stod(o.smoothquant, &used);
      if (used != o.smoothquant.size()) a = -1;
    } catch (const std::exception&) {
      a = -1;
    }
    if (!(a >= 0 && a <= 1)) bad("--smoothquant '" + o.smoothquant + "': expected alpha in [0, 1] or auto");
  }
  if (o.method != "rtn" && o.method != "gptq") {
    bad("--method '" + o.method +
        "': expected rtn (round to nearest) or gptq; AWQ is --awq, with either");
  }
  if (o.block_size < 1 || (o.group_size > 0 && o.block_size % o.group_size != 0) ||
      (four && o.block_size % 128 != 0)) {
    bad("--block-size " + std::to_string(o.block_size) + ": expected a positive multiple of --group-size (" +
        std::to_string(o.group_size) + ")");
  }
  if (!(o.damp >= 0 && o.damp <= 1)) bad("--damp must be in [0, 1]");
  if (o.act_order && o.method != "gptq") bad("--act-order applies to --method gptq");
  if (o.act_order_groups && !o.act_order) {
    bad("--act-order-groups needs --act-order (it chooses how act-order forms its groups)");
  }
  if (o.act_order_groups && o.group_size == 0 && !four) {
    bad("--act-order-groups needs group-wise weights (--group-size 32, 64 or 128, or 4 bits)");
  }
  if (o.awq && (o.scheme == "w8a8" || o.scheme == "w4a8")) {
    bad("--awq is for weight-only schemes (w8a16, w4a16); " + o.scheme +
        " moves activation outliers with --smoothquant");
  }
  if (o.awq && !o.smoothquant.empty())
    bad("--awq and --smoothquant both rescale input channels; pick one");
  if (!o.awq_clip && !o.awq) bad("--awq-no-clip applies to --awq");
  if (o.asym && !four) {
    bad("--asym (zero points) is for --scheme w4a16 or w4a8; 8-bit weights are symmetric");
  }
  try {
    std::regex r1(o.targets);
    if (!o.ignore.empty()) std::regex r2(o.ignore);
  } catch (const std::regex_error& e) {
    bad(std::string("--targets/--ignore: bad regex: ") + e.what());
  }
  if (o.calib_samples < 1 || o.calib_len < 2) bad("--calib-samples must be >= 1 and --calib-len >= 2");
  if (auto m = core::bytes_parse(o.max_memory); !m.is_ok()) bad("--max-memory: " + m.status().message());
  if (o.keep_float < 0) bad("--keep-float must be >= 0");
  if (o.keep_float > 0 && !o.sensitivity) bad("--keep-float needs --sensitivity (it keeps the most sensitive modules)");
}

// ---- Driver --------------------------------------------------------------------------------------------

namespace {

struct GroupStats {
  torch::Tensor act_max;  // per input channel
  core::AbsHistogram hist{2048};
  double max = 0, ema = -1;
  HessianSum xtx;         // sum of x x^T (float32), for GPTQ and AWQ
  torch::Tensor abs_sum;  // sum of |x| per input channel (float64), for AWQ
  int64_t rows = 0;
};

// Collects per-input-group channel maxima and |x| histograms.
struct CalibTap : LinearTap {
  std::set<std::string> wanted;  // group-head module names
  bool histograms = false;
  bool hessian = false;
  bool means = false;
  std::map<std::string, GroupStats> stats;
  void on_input(const std::string& module, const torch::Tensor& x) override {
    if (!wanted.count(module)) return;  // only group heads are in `wanted`
    GroupStats& g = stats[module];
    auto f = x.detach().reshape({-1, x.size(-1)}).to(torch::kFloat32).contiguous();
    auto cm = f.abs().amax(0);
    g.act_max = g.act_max.defined() ? torch::maximum(g.act_max, cm) : cm;
    double bm = cm.max().item<double>();
    g.max = std::max(g.max, bm);
    g.ema = g.ema < 0 ? bm : g.ema + 0.01 * (bm - g.ema);
    if (histograms) g.hist.add(f.data_ptr<float>(), f.numel());
    // float32, as GPTQ's reference and llm-compressor keep it: float64 products were most of
    // GPTQ's time, and a float64 Hessian of the 8B shape's down_proj inputs takes 1.5 GiB.
    if (hessian) g.xtx.add(f);
    if (means) {
      auto s = f.abs().sum(0).to(torch::kFloat64);
      g.abs_sum = g.abs_sum.defined() ? g.abs_sum.add_(s) : s;
      g.rows += f.size(0);
    }
  }
};

double observe(const GroupStats& g, const QuantizeOptions& o) {
  double t = g.max;
  if (o.observer == "ema") t = g.ema;
  else if (o.observer == "percentile") t = core::observer_percentile(g.hist, o.percentile);
  else if (o.observer == "mse") t = core::observer_mse(g.hist);
  else if (o.observer == "entropy") t = core::observer_entropy(g.hist);
  return t > 0 ? t / double(core::kQMax) : 1.0;
}

struct EvalStats {
  double nll = 0, kl = 0, top1 = 0;
  uint64_t n = 0;
};

// NLL of `m` and KL(ref || m), top-1 agreement over the evaluation windows.
EvalStats evaluate(CausalLM& m, CausalLM& ref, const std::vector<int32_t>& tokens, int64_t seq_len) {
  torch::NoGradGuard ng;
  m->eval();
  ref->eval();
  EvalStats s;
  for (const core::EvalWindow& w : core::eval_windows(tokens.size(), seq_len)) {
    auto ids = torch::from_blob(const_cast<int32_t*>(tokens.data() + w.start), {1, w.len}, torch::kInt32)
                   .to(torch::kLong);
    auto in = ids.narrow(1, 0, w.len - 1), tgt = ids.narrow(1, 1, w.len - 1).reshape({-1});
    auto lq = m->forward(in).logits.reshape({w.len - 1, -1});
    auto lr = ref->forward(in).logits.reshape({w.len - 1, -1});
    s.nll += torch::nn::functional::cross_entropy(
                 lq, tgt, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                 .item<double>();
    s.kl += kd_forward_kl(lq, lr, 1.0).item<double>() * double(w.len - 1);
    s.top1 += (lq.argmax(-1) == lr.argmax(-1)).sum().item<double>();
    s.n += uint64_t(w.len - 1);
  }
  if (s.n) {
    s.nll /= double(s.n);
    s.kl /= double(s.n);
    s.top1 /= double(s.n);
  }
  return s;
}

// The quantization format resolved for this model: the scheme that config.json records, and the
// GPTQ settings.
struct QuantSetup {
  core::QuantScheme scheme;
  int bits = 8;
  int64_t group_size = 0;  // 0: per output channel
  bool act = false;        // activations are quantized (w8a8)...
  bool stat = false;       // ...with static per-tensor scales
  bool gptq = false;
  GptqOptions gopt;
};

QuantSetup quant_setup(const QuantizeOptions& o, const core::ModelConfig& cfg) {
  QuantSetup s;
  s.scheme = quant_scheme_for(o, cfg);
  s.bits = s.scheme.bits;
  s.group_size = s.scheme.group_size;
  s.act = s.scheme.activations != "none";
  s.stat = s.scheme.activations == "static";
  s.gptq = o.method == "gptq";
  s.gopt.group_size = s.group_size;
  s.gopt.bits = s.bits;
  s.gopt.asym = o.asym;
  s.gopt.block_size = o.block_size;
  s.gopt.damp = o.damp;
  s.gopt.act_order = o.act_order;
  s.gopt.act_order_groups = o.act_order_groups;
  return s;
}

// Tokens of one split of the data: calibration from train, evaluation from val (as `shrink eval`).
std::vector<int32_t> split_tokens(const QuantizeOptions& o, int64_t vocab_size,
                                  const std::string& split, uint64_t max) {
  core::TokenSource src;
  src.data = o.data.empty() ? core::kDefaultCorpus : o.data;
  src.tokenizer = o.tokenizer;
  src.split = split;
  src.max_tokens = max;
  return core::tokens_load(o.model, vocab_size, src).take_or_throw().tokens;
}

// The calibration sequences: ids [N, calib_len] int64.
torch::Tensor calibration_ids(const QuantizeOptions& o, int64_t vocab_size) {
  std::vector<int32_t> calib =
      split_tokens(o, vocab_size, "train", uint64_t(o.calib_samples * o.calib_len));
  const int64_t N = int64_t(calib.size()) / o.calib_len;
  if (N < 1) bad("too little calibration data for one sequence of --calib-len " + std::to_string(o.calib_len));
  calib.resize(size_t(N * o.calib_len));
  return torch::from_blob(calib.data(), {N, o.calib_len}, torch::kInt32).to(torch::kLong);
}

// The working set of quantize_run: the options and resolved format, the model being quantized
// (its parameters by name, RoPE tables for the calibration length) and what quantization has
// produced so far.
struct Quant {
  // Whole model: m holds every layer and params every parameter by its full name. Streaming: m
  // is null and params are the parameters of the layer in hand (Quant::hold).
  Quant(const QuantizeOptions& o, const QuantSetup& s, const core::ModelConfig& cfg, CausalLM m)
      : o(o), s(s), cfg(cfg), m(std::move(m)), alphas(size_t(cfg.num_layers), -1.0) {
    if (this->m) {
      params = this->m->named_parameters();
      this->m->set_tap(nullptr);  // also names every layer's modules for the taps
    }
    std::tie(cos, sin) = rope_tables_for(cfg, 0, o.calib_len);
    tap->mode = s.act ? s.scheme.activations : "dynamic";
  }
  const QuantizeOptions& o;
  const QuantSetup& s;
  const core::ModelConfig cfg;
  CausalLM m{nullptr};
  torch::OrderedDict<std::string, torch::Tensor> params;
  torch::Tensor cos, sin;

  std::map<std::string, torch::Tensor> float_w;  // module -> float weights (after smoothing)
  std::map<std::string, QWeight> qw;             // module -> quantized weights
  // Quantized groups and static input scales: the fake-quant activations of the model.
  std::shared_ptr<FakeQuantTap> tap = std::make_shared<FakeQuantTap>();
  std::vector<double> alphas;  // SmoothQuant's alpha per layer (-1: not smoothed)
  nlohmann::json gptq_modules = nlohmann::json::array();
  nlohmann::json awq_layers = nlohmann::json::array();
  // Summed ||X dW^T||^2 over the quantized linears: the scale search's round to nearest and its
  // winners (float coordinates); with clipping, the scaled weights unclipped and clipped.
  double awq_err_rtn = 0, awq_err_scaled = 0, awq_err_noclip = 0, awq_err_clip = 0;
  double err_rtn = 0, err_gptq = 0;  // summed ||X dW^T||^2 over the quantized modules

  torch::Tensor& weight(const std::string& mod) { return *params.find(mod + ".weight"); }
  // Streaming: layer i (as layer_load gives it) becomes the parameters in hand.
  void hold(DecoderLayerImpl& layer, int64_t i) {
    params = {};
    const std::string pre = "model.layers." + std::to_string(i) + ".";
    for (auto& p : layer.named_parameters()) params.insert(pre + p.key(), p.value());
  }
  // The calibration states' buffer (streaming; null otherwise): spilled to a file beyond
  // --max-memory, and then each batch is dropped from resident memory once used.
  core::ScratchBuffer* states = nullptr;
  void release(const torch::Tensor& batch) {
    if (!states || !states->spilled()) return;
    const uint8_t* p = static_cast<const uint8_t*>(batch.data_ptr());
    if (p >= states->data() && p < states->data() + states->size()) {
      states->release(uint64_t(p - states->data()), uint64_t(batch.nbytes()));
    }
  }
  // x through the layer, calib_batch(length) sequences at a time, its linear inputs seen by
  // `t`; each batch's output goes to each(b, y).
  template <typename F>
  void layer_batches(DecoderLayerImpl& layer, LinearTap* t, const torch::Tensor& x, F&& each) {
    layer.self_attn->tap = t;
    layer.mlp->tap = t;
    const int64_t batch = calib_batch(x.size(1));
    for (int64_t b = 0; b < x.size(0); b += batch) {
      auto xb = x.narrow(0, b, std::min<int64_t>(batch, x.size(0) - b));
      each(b, layer.forward(xb, cos, sin, 0, nullptr, nullptr));
      release(xb);
    }
    layer.self_attn->tap = nullptr;
    layer.mlp->tap = nullptr;
  }
  // The layer's outputs for inputs x (a few sequences: SmoothQuant's alpha search).
  torch::Tensor layer_forward(DecoderLayerImpl& layer, LinearTap* t, const torch::Tensor& x) {
    std::vector<torch::Tensor> outs;
    layer_batches(layer, t, x, [&](int64_t, torch::Tensor y) { outs.push_back(std::move(y)); });
    return torch::cat(outs, 0);
  }
  // Only what `t` sees of the layer's inputs (the outputs are not kept).
  void layer_observe(DecoderLayerImpl& layer, LinearTap* t, const torch::Tensor& x) {
    layer_batches(layer, t, x, [](int64_t, const torch::Tensor&) {});
  }
  // x replaced by the layer's outputs, batch by batch (a sequence's output depends on it alone).
  void layer_forward_inplace(DecoderLayerImpl& layer, LinearTap* t, torch::Tensor& x) {
    layer_batches(layer, t, x, [&](int64_t b, const torch::Tensor& y) {
      x.narrow(0, b, y.size(0)).copy_(y);
    });
  }
};

// One decoder layer of the model being quantized.
struct QuantLayer {
  DecoderLayerImpl& layer;
  int64_t index;
  std::string pre;                 // "model.layers.<index>."
  std::vector<std::string> heads;  // its quantized groups
};

// The rows GPTQ's report measures output errors on: all of them up to kReportRows, else
// kReportRows evenly spaced (the errors cost 2 rows in^2 flops each, which for the MLP of a
// large model was most of GPTQ's time).
constexpr int64_t kReportRows = 512;
torch::Tensor report_rows(int64_t rows) {
  if (rows <= kReportRows) return torch::arange(rows, torch::kInt64);
  return torch::div(torch::arange(kReportRows, torch::kInt64) * rows, kReportRows, "floor");
}

// Quantize one module's weights in place (w becomes the dequantized weights; the quantized form
// is kept). The final pass also adds GPTQ's and AWQ clipping's output errors, and round to
// nearest's, for the report. `stats` are the module's input group's.
void module_quantize(Quant& q, const std::string& mod,
                     const std::map<std::string, GroupStats>& stats, const std::string& head,
                     bool final) {
  const QuantSetup& s = q.s;
  const bool asym = q.o.asym;
  torch::Tensor& w = q.weight(mod);
  if (q.m || q.o.sensitivity) q.float_w[mod] = w.clone();  // for --sensitivity
  QWeight qw;
  const bool clip = q.o.awq && q.o.awq_clip && !s.gptq &&
                    mod.find("q_proj") == std::string::npos &&
                    mod.find("k_proj") == std::string::npos;  // as AutoAWQ: not q/k
  if (clip) {
    qw = awq_clip_quantize(w, stats.at(head).xtx.get(), s.group_size, s.bits, asym);
  } else if (!s.gptq) {
    qw = rtn_quantize(w, s.group_size, s.bits, asym);
  } else {
    const torch::Tensor& H = stats.at(head).xtx.get();
    QWeight g = gptq_quantize(w, H, s.gopt);
    if (final) {  // the report compares with round-to-nearest, on a sample of the rows
      const QWeight r = rtn_quantize(w, s.group_size, s.bits, asym);
      const torch::Tensor rows = report_rows(w.size(0));
      const torch::Tensor H32 = H.to(torch::kFloat32), ws = w.index_select(0, rows);
      const double e0 = output_error_f32(ws, torch::zeros_like(ws), H32);
      const double er = output_error_f32(ws, r.dequantize().index_select(0, rows), H32);
      const double eg = output_error_f32(ws, g.dequantize().index_select(0, rows), H32);
      q.gptq_modules.push_back({{"module", mod},
                                {"rel_error_rtn", e0 > 0 ? er / e0 : 0.0},
                                {"rel_error_gptq", e0 > 0 ? eg / e0 : 0.0}});
      q.err_rtn += er;
      q.err_gptq += eg;
    }
    qw = g;
  }
  if (final && clip) {  // on the same sample of rows as GPTQ's report
    const torch::Tensor H32 = stats.at(head).xtx.get().to(torch::kFloat32);
    const torch::Tensor rows = report_rows(w.size(0)), ws = w.index_select(0, rows);
    const QWeight r = rtn_quantize(w, s.group_size, s.bits, asym);
    q.awq_err_noclip += output_error_f32(ws, r.dequantize().index_select(0, rows), H32);
    q.awq_err_clip += output_error_f32(ws, qw.dequantize().index_select(0, rows), H32);
  }
  w.copy_(qw.dequantize());
  q.qw[mod] = qw;
}

// Quantize the layer's groups on input x: their input statistics where the method needs them,
// static activation scales, then each module's weights; q.tap then fake-quantizes the groups.
void layer_quantize(Quant& q, const QuantLayer& l, const torch::Tensor& x, bool final) {
  const QuantSetup& s = q.s;
  const QuantizeOptions& o = q.o;
  CalibTap ct;
  if (s.stat || s.gptq || o.awq) {
    ct.wanted.insert(l.heads.begin(), l.heads.end());
    ct.histograms = s.stat && (o.observer == "percentile" || o.observer == "mse" ||
                               o.observer == "entropy");
    ct.hessian = s.gptq || o.awq;
    q.layer_observe(l.layer, &ct, x);
  }
  if (s.stat) {
    for (const auto& h : l.heads) q.tap->input_scales[h] = float(observe(ct.stats.at(h), o));
  }
  for (const auto& h : l.heads) {
    q.tap->modules.insert(h);
    for (const auto& mod : group_modules(h)) module_quantize(q, mod, ct.stats, h, final);
    ct.stats.erase(h);  // its Hessian (in x in float32) is no longer needed
  }
}

// SmoothQuant: move the layer's activation outliers into its weights with alpha (--smoothquant,
// or with auto the grid point whose quantized layer is closest to the float layer's outputs).
void layer_smooth(Quant& q, const QuantLayer& l, const torch::Tensor& X) {
  const core::ModelConfig& cfg = q.cfg;
  CalibTap ct;
  for (const char* g : kGroupHeads) ct.wanted.insert(l.pre + g);
  q.layer_observe(l.layer, &ct, X);
  std::map<std::string, torch::Tensor> amax = {
      {"qkv", ct.stats[l.pre + "self_attn.q_proj"].act_max},
      {"o", ct.stats[l.pre + "self_attn.o_proj"].act_max},
      {"gate_up", ct.stats[l.pre + "mlp.gate_proj"].act_max},
      {"down", ct.stats[l.pre + "mlp.down_proj"].act_max}};
  double alpha = 0.5;
  if (q.o.smoothquant == "auto") {
    // Grid search on the layer's output error against the float layer.
    auto xs = X.narrow(0, 0, std::min<int64_t>(X.size(0), 16));
    auto y_ref = q.layer_forward(l.layer, nullptr, xs);
    std::vector<torch::Tensor> saved;
    for (auto& p : l.layer.parameters()) saved.push_back(p.clone());
    double best = INFINITY;
    for (double a : {0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9}) {
      smoothquant_layer(l.layer, amax, a, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
      layer_quantize(q, l, xs, false);
      double err = (q.layer_forward(l.layer, q.tap.get(), xs) - y_ref).pow(2).mean().item<double>();
      if (err < best) {
        best = err;
        alpha = a;
      }
      size_t k = 0;
      for (auto& p : l.layer.parameters()) p.copy_(saved[k++]);
    }
  } else {
    alpha = std::stod(q.o.smoothquant);
  }
  smoothquant_layer(l.layer, amax, alpha, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
  q.alphas[size_t(l.index)] = alpha;
}

// AWQ: per input group, search the channel scales on the float layer's inputs, then fold them
// in; groups not quantized keep s = 1.
void layer_awq(Quant& q, const QuantLayer& l, const torch::Tensor& X) {
  const core::ModelConfig& cfg = q.cfg;
  CalibTap ct;
  ct.wanted.insert(l.heads.begin(), l.heads.end());
  ct.hessian = ct.means = true;
  q.layer_observe(l.layer, &ct, X);
  const int64_t nh = cfg.num_heads, nkv = cfg.num_kv_heads, hd = cfg.head_dim, rep = nh / nkv;
  std::map<std::string, torch::Tensor> sc = {{"qkv", torch::ones({cfg.hidden_size})},
                                             {"o", torch::ones({nkv * hd})},
                                             {"gate_up", torch::ones({cfg.hidden_size})},
                                             {"down", torch::ones({cfg.intermediate_size})}};
  nlohmann::json lj = {{"layer", l.index}};
  for (const auto& h : l.heads) {
    const GroupStats& g = ct.stats.at(h);
    const std::string grp = short_group(h);
    auto xm = g.abs_sum / double(std::max<int64_t>(g.rows, 1));
    std::vector<torch::Tensor> ws;
    for (const auto& mod : group_modules(h)) ws.push_back(q.weight(mod));
    // o_proj's factors fold into v_proj rows, so the query heads of a KV group share them.
    AwqScale a = awq_search_scale(ws, xm, g.xtx.get(), q.s.group_size, q.s.bits, 20,
                                  grp == "o" ? rep : 1, hd, q.o.asym);
    sc[grp] = grp == "o"
                  ? a.s.reshape({nkv, rep, hd}).select(1, 0).reshape({nkv * hd}).contiguous()
                  : a.s;
    q.awq_err_rtn += a.err_rtn;
    q.awq_err_scaled += a.err;
    lj[grp] = {{"ratio", a.ratio},
               {"form", a.duo ? "duo" : "plain"},
               {"search_error_vs_rtn", a.err_rtn > 0 ? a.err / a.err_rtn : 1.0}};
  }
  scale_layer_inputs(l.layer, sc, nh, nkv, hd);
  q.awq_layers.push_back(lj);
}

// Layer l on the calibration states X entering it: smoothed (SmoothQuant) or rescaled (AWQ),
// then quantized. X then holds the quantized layer's outputs, which enter the next layer.
void layer_step(Quant& q, const QuantLayer& l, torch::Tensor& X) {
  const QuantizeOptions& o = q.o;
  if (!o.smoothquant.empty() && !l.heads.empty()) layer_smooth(q, l, X);
  if (o.awq && !l.heads.empty()) layer_awq(q, l, X);
  if (!l.heads.empty()) layer_quantize(q, l, X, true);
  q.layer_forward_inplace(l.layer, q.s.act ? q.tap.get() : nullptr, X);
}

// Decoder layer i of `layer`, with its quantized groups among `heads`.
QuantLayer quant_layer(DecoderLayerImpl& layer, int64_t i, const std::vector<std::string>& heads) {
  QuantLayer l{layer, i, "model.layers." + std::to_string(i) + ".", {}};
  for (const auto& h : heads) {
    if (h.rfind(l.pre, 0) == 0) l.heads.push_back(h);
  }
  return l;
}

// Layer by layer: the calibration states enter layer i, which is smoothed (SmoothQuant) or
// rescaled (AWQ), then quantized; the quantized layer's outputs feed layer i+1.
void layers_quantize(Quant& q, const std::vector<std::string>& heads, const torch::Tensor& ids) {
  const int64_t num_layers = q.cfg.num_layers;
  torch::Tensor X = q.m->model->embed_tokens(ids);
  core::Progress prog("quantize " + q.o.scheme, uint64_t(num_layers), "layers", q.o.progress);
  for (int64_t i = 0; i < num_layers; ++i) {
    layer_step(q, quant_layer(*q.m->model->layers->ptr<DecoderLayerImpl>(size_t(i)), i, heads), X);
    prog.update(uint64_t(i + 1));
  }
  prog.finish();
}

// quantize.json's account of the format and of the calibration.
nlohmann::json quant_report(const Quant& q, int64_t sequences, double calib_seconds) {
  const QuantizeOptions& o = q.o;
  const QuantSetup& s = q.s;
  nlohmann::json report = quant_format_report(o, s.scheme);
  report["calibration"] = {
      {"sequences", sequences}, {"seq_len", o.calib_len}, {"seconds", calib_seconds}};
  if (!o.smoothquant.empty()) report["smoothquant_alpha_per_layer"] = q.alphas;
  if (o.awq) {
    // Output error of the quantized linears on the calibration inputs: with the searched scales
    // against round to nearest, and clipped against not (v_proj and up_proj rows change scale
    // with the next group's factors, so the two ratios are in different coordinates).
    report["awq"] = {{"clip", o.awq_clip && !s.gptq},
                     {"grid", 20},
                     {"scale_error_ratio",
                      q.awq_err_rtn > 0 ? q.awq_err_scaled / q.awq_err_rtn : 0.0},
                     {"layers", q.awq_layers}};
    if (o.awq_clip && !s.gptq) {
      report["awq"]["clip_error_ratio"] =
          q.awq_err_noclip > 0 ? q.awq_err_clip / q.awq_err_noclip : 0.0;
    }
  }
  if (s.gptq) {
    // Output error of each quantized linear on its calibration inputs, relative to its output's
    // energy, for round-to-nearest and for GPTQ (the same scales per channel).
    report["gptq"] = {{"error_rows", "all rows, or " + std::to_string(kReportRows) +
                                          " evenly spaced where a module has more (float32)"},
                      {"block_size", o.block_size},
                      {"damp", o.damp},
                      {"act_order", o.act_order},
                      {"act_order_groups", o.act_order_groups},
                      {"output_error_ratio", q.err_rtn > 0 ? q.err_gptq / q.err_rtn : 0.0},
                      {"modules", q.gptq_modules}};
  }
  return report;
}

// The weights of group `h`'s modules: quantized (dequantized) or float.
void group_weights_set(Quant& q, const std::string& h, bool quantized) {
  for (const auto& mod : group_modules(h)) {
    q.weight(mod).copy_(quantized ? q.qw[mod].dequantize() : q.float_w[mod]);
  }
}

// Sensitivity (--sensitivity): each input group alone quantized, the rest float, by its KL to
// the float model on validation tokens; most sensitive first.
std::vector<std::pair<double, std::string>> sensitivity_measure(
    Quant& q, CausalLM& ref, const std::vector<std::string>& heads) {
  const QuantizeOptions& o = q.o;
  std::vector<int32_t> sv = split_tokens(o, q.cfg.vocab_size, "val", o.sensitivity_tokens);
  for (auto& [mod, w] : q.float_w) q.weight(mod).copy_(w);
  auto one = std::make_shared<FakeQuantTap>(*q.tap);
  std::vector<std::pair<double, std::string>> sens;
  core::Progress sp("sensitivity", heads.size(), "groups", o.progress);
  for (size_t k = 0; k < heads.size(); ++k) {
    const std::string& h = heads[k];
    group_weights_set(q, h, true);
    one->modules = {h};
    q.m->set_tap(q.s.act ? one.get() : nullptr);
    EvalStats e = evaluate(q.m, ref, sv, o.eval_seq_len);
    sens.emplace_back(e.kl, h);
    group_weights_set(q, h, false);
    sp.update(k + 1);
  }
  sp.finish();
  std::sort(sens.rbegin(), sens.rend());
  return sens;
}

// The --keep-float most sensitive groups stay float, the others quantized: the model is left
// mixed so. Returns the groups kept float.
std::set<std::string> sensitivity_keep_float(Quant& q, CausalLM& ref,
                                             const std::vector<std::string>& heads,
                                             nlohmann::json& report) {
  const auto sens = sensitivity_measure(q, ref, heads);
  nlohmann::json sj = nlohmann::json::array();
  for (auto& [kl, h] : sens) sj.push_back({{"group", h}, {"kl", kl}});
  report["sensitivity"] = sj;
  std::set<std::string> kept_float;
  for (int64_t k = 0; k < q.o.keep_float && k < int64_t(sens.size()); ++k) {
    kept_float.insert(sens[size_t(k)].second);
  }
  // Back to the mixed model: quantized everywhere except the kept groups.
  for (const auto& h : heads) group_weights_set(q, h, !kept_float.count(h));
  for (const auto& h : kept_float) q.tap->modules.erase(h);
  q.m->set_tap(q.s.act ? q.tap.get() : nullptr);
  report["kept_float"] = std::vector<std::string>(kept_float.begin(), kept_float.end());
  return kept_float;
}

// Accuracy against the float model on the validation tokens.
void accuracy_report(CausalLM& m, CausalLM& ref, const std::vector<int32_t>& val, int64_t seq_len,
                     nlohmann::json& report) {
  EvalStats ef = evaluate(ref, ref, val, seq_len);
  EvalStats eq = evaluate(m, ref, val, seq_len);
  report["val_tokens"] = val.size();
  report["perplexity_float"] = std::exp(ef.nll);
  report["perplexity_quant"] = std::exp(eq.nll);
  report["perplexity_change"] = std::exp(eq.nll) / std::exp(ef.nll) - 1.0;
  report["kl_vs_float"] = eq.kl;
  report["top1_agreement"] = eq.top1;
}

// The tensors of a compressed-tensors checkpoint, with the buffers behind their views.
struct TensorSet {
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<core::TensorView> views;
  uint64_t bytes = 0;  // what the weights take (shape records aside)
  // A new buffer of n bytes holding tensor `name`.
  uint8_t* add_buffer(const std::string& name, core::DType dt, std::vector<int64_t> shape,
                      size_t n, bool counted = true) {
    bufs.emplace_back(n);
    views.push_back({name, dt, std::move(shape), bufs.back().data(), bufs.back().size()});
    if (counted) bytes += bufs.back().size();
    return bufs.back().data();
  }
  // Tensor t as dtype dt: int8/int32 as they are, otherwise converted from float32.
  void add(const std::string& name, core::DType dt, const torch::Tensor& t) {
    auto c = t.contiguous();
    std::vector<int64_t> shape(c.sizes().begin(), c.sizes().end());
    if (dt == core::DType::kI8 || dt == core::DType::kI32) {
      const size_t n = size_t(c.nbytes());
      std::memcpy(add_buffer(name, dt, shape, n), c.data_ptr(), n);
    } else {
      auto f = c.to(torch::kFloat32).contiguous();
      uint8_t* out = add_buffer(name, dt, shape, size_t(f.numel()) * core::dtype_size(dt));
      core::convert_from_f32(f.data_ptr<float>(), dt, out, f.numel());
    }
  }
};

// compressed-tensors pack-quantized 4-bit weights: eight values per int32, the original shape,
// and (asym) the zero points packed along the outputs: I32 [ceil(out / 8), groups].
void int4_weights_add(TensorSet& ts, const std::string& mod, const QWeight& qw, bool asym) {
  auto q = qw.q.contiguous();
  const int64_t out = q.size(0), in = q.size(1), words = core::int4_packed_cols(in);
  core::int4_pack(q.data_ptr<int8_t>(), out, in,
                  ts.add_buffer(mod + ".weight_packed", core::DType::kI32, {out, words},
                                size_t(out * words * 4)));
  const int64_t shape[2] = {out, in};
  std::memcpy(ts.add_buffer(mod + ".weight_shape", core::DType::kI64, {2}, 16, false), shape, 16);
  if (asym) {
    auto z = qw.zp.contiguous();
    const int64_t G = z.size(1), zw = core::int4_packed_cols(out);
    core::int4_pack_rows(z.data_ptr<int8_t>(), out, G,
                         ts.add_buffer(mod + ".weight_zero_point", core::DType::kI32, {zw, G},
                                       size_t(zw * G * 4)));
  }
}

// The tensors of one expected tensor `spec` of the quantized model: a quantized module's weights
// with their scales (and g_idx, input scales), else the tensor in the model's float dtype.
void spec_tensors_add(TensorSet& ts, Quant& q, const core::TensorSpec& spec,
                      const std::set<std::string>& quantized_mods) {
  const std::string& name = spec.name;
  const std::string mod = name.size() > 7 ? name.substr(0, name.size() - 7) : name;
  if (!(quantized_mods.count(mod) && name.compare(name.size() - 7, 7, ".weight") == 0)) {
    ts.add(name, float_dtype(q.cfg), *q.params.find(name));
    return;
  }
  const QWeight& qw = q.qw[mod];
  if (q.s.bits == 4) {
    int4_weights_add(ts, mod, qw, q.o.asym);
  } else {
    ts.add(name, core::DType::kI8, qw.q);
  }
  ts.add(mod + ".weight_scale", core::DType::kF32, qw.scale);
  if (qw.g_idx.defined()) ts.add(mod + ".weight_g_idx", core::DType::kI32, qw.g_idx);
  if (q.s.stat) {
    ts.add(mod + ".input_scale", core::DType::kF32,
           torch::tensor({q.tap->input_scales.at(group_head(mod))}));
  }
}

// Every tensor of the quantized model (whole-model path).
TensorSet quantized_tensors(Quant& q, const std::set<std::string>& quantized_mods) {
  TensorSet ts;
  for (const core::TensorSpec& spec : core::expected_tensors(q.cfg)) {
    spec_tensors_add(ts, q, spec, quantized_mods);
  }
  return ts;
}

// The compressed-tensors model directory, written atomically: weights, config.json with its
// quantization_config, the tokenizer and sidecars, provenance and quantize.json.
void quantized_write(const Quant& q, const std::vector<std::string>& ignore, const TensorSet& ts,
                     const nlohmann::json& report) {
  auto dir = core::AtomicDir::create(q.o.out).take_or_throw();
  throw_if_error(core::checkpoint_write(dir.path(), ts.views, {{"format", "pt"}},
                                        core::kDefaultMaxShardBytes));
  quantized_sidecars_write(q.o, q.s.scheme, ignore, q.cfg, dir.path());
  throw_if_error(core::write_file_atomic(dir.path() + "/quantize.json", report.dump(2) + "\n"));
  throw_if_error(dir.commit());
}

// ---- Streaming calibration ------------------------------------------------------------------------
// Only decoder layer i is in memory (layer_load, float32): the calibration states pass through
// it, it is smoothed, scaled and quantized exactly as in the whole-model path (layer_step), its
// tensors are written through the CheckpointWriter and it is freed; its quantized outputs feed
// layer i + 1. The embedding rows of the calibration tokens come straight from the checkpoint,
// and the tensors outside the layers are converted block by block.

// Layer i's tensors of the quantized model, written at their planned places.
void layer_tensors_write(Quant& q, const std::vector<core::TensorSpec>& specs, int64_t i,
                         const std::set<std::string>& quantized, core::CheckpointWriter& w) {
  TensorSet ts;
  for (const core::TensorSpec& spec : specs) {
    if (spec.layer == i) spec_tensors_add(ts, q, spec, quantized);
  }
  for (const core::TensorView& v : ts.views) throw_if_error(w.write(v.name, v.data, v.nbytes));
}

// The quantized forms and float copies of layer i's modules, once written.
void layer_forget(Quant& q, int64_t i) {
  const std::string pre = "model.layers." + std::to_string(i) + ".";
  for (auto it = q.qw.begin(); it != q.qw.end();) it = it->first.rfind(pre, 0) == 0 ? q.qw.erase(it) : std::next(it);
  for (auto it = q.float_w.begin(); it != q.float_w.end();) {
    it = it->first.rfind(pre, 0) == 0 ? q.float_w.erase(it) : std::next(it);
  }
  q.params = {};
}

// --sensitivity, streamed: what the layer probes need and give.
struct SensitivityStream {
  std::unique_ptr<LayerProbes> probes;             // the float model over the validation tokens
  std::unique_ptr<core::CheckpointWriter> floats;  // the quantized modules' float weights
  std::vector<std::pair<double, std::string>> kl;  // per group
};

// The float (smoothed, scaled) weights of layer i's quantized modules, in the model's dtype:
// what the output holds for a group that stays float.
void layer_floats_write(Quant& q, int64_t i, core::CheckpointWriter& w) {
  const std::string pre = "model.layers." + std::to_string(i) + ".";
  TensorSet ts;
  for (const auto& [mod, fw] : q.float_w) {
    if (mod.rfind(pre, 0) == 0) ts.add(mod + ".weight", float_dtype(q.cfg), fw);
  }
  for (const core::TensorView& v : ts.views) throw_if_error(w.write(v.name, v.data, v.nbytes));
}

// Each of layer i's groups alone quantized, the rest of the layer float (as smoothed or
// scaled), every other layer float: its KL to the float model (what sensitivity_measure asks of
// the whole model).
void layer_probe(Quant& q, const QuantLayer& l, SensitivityStream& ss) {
  auto one = std::make_shared<FakeQuantTap>(*q.tap);
  for (const std::string& h : l.heads) {
    for (const std::string& g : l.heads) group_weights_set(q, g, g == h);
    one->modules = {h};
    l.layer.self_attn->tap = l.layer.mlp->tap = q.s.act ? one.get() : nullptr;
    ss.kl.emplace_back(ss.probes->kl_with(l.index, l.layer), h);
  }
  l.layer.self_attn->tap = l.layer.mlp->tap = nullptr;
}

// Every layer in turn, from the checkpoint to the writer; the seconds each took. With
// --sensitivity (ss), each layer's groups are probed and their float weights kept.
std::vector<double> layers_quantize_streaming(Quant& q, const std::vector<std::string>& heads,
                                              const torch::Tensor& ids, const core::Checkpoint& ck,
                                              const std::set<std::string>& quantized,
                                              core::CheckpointWriter& w, SensitivityStream* ss) {
  const std::vector<core::TensorSpec> specs = core::expected_tensors(q.cfg);
  const int64_t num_layers = q.cfg.num_layers;
  std::vector<double> seconds;
  torch::Tensor X = states_embed(q.cfg, ck, ids, *q.states);
  core::Progress prog("quantize " + q.o.scheme, uint64_t(num_layers), "layers", q.o.progress);
  for (int64_t i = 0; i < num_layers; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    DecoderLayer layer = layer_load(q.cfg, ck, i);
    layer->eval();
    q.hold(*layer, i);
    const QuantLayer l = quant_layer(*layer, i, heads);
    layer_step(q, l, X);
    layer_tensors_write(q, specs, i, quantized, w);
    if (ss) {
      layer_floats_write(q, i, *ss->floats);
      layer_probe(q, l, *ss);
      ss->probes->advance(i);
    }
    layer_forget(q, i);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    prog.update(uint64_t(i + 1));
  }
  prog.finish();
  return seconds;
}

// The quantized modules' float weights, as the output would hold them (the float checkpoint of
// streamed --sensitivity).
std::vector<core::TensorView> float_weights_plan(const core::ModelConfig& cfg,
                                                 const std::set<std::string>& quantized) {
  std::vector<core::TensorView> plan;
  const core::DType dt = float_dtype(cfg);
  for (const core::TensorSpec& spec : core::expected_tensors(cfg)) {
    if (spec.name.size() <= 7 || !quantized.count(spec.name.substr(0, spec.name.size() - 7))) continue;
    if (spec.layer < 0) continue;  // a quantized lm_head is never kept float
    uint64_t n = core::dtype_size(dt);
    for (int64_t d : spec.shape) n *= uint64_t(d);
    plan.push_back({spec.name, dt, spec.shape, nullptr, n});
  }
  return plan;
}

// The planned tensors copied, 16 MiB at a time, from the first of `sources` (single files, read
// as stored: 4-bit weights packed) that holds each with its dtype and shape.
void tensors_copy(const std::vector<const core::SafetensorsFile*>& sources,
                  const std::vector<core::TensorView>& plan, core::CheckpointWriter& w) {
  constexpr uint64_t kPiece = uint64_t(16) << 20;
  for (const core::TensorView& v : plan) {
    const core::SafetensorsFile* from = nullptr;
    const core::TensorInfo* t = nullptr;
    for (const core::SafetensorsFile* c : sources) {
      t = c->find(v.name);
      if (t && t->dtype == v.dtype && t->shape == v.shape) {
        from = c;
        break;
      }
    }
    if (!from) throw Error(StatusCode::kInternal, v.name + ": in neither checkpoint being merged");
    for (uint64_t off = 0; off < t->nbytes; off += kPiece) {
      const uint64_t n = std::min(kPiece, t->nbytes - off);
      throw_if_error(w.write(v.name, from->data(*t) + off, n, off));
      core::pages_release(from->data(*t) + off, n);
    }
  }
}

// The --keep-float most sensitive groups, by the probes' KL; quantize.json's account of them.
std::set<std::string> kept_float_choose(std::vector<std::pair<double, std::string>> sens,
                                        int64_t keep, nlohmann::json& report) {
  std::sort(sens.rbegin(), sens.rend());
  nlohmann::json sj = nlohmann::json::array();
  for (auto& [kl, h] : sens) sj.push_back({{"group", h}, {"kl", kl}});
  report["sensitivity"] = sj;
  std::set<std::string> kept;
  for (int64_t k = 0; k < keep && k < int64_t(sens.size()); ++k) kept.insert(sens[size_t(k)].second);
  report["kept_float"] = std::vector<std::string>(kept.begin(), kept.end());
  return kept;
}

// With --sensitivity the groups that stay float are known only once every layer is probed:
// the layers go to a fully quantized checkpoint and the quantized modules' float weights to
// another, both single files (read back as stored) inside the output's temporary directory
// `work`, and the output is merged from them (sensitivity_merge).
std::unique_ptr<SensitivityStream> sensitivity_start(const QuantizeOptions& o,
                                                     const core::ModelConfig& cfg,
                                                     const ModuleSplit& mods, const std::string& work) {
  auto ss = std::make_unique<SensitivityStream>();
  fs::create_directories(work + "/quantized");
  fs::create_directories(work + "/float");
  StreamedEvalOptions so;
  so.seq_len = o.eval_seq_len;
  so.max_memory = o.max_memory;
  so.spill_dir = fs::path(o.out).parent_path().string();
  ss->probes = std::make_unique<LayerProbes>(
      o.model, split_tokens(o, cfg.vocab_size, "val", o.sensitivity_tokens), so);
  ss->floats = core::CheckpointWriter::create(work + "/float", float_weights_plan(cfg, mods.quantized),
                                              {{"format", "pt"}}, 0)
                   .take_or_throw();
  return ss;
}

// The kept groups chosen, the output written in `dir` from the two temporaries, which are then
// removed; mods and plan become the output's. Returns the bytes written.
uint64_t sensitivity_merge(const QuantizeOptions& o, const QuantSetup& setup,
                           const core::ModelConfig& cfg, const std::vector<std::string>& heads,
                           SensitivityStream& ss, const std::string& work, const std::string& dir,
                           ModuleSplit& mods, std::vector<core::TensorView>& plan,
                           nlohmann::json& report) {
  throw_if_error(ss.floats->finish());
  ss.floats.reset();
  ss.probes.reset();
  mods = modules_split(heads, kept_float_choose(std::move(ss.kl), o.keep_float, report),
                       mods.quantized.count("lm_head") > 0);
  plan = quantized_plan(cfg, setup.scheme, mods.quantized);
  uint64_t written = 0;
  {
    const auto all_q = core::SafetensorsFile::open(work + "/quantized/model.safetensors").take_or_throw();
    const auto floats = core::SafetensorsFile::open(work + "/float/model.safetensors").take_or_throw();
    auto out = core::CheckpointWriter::create(dir, plan, {{"format", "pt"}}, core::kDefaultMaxShardBytes)
                   .take_or_throw();
    tensors_copy({all_q.get(), floats.get()}, plan, *out);
    throw_if_error(out->finish());
    written = out->bytes_written();
  }
  fs::remove_all(work);
  return written;
}

QuantizeResult quantize_streaming(const QuantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds_since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  torch::NoGradGuard ng;
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  if (cfg.has_quantization()) bad(o.model + ": the model is already quantized");
  const core::Checkpoint ck = core::Checkpoint::open(o.model).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ck));
  const QuantSetup setup = quant_setup(o, cfg);
  const torch::Tensor ids = calibration_ids(o, cfg.vocab_size);
  const std::vector<std::string> heads = quant_heads(o, cfg.num_layers);
  const bool head = head_targeted(o);
  const core::ModelConfig out_cfg = output_config(cfg, head);
  ModuleSplit mods = modules_split(heads, {}, head);
  std::vector<core::TensorView> plan = quantized_plan(out_cfg, setup.scheme, mods.quantized);

  auto dir = core::AtomicDir::create(o.out).take_or_throw();
  const std::string work = dir.path() + "/.sensitivity";
  std::unique_ptr<SensitivityStream> ss =
      o.sensitivity ? sensitivity_start(o, cfg, mods, work) : nullptr;
  auto w = core::CheckpointWriter::create(ss ? work + "/quantized" : dir.path(), plan,
                                          {{"format", "pt"}}, ss ? 0 : core::kDefaultMaxShardBytes)
               .take_or_throw();
  Quant q(o, setup, cfg, CausalLM(nullptr));
  core::ScratchBuffer states = calibration_states(
      o.out, o.max_memory, uint64_t(ids.size(0) * o.calib_len * cfg.hidden_size) * 4);
  q.states = &states;
  const std::vector<double> layer_seconds =
      layers_quantize_streaming(q, heads, ids, ck, mods.quantized, *w, ss.get());
  outer_tensors_write(ck, cfg, out_cfg, setup.scheme, mods.quantized, *w, o.threads);
  const double calib_seconds = seconds_since_start();
  throw_if_error(w->finish());

  nlohmann::json report = quant_report(q, ids.size(0), calib_seconds);
  const uint64_t bytes_written =
      ss ? sensitivity_merge(o, setup, out_cfg, heads, *ss, work, dir.path(), mods, plan, report)
         : w->bytes_written();
  quantized_sidecars_write(o, setup.scheme, mods.ignore, out_cfg, dir.path());
  report["streaming"] = true;
  report["layer_seconds"] = layer_seconds;
  report["calibration"]["states_bytes"] = states.size();
  report["calibration"]["states_spilled"] = states.spilled();
  report["bytes_before"] = uint64_t(config_parameters(cfg)) * core::dtype_size(float_dtype(cfg));
  report["bytes_after"] = quantized_plan_bytes(plan);
  report["bytes_read"] = ck.total_bytes();
  report["bytes_written"] = bytes_written;
  report["quantized_modules"] = mods.quantized.size();
  if (o.eval_tokens) accuracy_report_dirs(o, dir.path(), report);
  report["peak_rss_mb"] = core::peak_rss_mib();
  report["seconds"] = seconds_since_start();
  throw_if_error(core::write_file_atomic(dir.path() + "/quantize.json", report.dump(2) + "\n"));
  throw_if_error(dir.commit());
  return {report};
}

}  // namespace

void accuracy_report_dirs(const QuantizeOptions& o, const std::string& quant_dir,
                          nlohmann::json& report) {
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  const std::vector<int32_t> val = split_tokens(o, cfg.vocab_size, "val", o.eval_tokens);
  if (val.size() < 2) return;
  StreamedEvalOptions so;
  so.seq_len = o.eval_seq_len;
  so.max_memory = o.max_memory;
  so.spill_dir = fs::path(o.out).parent_path().string();
  const StreamedEval e = compare_streamed(quant_dir, o.model, val.data(), val.size(), so);
  const double n = double(e.scored);
  report["val_tokens"] = val.size();
  report["perplexity_float"] = std::exp(e.ref_nll_sum / n);
  report["perplexity_quant"] = std::exp(e.nll_sum / n);
  report["perplexity_change"] = std::exp(e.nll_sum / n) / std::exp(e.ref_nll_sum / n) - 1.0;
  report["kl_vs_float"] = e.kl_sum / n;
  report["top1_agreement"] = double(e.top1_same) / n;
}

QuantizeResult quantize_run(const QuantizeOptions& o) {
  quantize_validate(o);
  if (quantize_is_model_free(o)) return quantize_model_free(o);
  if (!o.load_model) return quantize_streaming(o);
  auto t0 = std::chrono::steady_clock::now();
  auto seconds_since_start = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  torch::NoGradGuard ng;
  core::ModelConfig cfg0 = core::config_load(o.model).take_or_throw();
  if (cfg0.has_quantization()) bad(o.model + ": the model is already quantized");
  CausalLM m = model_load(o.model);
  CausalLM ref = model_load(o.model);  // the float model, for KL and sensitivity
  m->eval();
  const core::ModelConfig cfg = m->config();
  const QuantSetup setup = quant_setup(o, cfg);
  const torch::Tensor ids = calibration_ids(o, cfg.vocab_size);
  const std::vector<int32_t> val = o.eval_tokens
                                       ? split_tokens(o, cfg.vocab_size, "val", o.eval_tokens)
                                       : std::vector<int32_t>{};
  const std::vector<std::string> heads = quant_heads(o, cfg.num_layers);

  Quant q(o, setup, cfg, m);
  layers_quantize(q, heads, ids);
  const double calib_seconds = seconds_since_start();
  if (setup.act) m->set_tap(q.tap.get());
  nlohmann::json report = quant_report(q, ids.size(0), calib_seconds);
  std::set<std::string> kept_float;
  if (o.sensitivity) kept_float = sensitivity_keep_float(q, ref, heads, report);
  if (!val.empty()) accuracy_report(m, ref, val, o.eval_seq_len, report);

  const ModuleSplit mods = modules_split(heads, kept_float);
  const TensorSet ts = quantized_tensors(q, mods.quantized);
  report["bytes_before"] = uint64_t(ref->num_parameters()) * core::dtype_size(float_dtype(cfg));
  report["bytes_after"] = ts.bytes;
  report["quantized_modules"] = mods.quantized.size();
  report["peak_rss_mb"] = core::peak_rss_mib();
  report["seconds"] = seconds_since_start();
  quantized_write(q, mods.ignore, ts, report);
  return {report};
}

}  // namespace shrink::train
