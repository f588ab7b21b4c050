// Trainer implementation (see trainer.h): data preparation, AdamW with parameter groups, the
// learning-rate schedule, accumulation, clipping, validation, checkpoints and exact resume.
#include "train/trainer.h"

#include <ATen/autocast_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/tokenizer.h"
#include "train/distill.h"
#include "train/model.h"
#include "train/prune.h"
#include "train/prune_ops.h"

namespace shrink::train {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double lr_at(const TrainOptions& o, int64_t step) {
  if (o.warmup > 0 && step < o.warmup) return o.lr * double(step + 1) / double(o.warmup);
  if (o.schedule == "constant") return o.lr;
  const double min_lr = o.lr * o.min_lr_ratio;
  const int64_t span = std::max<int64_t>(1, o.steps - 1 - o.warmup);
  const double t = std::clamp(double(step - o.warmup) / double(span), 0.0, 1.0);
  if (o.schedule == "linear") return o.lr + (min_lr - o.lr) * t;
  return min_lr + 0.5 * (o.lr - min_lr) * (1.0 + std::cos(M_PI * t));  // cosine
}

namespace {

[[noreturn]] void bad(const std::string& msg) { throw Error(StatusCode::kInvalidInput, msg); }

}  // namespace

void train_validate(const TrainOptions& o) {
  if (o.out.empty()) bad("--out is required");
  if (o.data.empty()) bad("--data is required");
  const bool distill = !o.teacher.empty();
  if (distill) {
    int sources = int(!o.config.empty()) + int(!o.model.empty()) + int(!o.student_layers.empty());
    if (sources > 1 || (sources == 0 && !o.resume)) {
      bad("give exactly one student: --student DIR, --student-layers LIST (a subset of the "
          "teacher's layers) or --student-config config.json");
    }
    if (!(o.temperature > 0)) bad("--temperature must be > 0");
    if (!(o.alpha >= 0 && o.alpha <= 1)) bad("--alpha " + std::to_string(o.alpha) + ": expected 0..1");
    if (o.kd_loss != "forward" && o.kd_loss != "reverse") {
      bad("--kd-loss '" + o.kd_loss + "': expected forward or reverse");
    }
    if (o.hidden_loss != "none" && o.hidden_loss != "mse" && o.hidden_loss != "cosine") {
      bad("--hidden-loss '" + o.hidden_loss + "': expected none, mse or cosine");
    }
    if (!(o.hidden_weight >= 0)) bad("--hidden-weight must be >= 0");
    if (!o.teacher_cache.empty() && o.kd_loss != "forward") {
      bad("--teacher-cache stores only the teacher's top-k logits, which serve the forward KL; "
          "--kd-loss reverse needs the full teacher distribution (drop --teacher-cache)");
    }
    if (!o.teacher_cache.empty() && o.hidden_loss != "none") {
      bad("--teacher-cache does not store hidden states; use it without --hidden-loss");
    }
  } else if (o.config.empty() == o.model.empty() && !o.resume) {
    bad("give exactly one of --config config.json (new model) or --model DIR (continue)");
  }
  if (o.prune_final > 0) {
    if (!(o.prune_final < 1 && o.prune_initial >= 0 && o.prune_initial <= o.prune_final)) {
      bad("--prune-final must be in (0, 1) and --prune-initial in [0, --prune-final]");
    }
    if (o.prune_start < 0 || o.prune_end < o.prune_start || o.prune_end > o.steps) {
      bad("--prune-start/--prune-end: expected 0 <= start <= end <= --steps");
    }
    if (o.prune_every < 1) bad("--prune-every must be >= 1");
    nm_parse(o.prune_pattern);
    try {
      std::regex re(o.prune_targets);
    } catch (const std::regex_error& e) {
      bad("--prune-targets '" + o.prune_targets + "': bad regex: " + e.what());
    }
  }
  if (o.masks != "auto" && o.masks != "on" && o.masks != "off") {
    bad("--masks '" + o.masks + "': expected auto, on or off");
  }
  if (o.steps < 1) bad("--steps " + std::to_string(o.steps) + ": expected >= 1");
  if (o.seq_len < 2) bad("--seq-len " + std::to_string(o.seq_len) + ": expected >= 2");
  if (o.batch < 1 || o.grad_accum < 1 || o.batch % o.grad_accum != 0) {
    bad("--batch " + std::to_string(o.batch) + " must be a positive multiple of --grad-accum " +
        std::to_string(o.grad_accum));
  }
  if (!(o.lr > 0)) bad("--lr must be > 0");
  if (!(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1)) bad("--min-lr-ratio must be in [0, 1]");
  if (o.schedule != "cosine" && o.schedule != "linear" && o.schedule != "constant") {
    bad("--schedule '" + o.schedule + "': expected cosine, linear or constant");
  }
  if (o.warmup < 0 || o.clip < 0 || o.weight_decay < 0) {
    bad("--warmup, --clip and --weight-decay must be >= 0");
  }
}

namespace {

// Token shards for the run: the given shard dir, or <out>/data made once from text.
std::string prepare_data(const TrainOptions& o, const std::string& tokenizer_path, bool progress) {
  if (core::dataset_is_tokens(o.data)) return o.data;
  if (!fs::exists(o.data)) throw Error(StatusCode::kNotFound, o.data + ": no such file or directory");
  if (tokenizer_path.empty() || !fs::exists(tokenizer_path)) {
    bad("text data needs a tokenizer: pass --tokenizer tokenizer.json (or a model directory "
        "with one)");
  }
  core::Tokenizer tok = core::Tokenizer::load(tokenizer_path).take_or_throw();
  std::string dir = o.out + "/data";
  // Reuse shards made earlier from the same source, tokenizer and split.
  if (fs::exists(dir + "/dataset.json")) {
    auto j = nlohmann::json::parse(core::read_file(dir + "/dataset.json").take_or_throw(), nullptr,
                                   false);
    if (!j.is_discarded() && j.value("source", "") == o.data &&
        j.value("tokenizer", "") == tok.fingerprint() &&
        j.value("val_fraction", -1.0) == o.val_fraction && j.value("seed", uint64_t(1) << 63) ==
                                                               o.split_seed) {
      return dir;
    }
  }
  core::PrepareOptions po;
  po.val_fraction = o.val_fraction;
  po.seed = o.split_seed;
  core::Progress prog("tokenize", 0, "B", progress);
  po.progress = [&](uint64_t done, uint64_t, uint64_t) { prog.update(done); };
  core::dataset_prepare(o.data, tok, dir, po).take_or_throw();
  prog.finish();
  return dir;
}

bool no_decay(const std::string& name) {
  return name.find("norm") != std::string::npos || name.find("embed_tokens") != std::string::npos ||
         (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0);
}

struct State {
  int64_t step = 0;  // optimizer steps done
  core::SequencePacker::Cursor cursor;
  double best_val = INFINITY;
};

void save_checkpoint(CausalLM& m, torch::optim::AdamW& opt, const State& st,
                     const std::string& out, const std::string& tokenizer,
                     HiddenProjection* proj) {
  auto dir = core::AtomicDir::create(out + "/checkpoint").take_or_throw();
  SaveOptions so;
  so.dtype = "float32";  // exact resume needs the full-precision weights
  so.tokenizer_json = tokenizer;
  so.provenance = {{"stage", "train"}, {"step", st.step}};
  model_write(m, dir.path(), so);
  torch::save(opt, dir.path() + "/optimizer.pt");
  if (proj && !(*proj)->identity()) torch::save(*proj, dir.path() + "/projection.pt");
  nlohmann::json j = {{"step", st.step},
                      {"epoch", st.cursor.epoch},
                      {"index", st.cursor.index},
                      {"best_val_loss", std::isfinite(st.best_val) ? nlohmann::json(st.best_val)
                                                                   : nlohmann::json(nullptr)}};
  throw_if_error(core::write_file_atomic(dir.path() + "/state.json", j.dump(2) + "\n"));
  throw_if_error(dir.commit());
}

// Keep the metrics of steps <= `step` (a resumed run rewrites what came after).
void metrics_truncate(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("step", int64_t(0)) <= step) kept += line + "\n";
  }
  throw_if_error(core::write_file_atomic(path, kept));
}

// Streams every token of a dataset through a hash: the key of the teacher cache.
std::string data_key(const std::string& dir, const core::TokenDataset& ds) {
  uint64_t h = 0xcbf29ce484222325ULL;
  std::vector<int32_t> buf(1 << 16);
  for (uint64_t pos = 0; pos < ds.size(); pos += buf.size()) {
    uint64_t n = std::min<uint64_t>(buf.size(), ds.size() - pos);
    ds.read(pos, n, buf.data());
    for (uint64_t i = 0; i < n; ++i) {
      h = (h ^ uint32_t(buf[i])) * 0x100000001b3ULL;
    }
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
  return ds.tokenizer_fingerprint() + ":" + hex + ":" + fs::absolute(dir).string();
}

// Mean forward KL(teacher || student) at T=1 per predicted position over the evaluation
// windows (core::eval_windows), and the teacher's mean NLL there.
double kl_over_windows(CausalLM& s, CausalLM& t, const std::vector<int32_t>& tokens,
                       int64_t seq_len) {
  torch::NoGradGuard ng;
  s->eval();
  double sum = 0;
  uint64_t n = 0;
  for (const core::EvalWindow& w : core::eval_windows(tokens.size(), seq_len)) {
    auto ids = torch::from_blob(const_cast<int32_t*>(tokens.data() + w.start), {1, w.len},
                                torch::kInt32)
                   .to(torch::kLong)
                   .narrow(1, 0, w.len - 1);
    auto kl = kd_forward_kl(s->forward(ids).logits, t->forward(ids).logits, 1.0);
    sum += kl.item<double>() * double(w.len - 1);
    n += uint64_t(w.len - 1);
  }
  return n ? sum / double(n) : NAN;
}

}  // namespace

TrainResult train_run(const TrainOptions& o) {
  train_validate(o);
  fs::create_directories(o.out);
  const std::string ckpt = o.out + "/checkpoint";
  const bool resuming = o.resume && fs::exists(ckpt + "/state.json");
  if (o.resume && !resuming && o.config.empty() && o.model.empty()) {
    bad("--resume: no checkpoint at " + ckpt + " and no --config/--model to start from");
  }

  // Teacher (distillation): eval mode, no gradients, never in the optimizer.
  const bool distill = !o.teacher.empty();
  CausalLM teacher{nullptr};
  std::string tokenizer = o.tokenizer;
  std::vector<int64_t> keep;
  if (distill) {
    teacher = model_load(o.teacher);
    teacher->eval();
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
    if (tokenizer.empty() && fs::exists(o.teacher + "/tokenizer.json")) {
      tokenizer = o.teacher + "/tokenizer.json";
    }
    if (!o.student_layers.empty()) {
      keep = parse_layer_list(o.student_layers, teacher->config().num_layers);
      throw_if_error(core::config_keep_layers(teacher->config(), keep)
                         .status()
                         .with_context("--student-layers " + o.student_layers));
    }
  }

  // Model (the student when distilling) and tokenizer.
  torch::manual_seed(o.seed);
  CausalLM m{nullptr};
  std::string student_source;
  if (resuming) {
    student_source = "checkpoint";
    m = model_load(ckpt);
    if (tokenizer.empty() && fs::exists(ckpt + "/tokenizer.json")) tokenizer = ckpt + "/tokenizer.json";
  } else if (!keep.empty()) {
    m = student_from_layers(teacher, keep);
    student_source = "teacher layers " + o.student_layers;
  } else if (!o.model.empty()) {
    m = model_load(o.model);
    student_source = o.model;
    if (tokenizer.empty() && fs::exists(o.model + "/tokenizer.json")) {
      tokenizer = o.model + "/tokenizer.json";
    }
  } else {
    core::ModelConfig c =
        core::config_from_json(core::read_file(o.config).take_or_throw(), o.config).take_or_throw();
    m = model_create(c, o.seed);
    student_source = o.config;
  }
  const core::ModelConfig& cfg = m->config();
  if (distill && cfg.vocab_size != teacher->config().vocab_size) {
    bad("the student's vocab_size is " + std::to_string(cfg.vocab_size) + " but the teacher's is " +
        std::to_string(teacher->config().vocab_size) +
        ": logit distillation needs the same vocabulary (and tokenizer)");
  }
  SparsityMasks masks;
  const bool gradual = o.prune_final > 0;
  if (o.masks != "off") masks = masks_from_zeros(m, o.masks == "on" || gradual ? 0.0 : 0.01);
  // Gradual pruning: the targeted matrices, re-masked by magnitude on the cubic schedule.
  std::vector<torch::Tensor> prune_mats;
  const NMPattern prune_nm = gradual ? nm_parse(o.prune_pattern) : NMPattern{};
  if (gradual) {
    std::regex re(o.prune_targets);
    for (auto& p : m->named_parameters()) {
      std::string mod = p.key().substr(0, p.key().rfind('.'));
      if (p.value().dim() == 2 && std::regex_match(mod, re)) prune_mats.push_back(p.value());
    }
    if (prune_mats.empty()) bad("--prune-targets '" + o.prune_targets + "' matches no matrix");
  }
  auto gradual_step = [&](int64_t step) {  // after optimizer step `step` (1-based)
    if (!gradual || step < o.prune_start || step > o.prune_end) return;
    if ((step - o.prune_start) % o.prune_every != 0 && step != o.prune_end) return;
    double s = sparsity_at(o.prune_initial, o.prune_final, o.prune_start, o.prune_end, step);
    torch::NoGradGuard ng;
    masks.entries.clear();
    masks.masked = masks.total = 0;
    for (auto& w : prune_mats) {
      // N:M applies once the schedule reaches its end; before, unstructured magnitude.
      auto keep = (prune_nm.on() && step == o.prune_end)
                      ? mask_magnitude(w, s, prune_nm)
                      : mask_magnitude(w, s, NMPattern{});
      auto mk = keep.to(torch::kFloat32);
      w.mul_(mk);
      masks.entries.emplace_back(w, mk);
      masks.masked += keep.numel() - keep.sum().item<int64_t>();
      masks.total += keep.numel();
    }
  };

  // Hidden-state loss: index pairs and the learned projections (student width -> teacher).
  std::vector<std::pair<int64_t, int64_t>> hmap;
  HiddenProjection proj{nullptr};
  if (distill && o.hidden_loss != "none") {
    hmap = hidden_layer_map(o.hidden_map, cfg.num_layers, teacher->config().num_layers, keep);
    torch::manual_seed(o.seed + 1);
    proj = HiddenProjection(int64_t(hmap.size()), cfg.hidden_size, teacher->config().hidden_size);
  }

  // Data.
  std::string data_dir = prepare_data(o, tokenizer, o.progress);
  core::TokenDataset train_ds = core::TokenDataset::open(data_dir, core::Split::kTrain).take_or_throw();
  core::TokenDataset val_ds = core::TokenDataset::open(data_dir, core::Split::kVal).take_or_throw();
  if (train_ds.vocab_size() > cfg.vocab_size) {
    bad(data_dir + ": tokens use a vocabulary of " + std::to_string(train_ds.vocab_size()) +
        " but the model's vocab_size is " + std::to_string(cfg.vocab_size));
  }
  core::SequencePacker packer(&train_ds, o.seq_len, o.seed, /*shuffle=*/true);
  if (packer.windows_per_epoch() == 0) {
    bad(data_dir + ": " + std::to_string(train_ds.size()) + " training tokens are too few for one " +
        "window of --seq-len " + std::to_string(o.seq_len));
  }
  uint64_t n_val = val_ds.size();
  if (o.eval_tokens) n_val = std::min<uint64_t>(n_val, o.eval_tokens);
  std::vector<int32_t> val_tokens(n_val);
  if (n_val) val_ds.read(0, n_val, val_tokens.data());

  // Optimizer: decoupled weight decay on the matrices only (unless --decay-all).
  std::vector<torch::Tensor> decay, no_wd;
  for (auto& p : m->named_parameters()) {
    (o.decay_all || !no_decay(p.key()) ? decay : no_wd).push_back(p.value());
  }
  if (proj) {
    if (resuming && !proj->identity()) {
      if (!fs::exists(ckpt + "/projection.pt")) {
        bad(ckpt + ": no projection.pt for the hidden-state loss; resume with the same "
                   "--hidden-loss options as the interrupted run");
      }
      torch::load(proj, ckpt + "/projection.pt");
    }
    for (auto& p : proj->parameters()) decay.push_back(p);
  }
  auto opts = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(o.weight_decay)));
  if (!no_wd.empty()) {
    groups.emplace_back(no_wd, std::make_unique<torch::optim::AdamWOptions>(
                                  torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  }
  torch::optim::AdamW opt(groups, opts);

  State st;
  if (resuming) {
    torch::load(opt, ckpt + "/optimizer.pt");
    auto j = nlohmann::json::parse(core::read_file(ckpt + "/state.json").take_or_throw());
    st.step = j.at("step").get<int64_t>();
    st.cursor.epoch = j.at("epoch").get<uint64_t>();
    st.cursor.index = j.at("index").get<uint64_t>();
    if (j["best_val_loss"].is_number()) st.best_val = j["best_val_loss"].get<double>();
    packer.set_cursor(st.cursor);
    metrics_truncate(o.out + "/metrics.jsonl", st.step);
  } else if (fs::exists(o.out + "/metrics.jsonl")) {
    fs::remove(o.out + "/metrics.jsonl");
  }
  std::ofstream metrics(o.out + "/metrics.jsonl", std::ios::app);

  auto evaluate = [&]() -> double {
    if (val_tokens.size() < 2) return NAN;
    auto [sum, n] = nll_over_windows(m, val_tokens.data(), val_tokens.size(), o.seq_len, 8);
    return sum / double(n);
  };

  // Teacher top-k cache: built once over every training window, reused by later runs.
  std::optional<TeacherCache> cache;
  TrainResult r;
  if (distill && !o.teacher_cache.empty()) {
    cache = TeacherCache::open_or_build(o.teacher_cache, teacher, o.teacher, train_ds,
                                        data_key(data_dir, train_ds), o.seq_len, o.cache_topk,
                                        o.progress);
    r.cache_bytes = cache->bytes();
    r.cache_build_seconds = cache->build_seconds();
  }
  if (distill && val_tokens.size() >= 2) {
    auto [sum, n] = nll_over_windows(teacher, val_tokens.data(), val_tokens.size(), o.seq_len, 8);
    r.teacher_val_loss = sum / double(n);
  }
  if (!masks.empty()) {
    masks.mask_weights();
    r.student_sparsity = double(masks.masked) / double(std::max<int64_t>(1, masks.total));
  }
  const bool want_hidden = bool(proj);

  r.parameters = m->num_parameters();
  r.train_tokens = train_ds.size();
  r.val_tokens = val_tokens.size();
  const int64_t micro = o.batch / o.grad_accum;
  const int64_t L = o.seq_len;
  std::vector<int32_t> buf(size_t(micro * (L + 1)));
  std::vector<uint64_t> win_ids(static_cast<size_t>(micro));
  double kd_window = 0, ce_window = 0, hid_window = 0;
  core::Progress prog("train", uint64_t(o.steps), "steps", o.progress);
  double loss_window = 0;
  int64_t window_steps = 0;
  auto t_start = Clock::now();
  auto t_window = t_start;
  const int64_t first_step = st.step;
  m->train();
  for (int64_t step = st.step; step < o.steps; ++step) {
    const double lr = lr_at(o, step);
    for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    opt.zero_grad();
    double step_loss = 0;
    for (int64_t a = 0; a < o.grad_accum; ++a) {
      packer.next_batch(micro, buf.data(), win_ids.data());
      auto seq = torch::from_blob(buf.data(), {micro, L + 1}, torch::kInt32).to(torch::kLong);
      auto inputs = seq.narrow(1, 0, L), targets = seq.narrow(1, 1, L);
      if (o.bf16) {
        at::autocast::set_cpu_enabled(true);
        at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
      }
      ForwardOutput sout = m->forward(inputs, want_hidden);
      auto ce = torch::nn::functional::cross_entropy(sout.logits.reshape({-1, cfg.vocab_size}),
                                                     targets.reshape({-1}));
      torch::Tensor loss = ce;
      if (distill) {
        torch::Tensor kd;
        ForwardOutput to;
        if (cache) {
          auto [ids, vals] = cache->lookup(win_ids);
          kd = kd_topk_forward_kl(sout.logits, ids, vals, o.temperature);
        } else {
          {
            torch::NoGradGuard ng;
            to = teacher->forward(inputs, want_hidden);
          }
          kd = o.kd_loss == "reverse" ? kd_reverse_kl(sout.logits, to.logits, o.temperature)
                                      : kd_forward_kl(sout.logits, to.logits, o.temperature);
        }
        loss = o.alpha * kd + (1.0 - o.alpha) * ce;
        kd_window += kd.item<double>() / double(o.grad_accum);
        if (want_hidden) {
          torch::Tensor h = torch::zeros({}, torch::kFloat32);
          for (size_t i = 0; i < hmap.size(); ++i) {
            auto hs = proj->forward(int64_t(i), sout.hidden_states[size_t(hmap[i].first)]);
            const auto& ht = to.hidden_states[size_t(hmap[i].second)];
            h = h + (o.hidden_loss == "mse" ? hidden_mse(hs, ht) : hidden_cosine(hs, ht));
          }
          h = h / double(hmap.size());
          loss = loss + o.hidden_weight * h;
          hid_window += h.item<double>() / double(o.grad_accum);
        }
      }
      if (o.bf16) {
        at::autocast::set_cpu_enabled(false);
        at::autocast::clear_cache();
      }
      (loss / double(o.grad_accum)).backward();
      step_loss += loss.item<double>() / double(o.grad_accum);
      ce_window += ce.item<double>() / double(o.grad_accum);
    }
    masks.mask_grads();
    if (o.clip > 0) {
      std::vector<torch::Tensor> all = m->parameters();
      if (proj) {
        for (auto& p : proj->parameters()) all.push_back(p);
      }
      torch::nn::utils::clip_grad_norm_(all, o.clip);
    }
    opt.step();
    masks.mask_weights();
    gradual_step(step + 1);
    st.step = step + 1;
    st.cursor = packer.cursor();
    loss_window += step_loss;
    window_steps++;
    const bool last = st.step == o.steps;
    if (st.step % o.log_every == 0 || last) {
      double secs = std::chrono::duration<double>(Clock::now() - t_window).count();
      double tps = secs > 0 ? double(window_steps * o.batch * L) / secs : 0.0;
      r.final_loss = loss_window / double(window_steps);
      nlohmann::json line = {{"step", st.step}, {"loss", r.final_loss}, {"lr", lr},
                             {"tokens_per_second", tps}};
      if (distill) {
        line["kd"] = kd_window / double(window_steps);
        line["ce"] = ce_window / double(window_steps);
        if (want_hidden) line["hidden"] = hid_window / double(window_steps);
      }
      metrics << line.dump() << "\n";
      kd_window = ce_window = hid_window = 0;
      metrics.flush();
      loss_window = 0;
      window_steps = 0;
      t_window = Clock::now();
    }
    char extra[96];
    std::snprintf(extra, sizeof extra, "loss %.4f  lr %.2e", step_loss, lr);
    prog.update(uint64_t(st.step), extra);
    if ((o.eval_every && st.step % o.eval_every == 0) || last) {
      double v = evaluate();
      if (distill && std::isfinite(v)) r.val_kl = kl_over_windows(m, teacher, val_tokens, o.seq_len);
      m->train();
      if (std::isfinite(v)) {
        nlohmann::json line = {{"step", st.step}, {"val_loss", v}, {"val_perplexity", std::exp(v)}};
        if (distill) line["val_kl"] = r.val_kl;
        metrics << line.dump() << "\n";
        metrics.flush();
        r.val_loss = v;
        r.val_perplexity = std::exp(v);
        if (v < st.best_val) {
          st.best_val = v;
          SaveOptions so;
          so.tokenizer_json = tokenizer;
          so.provenance = {{"stage", distill ? "distill" : "train"}, {"step", st.step},
                           {"val_loss", v}};
          model_save(m, o.out + "/best", so);
        }
      }
    }
    if ((o.save_every && st.step % o.save_every == 0) || last ||
        (o.stop_after && st.step == o.stop_after)) {
      save_checkpoint(m, opt, st, o.out, tokenizer, proj ? &proj : nullptr);
    }
    if (o.stop_after && st.step == o.stop_after && !last) {
      r.steps = st.step;
      return r;  // as if killed right after this checkpoint
    }
  }
  prog.finish();
  r.steps = st.step;
  r.best_val_loss = st.best_val;
  if (!masks.empty()) {
    r.student_sparsity = double(masks.masked) / double(std::max<int64_t>(1, masks.total));
  }
  r.seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  r.tokens_per_second =
      r.seconds > 0 ? double(st.step - first_step) * double(o.batch * L) / r.seconds : 0.0;
  SaveOptions so;
  so.tokenizer_json = tokenizer;
  so.provenance = {{"stage", distill ? "distill" : "train"}, {"steps", st.step}, {"seed", o.seed},
                   {"val_loss", r.val_loss}, {"data", o.data}};
  if (distill) {
    so.provenance["teacher"] = o.teacher;
    so.provenance["student_init"] = student_source;
    so.provenance["temperature"] = o.temperature;
    so.provenance["alpha"] = o.alpha;
    so.provenance["kd_loss"] = o.kd_loss;
    so.provenance["hidden_loss"] = o.hidden_loss;
  }
  if (!masks.empty()) so.provenance["sparsity_kept"] = r.student_sparsity;
  model_save(m, o.out + "/model", so);
  nlohmann::json summary = {{"steps", r.steps}, {"final_loss", r.final_loss},
                            {"val_loss", r.val_loss}, {"val_perplexity", r.val_perplexity},
                            {"best_val_loss", r.best_val_loss},
                            {"tokens_per_second", r.tokens_per_second}, {"seconds", r.seconds},
                            {"parameters", r.parameters}, {"train_tokens", r.train_tokens},
                            {"val_tokens", r.val_tokens}};
  if (distill) {
    summary["val_kl"] = r.val_kl;
    summary["teacher_val_loss"] = r.teacher_val_loss;
    summary["teacher_val_perplexity"] = std::exp(r.teacher_val_loss);
    summary["student_init"] = student_source;
    summary["teacher_cache_bytes"] = r.cache_bytes;
    summary["teacher_cache_build_seconds"] = r.cache_build_seconds;
  }
  if (!masks.empty()) summary["sparsity_kept"] = r.student_sparsity;
  throw_if_error(core::write_file_atomic(o.out + (distill ? "/distill.json" : "/train.json"),
                                         summary.dump(2) + "\n"));
  return r;
}

}  // namespace shrink::train
