// Speed of a GGUF file in llama.cpp (node-llama-cpp's prebuilt CPU binaries), measured as
// `shrink-rt bench` measures: a prompt of --prompt-len random ids (seeded) prefilled in one batch,
// then --gen-len greedy decode steps, batch 1. Prints {"prefill_tok_s", "decode_tok_s", "ttft_ms"}.
// Times include node-llama-cpp's per-call overhead (JavaScript promises around each llama_decode),
// which is small against a decode step of a 100M+ parameter model but not of a tiny one.
// Usage: node scripts/llamacpp_speed.mjs MODEL.gguf [--prompt-len 64] [--gen-len 32] [--threads N]
import {loadNodeLlamaCpp} from "./llamacpp_load.mjs";

const {getLlama, LlamaLogLevel} = await loadNodeLlamaCpp();

const [modelPath, ...rest] = process.argv.slice(2);
const opt = {promptLen: 64, genLen: 32, threads: 1};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--prompt-len") opt.promptLen = Number(rest[++i]);
  else if (rest[i] === "--gen-len") opt.genLen = Number(rest[++i]);
  else if (rest[i] === "--threads") opt.threads = Number(rest[++i]);
  else { console.error(`llamacpp_speed: unknown option ${rest[i]}`); process.exit(2); }
}
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
const ctx = await model.createContext({contextSize: opt.promptLen + opt.genLen + 8,
                                       batchSize: Math.max(opt.promptLen, 8), threads: opt.threads});
const seq = ctx.getSequence();
const V = model.fileInfo.metadata[model.fileInfo.metadata.general.architecture].vocab_size ??
          model.tokens.size ?? 1000;
let s = 12345;
const rnd = () => (s = (s * 1103515245 + 12345) % 2147483648);
const prompt = Array.from({length: opt.promptLen}, () => 3 + (rnd() % (V - 3)));
const greedy = {temperature: 0};
const t0 = process.hrtime.bigint();
// Prefill: every prompt token in one batch, the next token picked at the last position.
let out = await seq.controlledEvaluate(prompt.map((t, i) =>
    i + 1 < prompt.length ? t : [t, {generateNext: {token: true, options: greedy}}]));
const t1 = process.hrtime.bigint();
let last = out[prompt.length - 1].next.token;
for (let i = 0; i < opt.genLen; i++) {
  out = await seq.controlledEvaluate([[last, {generateNext: {token: true, options: greedy}}]]);
  last = out[0].next.token;
}
const t2 = process.hrtime.bigint();
const prefill = Number(t1 - t0) / 1e9, decode = Number(t2 - t1) / 1e9;
console.log(JSON.stringify({prefill_tok_s: opt.promptLen / prefill, decode_tok_s: opt.genLen / decode,
                            ttft_ms: prefill * 1e3, threads: opt.threads}));
await ctx.dispose();
await model.dispose();
