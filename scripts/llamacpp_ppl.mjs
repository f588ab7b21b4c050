// Perplexity of a GGUF file in llama.cpp (node-llama-cpp's prebuilt CPU binaries), with shrink's
// definition (shrink eval / shrink-rt eval): non-overlapping windows of --seq-len tokens over the
// first --max-tokens tokens of a shrink token shard (`shrink data prepare`), each window scoring
// its len - 1 next-token predictions from llama.cpp's full next-token distribution (no BOS added).
// Usage: node scripts/llamacpp_ppl.mjs MODEL.gguf SHARD.tok [--seq-len 256] [--max-tokens 4096]
//        [--threads N]
// Prints {"perplexity", "tokens_scored", "windows"} as JSON. Used by scripts/llamacpp_bench.sh.
import fs from "node:fs";
import {loadNodeLlamaCpp} from "./llamacpp_load.mjs";

const {getLlama, LlamaLogLevel} = await loadNodeLlamaCpp();

const [modelPath, shard, ...rest] = process.argv.slice(2);
const opt = {seqLen: 256, maxTokens: 4096, threads: 1};
for (let i = 0; i < rest.length; i++) {
  if (rest[i] === "--seq-len") opt.seqLen = Number(rest[++i]);
  else if (rest[i] === "--max-tokens") opt.maxTokens = Number(rest[++i]);
  else if (rest[i] === "--threads") opt.threads = Number(rest[++i]);
  else { console.error(`llamacpp_ppl: unknown option ${rest[i]}`); process.exit(2); }
}

// A shrink token shard: "SHRKTOK1", u64 header length, JSON header, then the ids.
const buf = fs.readFileSync(shard);
if (buf.toString("latin1", 0, 8) !== "SHRKTOK1") { console.error(`${shard}: not a shrink token shard`); process.exit(2); }
const hlen = Number(buf.readBigUInt64LE(8));
const header = JSON.parse(buf.toString("utf8", 16, 16 + hlen).replace(/[\0 ]+$/, ""));
const start = 16 + hlen, width = header.token_bytes;
const n = Math.min(opt.maxTokens, header.n_tokens);
const ids = [];
for (let i = 0; i < n; i++) ids.push(width === 2 ? buf.readUInt16LE(start + 2 * i) : buf.readUInt32LE(start + 4 * i));

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
const ctx = await model.createContext({contextSize: opt.seqLen, batchSize: opt.seqLen, threads: opt.threads});
const seq = ctx.getSequence();
const raw = {temperature: 1, topK: 0, topP: 1, minP: 0};
let nll = 0, scored = 0, windows = 0;
for (let s = 0; s < ids.length; s += opt.seqLen) {
  const w = ids.slice(s, s + opt.seqLen);
  if (w.length < 2) break;
  await seq.clearHistory();
  const out = await seq.controlledEvaluate(
      w.map((t, i) => (i + 1 < w.length ? [t, {generateNext: {probabilities: true, options: raw}}] : t)));
  for (let i = 0; i + 1 < w.length; i++) {
    nll -= Math.log(Math.max(out[i].next.probabilities.get(w[i + 1]) ?? 0, 1e-30));
    scored++;
  }
  windows++;
}
console.log(JSON.stringify({perplexity: Math.exp(nll / scored), tokens_scored: scored, windows}));
await ctx.dispose();
await model.dispose();
