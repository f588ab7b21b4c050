// The trainer behind `shrink train` and `shrink distill`: AdamW with decoupled weight decay
// (norms, biases and embeddings excluded unless asked), warmup then cosine/linear decay,
// gradient clipping and accumulation, periodic validation, atomic checkpoints with the optimizer
// state and the data cursor, exact --resume, and data parallelism over c10d (train/dist.h) when
// the environment describes a process group.
//
// Why this way: all randomness is explicit (seeded init, the packer's seeded per-epoch
// permutation; no dropout), weights are saved as float32 and the optimizer state with
// torch::save, so a resumed run continues bit-for-bit at a fixed thread count. The public API has
// no LibTorch types (tools include this header). Tested in tests/train/test_trainer.cpp,
// test_distill.cpp, test_dist.cpp and tests/cli/test_dist.sh.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace shrink::train {

struct TrainOptions {
  // Data: token shards (a `shrink data prepare` dir) or text, tokenized once into <out>/data.
  std::string data;
  std::string tokenizer;  // for text data; default: the model's tokenizer.json
  double val_fraction = 0.05;
  uint64_t split_seed = 0;
  // Model: a fresh one from a config.json, or an existing model directory to continue.
  std::string config;
  std::string model;
  std::string out;
  // Optimization.
  int64_t steps = 1000;
  int64_t seq_len = 256;
  int64_t batch = 16;       // sequences per optimizer step (split over grad_accum micro-batches)
  int64_t grad_accum = 1;
  double lr = 1e-3;
  double min_lr_ratio = 0.1;  // final lr = lr * min_lr_ratio
  int64_t warmup = 50;
  std::string schedule = "cosine";  // cosine | linear | constant
  double weight_decay = 0.1;
  bool decay_all = false;  // also decay norms, biases and embeddings
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;  // max global grad norm; 0 = off
  bool bf16 = false;  // CPU autocast to bfloat16 for matmuls
  uint64_t seed = 0;
  // Bookkeeping.
  int64_t log_every = 10;
  int64_t eval_every = 100;   // 0 = only at the end
  uint64_t eval_tokens = 65536;  // validation tokens per evaluation (0 = whole split)
  int64_t save_every = 100;   // checkpoint period in steps (0 = only at the end)
  bool resume = false;
  int64_t stop_after = 0;  // testing aid: stop (as if killed) after this step, without finishing
  bool progress = false;
  // Data parallel (c10d, lib/train/dist.h). A run joins a process group when WORLD_SIZE is set
  // in the environment (by `--nproc N`'s launcher, or by hand as torchrun would, across
  // machines). `batch` is then per rank: N ranks at batch B step like one process at N*B.
  int nproc = 1;              // --nproc: local workers the CLI launches (1: no launch)
  double dist_timeout = 300;  // seconds: rendezvous and collectives; a stalled peer fails the run
  double bucket_mb = 4;       // gradient all-reduce bucket size (MiB of float32 gradients)

  // Distillation (`shrink distill`): a teacher directory turns it on. The student comes from
  // `model` (--student DIR), `config` (--student-config) or `student_layers` (a subset of the
  // teacher's layers, e.g. "0,2,4,6", "0-3" or "::2").
  std::string teacher;
  std::string student_layers;
  double temperature = 2.0;
  double alpha = 1.0;                // loss = alpha * KD + (1 - alpha) * CE (+ hidden term)
  std::string kd_loss = "forward";   // forward | reverse (KL direction)
  std::string hidden_loss = "none";  // none | mse | cosine
  double hidden_weight = 1.0;
  std::string hidden_map;            // "s:t,..." hidden-state index pairs; empty = default map
  std::string teacher_cache;         // directory: teacher top-k logits computed once, reused
  int64_t cache_topk = 64;
  std::string masks = "auto";  // auto | on | off: keep the student's zero weights at zero
  // Gradual magnitude pruning during training (Zhu & Gupta): sparsity rises on a cubic schedule
  // from prune_initial at step prune_start to prune_final at prune_end, recomputed every
  // prune_every steps over the matrices matching prune_targets; masks hold in between.
  double prune_final = 0;  // 0 = off
  double prune_initial = 0;
  int64_t prune_start = 0, prune_end = 0, prune_every = 10;
  std::string prune_pattern;  // N:M for the final mask ("2:4"); the schedule then jumps at end
  std::string prune_targets = R"(model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj)";
};

struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0;       // mean training loss of the last log window
  double val_loss = 0, val_perplexity = 0;
  double best_val_loss = 0;
  double tokens_per_second = 0;
  double seconds = 0;
  int64_t parameters = 0;
  uint64_t train_tokens = 0, val_tokens = 0;
  // Distillation only.
  double val_kl = 0;           // forward KL(teacher || student) at T=1 on the validation tokens
  double teacher_val_loss = 0;
  double student_sparsity = 0;  // fraction of masked weights kept at zero (0 without masks)
  uint64_t cache_bytes = 0;     // teacher top-k cache size
  double cache_build_seconds = 0;
  // Data parallel.
  int rank = 0, world_size = 1;
  int64_t grad_bytes_per_step = 0;    // float32 gradient bytes all-reduced per step
  double ring_bytes_per_step = 0;     // bytes each rank sends per step in a ring all-reduce
  int64_t buckets = 0, buckets_overlapped = 0;  // (last step) launched during backward
  double comm_wait_seconds = 0;       // time blocked on gradient all-reduces after backward
};

/// Train (from scratch or continuing) and write the final model to opts.out, the best-validation
/// model to <out>/best, the resumable state to <out>/checkpoint and metrics to
/// <out>/metrics.jsonl. Throws shrink::Error on bad input (kInvalidInput/kNotFound).
/// Check the options (what train_run checks before any work); throws kInvalidInput.
void train_validate(const TrainOptions& opts);
TrainResult train_run(const TrainOptions& opts);
/// Distill: train_run with a teacher (opts.teacher must be set). Also writes <out>/distill.json.
inline TrainResult distill_run(const TrainOptions& opts) { return train_run(opts); }

/// The learning rate at `step` (0-based) for the schedule: linear warmup to lr, then cosine or
/// linear decay to lr * min_lr_ratio at the last step.
double lr_at(const TrainOptions& o, int64_t step);

}  // namespace shrink::train
