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

#include <signal.h>

#include "core/dataset.h"
#include "pipeline/launch.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/tokenizer.h"
#include "train/dist.h"
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
  if (o.nproc < 1 || o.nproc > 256) bad("--nproc " + std::to_string(o.nproc) + ": expected 1..256");
  if (!(o.dist_timeout >= 1)) bad("--dist-timeout must be >= 1 second");
  if (!(o.bucket_mb > 0)) bad("--bucket-mb must be > 0");
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
  std::string dtype;  // the dtype outputs are saved in (the checkpoint itself is float32)
  core::SequencePacker::Cursor cursor;
  double best_val = INFINITY;
  // Where the student came from, kept across --resume so that the final model's provenance
  // (shrink.json) is byte-identical to an uninterrupted run's.
  std::string student_init;
  // The metrics.jsonl window in progress (sums since the last logged step, over all ranks), so
  // that a resumed run logs the same figures as an uninterrupted one.
  struct LogWindow {
    double loss = 0, kd = 0, ce = 0, hidden = 0;
    int64_t steps = 0;
  } window;
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
                      {"dtype", st.dtype},
                      {"epoch", st.cursor.epoch},
                      {"index", st.cursor.index},
                      {"best_val_loss", std::isfinite(st.best_val) ? nlohmann::json(st.best_val)
                                                                   : nlohmann::json(nullptr)},
                      {"student_init", st.student_init},
                      {"log_window", {{"steps", st.window.steps},
                                      {"loss", st.window.loss},
                                      {"kd", st.window.kd},
                                      {"ce", st.window.ce},
                                      {"hidden", st.window.hidden}}}};
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
std::pair<double, uint64_t> kl_over_windows(CausalLM& s, CausalLM& t, const int32_t* tokens,
                                            uint64_t n_tokens, int64_t seq_len) {
  torch::NoGradGuard ng;
  s->eval();
  double sum = 0;
  uint64_t n = 0;
  for (const core::EvalWindow& w : core::eval_windows(n_tokens, seq_len)) {
    auto ids = torch::from_blob(const_cast<int32_t*>(tokens + w.start), {1, w.len},
                                torch::kInt32)
                   .to(torch::kLong)
                   .narrow(1, 0, w.len - 1);
    auto kl = kd_forward_kl(s->forward(ids).logits, t->forward(ids).logits, 1.0);
    sum += kl.item<double>() * double(w.len - 1);
    n += uint64_t(w.len - 1);
  }
  return {sum, n};
}

// This rank's share of the evaluation windows of n tokens: whole windows of seq_len, so the
// union over ranks is exactly core::eval_windows(n, seq_len). Returns {first token, count}.
std::pair<uint64_t, uint64_t> eval_shard(uint64_t n, int64_t seq_len, int rank, int world) {
  const uint64_t L = uint64_t(seq_len);
  const uint64_t windows = (n + L - 1) / L;
  const uint64_t per = (windows + uint64_t(world) - 1) / uint64_t(world);
  const uint64_t a = std::min(n, uint64_t(rank) * per * L);
  const uint64_t b = std::min(n, uint64_t(rank + 1) * per * L);
  return {a, b - a};
}

// A test aid for the dead-rank test: SHRINK_TEST_KILL_RANK=r SHRINK_TEST_KILL_STEP=s makes rank
// r SIGKILL itself after optimizer step s, the way an OOM kill or a lost machine would.
void maybe_die(int rank, int64_t step) {
  static const int kill_rank = [] {
    const char* r = std::getenv("SHRINK_TEST_KILL_RANK");
    return r ? std::atoi(r) : -1;
  }();
  static const int64_t kill_step = [] {
    const char* s = std::getenv("SHRINK_TEST_KILL_STEP");
    return s ? std::atoll(s) : int64_t(-1);
  }();
  if (kill_rank == rank && kill_step == step) ::raise(SIGKILL);
}

}  // namespace

TrainResult train_run(const TrainOptions& o) {
  train_validate(o);
  // Data parallel: join the group the environment describes (WORLD_SIZE > 1).
  const pipeline::DistEnv denv = pipeline::dist_env_read().take_or_throw();
  if (o.nproc > 1 && denv.world_size != o.nproc) {
    bad("--nproc " + std::to_string(o.nproc) + " but WORLD_SIZE=" +
        std::to_string(denv.world_size) + " in the environment: the launcher sets WORLD_SIZE; "
        "under torchrun or a hand launch leave --nproc out");
  }
  std::unique_ptr<DistGroup> group;
  if (denv.active && denv.world_size > 1) group = DistGroup::join(denv, o.dist_timeout);
  const int rank = group ? group->rank() : 0, world = group ? group->size() : 1;
  const bool lead = rank == 0;
  // Sum a few doubles over ranks (validation sums, logged loss windows).
  auto sum_over_ranks = [&](std::vector<double> v, const char* what) {
    if (!group) return v;
    auto t = torch::from_blob(v.data(), {int64_t(v.size())}, torch::kFloat64).clone();
    group->allreduce_sum(t, what);
    for (size_t i = 0; i < v.size(); ++i) v[i] = t[int64_t(i)].item<double>();
    return v;
  };
  fs::create_directories(o.out);
  const std::string ckpt = o.out + "/checkpoint";
  const bool resuming = o.resume && fs::exists(ckpt + "/state.json");
  if (o.resume && !resuming && o.config.empty() && o.model.empty() && o.student_layers.empty()) {
    bad("--resume: no checkpoint at " + ckpt + " and no --config/--model (or --student-layers) "
        "to start from");
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
  // Every rank starts from rank 0's weights (identical by seed already; this also covers
  // machines whose copies of the inputs differ).
  if (group) group->broadcast(m->parameters());
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
    if (group) group->broadcast(proj->parameters());
  }

  // Data.
  // Text is tokenized once, by rank 0; the others then find its shards (for multi-machine runs,
  // --out on a shared filesystem or token shards on every machine).
  std::string data_dir;
  if (lead) data_dir = prepare_data(o, tokenizer, o.progress);
  if (group) group->barrier("waiting for rank 0 to tokenize the data", 24 * 3600.0);
  if (!lead) data_dir = prepare_data(o, tokenizer, false);
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
  st.dtype = cfg.dtype;
  st.student_init = student_source;
  if (resuming) {
    torch::load(opt, ckpt + "/optimizer.pt");
    auto j = nlohmann::json::parse(core::read_file(ckpt + "/state.json").take_or_throw());
    st.step = j.at("step").get<int64_t>();
    // A resumed run saves in the dtype the interrupted run would have used, not the
    // checkpoint's float32 (older checkpoints lack the field: float32).
    st.dtype = j.value("dtype", cfg.dtype);
    st.cursor.epoch = j.at("epoch").get<uint64_t>();
    st.cursor.index = j.at("index").get<uint64_t>();
    if (j["best_val_loss"].is_number()) st.best_val = j["best_val_loss"].get<double>();
    // Older checkpoints lack the field: "checkpoint", as they always said.
    st.student_init = j.value("student_init", student_source);
    student_source = st.student_init;
    if (j.contains("log_window") && j["log_window"].is_object()) {  // older checkpoints lack it
      const auto& w = j["log_window"];
      st.window = {w.at("loss").get<double>(), w.at("kd").get<double>(), w.at("ce").get<double>(),
                   w.at("hidden").get<double>(), w.at("steps").get<int64_t>()};
    }
    packer.set_cursor(st.cursor);
    if (lead) metrics_truncate(o.out + "/metrics.jsonl", st.step);
  } else if (lead && fs::exists(o.out + "/metrics.jsonl")) {
    fs::remove(o.out + "/metrics.jsonl");
  }
  std::ofstream metrics;
  if (lead) metrics.open(o.out + "/metrics.jsonl", std::ios::app);

  // Validation is split over the ranks by whole windows and the sums are all-reduced, so every
  // rank gets the same figure as one process would.
  const auto [val_first, val_count] = eval_shard(val_tokens.size(), o.seq_len, rank, world);
  // Mean over every rank's shard of `sum_fn(tokens, n)` -> {sum, count}.
  auto sharded_mean = [&](const auto& sum_fn, const char* what) -> double {
    double sum = 0, n = 0;
    if (val_count >= 2) {
      auto [s_, n_] = sum_fn(val_tokens.data() + val_first, val_count);
      sum = s_;
      n = double(n_);
    }
    auto v = sum_over_ranks({sum, n}, what);
    return v[1] > 0 ? v[0] / v[1] : NAN;
  };
  auto sharded_nll = [&](CausalLM& model) -> double {
    return sharded_mean([&](const int32_t* t, uint64_t n) {
      return nll_over_windows(model, t, n, o.seq_len, 8);
    }, "the validation all-reduce");
  };
  auto evaluate = [&]() -> double {
    if (val_tokens.size() < 2) return NAN;
    return sharded_nll(m);
  };
  auto sharded_kl = [&]() -> double {
    return sharded_mean([&](const int32_t* t, uint64_t n) {
      return kl_over_windows(m, teacher, t, n, o.seq_len);
    }, "the validation KL all-reduce");
  };

  // Teacher top-k cache: built once over every training window, reused by later runs.
  std::optional<TeacherCache> cache;
  TrainResult r;
  if (distill && !o.teacher_cache.empty()) {
    // Rank 0 builds it; the others open what it wrote.
    auto open_cache = [&](bool progress) {
      cache = TeacherCache::open_or_build(o.teacher_cache, teacher, o.teacher, train_ds,
                                          data_key(data_dir, train_ds), o.seq_len, o.cache_topk,
                                          progress);
    };
    if (lead) open_cache(o.progress);
    if (group) group->barrier("waiting for rank 0 to build the teacher cache", 24 * 3600.0);
    if (!lead) open_cache(false);
    r.cache_bytes = cache->bytes();
    r.cache_build_seconds = cache->build_seconds();
  }
  if (distill && val_tokens.size() >= 2) r.teacher_val_loss = sharded_nll(teacher);
  if (!masks.empty()) {
    masks.mask_weights();
    r.student_sparsity = double(masks.masked) / double(std::max<int64_t>(1, masks.total));
  }
  const bool want_hidden = bool(proj);
  // Gradient all-reduce over the student's (and the projections') parameters.
  std::unique_ptr<GradReducer> reducer;
  if (group) {
    std::vector<torch::Tensor> trainable = m->parameters();
    if (proj) {
      for (auto& p : proj->parameters()) trainable.push_back(p);
    }
    reducer = std::make_unique<GradReducer>(group.get(), trainable,
                                            int64_t(o.bucket_mb * 1024 * 1024));
    r.grad_bytes_per_step = reducer->grad_bytes();
    r.ring_bytes_per_step = reducer->ring_bytes_sent();
    r.buckets = reducer->buckets();
  }
  r.rank = rank;
  r.world_size = world;

  r.parameters = m->num_parameters();
  r.train_tokens = train_ds.size();
  r.val_tokens = val_tokens.size();
  const int64_t micro = o.batch / o.grad_accum;
  const int64_t L = o.seq_len;
  std::vector<int32_t> buf(size_t(micro * (L + 1)));
  std::vector<uint64_t> win_ids(static_cast<size_t>(micro));
  // The metrics window: per-rank sums since the last logged step. A resumed run's rank 0 starts
  // from the checkpoint's sums over all ranks (the log all-reduce adds the rest).
  double kd_window = lead ? st.window.kd : 0, ce_window = lead ? st.window.ce : 0;
  double hid_window = lead ? st.window.hidden : 0;
  core::Progress prog("train", uint64_t(o.steps), "steps", o.progress && lead);
  double loss_window = lead ? st.window.loss : 0;
  int64_t window_steps = st.window.steps;
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
      // This rank's disjoint slice of the global micro-batch of world * micro windows.
      packer.next_batch_slice(micro * world, micro * rank, micro, buf.data(), win_ids.data());
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
      if (reducer && a == o.grad_accum - 1) reducer->arm();
      (loss / double(o.grad_accum)).backward();
      if (reducer && a == o.grad_accum - 1) reducer->finish();
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
    maybe_die(rank, st.step);
    st.cursor = packer.cursor();
    loss_window += step_loss;
    window_steps++;
    const bool last = st.step == o.steps;
    if (st.step % o.log_every == 0 || last) {
      if (group) {  // the logged figures are over the global batch
        auto v = sum_over_ranks({loss_window, kd_window, ce_window, hid_window},
                                "the loss all-reduce");
        loss_window = v[0] / world;
        kd_window = v[1] / world;
        ce_window = v[2] / world;
        hid_window = v[3] / world;
      }
      double secs = std::chrono::duration<double>(Clock::now() - t_window).count();
      double tps = secs > 0 ? double(window_steps * o.batch * world * L) / secs : 0.0;
      r.final_loss = loss_window / double(window_steps);
      nlohmann::json line = {{"step", st.step}, {"loss", r.final_loss}, {"lr", lr},
                             {"tokens_per_second", tps}};
      if (distill) {
        line["kd"] = kd_window / double(window_steps);
        line["ce"] = ce_window / double(window_steps);
        if (want_hidden) line["hidden"] = hid_window / double(window_steps);
      }
      if (reducer) {
        line["comm_wait_s"] = reducer->wait_seconds();
        line["buckets_overlapped"] = reducer->overlapped_last();
      }
      if (lead) metrics << line.dump() << "\n";
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
      if (distill && std::isfinite(v)) r.val_kl = sharded_kl();
      m->train();
      if (std::isfinite(v)) {
        nlohmann::json line = {{"step", st.step}, {"val_loss", v}, {"val_perplexity", std::exp(v)}};
        if (distill) line["val_kl"] = r.val_kl;
        if (lead) metrics << line.dump() << "\n";
        metrics.flush();
        r.val_loss = v;
        r.val_perplexity = std::exp(v);
        if (v < st.best_val) {
          st.best_val = v;
          SaveOptions so;
          so.dtype = st.dtype;
          so.tokenizer_json = tokenizer;
          so.provenance = {{"stage", distill ? "distill" : "train"}, {"step", st.step},
                           {"val_loss", v}};
          if (lead) model_save(m, o.out + "/best", so);
        }
      }
    }
    if ((o.save_every && st.step % o.save_every == 0) || last ||
        (o.stop_after && st.step == o.stop_after)) {
      // Rank 0 writes it (weights and optimizer state are the same on every rank); every rank
      // resumes from it.
      auto w = sum_over_ranks({loss_window, kd_window, ce_window, hid_window},
                              "the loss all-reduce for the checkpoint");
      st.window = {w[0], w[1], w[2], w[3], window_steps};
      if (lead) save_checkpoint(m, opt, st, o.out, tokenizer, proj ? &proj : nullptr);
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
      r.seconds > 0 ? double(st.step - first_step) * double(o.batch * world * L) / r.seconds : 0.0;
  if (reducer) {
    r.comm_wait_seconds = reducer->wait_seconds();
    r.buckets_overlapped = reducer->overlapped_last();
  }
  if (!lead) return r;  // rank 0 writes the outputs
  SaveOptions so;
  so.dtype = st.dtype;
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
  if (group) {
    summary["data_parallel"] = {{"world_size", world},
                                {"batch_per_rank", o.batch},
                                {"global_batch", o.batch * world},
                                {"gradient_bytes_per_step", r.grad_bytes_per_step},
                                {"ring_allreduce_bytes_sent_per_rank_per_step", r.ring_bytes_per_step},
                                {"buckets", r.buckets},
                                {"buckets_launched_during_backward", r.buckets_overlapped},
                                {"allreduce_wait_seconds", r.comm_wait_seconds}};
  }
  throw_if_error(core::write_file_atomic(o.out + (distill ? "/distill.json" : "/train.json"),
                                         summary.dump(2) + "\n"));
  return r;
}

}  // namespace shrink::train
