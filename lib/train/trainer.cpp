// Trainer implementation (see trainer.h): data preparation, AdamW with parameter groups, the
// learning-rate schedule, accumulation, clipping, validation, checkpoints and exact resume.
#include "train/trainer.h"

#include <ATen/autocast_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/tokenizer.h"
#include "train/model.h"

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

void validate(const TrainOptions& o) {
  if (o.out.empty()) bad("--out is required");
  if (o.data.empty()) bad("--data is required");
  if (o.config.empty() == o.model.empty() && !o.resume) {
    bad("give exactly one of --config config.json (new model) or --model DIR (continue)");
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
                     const std::string& out, const std::string& tokenizer) {
  auto dir = core::AtomicDir::create(out + "/checkpoint").take_or_throw();
  SaveOptions so;
  so.dtype = "float32";  // exact resume needs the full-precision weights
  so.tokenizer_json = tokenizer;
  so.provenance = {{"stage", "train"}, {"step", st.step}};
  model_write(m, dir.path(), so);
  torch::save(opt, dir.path() + "/optimizer.pt");
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

}  // namespace

TrainResult train_run(const TrainOptions& o) {
  validate(o);
  fs::create_directories(o.out);
  const std::string ckpt = o.out + "/checkpoint";
  const bool resuming = o.resume && fs::exists(ckpt + "/state.json");
  if (o.resume && !resuming && o.config.empty() && o.model.empty()) {
    bad("--resume: no checkpoint at " + ckpt + " and no --config/--model to start from");
  }

  // Model and tokenizer.
  torch::manual_seed(o.seed);
  CausalLM m{nullptr};
  std::string tokenizer = o.tokenizer;
  if (resuming) {
    m = model_load(ckpt);
    if (tokenizer.empty() && fs::exists(ckpt + "/tokenizer.json")) tokenizer = ckpt + "/tokenizer.json";
  } else if (!o.model.empty()) {
    m = model_load(o.model);
    if (tokenizer.empty() && fs::exists(o.model + "/tokenizer.json")) {
      tokenizer = o.model + "/tokenizer.json";
    }
  } else {
    core::ModelConfig c =
        core::config_from_json(core::read_file(o.config).take_or_throw(), o.config).take_or_throw();
    m = model_create(c, o.seed);
  }
  const core::ModelConfig& cfg = m->config();

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
  std::vector<torch::Tensor> decay, keep;
  for (auto& p : m->named_parameters()) {
    (o.decay_all || !no_decay(p.key()) ? decay : keep).push_back(p.value());
  }
  auto opts = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(o.weight_decay)));
  if (!keep.empty()) {
    groups.emplace_back(keep, std::make_unique<torch::optim::AdamWOptions>(
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

  TrainResult r;
  r.parameters = m->num_parameters();
  r.train_tokens = train_ds.size();
  r.val_tokens = val_tokens.size();
  const int64_t micro = o.batch / o.grad_accum;
  const int64_t L = o.seq_len;
  std::vector<int32_t> buf(size_t(micro * (L + 1)));
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
      packer.next_batch(micro, buf.data());
      auto seq = torch::from_blob(buf.data(), {micro, L + 1}, torch::kInt32).to(torch::kLong);
      auto inputs = seq.narrow(1, 0, L), targets = seq.narrow(1, 1, L);
      torch::Tensor logits;
      if (o.bf16) {
        at::autocast::set_cpu_enabled(true);
        at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
        logits = m->forward(inputs).logits;
        at::autocast::set_cpu_enabled(false);
        at::autocast::clear_cache();
      } else {
        logits = m->forward(inputs).logits;
      }
      auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, cfg.vocab_size}),
                                                       targets.reshape({-1}));
      (loss / double(o.grad_accum)).backward();
      step_loss += loss.item<double>() / double(o.grad_accum);
    }
    if (o.clip > 0) torch::nn::utils::clip_grad_norm_(m->parameters(), o.clip);
    opt.step();
    st.step = step + 1;
    st.cursor = packer.cursor();
    loss_window += step_loss;
    window_steps++;
    const bool last = st.step == o.steps;
    if (st.step % o.log_every == 0 || last) {
      double secs = std::chrono::duration<double>(Clock::now() - t_window).count();
      double tps = secs > 0 ? double(window_steps * o.batch * L) / secs : 0.0;
      r.final_loss = loss_window / double(window_steps);
      metrics << nlohmann::json({{"step", st.step}, {"loss", r.final_loss}, {"lr", lr},
                                 {"tokens_per_second", tps}})
                     .dump()
              << "\n";
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
      m->train();
      if (std::isfinite(v)) {
        metrics << nlohmann::json({{"step", st.step}, {"val_loss", v},
                                   {"val_perplexity", std::exp(v)}})
                       .dump()
                << "\n";
        metrics.flush();
        r.val_loss = v;
        r.val_perplexity = std::exp(v);
        if (v < st.best_val) {
          st.best_val = v;
          SaveOptions so;
          so.tokenizer_json = tokenizer;
          so.provenance = {{"stage", "train"}, {"step", st.step}, {"val_loss", v}};
          model_save(m, o.out + "/best", so);
        }
      }
    }
    if ((o.save_every && st.step % o.save_every == 0) || last ||
        (o.stop_after && st.step == o.stop_after)) {
      save_checkpoint(m, opt, st, o.out, tokenizer);
    }
    if (o.stop_after && st.step == o.stop_after && !last) {
      r.steps = st.step;
      return r;  // as if killed right after this checkpoint
    }
  }
  prog.finish();
  r.steps = st.step;
  r.best_val_loss = st.best_val;
  r.seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  r.tokens_per_second =
      r.seconds > 0 ? double(st.step - first_step) * double(o.batch * L) / r.seconds : 0.0;
  SaveOptions so;
  so.tokenizer_json = tokenizer;
  so.provenance = {{"stage", "train"}, {"steps", st.step}, {"seed", o.seed},
                   {"val_loss", r.val_loss}, {"data", o.data}};
  model_save(m, o.out + "/model", so);
  nlohmann::json summary = {{"steps", r.steps}, {"final_loss", r.final_loss},
                            {"val_loss", r.val_loss}, {"val_perplexity", r.val_perplexity},
                            {"best_val_loss", r.best_val_loss},
                            {"tokens_per_second", r.tokens_per_second}, {"seconds", r.seconds},
                            {"parameters", r.parameters}, {"train_tokens", r.train_tokens},
                            {"val_tokens", r.val_tokens}};
  throw_if_error(core::write_file_atomic(o.out + "/train.json", summary.dump(2) + "\n"));
  return r;
}

}  // namespace shrink::train
