// `shrink train` (cross-entropy, from a config or continuing a model) and `shrink distill` (a
// student learns from a teacher). Both share the data, optimizer and checkpoint options and the
// one trainer in lib/train, with checkpoints and exact --resume.
#include <cmath>
#include <cstdio>

#include <algorithm>
#include <cstdlib>

#include "core/dataset.h"
#include "core/launch.h"
#include "train/trainer.h"
#include "tools/cli_main.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

namespace {

// Options common to train and distill: data, optimization, bookkeeping.
void add_common(CLI::App* sub, train::TrainOptions& o) {
  sub->add_option("--data", o.data, "Token shards or text (tokenized once into OUT/data)")
      ->capture_default_str();
  sub->add_option("--tokenizer", o.tokenizer, "tokenizer.json (for text data; copied into outputs)");
  sub->add_option("--out", o.out, "Run directory")->required();
  sub->add_option("--steps", o.steps, "Optimizer steps")->capture_default_str();
  sub->add_option("--seq-len", o.seq_len, "Tokens per sequence")->capture_default_str();
  sub->add_option("--batch", o.batch, "Sequences per optimizer step")->capture_default_str();
  sub->add_option("--grad-accum", o.grad_accum, "Micro-batches per step (divides --batch)")
      ->capture_default_str();
  sub->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str();
  sub->add_option("--min-lr-ratio", o.min_lr_ratio, "Final lr as a fraction of --lr")
      ->capture_default_str();
  sub->add_option("--warmup", o.warmup, "Linear warmup steps")->capture_default_str();
  sub->add_option("--schedule", o.schedule, "cosine, linear or constant")->capture_default_str();
  sub->add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str();
  sub->add_flag("--decay-all", o.decay_all, "Also decay norms, biases and embeddings");
  sub->add_option("--beta1", o.beta1, "AdamW beta1")->capture_default_str();
  sub->add_option("--beta2", o.beta2, "AdamW beta2")->capture_default_str();
  sub->add_option("--clip", o.clip, "Max global gradient norm (0: off)")->capture_default_str();
  sub->add_flag("--bf16", o.bf16, "bfloat16 autocast on CPU");
  sub->add_option("--seed", o.seed, "Seed (init and data order)")->capture_default_str();
  sub->add_option("--val-fraction", o.val_fraction, "Held-out fraction for text data")
      ->capture_default_str();
  sub->add_option("--log-every", o.log_every, "Steps per metrics line")->capture_default_str();
  sub->add_option("--eval-every", o.eval_every, "Steps per validation (0: at the end)")
      ->capture_default_str();
  sub->add_option("--eval-tokens", o.eval_tokens, "Validation tokens (0: whole split)")
      ->capture_default_str();
  sub->add_option("--save-every", o.save_every, "Steps per checkpoint (0: at the end)")
      ->capture_default_str();
  sub->add_option("--masks", o.masks,
                  "Keep zero weights at zero: auto (when a layer matrix is >= 1% zeros), on, off")
      ->capture_default_str();
  sub->add_option("--prune-final", o.prune_final,
                  "Gradual magnitude pruning to this sparsity (cubic schedule; 0: off)")
      ->capture_default_str();
  sub->add_option("--prune-initial", o.prune_initial, "Sparsity at --prune-start")
      ->capture_default_str();
  sub->add_option("--prune-start", o.prune_start, "Step where gradual pruning starts")
      ->capture_default_str();
  sub->add_option("--prune-end", o.prune_end, "Step where it reaches --prune-final")
      ->capture_default_str();
  sub->add_option("--prune-every", o.prune_every, "Steps between mask updates")
      ->capture_default_str();
  sub->add_option("--prune-pattern", o.prune_pattern, "N:M pattern applied at --prune-end");
  sub->add_option("--prune-targets", o.prune_targets, "Regex over module names to prune")
      ->capture_default_str();
  sub->add_flag("--resume", o.resume, "Continue from OUT/checkpoint");
  sub->add_option("--nproc", o.nproc,
                  "Data-parallel worker processes on this machine (c10d/Gloo); --batch is per "
                  "worker, --threads is split between them. Across machines, set MASTER_ADDR, "
                  "MASTER_PORT, WORLD_SIZE, RANK (and LOCAL_RANK) instead, as torchrun does")
      ->capture_default_str();
  sub->add_option("--dist-timeout", o.dist_timeout,
                  "Seconds a data-parallel rank waits for the others (rendezvous, all-reduce) "
                  "before failing the run")
      ->capture_default_str();
  sub->add_option("--bucket-mb", o.bucket_mb, "Gradient all-reduce bucket size in MiB")
      ->capture_default_str();
}

void report(const char* verb, const train::TrainOptions& o, const train::TrainResult& r,
            const Globals& g) {
  const bool distill = !o.teacher.empty();
  if (g.json) {
    nlohmann::json j = {{"out", o.out},
                        {"steps", r.steps},
                        {"final_loss", r.final_loss},
                        {"val_loss", r.val_loss},
                        {"val_perplexity", r.val_perplexity},
                        {"best_val_loss", r.best_val_loss},
                        {"tokens_per_second", r.tokens_per_second},
                        {"seconds", r.seconds},
                        {"parameters", r.parameters},
                        {"threads", g.threads}};
    if (distill) {
      j["val_kl"] = r.val_kl;
      j["teacher_val_loss"] = r.teacher_val_loss;
      j["teacher_val_perplexity"] = std::exp(r.teacher_val_loss);
      j["teacher_cache_bytes"] = r.cache_bytes;
    }
    if (r.student_sparsity > 0) j["sparsity_kept"] = r.student_sparsity;
    print_json(j);
    return;
  }
  std::printf("%s %lld steps in %.1f s (%.0f tokens/s, %d threads); loss %.4f, val loss %.4f "
              "(perplexity %.2f)",
              verb, (long long)r.steps, r.seconds, r.tokens_per_second, g.threads, r.final_loss,
              r.val_loss, r.val_perplexity);
  if (distill) {
    std::printf("; teacher val perplexity %.2f, val KL(teacher||student) %.4f",
                std::exp(r.teacher_val_loss), r.val_kl);
  }
  std::printf("; model in %s/model\n", o.out.c_str());
}

// Run train_run in this process, or, with --nproc N (and no WORLD_SIZE yet), launch N local
// workers that each run it as one rank. The launch happens before LibTorch is initialised here
// (run_guarded without torch), so no thread pool is ever forked.
// One process's run (a single process, or one rank: the trainer shows progress on rank 0 only).
int train_in_process(const char* name, const char* verb, const train::TrainOptions& o,
                     Globals& g) {
  return run_guarded(name, g, true, [&] {
    train::train_validate(o);
    if (g.validate_only) return 0;
    allocator_for_training();
    train::TrainOptions w = o;
    w.progress = g.progress();
    train::TrainResult r = train::train_run(w);
    if (r.rank == 0) report(verb, w, r, g);
    return 0;
  });
}

int run_training(const char* name, const char* verb, const train::TrainOptions& o, Globals& g) {
  const bool launch = o.nproc > 1 && std::getenv("WORLD_SIZE") == nullptr;
  if (!launch || g.validate_only) return train_in_process(name, verb, o, g);
  return run_guarded(name, g, false, [&] {
    train::train_validate(o);
    core::LaunchOptions lo;
    lo.nproc = o.nproc;
    lo.failure_hint = "Rerun with --resume to continue from the last checkpoint";
    if (const char* p = std::getenv("MASTER_PORT"); p && *p) lo.master_port = std::atoi(p);
    const int per_rank = std::max(1, g.threads / o.nproc);
    std::string err;
    int rc = core::launch_local(
        lo,
        [&](int rank) {
          Globals wg = g;
          wg.threads = per_rank;
          if (rank != 0) wg.quiet = true;
          return train_in_process(name, verb, o, wg);
        },
        &err);
    if (rc != 0) throw Error(rc == 2 ? StatusCode::kInvalidInput : StatusCode::kInternal, err);
    return 0;
  });
}

}  // namespace

void register_train(CLI::App& app, Globals& g) {
  auto o = std::make_shared<train::TrainOptions>();
  o->data = core::kDefaultCorpus;
  CLI::App* sub = app.add_subcommand(
      "train", "Train a model with cross-entropy (from a config, or continue a model directory). "
               "Writes OUT/model (final), OUT/best, OUT/checkpoint, OUT/metrics.jsonl");
  sub->add_option("--config", o->config, "config.json of a new model (seeded random init)");
  sub->add_option("--model", o->model, "Model directory to continue training");
  add_common(sub, *o);
  sub->callback([o, &g] { g.exit_code = run_training("train", "trained", *o, g); });
}

void register_distill(CLI::App& app, Globals& g) {
  auto o = std::make_shared<train::TrainOptions>();
  o->data = core::kDefaultCorpus;
  CLI::App* sub = app.add_subcommand(
      "distill", "Distill a teacher into a student: loss = alpha*KD + (1-alpha)*CE (+ hidden-state "
                 "loss). Writes OUT/model, OUT/best, OUT/checkpoint, OUT/metrics.jsonl, "
                 "OUT/distill.json");
  sub->add_option("--teacher", o->teacher, "Teacher model directory")->required();
  sub->add_option("--student", o->model, "Student model directory (e.g. a pruned teacher)");
  sub->add_option("--student-layers", o->student_layers,
                  "Student = the teacher keeping these layers: 0,2,4,6 or 0-3 or ::2");
  sub->add_option("--student-config", o->config, "Student config.json (seeded random init)");
  sub->add_option("--temperature", o->temperature, "KD temperature T (the KL is scaled by T^2)")
      ->capture_default_str();
  sub->add_option("--alpha", o->alpha, "Weight of the KD loss; 1-alpha goes to cross-entropy")
      ->capture_default_str();
  sub->add_option("--kd-loss", o->kd_loss, "forward (KL(t||s)) or reverse (KL(s||t))")
      ->capture_default_str();
  sub->add_option("--hidden-loss", o->hidden_loss,
                  "Hidden-state loss: none, mse or cosine (learned projection when widths differ)")
      ->capture_default_str();
  sub->add_option("--hidden-weight", o->hidden_weight, "Weight of the hidden-state loss")
      ->capture_default_str();
  sub->add_option("--hidden-map", o->hidden_map,
                  "Hidden-state pairs student:teacher (0 = embeddings, L = final), e.g. 2:4,4:8");
  sub->add_option("--teacher-cache", o->teacher_cache,
                  "Directory for the teacher's top-k logits over the training data, computed "
                  "once and reused (forward KL only)");
  sub->add_option("--cache-topk", o->cache_topk, "Logits kept per token in --teacher-cache")
      ->capture_default_str();
  add_common(sub, *o);
  sub->callback([o, &g] { g.exit_code = run_training("distill", "distilled", *o, g); });
}

}  // namespace shrink::cli
