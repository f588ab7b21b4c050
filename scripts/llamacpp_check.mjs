// llama.cpp peer check of the GGUF export (the ctest `llamacpp_check`, run by
// scripts/llamacpp_check.sh): each case directory holds model.gguf (shrink export --format gguf),
// ref.json (shrink-rt's logits at every prompt position and its greedy ids, export_peer ref) and
// case.json ({kind: "float" | "int", ...}). llama.cpp (node-llama-cpp's prebuilt binaries) loads
// the file, evaluates the prompt with the full next-token distribution at every position, and
// generates greedily (EOS ignored). Checked per case:
//  - float types: greedy ids equal shrink-rt's; probabilities within maxProbDiff; perplexity of
//    the prompt within pplRel (relative);
//  - integer types (llama.cpp quantizes the activations to 8 bits; shrink-rt keeps them float):
//    mean KL(shrink-rt || llama.cpp) at most maxKl, top-1 agreement at least minTop1, perplexity
//    within pplRel; the greedy ids that match are counted and reported.
// Usage: node scripts/llamacpp_check.mjs [--threads N] [--json OUT] CASE_DIR...
// Exit 0 when every case passes, 1 otherwise.
// node-llama-cpp is found in $SHRINK_ORT_NODE_DIR, else <repo>/.npm-ort (scripts/setup.sh);
// exit 77 when it is missing (scripts/npm_peers.sh decides whether that fails or skips).
import fs from "node:fs";
import path from "node:path";
import {loadNodeLlamaCpp} from "./llamacpp_load.mjs";

let getLlama, LlamaLogLevel;
try {
  ({getLlama, LlamaLogLevel} = await loadNodeLlamaCpp());
} catch (e) {
  console.error(`llamacpp_check: ${e.message}`);
  process.exit(77);
}

const args = process.argv.slice(2);
let threads = 1, jsonOut = "";
const cases = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--threads") threads = Number(args[++i]);
  else if (args[i] === "--json") jsonOut = args[++i];
  else cases.push(args[i]);
}

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const raw = {temperature: 1, topK: 0, topP: 1, minP: 0};  // the model's own distribution

function softmax(row) {
  let mx = -Infinity;
  for (const v of row) mx = Math.max(mx, v);
  let z = 0;
  const p = new Float64Array(row.length);
  for (let i = 0; i < row.length; i++) z += (p[i] = Math.exp(row[i] - mx));
  for (let i = 0; i < row.length; i++) p[i] /= z;
  return p;
}

async function runCase(dir) {
  const ref = JSON.parse(fs.readFileSync(path.join(dir, "ref.json"), "utf8"));
  const spec = JSON.parse(fs.readFileSync(path.join(dir, "case.json"), "utf8"));
  const model = await llama.loadModel({modelPath: path.join(dir, "model.gguf")});
  const V = ref.vocab, prompt = ref.prompt;
  let tokenized = null;  // llama.cpp's tokenization of the prompt text, against shrink's ids
  if (spec.text) tokenized = model.tokenize(spec.text, false);
  const ctx = await model.createContext({contextSize: 512, batchSize: 512, threads});
  const seq = ctx.getSequence();
  // Every prompt position's next-token distribution, in one batch.
  const out = await seq.controlledEvaluate(
      prompt.map((t) => [t, {generateNext: {probabilities: true, options: raw}}]));
  let maxDiff = 0, kl = 0, agree = 0, nllRef = 0, nllPeer = 0, n = 0;
  for (let i = 0; i < prompt.length; i++) {
    const pr = softmax(ref.logits.slice(i * V, (i + 1) * V));
    const probs = out[i].next.probabilities;
    const pp = new Float64Array(V);
    for (const [t, p] of probs) pp[t] = p;
    let k = 0, ar = 0, ap = 0;
    for (let v = 0; v < V; v++) {
      maxDiff = Math.max(maxDiff, Math.abs(pr[v] - pp[v]));
      if (pr[v] > 0) k += pr[v] * (Math.log(pr[v]) - Math.log(Math.max(pp[v], 1e-30)));
      if (pr[v] > pr[ar]) ar = v;
      if (pp[v] > pp[ap]) ap = v;
    }
    kl += k;
    agree += ar === ap ? 1 : 0;
    if (i + 1 < prompt.length) {
      nllRef -= Math.log(pr[prompt[i + 1]]);
      nllPeer -= Math.log(Math.max(pp[prompt[i + 1]], 1e-30));
      n++;
    }
  }
  // Greedy continuation, one token at a time (EOS ignored, as in ref.json).
  const greedy = [];
  let last = out[prompt.length - 1].next.probabilities.entries().next().value[0];
  for (let i = 0; i < ref.greedy.length; i++) {
    greedy.push(last);
    if (i + 1 === ref.greedy.length) break;
    const o = await seq.controlledEvaluate([[last, {generateNext: {token: true, options: {temperature: 0}}}]]);
    last = o[0].next.token;
  }
  let same = 0;
  while (same < greedy.length && greedy[same] === ref.greedy[same]) same++;
  const r = {
    case: path.basename(dir), type: spec.type, kind: spec.kind,
    max_prob_diff: maxDiff, kl: kl / prompt.length, top1: agree / prompt.length,
    ppl_shrink_rt: Math.exp(nllRef / n), ppl_llamacpp: Math.exp(nllPeer / n),
    greedy_prefix_equal: same, greedy_len: ref.greedy.length,
    greedy_equal: greedy.filter((t, i) => t === ref.greedy[i]).length,
  };
  r.ppl_rel = Math.abs(r.ppl_llamacpp / r.ppl_shrink_rt - 1);
  const fails = [];
  if (tokenized) {
    r.tokenization_equal = tokenized.length === prompt.length && tokenized.every((t, i) => t === prompt[i]);
    if (!r.tokenization_equal) fails.push(`llama.cpp tokenizes the text as [${tokenized.slice(0, 12)}...], shrink as [${prompt.slice(0, 12)}...]`);
  }
  if (spec.kind === "float") {
    if (same !== ref.greedy.length) fails.push(`greedy ids differ from position ${same}`);
    if (maxDiff > spec.maxProbDiff) fails.push(`probability differs by ${maxDiff.toExponential(2)} > ${spec.maxProbDiff}`);
  } else {
    if (r.kl > spec.maxKl) fails.push(`KL ${r.kl.toExponential(2)} > ${spec.maxKl}`);
    if (r.top1 < spec.minTop1) fails.push(`top-1 ${r.top1.toFixed(3)} < ${spec.minTop1}`);
  }
  if (r.ppl_rel > spec.pplRel) fails.push(`perplexity ${r.ppl_llamacpp.toFixed(4)} vs ${r.ppl_shrink_rt.toFixed(4)} (rel ${r.ppl_rel.toExponential(2)} > ${spec.pplRel})`);
  r.ok = fails.length === 0;
  r.fails = fails;
  await ctx.dispose();
  await model.dispose();
  return r;
}

const results = [];
for (const dir of cases) {
  let r;
  try {
    r = await runCase(dir);
  } catch (e) {
    r = {case: path.basename(dir), ok: false, fails: [String(e && e.message || e)]};
  }
  results.push(r);
  const f = (x, d = 4) => (typeof x === "number" ? x.toFixed(d) : "-");
  console.log(`${r.ok ? "ok  " : "FAIL"} ${r.case}: type ${r.type ?? "?"}, max |dp| ${r.max_prob_diff?.toExponential(2) ?? "-"}, ` +
              `KL ${r.kl?.toExponential(2) ?? "-"}, top-1 ${f(r.top1, 3)}, ppl ${f(r.ppl_llamacpp)} vs ${f(r.ppl_shrink_rt)}, ` +
              `greedy ${r.greedy_equal ?? "-"}/${r.greedy_len ?? "-"} equal (prefix ${r.greedy_prefix_equal ?? "-"})` +
              (r.tokenization_equal === undefined ? "" : `, tokenization ${r.tokenization_equal ? "equal" : "differs"}`) +
              (r.ok ? "" : `: ${r.fails.join("; ")}`));
}
if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(results, null, 1));
const failed = results.filter((r) => !r.ok).length;
console.log(`llamacpp_check: ${results.length - failed}/${results.length} cases passed (llama.cpp via node-llama-cpp)`);
process.exit(failed ? 1 : 0);
