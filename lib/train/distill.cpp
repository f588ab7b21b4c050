// Distillation building blocks; see distill.h for the definitions and conventions.
#include "train/distill.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/progress.h"
#include "pipeline/report.h"

namespace shrink::train {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void bad(const std::string& msg) { throw Error(StatusCode::kInvalidInput, msg); }

torch::Tensor flat(const torch::Tensor& x) { return x.reshape({-1, x.size(-1)}).to(torch::kFloat32); }

}  // namespace

// ---- Losses --------------------------------------------------------------------------------------

torch::Tensor kd_forward_kl(const torch::Tensor& s, const torch::Tensor& t, double T) {
  auto log_ps = torch::log_softmax(flat(s) / T, -1);
  auto log_pt = torch::log_softmax(flat(t) / T, -1);
  return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * (T * T);
}

torch::Tensor kd_reverse_kl(const torch::Tensor& s, const torch::Tensor& t, double T) {
  auto log_ps = torch::log_softmax(flat(s) / T, -1);
  auto log_pt = torch::log_softmax(flat(t) / T, -1);
  return (log_ps.exp() * (log_ps - log_pt)).sum(-1).mean() * (T * T);
}

torch::Tensor kd_topk_forward_kl(const torch::Tensor& s, const torch::Tensor& ids,
                                 const torch::Tensor& vals, double T) {
  auto log_ps = torch::log_softmax(flat(s) / T, -1);
  auto id = ids.reshape({-1, ids.size(-1)}).to(torch::kLong);
  auto log_pt = torch::log_softmax(flat(vals) / T, -1);  // renormalized over the top k
  auto log_ps_k = log_ps.gather(-1, id);
  return (log_pt.exp() * (log_pt - log_ps_k)).sum(-1).mean() * (T * T);
}

torch::Tensor hidden_mse(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat32) - b.to(torch::kFloat32)).pow(2).mean();
}

torch::Tensor hidden_cosine(const torch::Tensor& a, const torch::Tensor& b) {
  auto cos = torch::nn::functional::cosine_similarity(
      flat(a), flat(b), torch::nn::functional::CosineSimilarityFuncOptions().dim(-1).eps(1e-8));
  return (1.0 - cos).mean();
}

// ---- Student initialization ------------------------------------------------------------------

CausalLM student_from_layers(CausalLM& teacher, const std::vector<int64_t>& keep) {
  core::ModelConfig cfg = core::config_keep_layers(teacher->config(), keep).take_or_throw();
  CausalLM s(cfg);
  auto src = teacher->named_parameters();
  torch::NoGradGuard ng;
  const std::string prefix = "model.layers.";
  for (auto& p : s->named_parameters()) {
    std::string name = p.key();
    if (name.rfind(prefix, 0) == 0) {
      size_t dot = name.find('.', prefix.size());
      int64_t i = std::stoll(name.substr(prefix.size(), dot - prefix.size()));
      name = prefix + std::to_string(keep[size_t(i)]) + name.substr(dot);
    }
    torch::Tensor* t = src.find(name);
    if (!t || !t->sizes().equals(p.value().sizes())) {
      throw Error(StatusCode::kInternal, "student_from_layers: no teacher tensor for " + name);
    }
    p.value().copy_(*t);
  }
  return s;
}

std::vector<int64_t> parse_layer_list(const std::string& spec, int64_t n) {
  std::vector<int64_t> out;
  auto num = [&](const std::string& s) -> int64_t {
    try {
      size_t used = 0;
      int64_t v = std::stoll(s, &used);
      if (used != s.size()) throw std::invalid_argument(s);
      return v;
    } catch (const std::exception&) {
      bad("layer list '" + spec + "': '" + s + "' is not an integer");
    }
  };
  if (spec.rfind("::", 0) == 0) {  // every k-th layer: "::2" keeps 0, 2, 4, ...
    int64_t step = num(spec.substr(2));
    if (step < 1) bad("layer list '" + spec + "': the step must be >= 1");
    for (int64_t i = 0; i < n; i += step) out.push_back(i);
    return out;
  }
  size_t pos = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    std::string item = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (item.empty()) bad("layer list '" + spec + "': empty item");
    size_t dash = item.find('-', 1);
    if (dash != std::string::npos) {
      int64_t a = num(item.substr(0, dash)), b = num(item.substr(dash + 1));
      if (b < a) bad("layer list '" + spec + "': range " + item + " is backwards");
      for (int64_t i = a; i <= b; ++i) out.push_back(i);
    } else {
      out.push_back(num(item));
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

std::vector<std::pair<int64_t, int64_t>> hidden_layer_map(const std::string& spec, int64_t ls,
                                                          int64_t lt,
                                                          const std::vector<int64_t>& keep) {
  std::vector<std::pair<int64_t, int64_t>> out;
  if (!spec.empty()) {
    size_t pos = 0;
    while (pos <= spec.size()) {
      size_t comma = spec.find(',', pos);
      std::string item =
          spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      size_t colon = item.find(':');
      int64_t a = -1, b = -1;
      if (colon != std::string::npos) {
        try {
          a = std::stoll(item.substr(0, colon));
          b = std::stoll(item.substr(colon + 1));
        } catch (const std::exception&) {
          a = b = -1;
        }
      }
      if (a < 0 || b < 0) {
        bad("--hidden-map '" + spec + "': expected pairs student:teacher like 2:4,4:8, got '" +
            item + "'");
      }
      if (a > ls || b > lt) {
        bad("--hidden-map pair " + item + ": hidden-state indices run 0.." + std::to_string(ls) +
            " for the student and 0.." + std::to_string(lt) + " for the teacher");
      }
      out.emplace_back(a, b);
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
    return out;
  }
  for (int64_t i = 1; i < ls; ++i) {
    int64_t t = keep.empty() ? int64_t(std::llround(double(i) * double(lt) / double(ls)))
                             : keep[size_t(i - 1)] + 1;
    out.emplace_back(i, std::min(t, lt - 1));
  }
  out.emplace_back(ls, lt);
  return out;
}

HiddenProjectionImpl::HiddenProjectionImpl(int64_t pairs, int64_t sw, int64_t tw)
    : identity_(sw == tw) {
  maps = register_module("maps", torch::nn::ModuleList());
  if (identity_) return;
  for (int64_t i = 0; i < pairs; ++i) {
    maps->push_back(torch::nn::Linear(torch::nn::LinearOptions(sw, tw).bias(false)));
  }
}

torch::Tensor HiddenProjectionImpl::forward(int64_t pair, const torch::Tensor& h) {
  if (identity_) return h;
  return maps[size_t(pair)]->as<torch::nn::Linear>()->forward(h);
}

// ---- Masks -----------------------------------------------------------------------------------------

void SparsityMasks::mask_grads() {
  for (auto& [p, m] : entries) {
    if (p.grad().defined()) p.mutable_grad().mul_(m);
  }
}

void SparsityMasks::mask_weights() {
  torch::NoGradGuard ng;
  for (auto& [p, m] : entries) p.mul_(m);
}

SparsityMasks masks_from_zeros(CausalLM& m, double min_fraction) {
  SparsityMasks out;
  for (auto& p : m->named_parameters()) {
    const torch::Tensor& w = p.value();
    if (w.dim() != 2 || p.key().rfind("model.layers.", 0) != 0) continue;
    auto mask = (w != 0).to(torch::kFloat32);
    int64_t zeros = w.numel() - mask.sum().item<int64_t>();
    if (zeros == 0 || double(zeros) < min_fraction * double(w.numel())) continue;
    out.entries.emplace_back(w, mask);
    out.masked += zeros;
    out.total += w.numel();
  }
  return out;
}

// ---- Teacher top-k cache ---------------------------------------------------------------------------

TeacherCache TeacherCache::open_or_build(const std::string& dir, CausalLM& teacher,
                                         const std::string& teacher_dir,
                                         const core::TokenDataset& data,
                                         const std::string& data_key, int64_t L, int64_t k,
                                         bool progress) {
  const int64_t V = teacher->config().vocab_size;
  if (k < 1 || k > V) {
    bad("--cache-topk " + std::to_string(k) + ": expected 1.." + std::to_string(V));
  }
  const uint64_t n_windows = data.size() >= 2 ? (data.size() - 1) / uint64_t(L) : 0;
  nlohmann::json key = {{"format", "shrink-teacher-topk-1"},
                        {"teacher", pipeline::model_fingerprint(teacher_dir)},
                        {"data", data_key},
                        {"data_tokens", data.size()},
                        {"seq_len", L},
                        {"k", k},
                        {"windows", n_windows},
                        {"id_bytes", V > 65536 ? 4 : 2}};
  TeacherCache c;
  c.k_ = k;
  c.seq_len_ = L;
  c.windows_ = n_windows;
  c.id_bytes_ = V > 65536 ? 4 : 2;
  const uint64_t per_token = uint64_t(k) * uint64_t(c.id_bytes_ + 2);
  const uint64_t per_window = per_token * uint64_t(L);
  const std::string meta = dir + "/cache.json", bin = dir + "/topk.bin";
  if (fs::exists(meta) && fs::exists(bin)) {
    auto j = nlohmann::json::parse(core::read_file(meta).take_or_throw(), nullptr, false);
    if (!j.is_discarded() && j == key && fs::file_size(bin) == per_window * n_windows) {
      c.file_ = core::MappedFile::open(bin).take_or_throw();
      return c;
    }
  }
  // Build: every window in order, teacher in eval mode without gradients.
  auto t0 = std::chrono::steady_clock::now();
  fs::create_directories(dir);
  const std::string tmp = bin + ".tmp";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(StatusCode::kIoError, tmp + ": cannot write");
  teacher->eval();
  torch::NoGradGuard ng;
  const int64_t B = 8;
  core::Progress prog("teacher top-k cache", n_windows, "windows", progress);
  std::vector<int32_t> buf;
  std::vector<uint8_t> rec;
  for (uint64_t w0 = 0; w0 < n_windows; w0 += B) {
    int64_t nb = int64_t(std::min<uint64_t>(B, n_windows - w0));
    buf.resize(size_t(nb * L));
    for (int64_t b = 0; b < nb; ++b) data.read((w0 + b) * uint64_t(L), uint64_t(L), &buf[b * L]);
    auto ids = torch::from_blob(buf.data(), {nb, L}, torch::kInt32).to(torch::kLong);
    auto logits = teacher->forward(ids).logits;
    auto [vals, idx] = logits.topk(k, -1);
    vals = vals.contiguous();
    idx = idx.to(torch::kInt64).contiguous();
    const float* pv = vals.data_ptr<float>();
    const int64_t* pi = idx.data_ptr<int64_t>();
    rec.resize(per_window * uint64_t(nb));
    uint8_t* r = rec.data();
    for (int64_t t = 0; t < nb * L; ++t) {
      for (int64_t j = 0; j < k; ++j) {
        if (c.id_bytes_ == 2) {
          uint16_t v = uint16_t(pi[t * k + j]);
          std::memcpy(r, &v, 2);
        } else {
          uint32_t v = uint32_t(pi[t * k + j]);
          std::memcpy(r, &v, 4);
        }
        r += c.id_bytes_;
      }
      for (int64_t j = 0; j < k; ++j) {
        uint16_t h = core::f32_to_f16(pv[t * k + j]);
        std::memcpy(r, &h, 2);
        r += 2;
      }
    }
    out.write(reinterpret_cast<const char*>(rec.data()), std::streamsize(rec.size()));
    prog.update(w0 + uint64_t(nb));
  }
  out.close();
  if (!out) throw Error(StatusCode::kIoError, tmp + ": write failed (disk full?)");
  prog.finish();
  fs::rename(tmp, bin);
  throw_if_error(core::write_file_atomic(meta, key.dump(2) + "\n"));
  c.file_ = core::MappedFile::open(bin).take_or_throw();
  c.built_now_ = true;
  c.build_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return c;
}

std::pair<torch::Tensor, torch::Tensor> TeacherCache::lookup(
    const std::vector<uint64_t>& windows) const {
  const int64_t nb = int64_t(windows.size());
  auto ids = torch::empty({nb, seq_len_, k_}, torch::kLong);
  auto vals = torch::empty({nb, seq_len_, k_}, torch::kFloat32);
  int64_t* pi = ids.data_ptr<int64_t>();
  float* pv = vals.data_ptr<float>();
  const uint64_t per_token = uint64_t(k_) * uint64_t(id_bytes_ + 2);
  for (int64_t b = 0; b < nb; ++b) {
    if (windows[size_t(b)] >= windows_) {
      throw Error(StatusCode::kInternal, "teacher cache: window out of range");
    }
    const uint8_t* r = file_->data() + windows[size_t(b)] * per_token * uint64_t(seq_len_);
    for (int64_t t = 0; t < seq_len_; ++t) {
      int64_t o = (b * seq_len_ + t) * k_;
      for (int64_t j = 0; j < k_; ++j) {
        if (id_bytes_ == 2) {
          uint16_t v;
          std::memcpy(&v, r, 2);
          pi[o + j] = v;
        } else {
          uint32_t v;
          std::memcpy(&v, r, 4);
          pi[o + j] = v;
        }
        r += id_bytes_;
      }
      for (int64_t j = 0; j < k_; ++j) {
        uint16_t h;
        std::memcpy(&h, r, 2);
        pv[o + j] = core::f16_to_f32(h);
        r += 2;
      }
    }
  }
  return {ids, vals};
}

}  // namespace shrink::train
