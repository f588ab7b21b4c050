// Hugging Face Transformers.js peer check of shrink's outputs (the ctest
// `transformers_js_check`, run by scripts/transformers_js_check.sh):
//
//   node scripts/transformers_js_check.mjs [--threads N] DIR...
//
// Each DIR is a `shrink export --format onnx` directory (model.onnx, config.json) holding
// reference.json: what `shrink --json generate MODEL --prompt-ids .. --max-new-tokens N --ids
// --ignore-eos` printed for the model it was exported from ("ids": the prompt and shrink's greedy
// continuation, "prompt_len"). Transformers.js builds the model class from config.json alone
// (AutoModelForCausalLM: Llama/Qwen2/Mistral, its KV-cache shapes from num_key_value_heads and
// head_dim or hidden_size / num_attention_heads) and runs the graph in ONNX Runtime through its
// own generate(); the class must be the config's architecture and the greedy ids must equal
// shrink's. Exit 0 when every DIR passes, 1 otherwise, 77 when the package is missing (a failure
// of the ctest unless SHRINK_SKIP_NPM_PEERS=1: scripts/npm_peers.sh).
//
// @huggingface/transformers is found in $SHRINK_ORT_NODE_DIR, else <repo>/.npm-ort
// (scripts/setup.sh installs it there). Nothing is downloaded: remote models are disabled.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const npmDir = process.env.SHRINK_ORT_NODE_DIR || join(repo, '.npm-ort');
let tjs;
try {
  tjs = createRequire(join(npmDir, 'package.json'))('@huggingface/transformers');
} catch (e) {
  console.error(`transformers_js_check: @huggingface/transformers not found under ${npmDir} ` +
                `(run scripts/setup.sh): ${e.message}`);
  process.exit(77);
}
const { AutoModelForCausalLM, Tensor, env } = tjs;
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useFSCache = false;

const args = process.argv.slice(2);
let threads = 1;
const dirs = [];
for (let i = 0; i < args.length; ++i) {
  if (args[i] === '--threads') threads = Number(args[++i]);
  else if (args[i].startsWith('--')) {
    console.error(`transformers_js_check: unknown option ${args[i]}`);
    process.exit(2);
  } else dirs.push(resolve(args[i]));
}
if (dirs.length === 0) {
  console.error('transformers_js_check: no DIR given');
  process.exit(2);
}

let failed = 0;
for (const dir of dirs) {
  const ref = JSON.parse(readFileSync(join(dir, 'reference.json'), 'utf8'));
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  const prompt = ref.ids.slice(0, ref.prompt_len);
  const want = ref.ids.slice(ref.prompt_len);
  const model = await AutoModelForCausalLM.from_pretrained(dir, {
    local_files_only: true, subfolder: '', model_file_name: 'model', dtype: 'fp32',
    session_options: {
      intraOpNumThreads: threads, interOpNumThreads: 1,
      // As ort_check: ORT's default accuracy level 4 for the MatMulNBits it fuses int8 weights
      // into quantizes the activations per block, which is not the graph's semantics.
      extra: { session: { qdq_matmulnbits_accuracy_level: '1' } },
    },
  });
  const cls = model.constructor.name;
  const arch = (cfg.architectures ?? [])[0];
  const input = new Tensor('int64', BigInt64Array.from(prompt, BigInt), [1, prompt.length]);
  // Greedy, exactly want.length new tokens, not stopping at EOS (as shrink's --ignore-eos).
  const out = await model.generate({
    inputs: input, max_new_tokens: want.length, min_new_tokens: 0, do_sample: false,
    num_beams: 1, eos_token_id: null, repetition_penalty: 1.0,
  });
  const got = Array.from(out.data, Number).slice(prompt.length);
  const idsOk = got.length === want.length && got.every((x, i) => x === want[i]);
  const clsOk = cls === arch;
  const shape = `hidden ${cfg.hidden_size}, heads ${cfg.num_attention_heads}/` +
                `${cfg.num_key_value_heads}, head_dim ${cfg.head_dim ?? '-'}, mlp ` +
                `${cfg.intermediate_size}, layers ${cfg.num_hidden_layers}`;
  console.log(JSON.stringify({ dir, class: cls, config: shape, ids_equal: idsOk,
                               class_ok: clsOk, shrink: want, transformers_js: got }));
  if (!idsOk || !clsOk) {
    ++failed;
    console.error(`transformers_js_check: ${dir}: ` +
                  (!clsOk ? `class ${cls}, expected ${arch}` : 'greedy ids differ from shrink\'s'));
  }
  await model.dispose();
}
console.log(failed ? `transformers_js_check: ${failed} of ${dirs.length} failed`
                   : `transformers_js_check: all ${dirs.length} models match`);
process.exit(failed ? 1 : 0);
