// `shrink verify COMPACT --reference TEACHER`: the runtime's verification (lib/runtime/verify.h,
// also `shrink-rt verify`) from the main tool, so a recipe's verify stage takes exactly the
// options of `shrink-rt verify`. Exit 3 when a gate fails.
#include <cstdio>

#include "core/dataset.h"
#include "core/fs.h"
#include "runtime/verify.h"
#include "tools/shrink/cli.h"
#include "tools/verify_options.h"

namespace shrink::cli {

void register_verify(CLI::App& app, Globals& g) {
  auto o = std::make_shared<VerifyArgs>();
  CLI::App* sub = app.add_subcommand(
      "verify", "Check a compact model against its reference in the runtime (as shrink-rt "
                "verify): perplexity, top-1 agreement, KL, speeds; exit 3 when a gate fails");
  add_verify_options(sub, *o);
  sub->add_option("--lm-head", o->v.engine.lm_head,
                  "The compact model's float lm_head in the runtime: auto (int8 when the model is "
                  "quantized), f32 or int8 (per-channel, quantized at load)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "int8"}));
  sub->add_option("--act-quant", o->v.engine.act_quant,
                  "The compact model's activations in the runtime when its weights are "
                  "weight-only int8/4-bit: auto, none, int8-row or int8-block (as shrink-rt)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "none", "int8-row", "int8-block"}));
  sub->add_option("--kv-cache", o->v.engine.kv_cache,
                  "The compact model's KV cache in the runtime: f32, or (cpu) f16 or int8")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "f16", "int8"}));
  sub->callback([o, &g] {
    int gate = 0;
    g.exit_code = run_guarded("verify", g, false, [&] {
      if (o->v.seq_len < 2) throw Error(StatusCode::kInvalidInput, "--seq-len must be >= 2");
      if (o->v.bench_prompt_len < 1 || o->v.bench_gen_len < 1) {
        throw Error(StatusCode::kInvalidInput, "--prompt-len and --gen-len must be >= 1");
      }
      if (auto m = core::bytes_parse(o->v.max_memory); !m.is_ok()) {
        throw Error(StatusCode::kInvalidInput, "--max-memory: " + m.status().message());
      }
      if (g.validate_only) return 0;
      o->v.engine.threads = g.threads;
      runtime::VerifyResult r = runtime::verify(o->compact, o->reference, o->v).take_or_throw();
      const nlohmann::json served = verify_serve(*o, o->v.engine).take_or_throw();
      if (g.json) {
        nlohmann::json j = verify_json(r, *o, g.threads);
        if (!served.is_null()) j["serve"] = served;
        print_json(j);
      } else {
        if (!served.is_null()) std::printf("%s", serve_table(served).c_str());
        std::printf("perplexity %.4f (reference %.4f, %+.2f%%, 95%% interval [%+.2f%%, %+.2f%%]), top-1 "
                    "agreement %.4f, KL %.5f (p99 %.5f, max %.5f); decode %.1f tok/s (%.2fx): %s\n",
                    r.ppl_compact, r.ppl_reference, 100 * r.ppl_increase, 100 * r.ppl_increase_lo,
                    100 * r.ppl_increase_hi, r.top1_agreement, r.kl, r.kl_dist.p99, r.kl_dist.max,
                    r.bench_compact.decode_tokens_per_second, r.decode_speedup, r.verdict.c_str());
        if (r.task) {
          std::printf("task %s, %lld items: acc_norm %.4f (reference %.4f, drop %+.4f +- %.4f), "
                      "same choice on %.1f%% of items\n",
                      r.task->path.c_str(), (long long)r.task->items, r.task->acc_norm_compact,
                      r.task->acc_norm_reference, r.task->acc_norm_drop,
                      r.task->acc_norm_drop_stderr, 100 * r.task->agreement);
        }
      }
      if (!r.passed) gate = 3;
      return 0;
    });
    if (g.exit_code == 0 && gate) g.exit_code = gate;
  });
}

}  // namespace shrink::cli
