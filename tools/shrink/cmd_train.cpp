// `shrink train --config config.json|--model DIR --data PATH --out DIR`: cross-entropy
// training (from scratch or continuing), with checkpoints and exact --resume.
#include <cstdio>

#include "core/dataset.h"
#include "train/trainer.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_train(CLI::App& app, Globals& g) {
  auto o = std::make_shared<train::TrainOptions>();
  o->data = core::kDefaultCorpus;
  CLI::App* sub = app.add_subcommand(
      "train", "Train a model with cross-entropy (from a config, or continue a model directory). "
               "Writes OUT/model (final), OUT/best, OUT/checkpoint, OUT/metrics.jsonl");
  sub->add_option("--config", o->config, "config.json of a new model (seeded random init)");
  sub->add_option("--model", o->model, "Model directory to continue training");
  sub->add_option("--data", o->data, "Token shards or text (tokenized once into OUT/data)")
      ->capture_default_str();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json (for text data; copied into outputs)");
  sub->add_option("--out", o->out, "Run directory")->required();
  sub->add_option("--steps", o->steps, "Optimizer steps")->capture_default_str();
  sub->add_option("--seq-len", o->seq_len, "Tokens per sequence")->capture_default_str();
  sub->add_option("--batch", o->batch, "Sequences per optimizer step")->capture_default_str();
  sub->add_option("--grad-accum", o->grad_accum, "Micro-batches per step (divides --batch)")
      ->capture_default_str();
  sub->add_option("--lr", o->lr, "Peak learning rate")->capture_default_str();
  sub->add_option("--min-lr-ratio", o->min_lr_ratio, "Final lr as a fraction of --lr")
      ->capture_default_str();
  sub->add_option("--warmup", o->warmup, "Linear warmup steps")->capture_default_str();
  sub->add_option("--schedule", o->schedule, "cosine, linear or constant")->capture_default_str();
  sub->add_option("--weight-decay", o->weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str();
  sub->add_flag("--decay-all", o->decay_all, "Also decay norms, biases and embeddings");
  sub->add_option("--beta1", o->beta1, "AdamW beta1")->capture_default_str();
  sub->add_option("--beta2", o->beta2, "AdamW beta2")->capture_default_str();
  sub->add_option("--clip", o->clip, "Max global gradient norm (0: off)")->capture_default_str();
  sub->add_flag("--bf16", o->bf16, "bfloat16 autocast on CPU");
  sub->add_option("--seed", o->seed, "Seed (init and data order)")->capture_default_str();
  sub->add_option("--val-fraction", o->val_fraction, "Held-out fraction for text data")
      ->capture_default_str();
  sub->add_option("--log-every", o->log_every, "Steps per metrics line")->capture_default_str();
  sub->add_option("--eval-every", o->eval_every, "Steps per validation (0: at the end)")
      ->capture_default_str();
  sub->add_option("--eval-tokens", o->eval_tokens, "Validation tokens (0: whole split)")
      ->capture_default_str();
  sub->add_option("--save-every", o->save_every, "Steps per checkpoint (0: at the end)")
      ->capture_default_str();
  sub->add_flag("--resume", o->resume, "Continue from OUT/checkpoint");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("train", g, true, [&] {
      o->progress = g.progress();
      train::TrainResult r = train::train_run(*o);
      if (g.json) {
        print_json({{"out", o->out}, {"steps", r.steps}, {"final_loss", r.final_loss},
                    {"val_loss", r.val_loss}, {"val_perplexity", r.val_perplexity},
                    {"best_val_loss", r.best_val_loss}, {"tokens_per_second", r.tokens_per_second},
                    {"seconds", r.seconds}, {"parameters", r.parameters}, {"threads", g.threads}});
      } else {
        std::printf("trained %lld steps in %.1f s (%.0f tokens/s, %d threads); "
                    "loss %.4f, val loss %.4f (perplexity %.2f); model in %s/model\n",
                    (long long)r.steps, r.seconds, r.tokens_per_second, g.threads, r.final_loss,
                    r.val_loss, r.val_perplexity, o->out.c_str());
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
