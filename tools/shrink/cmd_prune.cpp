// `shrink prune MODEL_DIR --out DIR --method magnitude|wanda|sparsegpt|structured [options]`:
// unstructured / N:M sparsity or structured (smaller dense model) pruning, with a JSON report
// (prune.json) of sparsity per module, parameters and bytes, perplexity before/after, time.
#include <cstdio>

#include "core/dataset.h"
#include "train/prune.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_prune(CLI::App& app, Globals& g) {
  auto o = std::make_shared<train::PruneOptions>();
  CLI::App* sub = app.add_subcommand(
      "prune", "Prune a model: magnitude, Wanda, SparseGPT (unstructured or N:M), or structured "
               "(heads, MLP channels, hidden channels, layers -> a smaller dense model)");
  sub->add_option("model", o->model, "Model directory")->required();
  sub->add_option("--out", o->out, "Output model directory")->required();
  sub->add_option("--method", o->method, "magnitude, wanda, sparsegpt or structured")
      ->capture_default_str();
  sub->add_option("--sparsity", o->sparsity, "Fraction of weights to zero in targeted matrices")
      ->capture_default_str();
  sub->add_option("--pattern", o->pattern, "N:M semi-structured sparsity, e.g. 2:4 or 4:8");
  sub->add_option("--scope", o->scope, "magnitude threshold per matrix (layer) or global")
      ->capture_default_str();
  sub->add_option("--targets", o->targets, "Regex over module names to prune")
      ->capture_default_str();
  sub->add_option("--ignore", o->ignore, "Regex over module names to leave alone");
  sub->add_option("--sparsity-map", o->sparsity_map,
                  "Per-module-type sparsity, first match wins: 'mlp=0.6,self_attn=0.4'");
  sub->add_option("--block-size", o->block_size, "SparseGPT column block")->capture_default_str();
  sub->add_option("--damp", o->damp, "SparseGPT dampening (fraction of mean diag(H))")
      ->capture_default_str();
  sub->add_option("--keep-heads", o->keep_heads, "structured: fraction of KV-head groups kept")
      ->capture_default_str();
  sub->add_option("--keep-mlp", o->keep_mlp, "structured: fraction of MLP channels kept")
      ->capture_default_str();
  sub->add_option("--keep-hidden", o->keep_hidden, "structured: fraction of hidden channels kept")
      ->capture_default_str();
  sub->add_option("--keep-layers", o->keep_layers, "structured: fraction of layers kept")
      ->capture_default_str();
  sub->add_option("--target-params", o->target_params,
                  "structured: keep this fraction of parameters (shrinks MLP and hidden widths "
                  "uniformly; heads/layers follow their --keep-* ratios)")
      ->capture_default_str();
  sub->add_option("--depth-metric", o->depth_metric,
                  "structured: layer importance, bi (block influence) or ppl (loss increase)")
      ->capture_default_str();
  sub->add_option("--channel-multiple", o->channel_multiple, "Round widths to a multiple of this")
      ->capture_default_str();
  sub->add_option("--data", o->data, "Calibration/validation data (text or token shards)");
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json for text data");
  sub->add_option("--calib-samples", o->calib_samples, "Calibration sequences")->capture_default_str();
  sub->add_option("--calib-len", o->calib_len, "Calibration sequence length")->capture_default_str();
  sub->add_option("--eval-tokens", o->eval_tokens, "Validation tokens for perplexity (0: skip)")
      ->capture_default_str();
  sub->add_option("--eval-seq-len", o->eval_seq_len, "Validation window length")->capture_default_str();
  sub->add_option("--seed", o->seed, "Seed")->capture_default_str();
  sub->add_option("--max-memory", o->max_memory,
                  "Budget for the calibration states (samples x tokens x hidden, float32) of the "
                  "layer-by-layer path, such as 4G or 512M (the default keeps 64 x 256 tokens of an 8B model in memory); beyond it they spill to a temporary "
                  "file beside --out (same results)")
      ->capture_default_str();
  sub->add_flag("--load-model", o->load_model,
                "magnitude: prune through the LibTorch model (the reference path; by default "
                "per-matrix and N:M magnitude pruning run model-free, tensor by tensor)");
  sub->callback([o, &g] {
    g.exit_code = run_guarded("prune", g, true, [&] {
      train::prune_validate(*o);
      if (g.validate_only) return 0;
      o->progress = g.progress();
      o->threads = g.threads;
      train::PruneResult r = train::prune_run(*o);
      const auto& j = r.report;
      if (g.json) {
        print_json(j);
      } else {
        std::printf("pruned %s with %s -> %s: %lld -> %lld parameters", o->model.c_str(),
                    o->method.c_str(), o->out.c_str(), j["params_before"].get<long long>(),
                    j["params_after"].get<long long>());
        if (j.contains("sparsity")) {
          std::printf(", targeted sparsity %.4f", j["sparsity"]["targeted_sparsity"].get<double>());
        }
        if (j.contains("perplexity_before")) {
          std::printf("; val perplexity %.2f -> %.2f", j["perplexity_before"].get<double>(),
                      j["perplexity_after"].get<double>());
        }
        std::printf(" (%.1f s)\n", j["seconds"].get<double>());
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
