// Trainer implementation (see trainer.h): data preparation, AdamW with parameter groups, the
// learning-rate schedule, accumulation, clipping, validation, checkpoints and exact resume.
// train_run reads as its steps (join the ranks, build the models, open the data, ... the step
// loop, the outputs); each step is a function of the section above it, the run's state in small
// structs (Ranks, Models, TrainData, State, Run).
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
#include "core/launch.h"
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

// ---- The steps of train_run ------------------------------------------------------------------

bool distilling(const TrainOptions& o) { return !o.teacher.empty(); }

// This process's place in the data-parallel group: rank 0 of 1 when there is none.
struct Ranks {
  std::unique_ptr<DistGroup> group;
  int rank = 0, world = 1;
  bool lead() const { return rank == 0; }
  // Sum a few doubles over ranks (validation sums, logged loss windows).
  std::vector<double> sum(std::vector<double> v, const char* what) const {
    if (!group) return v;
    auto t = torch::from_blob(v.data(), {int64_t(v.size())}, torch::kFloat64).clone();
    group->allreduce_sum(t, what);
    for (size_t i = 0; i < v.size(); ++i) v[i] = t[int64_t(i)].item<double>();
    return v;
  }
  // Rank 0 runs `make(progress)` first, since it writes what the others then read (token shards,
  // the teacher cache); the others follow, without a progress bar.
  template <typename F>
  void lead_first(bool progress, const char* waiting, F&& make) const {
    if (lead()) make(progress);
    // Tokenizing a corpus or building the cache may take hours: the others wait up to a day.
    if (group) group->barrier(waiting, 24 * 3600.0);
    if (!lead()) make(false);
  }
};

// Data parallel: join the group the environment describes (WORLD_SIZE > 1).
Ranks ranks_join(const TrainOptions& o) {
  const core::DistEnv denv = core::dist_env_read().take_or_throw();
  if (o.nproc > 1 && denv.world_size != o.nproc) {
    bad("--nproc " + std::to_string(o.nproc) + " but WORLD_SIZE=" +
        std::to_string(denv.world_size) + " in the environment: the launcher sets WORLD_SIZE; "
        "under torchrun or a hand launch leave --nproc out");
  }
  Ranks ranks;
  if (denv.active && denv.world_size > 1) ranks.group = DistGroup::join(denv, o.dist_timeout);
  if (ranks.group) {
    ranks.rank = ranks.group->rank();
    ranks.world = ranks.group->size();
  }
  return ranks;
}

// Where the run starts: from <out>/checkpoint when --resume finds one, else afresh.
struct Start {
  std::string ckpt;
  bool resuming = false;
};

Start start_find(const TrainOptions& o) {
  fs::create_directories(o.out);
  Start s;
  s.ckpt = o.out + "/checkpoint";
  s.resuming = o.resume && fs::exists(s.ckpt + "/state.json");
  if (o.resume && !s.resuming && o.config.empty() && o.model.empty() && o.student_layers.empty()) {
    bad("--resume: no checkpoint at " + s.ckpt + " and no --config/--model (or --student-layers) "
        "to start from");
  }
  return s;
}

// The run's models: the student (the model trained) and, when distilling, the frozen teacher.
struct Models {
  CausalLM student{nullptr};
  CausalLM teacher{nullptr};
  std::vector<int64_t> keep;   // --student-layers: the teacher's layers the student is made of
  std::string student_source;  // where the student came from (provenance)
  std::string tokenizer;       // tokenizer.json for text data and the outputs; "" when none
};

// The first model directory that has a tokenizer.json gives the run's tokenizer.
void tokenizer_default(std::string& tokenizer, const std::string& model_dir) {
  if (tokenizer.empty() && fs::exists(model_dir + "/tokenizer.json")) {
    tokenizer = model_dir + "/tokenizer.json";
  }
}

// Teacher (distillation): eval mode, no gradients, never in the optimizer.
void teacher_load(const TrainOptions& o, Models& ms) {
  ms.teacher = model_load(o.teacher);
  ms.teacher->eval();
  for (auto& p : ms.teacher->parameters()) p.set_requires_grad(false);
  tokenizer_default(ms.tokenizer, o.teacher);
  if (!o.student_layers.empty()) {
    ms.keep = parse_layer_list(o.student_layers, ms.teacher->config().num_layers);
    throw_if_error(core::config_keep_layers(ms.teacher->config(), ms.keep)
                       .status()
                       .with_context("--student-layers " + o.student_layers));
  }
}

// The student: the checkpoint's, teacher layers, a model directory, or a new seeded model from a
// config.
void student_build(const TrainOptions& o, const Start& start, Models& ms) {
  torch::manual_seed(o.seed);
  if (start.resuming) {
    ms.student_source = "checkpoint";
    ms.student = model_load(start.ckpt);
    tokenizer_default(ms.tokenizer, start.ckpt);
  } else if (!ms.keep.empty()) {
    ms.student = student_from_layers(ms.teacher, ms.keep);
    ms.student_source = "teacher layers " + o.student_layers;
  } else if (!o.model.empty()) {
    ms.student = model_load(o.model);
    ms.student_source = o.model;
    tokenizer_default(ms.tokenizer, o.model);
  } else {
    core::ModelConfig c =
        core::config_from_json(core::read_file(o.config).take_or_throw(), o.config).take_or_throw();
    ms.student = model_create(c, o.seed);
    ms.student_source = o.config;
  }
}

Models models_build(const TrainOptions& o, const Ranks& ranks, const Start& start) {
  Models ms;
  ms.tokenizer = o.tokenizer;
  if (distilling(o)) teacher_load(o, ms);
  student_build(o, start, ms);
  // Every rank starts from rank 0's weights (identical by seed already; this also covers
  // machines whose copies of the inputs differ).
  if (ranks.group) ranks.group->broadcast(ms.student->parameters());
  const core::ModelConfig& cfg = ms.student->config();
  if (distilling(o) && cfg.vocab_size != ms.teacher->config().vocab_size) {
    bad("the student's vocab_size is " + std::to_string(cfg.vocab_size) + " but the teacher's is " +
        std::to_string(ms.teacher->config().vocab_size) +
        ": logit distillation needs the same vocabulary (and tokenizer)");
  }
  return ms;
}

// Masks that keep the student's zero weights at zero (--masks; gradual pruning needs them).
SparsityMasks masks_initial(const TrainOptions& o, CausalLM& m) {
  SparsityMasks masks;
  const bool gradual = o.prune_final > 0;
  if (o.masks != "off") masks = masks_from_zeros(m, o.masks == "on" || gradual ? 0.0 : 0.01);
  return masks;
}

double masked_fraction(const SparsityMasks& masks) {
  return double(masks.masked) / double(std::max<int64_t>(1, masks.total));
}

// Gradual pruning (--prune-final): the targeted matrices, re-masked by magnitude on the cubic
// schedule. What is pruned is fixed here; when, by after_step.
class GradualPruning {
 public:
  GradualPruning(const TrainOptions& o, CausalLM& m) : o_(o), on_(o.prune_final > 0) {
    if (!on_) return;
    nm_ = nm_parse(o.prune_pattern);
    std::regex re(o.prune_targets);
    for (auto& p : m->named_parameters()) {
      std::string mod = p.key().substr(0, p.key().rfind('.'));
      if (p.value().dim() == 2 && std::regex_match(mod, re)) mats_.push_back(p.value());
    }
    if (mats_.empty()) bad("--prune-targets '" + o.prune_targets + "' matches no matrix");
  }

  // After optimizer step `step` (1-based): new masks when the schedule is due.
  void after_step(int64_t step, SparsityMasks& masks) {
    if (!on_ || step < o_.prune_start || step > o_.prune_end) return;
    if ((step - o_.prune_start) % o_.prune_every != 0 && step != o_.prune_end) return;
    double s = sparsity_at(o_.prune_initial, o_.prune_final, o_.prune_start, o_.prune_end, step);
    torch::NoGradGuard ng;
    masks.entries.clear();
    masks.masked = masks.total = 0;
    for (auto& w : mats_) {
      // N:M applies once the schedule reaches its end; before, unstructured magnitude.
      auto keep = (nm_.on() && step == o_.prune_end) ? mask_magnitude(w, s, nm_)
                                                     : mask_magnitude(w, s, NMPattern{});
      auto mk = keep.to(torch::kFloat32);
      w.mul_(mk);
      masks.entries.emplace_back(w, mk);
      masks.masked += keep.numel() - keep.sum().item<int64_t>();
      masks.total += keep.numel();
    }
  }

 private:
  const TrainOptions& o_;
  bool on_;
  NMPattern nm_;
  std::vector<torch::Tensor> mats_;
};

// Hidden-state loss (--hidden-loss): index pairs and the learned projections (student width ->
// teacher).
struct HiddenLoss {
  std::vector<std::pair<int64_t, int64_t>> map;
  HiddenProjection proj{nullptr};
  bool on() const { return bool(proj); }
};

HiddenLoss hidden_loss_create(const TrainOptions& o, const Models& ms, const Ranks& ranks) {
  HiddenLoss hl;
  if (!distilling(o) || o.hidden_loss == "none") return hl;
  const core::ModelConfig& cfg = ms.student->config();
  const core::ModelConfig& tcfg = ms.teacher->config();
  hl.map = hidden_layer_map(o.hidden_map, cfg.num_layers, tcfg.num_layers, ms.keep);
  torch::manual_seed(o.seed + 1);
  hl.proj = HiddenProjection(int64_t(hl.map.size()), cfg.hidden_size, tcfg.hidden_size);
  if (ranks.group) ranks.group->broadcast(hl.proj->parameters());
  return hl;
}

// Mean over the mapped pairs of the distance between projected student and teacher states.
torch::Tensor hidden_term(const TrainOptions& o, HiddenLoss& hl, const ForwardOutput& student,
                          const ForwardOutput& teacher) {
  torch::Tensor h = torch::zeros({}, torch::kFloat32);
  for (size_t i = 0; i < hl.map.size(); ++i) {
    auto hs = hl.proj->forward(int64_t(i), student.hidden_states[size_t(hl.map[i].first)]);
    const auto& ht = teacher.hidden_states[size_t(hl.map[i].second)];
    h = h + (o.hidden_loss == "mse" ? hidden_mse(hs, ht) : hidden_cosine(hs, ht));
  }
  return h / double(hl.map.size());
}

// A resumed run's hidden-state projections, as the interrupted run saved them.
void projection_restore(const std::string& ckpt, HiddenLoss& hl) {
  if (!hl.on() || hl.proj->identity()) return;
  if (!fs::exists(ckpt + "/projection.pt")) {
    bad(ckpt + ": no projection.pt for the hidden-state loss; resume with the same "
               "--hidden-loss options as the interrupted run");
  }
  torch::load(hl.proj, ckpt + "/projection.pt");
}

// The parameters training updates: the student's, then the hidden-state projections'.
std::vector<torch::Tensor> trainable_parameters(CausalLM& m, const HiddenLoss& hl) {
  std::vector<torch::Tensor> all = m->parameters();
  if (hl.on()) {
    for (auto& p : hl.proj->parameters()) all.push_back(p);
  }
  return all;
}

// The run's tokens: training shards read through the seeded packer, and the validation tokens.
// Filled in place, as the packer points at `train`.
struct TrainData {
  TrainData() = default;
  TrainData(const TrainData&) = delete;
  TrainData& operator=(const TrainData&) = delete;
  std::string dir;
  core::TokenDataset train;
  std::optional<core::SequencePacker> packer;
  std::vector<int32_t> val_tokens;
};

// Text is tokenized once, by rank 0; the others then find its shards (for multi-machine runs,
// --out on a shared filesystem or token shards on every machine).
void data_open(const TrainOptions& o, const Ranks& ranks, const Models& ms, TrainData& d) {
  ranks.lead_first(o.progress, "waiting for rank 0 to tokenize the data",
                   [&](bool progress) { d.dir = prepare_data(o, ms.tokenizer, progress); });
  d.train = core::TokenDataset::open(d.dir, core::Split::kTrain).take_or_throw();
  core::TokenDataset val = core::TokenDataset::open(d.dir, core::Split::kVal).take_or_throw();
  const core::ModelConfig& cfg = ms.student->config();
  if (d.train.vocab_size() > cfg.vocab_size) {
    bad(d.dir + ": tokens use a vocabulary of " + std::to_string(d.train.vocab_size()) +
        " but the model's vocab_size is " + std::to_string(cfg.vocab_size));
  }
  d.packer.emplace(&d.train, o.seq_len, o.seed, /*shuffle=*/true);
  if (d.packer->windows_per_epoch() == 0) {
    bad(d.dir + ": " + std::to_string(d.train.size()) + " training tokens are too few for one " +
        "window of --seq-len " + std::to_string(o.seq_len));
  }
  uint64_t n_val = val.size();
  if (o.eval_tokens) n_val = std::min<uint64_t>(n_val, o.eval_tokens);
  d.val_tokens.resize(n_val);
  if (n_val) val.read(0, n_val, d.val_tokens.data());
}

// AdamW: decoupled weight decay on the matrices only (unless --decay-all), and on the
// hidden-state projections.
torch::optim::AdamW optimizer_create(const TrainOptions& o, CausalLM& m, const HiddenLoss& hl) {
  std::vector<torch::Tensor> decay, no_wd;
  for (auto& p : m->named_parameters()) {
    (o.decay_all || !no_decay(p.key()) ? decay : no_wd).push_back(p.value());
  }
  if (hl.on()) {
    for (auto& p : hl.proj->parameters()) decay.push_back(p);
  }
  auto opts = torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).eps(o.eps);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(o.weight_decay)));
  if (!no_wd.empty()) {
    groups.emplace_back(no_wd, std::make_unique<torch::optim::AdamWOptions>(
                                  torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  }
  return torch::optim::AdamW(groups, opts);
}

State state_initial(const std::string& dtype, const std::string& student_init) {
  State st;
  st.dtype = dtype;
  st.student_init = student_init;
  return st;
}

// A resumed run goes on where its checkpoint left off: the optimizer's moments, the step, the
// data cursor, the best validation loss, the open log window and the student's provenance.
void state_resume(const std::string& ckpt, torch::optim::AdamW& opt, State& st) {
  torch::load(opt, ckpt + "/optimizer.pt");
  auto j = nlohmann::json::parse(core::read_file(ckpt + "/state.json").take_or_throw());
  st.step = j.at("step").get<int64_t>();
  // A resumed run saves in the dtype the interrupted run would have used, not the
  // checkpoint's float32 (older checkpoints lack the field: float32).
  st.dtype = j.value("dtype", st.dtype);
  st.cursor.epoch = j.at("epoch").get<uint64_t>();
  st.cursor.index = j.at("index").get<uint64_t>();
  if (j["best_val_loss"].is_number()) st.best_val = j["best_val_loss"].get<double>();
  // Older checkpoints lack the field: "checkpoint", as they always said.
  st.student_init = j.value("student_init", st.student_init);
  if (j.contains("log_window") && j["log_window"].is_object()) {  // older checkpoints lack it
    const auto& w = j["log_window"];
    st.window = {w.at("loss").get<double>(), w.at("kd").get<double>(), w.at("ce").get<double>(),
                 w.at("hidden").get<double>(), w.at("steps").get<int64_t>()};
  }
}

// <out>/metrics.jsonl, written by rank 0. A resumed run keeps the lines of the steps it has done
// (and rewrites what came after); a new run starts a new file.
class MetricsLog {
 public:
  MetricsLog(const std::string& out, bool lead, bool resuming, int64_t step) : lead_(lead) {
    const std::string path = out + "/metrics.jsonl";
    if (resuming) {
      if (lead) metrics_truncate(path, step);
    } else if (lead && fs::exists(path)) {
      fs::remove(path);
    }
    if (lead) file_.open(path, std::ios::app);
  }
  void write(const nlohmann::json& line) {
    if (lead_) file_ << line.dump() << "\n";
    file_.flush();
  }

 private:
  bool lead_;
  std::ofstream file_;
};

// Validation split over the ranks by whole windows, the sums all-reduced, so that every rank gets
// the same figure as one process would.
class ShardedEval {
 public:
  ShardedEval(const Ranks& ranks, const std::vector<int32_t>& tokens, int64_t seq_len)
      : ranks_(ranks), tokens_(tokens), seq_len_(seq_len) {
    std::tie(first_, count_) = eval_shard(tokens.size(), seq_len, ranks.rank, ranks.world);
  }
  // Too few tokens to validate on.
  bool empty() const { return tokens_.size() < 2; }
  // Mean NLL per predicted token.
  double nll(CausalLM& m) const {
    return mean([&](const int32_t* t, uint64_t n) {
      return nll_over_windows(m, t, n, seq_len_, 8);
    }, "the validation all-reduce");
  }
  // Mean forward KL(teacher || student) at T=1 per predicted token.
  double kl(CausalLM& student, CausalLM& teacher) const {
    return mean([&](const int32_t* t, uint64_t n) {
      return kl_over_windows(student, teacher, t, n, seq_len_);
    }, "the validation KL all-reduce");
  }

 private:
  // Mean over every rank's shard of `sum_fn(tokens, n)` -> {sum, count}.
  template <typename F>
  double mean(const F& sum_fn, const char* what) const {
    double sum = 0, n = 0;
    if (count_ >= 2) {
      auto [s_, n_] = sum_fn(tokens_.data() + first_, count_);
      sum = s_;
      n = double(n_);
    }
    auto v = ranks_.sum({sum, n}, what);
    return v[1] > 0 ? v[0] / v[1] : NAN;
  }
  const Ranks& ranks_;
  const std::vector<int32_t>& tokens_;
  int64_t seq_len_;
  uint64_t first_ = 0, count_ = 0;
};

// Teacher top-k cache (--teacher-cache): built once over every training window, reused by later
// runs. Rank 0 builds it; the others open what it wrote.
std::optional<TeacherCache> teacher_cache_open(const TrainOptions& o, const Ranks& ranks,
                                               Models& ms, const TrainData& d) {
  std::optional<TeacherCache> cache;
  if (!distilling(o) || o.teacher_cache.empty()) return cache;
  ranks.lead_first(o.progress, "waiting for rank 0 to build the teacher cache", [&](bool progress) {
    cache = TeacherCache::open_or_build(o.teacher_cache, ms.teacher, o.teacher, d.train,
                                        data_key(d.dir, d.train), o.seq_len, o.cache_topk,
                                        progress);
  });
  return cache;
}

// Gradient all-reduce over the student's (and the projections') parameters.
std::unique_ptr<GradReducer> grad_reducer_create(const TrainOptions& o, const Ranks& ranks,
                                                 CausalLM& m, const HiddenLoss& hl) {
  if (!ranks.group) return nullptr;
  return std::make_unique<GradReducer>(ranks.group.get(), trainable_parameters(m, hl),
                                       int64_t(o.bucket_mb * 1024 * 1024));
}

// The parts of a run as train_run sets them up, for the steps of the training loop.
struct Run {
  const TrainOptions& o;
  const Ranks& ranks;
  Models& ms;
  HiddenLoss& hidden;
  const std::optional<TeacherCache>& cache;
  GradReducer* reducer;  // data parallel only
  TrainData& data;
  torch::optim::AdamW& opt;
  SparsityMasks& masks;
  GradualPruning& pruning;
  const ShardedEval& val;
  MetricsLog& metrics;
};

// What the run is (ranks, sizes, the teacher cache, the gradient all-reduce), before its steps.
void result_describe(const Run& run, TrainResult& r) {
  if (run.cache) {
    r.cache_bytes = run.cache->bytes();
    r.cache_build_seconds = run.cache->build_seconds();
  }
  if (!run.masks.empty()) r.student_sparsity = masked_fraction(run.masks);
  if (run.reducer) {
    r.grad_bytes_per_step = run.reducer->grad_bytes();
    r.ring_bytes_per_step = run.reducer->ring_bytes_sent();
    r.buckets = run.reducer->buckets();
  }
  r.rank = run.ranks.rank;
  r.world_size = run.ranks.world;
  r.parameters = run.ms.student->num_parameters();
  r.train_tokens = run.data.train.size();
  r.val_tokens = run.data.val_tokens.size();
}

// Buffers for this rank's micro-batch: `size` windows of seq_len + 1 tokens, and the windows'
// numbers (the teacher cache's keys).
struct MicroBatch {
  explicit MicroBatch(const TrainOptions& o)
      : size(o.batch / o.grad_accum),
        tokens(size_t(size * (o.seq_len + 1))),
        windows(static_cast<size_t>(size)) {}
  int64_t size;
  std::vector<int32_t> tokens;
  std::vector<uint64_t> windows;
};

// loss = alpha * KD + (1 - alpha) * CE (+ hidden_weight * the hidden-state term), KD against the
// teacher's logits or its cached top-k. Adds the KD and hidden terms / grad_accum to the window.
torch::Tensor distill_loss(const Run& run, const MicroBatch& b, const torch::Tensor& inputs,
                           const ForwardOutput& sout, const torch::Tensor& ce,
                           State::LogWindow& w) {
  const TrainOptions& o = run.o;
  torch::Tensor kd;
  ForwardOutput to;
  if (run.cache) {
    auto [ids, vals] = run.cache->lookup(b.windows);
    kd = kd_topk_forward_kl(sout.logits, ids, vals, o.temperature);
  } else {
    {
      torch::NoGradGuard ng;
      to = run.ms.teacher->forward(inputs, run.hidden.on());
    }
    kd = o.kd_loss == "reverse" ? kd_reverse_kl(sout.logits, to.logits, o.temperature)
                                : kd_forward_kl(sout.logits, to.logits, o.temperature);
  }
  torch::Tensor loss = o.alpha * kd + (1.0 - o.alpha) * ce;
  w.kd += kd.item<double>() / double(o.grad_accum);
  if (run.hidden.on()) {
    torch::Tensor h = hidden_term(o, run.hidden, sout, to);
    loss = loss + o.hidden_weight * h;
    w.hidden += h.item<double>() / double(o.grad_accum);
  }
  return loss;
}

// Forward and backward of one micro-batch: this rank's disjoint slice of the global micro-batch
// of world * size windows. `last` (the step's last micro-batch) has the gradients all-reduced
// during backward. Adds the CE / grad_accum to the window; returns the loss / grad_accum.
double micro_step(const Run& run, MicroBatch& b, bool last, State::LogWindow& w) {
  const TrainOptions& o = run.o;
  const int64_t L = o.seq_len;
  run.data.packer->next_batch_slice(b.size * run.ranks.world, b.size * run.ranks.rank, b.size,
                                    b.tokens.data(), b.windows.data());
  auto seq = torch::from_blob(b.tokens.data(), {b.size, L + 1}, torch::kInt32).to(torch::kLong);
  auto inputs = seq.narrow(1, 0, L), targets = seq.narrow(1, 1, L);
  if (o.bf16) {
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  }
  ForwardOutput sout = run.ms.student->forward(inputs, run.hidden.on());
  auto ce = torch::nn::functional::cross_entropy(
      sout.logits.reshape({-1, run.ms.student->config().vocab_size}), targets.reshape({-1}));
  torch::Tensor loss = distilling(o) ? distill_loss(run, b, inputs, sout, ce, w) : ce;
  if (o.bf16) {
    at::autocast::set_cpu_enabled(false);
    at::autocast::clear_cache();
  }
  if (run.reducer && last) run.reducer->arm();
  (loss / double(o.grad_accum)).backward();
  if (run.reducer && last) run.reducer->finish();
  w.ce += ce.item<double>() / double(o.grad_accum);
  return loss.item<double>() / double(o.grad_accum);
}

// One optimizer step at learning rate `lr`: grad_accum micro-batches, then the clipped update
// with the masks held. Returns the step's mean loss.
double train_step(const Run& run, double lr, MicroBatch& b, State::LogWindow& w) {
  const TrainOptions& o = run.o;
  for (auto& g : run.opt.param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
  }
  run.opt.zero_grad();
  double step_loss = 0;
  for (int64_t a = 0; a < o.grad_accum; ++a) {
    step_loss += micro_step(run, b, a == o.grad_accum - 1, w);
  }
  run.masks.mask_grads();
  if (o.clip > 0) {
    torch::nn::utils::clip_grad_norm_(trainable_parameters(run.ms.student, run.hidden), o.clip);
  }
  run.opt.step();
  run.masks.mask_weights();
  return step_loss;
}

// A metrics line for the log window: its mean losses over the global batch and the tokens per
// second since the last line. The window starts again; returns its mean loss.
double log_window(const Run& run, int64_t step, double lr, State::LogWindow& w,
                  Clock::time_point& t_window) {
  const TrainOptions& o = run.o;
  const int world = run.ranks.world;
  if (run.ranks.group) {  // the logged figures are over the global batch
    auto v = run.ranks.sum({w.loss, w.kd, w.ce, w.hidden}, "the loss all-reduce");
    w.loss = v[0] / world;
    w.kd = v[1] / world;
    w.ce = v[2] / world;
    w.hidden = v[3] / world;
  }
  double secs = std::chrono::duration<double>(Clock::now() - t_window).count();
  double tps = secs > 0 ? double(w.steps * o.batch * world * o.seq_len) / secs : 0.0;
  const double loss = w.loss / double(w.steps);
  nlohmann::json line = {{"step", step}, {"loss", loss}, {"lr", lr}, {"tokens_per_second", tps}};
  if (distilling(o)) {
    line["kd"] = w.kd / double(w.steps);
    line["ce"] = w.ce / double(w.steps);
    if (run.hidden.on()) line["hidden"] = w.hidden / double(w.steps);
  }
  if (run.reducer) {
    line["comm_wait_s"] = run.reducer->wait_seconds();
    line["buckets_overlapped"] = run.reducer->overlapped_last();
  }
  run.metrics.write(line);
  w = State::LogWindow{};
  t_window = Clock::now();
  return loss;
}

// Validation (and, distilling, the KL to the teacher) after st.step; a new best model is saved
// to <out>/best.
void validate_step(const Run& run, State& st, TrainResult& r) {
  const TrainOptions& o = run.o;
  const bool distill = distilling(o);
  CausalLM& m = run.ms.student;
  const double v = run.val.empty() ? NAN : run.val.nll(m);
  if (distill && std::isfinite(v)) r.val_kl = run.val.kl(m, run.ms.teacher);
  m->train();
  if (!std::isfinite(v)) return;
  nlohmann::json line = {{"step", st.step}, {"val_loss", v}, {"val_perplexity", std::exp(v)}};
  if (distill) line["val_kl"] = r.val_kl;
  run.metrics.write(line);
  r.val_loss = v;
  r.val_perplexity = std::exp(v);
  if (v < st.best_val) {
    st.best_val = v;
    SaveOptions so;
    so.dtype = st.dtype;
    so.tokenizer_json = run.ms.tokenizer;
    so.provenance = {{"stage", distill ? "distill" : "train"}, {"step", st.step},
                     {"val_loss", v}};
    if (run.ranks.lead()) model_save(m, o.out + "/best", so);
  }
}

// Rank 0 writes the checkpoint (weights and optimizer state are the same on every rank); every
// rank resumes from it. It holds the open log window's sums over all ranks.
void checkpoint_step(const Run& run, const State::LogWindow& w, State& st) {
  auto s = run.ranks.sum({w.loss, w.kd, w.ce, w.hidden}, "the loss all-reduce for the checkpoint");
  st.window = {s[0], s[1], s[2], s[3], w.steps};
  if (run.ranks.lead()) {
    save_checkpoint(run.ms.student, run.opt, st, run.o.out, run.ms.tokenizer,
                    run.hidden.on() ? &run.hidden.proj : nullptr);
  }
}

// The optimizer steps from st.step to --steps, each followed by what its number makes due: the
// pruning schedule, a metrics line, validation, a checkpoint. Returns false when --stop-after
// ended the run.
bool train_loop(const Run& run, State& st, TrainResult& r) {
  const TrainOptions& o = run.o;
  MicroBatch batch(o);
  // The metrics window: per-rank sums since the last logged step. A resumed run's rank 0 starts
  // from the checkpoint's sums over all ranks (the log all-reduce adds the rest).
  State::LogWindow window = st.window;
  if (!run.ranks.lead()) window.loss = window.kd = window.ce = window.hidden = 0;
  core::Progress prog("train", uint64_t(o.steps), "steps", o.progress && run.ranks.lead());
  const auto t_start = Clock::now();
  auto t_window = t_start;
  const int64_t first_step = st.step;
  run.ms.student->train();
  for (int64_t step = st.step; step < o.steps; ++step) {
    const double lr = lr_at(o, step);
    const double step_loss = train_step(run, lr, batch, window);
    run.pruning.after_step(step + 1, run.masks);
    st.step = step + 1;
    maybe_die(run.ranks.rank, st.step);
    st.cursor = run.data.packer->cursor();
    window.loss += step_loss;
    window.steps++;
    const bool last = st.step == o.steps;
    if (st.step % o.log_every == 0 || last) {
      r.final_loss = log_window(run, st.step, lr, window, t_window);
    }
    char extra[96];
    std::snprintf(extra, sizeof extra, "loss %.4f  lr %.2e", step_loss, lr);
    prog.update(uint64_t(st.step), extra);
    if ((o.eval_every && st.step % o.eval_every == 0) || last) validate_step(run, st, r);
    const bool stop = o.stop_after && st.step == o.stop_after;
    if ((o.save_every && st.step % o.save_every == 0) || last || stop) {
      checkpoint_step(run, window, st);
    }
    if (stop && !last) return false;  // as if killed right after this checkpoint
  }
  prog.finish();
  r.seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  r.tokens_per_second = r.seconds > 0 ? double(st.step - first_step) *
                                            double(o.batch * run.ranks.world * o.seq_len) /
                                            r.seconds
                                      : 0.0;
  return true;
}

// What the finished run reached: the best validation loss, the sparsity kept, the last step's
// all-reduce figures.
void result_finish(const Run& run, const State& st, TrainResult& r) {
  r.best_val_loss = st.best_val;
  if (!run.masks.empty()) r.student_sparsity = masked_fraction(run.masks);
  if (run.reducer) {
    r.comm_wait_seconds = run.reducer->wait_seconds();
    r.buckets_overlapped = run.reducer->overlapped_last();
  }
}

// The final model, in <out>/model.
void model_final_save(const Run& run, const State& st, const TrainResult& r) {
  const TrainOptions& o = run.o;
  SaveOptions so;
  so.dtype = st.dtype;
  so.tokenizer_json = run.ms.tokenizer;
  so.provenance = {{"stage", distilling(o) ? "distill" : "train"}, {"steps", st.step},
                   {"seed", o.seed}, {"val_loss", r.val_loss}, {"data", o.data}};
  if (distilling(o)) {
    so.provenance["teacher"] = o.teacher;
    so.provenance["student_init"] = run.ms.student_source;
    so.provenance["temperature"] = o.temperature;
    so.provenance["alpha"] = o.alpha;
    so.provenance["kd_loss"] = o.kd_loss;
    so.provenance["hidden_loss"] = o.hidden_loss;
  }
  if (!run.masks.empty()) so.provenance["sparsity_kept"] = r.student_sparsity;
  model_save(run.ms.student, o.out + "/model", so);
}

// The run's summary: <out>/train.json, or distill.json.
void summary_write(const Run& run, const TrainResult& r) {
  const TrainOptions& o = run.o;
  const bool distill = distilling(o);
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
    summary["student_init"] = run.ms.student_source;
    summary["teacher_cache_bytes"] = r.cache_bytes;
    summary["teacher_cache_build_seconds"] = r.cache_build_seconds;
  }
  if (!run.masks.empty()) summary["sparsity_kept"] = r.student_sparsity;
  if (run.ranks.group) {
    const int world = run.ranks.world;
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
}

}  // namespace

TrainResult train_run(const TrainOptions& o) {
  train_validate(o);
  const Ranks ranks = ranks_join(o);
  const Start start = start_find(o);
  Models ms = models_build(o, ranks, start);
  SparsityMasks masks = masks_initial(o, ms.student);
  GradualPruning pruning(o, ms.student);
  HiddenLoss hidden = hidden_loss_create(o, ms, ranks);
  TrainData data;
  data_open(o, ranks, ms, data);
  if (start.resuming) projection_restore(start.ckpt, hidden);
  torch::optim::AdamW opt = optimizer_create(o, ms.student, hidden);
  State st = state_initial(ms.student->config().dtype, ms.student_source);
  if (start.resuming) {
    state_resume(start.ckpt, opt, st);
    ms.student_source = st.student_init;
    data.packer->set_cursor(st.cursor);
  }
  MetricsLog metrics(o.out, ranks.lead(), start.resuming, st.step);
  const ShardedEval val(ranks, data.val_tokens, o.seq_len);

  TrainResult r;
  const std::optional<TeacherCache> cache = teacher_cache_open(o, ranks, ms, data);
  if (distilling(o) && !val.empty()) r.teacher_val_loss = val.nll(ms.teacher);
  if (!masks.empty()) masks.mask_weights();
  const std::unique_ptr<GradReducer> reducer = grad_reducer_create(o, ranks, ms.student, hidden);
  const Run run{o, ranks, ms, hidden, cache, reducer.get(), data, opt, masks, pruning, val,
                metrics};
  result_describe(run, r);

  const bool finished = train_loop(run, st, r);
  r.steps = st.step;
  if (!finished) return r;  // --stop-after: as if killed right after that checkpoint
  result_finish(run, st, r);
  if (!ranks.lead()) return r;  // rank 0 writes the outputs
  model_final_save(run, st, r);
  summary_write(run, r);
  return r;
}

}  // namespace shrink::train
