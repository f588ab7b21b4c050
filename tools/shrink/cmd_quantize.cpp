// `shrink quantize MODEL_DIR --out DIR --scheme w8a8|w8a16 [--activations dynamic|static]
// [--observer ...] [--smoothquant ALPHA|auto] [--method rtn|gptq] [--sensitivity [--keep-float K]] --data PATH`:
// int8 post-training quantization into a compressed-tensors directory, with quantize.json
// (perplexity and KL against the float model, bytes, calibration time, peak memory).
#include <cstdio>

#include "train/quantize.h"
#include "tools/shrink/cli.h"

namespace shrink::cli {

void register_quantize(CLI::App& app, Globals& g) {
  auto o = std::make_shared<train::QuantizeOptions>();
  CLI::App* sub = app.add_subcommand(
      "quantize", "Int8 post-training quantization (W8A8 static/dynamic, W8A16 per channel or "
                  "group) with calibration observers and SmoothQuant; writes compressed-tensors");
  sub->add_option("model", o->model, "Model directory (float)")->required();
  sub->add_option("--out", o->out, "Output model directory")->required();
  sub->add_option("--scheme", o->scheme,
                  "w8a8, w8a16, w4a16 (4-bit weights, pack-quantized) or w4a8 (4-bit weights, int8 "
                  "activations per token)")
      ->capture_default_str();
  sub->add_option("--activations", o->activations,
                  "w8a8 activations: dynamic (per token) or static (per tensor, calibrated)")
      ->capture_default_str();
  sub->add_option("--observer", o->observer,
                  "static scale observer: minmax, ema, percentile, mse or entropy")
      ->capture_default_str();
  sub->add_option("--percentile", o->percentile, "Percentile for --observer percentile")
      ->capture_default_str();
  sub->add_option("--bits", o->bits, "Weight bits: 8 (4-bit weights are --scheme w4a16 or w4a8)")->capture_default_str();
  sub->add_option("--group-size", o->group_size,
                  "w8a16/w4a16/w4a8: 32, 64 or 128 inputs per scale (0: per channel; 4 bits then picks "
                  "the largest that divides every layer)")
      ->capture_default_str();
  sub->add_option("--smoothquant", o->smoothquant, "SmoothQuant strength alpha in [0, 1], or auto");
  sub->add_option("--method", o->method,
                  "Weight rounding: rtn (round to nearest) or gptq (error-compensating, calibrated)")
      ->capture_default_str();
  sub->add_option("--block-size", o->block_size, "gptq: columns per block (a multiple of --group-size)")
      ->capture_default_str();
  sub->add_option("--damp", o->damp, "gptq: dampening, a fraction of the Hessian's mean diagonal")
      ->capture_default_str();
  sub->add_flag("--act-order", o->act_order, "gptq: quantize columns by decreasing activation energy");
  sub->add_flag("--act-order-groups", o->act_order_groups,
                "gptq --act-order: form the groups in that order, scaled as they start, stored as "
                "weight_g_idx (llm-compressor's actorder: group); default: static groups");
  sub->add_flag(
      "--awq", o->awq,
      "w8a16/w4a16: activation-aware channel scales (AWQ) searched on the calibration data, "
      "folded into the preceding norm or linear; with rtn also AWQ's clipping search");
  o->awq_clip = true;
  sub->add_flag_function(
      "--awq-no-clip", [o](int64_t n) { o->awq_clip = n == 0; },
      "--awq without the clipping search");
  sub->add_flag("--asym", o->asym,
                "w4a16: asymmetric 4-bit weights, a zero point per group (compressed-tensors "
                "W4A16_ASYM); with rtn, gptq and --awq");
  sub->add_option("--targets", o->targets,
                  "Regex over module names to quantize; one that also matches lm_head (e.g. "
                  "'model\\.layers\\.\\d+\\..*_proj|lm_head') writes the head quantized too, "
                  "rounded to nearest (w8a16, w4a16; a tied model's output is untied)")
      ->capture_default_str();
  sub->add_option("--ignore", o->ignore, "Regex over module names kept in float");
  sub->add_option("--max-memory", o->max_memory,
                  "Budget for the calibration states (samples x tokens x hidden, float32) of the "
                  "layer-by-layer path, such as 4G or 512M (the default keeps 64 x 256 tokens of an 8B model in memory); beyond it they spill to a temporary "
                  "file beside --out (same results)")
      ->capture_default_str();
  sub->add_flag("--load-model", o->load_model,
                "Round to nearest through the LibTorch model (the reference path; by default such "
                "schemes run model-free, tensor by tensor, in bounded memory)");
  sub->add_option("--data", o->data, "Calibration/validation data (text or token shards)");
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.json for text data");
  sub->add_option("--calib-samples", o->calib_samples, "Calibration sequences")->capture_default_str();
  sub->add_option("--calib-len", o->calib_len, "Calibration sequence length")->capture_default_str();
  sub->add_option("--eval-tokens", o->eval_tokens, "Validation tokens (0: skip evaluation)")
      ->capture_default_str();
  sub->add_option("--eval-seq-len", o->eval_seq_len, "Validation window length")->capture_default_str();
  sub->add_flag("--sensitivity", o->sensitivity,
                "Quantize one input group at a time and report its KL against the float model");
  sub->add_option("--keep-float", o->keep_float, "With --sensitivity: keep the K most sensitive "
                                                 "groups in float")
      ->capture_default_str();
  sub->add_option("--sensitivity-tokens", o->sensitivity_tokens, "Validation tokens per sensitivity probe")
      ->capture_default_str();
  sub->callback([o, &g] {
    g.exit_code = run_guarded("quantize", g, true, [&] {
      train::quantize_validate(*o);
      if (g.validate_only) return 0;
      o->progress = g.progress();
      o->threads = g.threads;
      train::QuantizeResult r = train::quantize_run(*o);
      const auto& j = r.report;
      if (g.json) {
        print_json(j);
      } else {
        std::printf("quantized %s (%s, activations %s) -> %s: %.2f MiB -> %.2f MiB", o->model.c_str(),
                    o->scheme.c_str(), j["activations"].get<std::string>().c_str(), o->out.c_str(),
                    j["bytes_before"].get<double>() / 1048576.0, j["bytes_after"].get<double>() / 1048576.0);
        if (j.contains("perplexity_float")) {
          std::printf("; val perplexity %.3f -> %.3f (%+.2f%%), KL %.5f", j["perplexity_float"].get<double>(),
                      j["perplexity_quant"].get<double>(), 100.0 * j["perplexity_change"].get<double>(),
                      j["kl_vs_float"].get<double>());
        }
        std::printf(" (%.1f s)\n", j["seconds"].get<double>());
      }
      return 0;
    });
  });
}

}  // namespace shrink::cli
