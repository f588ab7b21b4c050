// The soak test of `shrink-rt serve` (ctest serve_soak; a smaller variant runs under
// ASan/UBSan in scripts/sanitize.sh): REQUESTS requests at CONCURRENCY from node's fetch, on
// 127.0.0.1 only, with random settings (greedy or seeded sampling, streamed or not, completion
// or chat, max_tokens), about 5% malformed (bad JSON, wrong types, past the context, unknown
// model) and about 5% streams the client aborts after the first chunk. Every valid response is
// checked against `shrink-rt generate` run alone (token ids: a prefix of the reference), every
// malformed one must be a 4xx in OpenAI's shape, no valid request may get a 5xx, and the
// server's RSS after the run is compared with its RSS after a warm-up (reported; fails beyond
// +RSS_SLACK_MB). Exits 0 pass, 1 fail.
// Usage: node scripts/serve_soak.mjs --rt SHRINK_RT --model DIR [--requests 2000]
//        [--concurrency 32] [--wrapper "cmd args"]  (a wrapper runs the server, e.g. under ASan)
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = Object.fromEntries(
  process.argv.slice(2).reduce((a, x, i, all) => (x.startsWith('--') ? [...a, [x.slice(2), all[i + 1]]] : a), []));
const RT = args.rt, MODEL = args.model;
// Server and references run with --cpu-weights exact: the default teacher is bf16, and its default
// bf16 activations would turn batched-versus-alone summation-order differences into rounding flips.
const REQUESTS = Number(args.requests || 2000), CONCURRENCY = Number(args.concurrency || 32);
const RSS_SLACK_MB = Number(process.env.RSS_SLACK_MB || 48);
const t0 = Date.now();

// The pool of valid requests and their references (generate alone).
const prompts = ['The meaning of life', 'Once upon a time', 'A fool and his money', 'Q: What is love?\nA:',
                 'You will meet a tall dark stranger', 'Never trust a', 'In the beginning', 'Knowledge is'];
const settings = [{ temperature: 0 }, { temperature: 0.8, top_p: 0.9, seed: 11 }, { temperature: 1.2, top_k: 20, seed: 5 }];
const REF_LEN = 24;
const refs = [];
for (const p of prompts) {
  for (const s of settings) {
    const extra = s.temperature ? ['--temperature', String(s.temperature), '--seed', String(s.seed),
                                   ...(s.top_p ? ['--top-p', String(s.top_p)] : []), ...(s.top_k ? ['--top-k', String(s.top_k)] : [])] : [];
    const r = spawnSync(RT, ['--cpu-weights', 'exact', '--threads', '1', '--json', 'generate', MODEL, '--prompt', p, '--max-new-tokens',
                             String(REF_LEN), '--ignore-eos', ...extra], { encoding: 'utf8' });
    if (r.status !== 0) { console.error(r.stderr); process.exit(1); }
    refs.push({ prompt: p, s, ids: JSON.parse(r.stdout).new_ids });
  }
}
const chatTemplate = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'serve-soak-')), 'chat.jinja');
fs.writeFileSync(chatTemplate, JSON.parse(fs.readFileSync(path.join(here, '..', 'tests', 'fixtures', 'chat_templates', 'smollm.json'), 'utf8')).chat_template);

const wrapper = args.wrapper ? args.wrapper.split(' ') : [];
const server = await new Promise((resolve, reject) => {
  const cmd = [...wrapper, RT, '--cpu-weights', 'exact', '--threads', '2', 'serve', MODEL, '--port', '0', '--slots', '16', '--ctx', '512',
               '--queue', '1024', '--prefix-cache-mb', '64', '--response-cache', '256', '--chat-template', chatTemplate];
  const p = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '', err = '';
  p.stderr.on('data', (d) => { err += d; });
  p.stdout.on('data', (d) => {
    out += d;
    const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
    if (m) resolve({ proc: p, url: m[1], stderr: () => err });
  });
  p.on('exit', (code) => reject(new Error(`the server exited ${code}: ${err}`)));
});
const rssMb = () => {
  const s = fs.readFileSync(`/proc/${server.proc.pid}/status`, 'utf8');
  return Number(s.match(/VmRSS:\s+(\d+)/)[1]) / 1024;
};

let seed = 12345;
const rand = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const malformed = [
  ['{"prompt": "x", "max_tokens": 4', 400], ['{"prompt": "x", "max_tokens": "four"}', 400],
  ['{"prompt": "x", "temperature": -1}', 400], ['{"prompt": [1, -3]}', 400], ['[]', 400],
  [JSON.stringify({ prompt: 'word '.repeat(700), max_tokens: 4 }), 400],
  ['{"prompt": "x", "model": "not-this-one"}', 404], ['{"messages": "hi"}', 400, true],
];
const stats = { valid: 0, ok: 0, wrong: 0, fivexx: 0, bad: 0, badOk: 0, aborted: 0, failures: [] };
const fail = (m) => { if (stats.failures.length < 10) stats.failures.push(m); };

async function one(k) {
  const x = rand();
  if (x < 0.05) {  // malformed
    const [body, status, chat] = malformed[Math.floor(rand() * malformed.length)];
    stats.bad++;
    const r = await fetch(`${server.url}/v1/${chat ? 'chat/completions' : 'completions'}`, { method: 'POST', body });
    const j = await r.json().catch(() => null);
    if (r.status === status && j && j.error && typeof j.error.message === 'string') stats.badOk++;
    else fail(`#${k} malformed ${body.slice(0, 40)}: HTTP ${r.status}`);
    return;
  }
  const ref = refs[Math.floor(rand() * refs.length)];
  const n = 1 + Math.floor(rand() * REF_LEN);
  const stream = rand() < 0.5, chatReq = rand() < 0.15, abort = rand() < 0.05 / 0.95;
  if (chatReq) {  // chat: checked for a well-formed answer of n tokens (its prompt differs from the pool's)
    stats.valid++;
    const r = await fetch(`${server.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({
      messages: [{ role: 'user', content: ref.prompt }], max_tokens: n, ...ref.s, ignore_eos: true }) });
    if (r.status >= 500) stats.fivexx++;
    const j = await r.json().catch(() => null);
    if (r.status === 200 && j && j.usage.completion_tokens === n && typeof j.choices[0].message.content === 'string') stats.ok++;
    else { stats.wrong++; fail(`#${k} chat: HTTP ${r.status} ${JSON.stringify(j).slice(0, 100)}`); }
    return;
  }
  const body = JSON.stringify({ prompt: ref.prompt, max_tokens: n, ...ref.s, ignore_eos: true, return_token_ids: true, stream });
  const ac = new AbortController();
  let r;
  try {
    r = await fetch(`${server.url}/v1/completions`, { method: 'POST', body, signal: ac.signal });
  } catch (e) { stats.wrong++; fail(`#${k}: ${e.message}`); return; }
  if (r.status >= 500) { stats.fivexx++; fail(`#${k}: HTTP ${r.status}`); return; }
  if (stream && abort) {  // read one chunk, then go away
    stats.aborted++;
    const reader = r.body.getReader();
    await reader.read().catch(() => {});
    ac.abort();
    return;
  }
  stats.valid++;
  let ids = [];
  if (stream) {
    const text = await r.text();
    for (const ev of text.split('\n\n')) {
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const c = JSON.parse(ev.slice(6));
      if (c.choices && c.choices.length && c.choices[0].token_ids) ids.push(...c.choices[0].token_ids);
      if (c.error) fail(`#${k}: error event ${c.error.message}`);
    }
    // A cached replay carries no per-token ids: its text arrives whole.
    if (!ids.length && text.includes('"response_cache":"hit"')) { stats.ok++; return; }
  } else {
    const j = await r.json();
    ids = j.choices[0].token_ids;
  }
  if (JSON.stringify(ids) === JSON.stringify(ref.ids.slice(0, n))) stats.ok++;
  else { stats.wrong++; fail(`#${k} ${ref.prompt} ${JSON.stringify(ref.s)} n=${n} stream=${stream}: ${JSON.stringify(ids)} vs ${JSON.stringify(ref.ids.slice(0, n))}`); }
}

const warm = Math.min(200, Math.floor(REQUESTS / 5));
let next = 0, rssWarm = 0;
async function worker() {
  for (let k; (k = next++) < REQUESTS;) {
    if (k === warm) rssWarm = rssMb();
    await one(k).catch((e) => { stats.wrong++; fail(`#${k}: ${e.message}`); });
  }
}
await Promise.all(Array.from({ length: CONCURRENCY }, worker));
await new Promise((r) => setTimeout(r, 500));
const rssEnd = rssMb();
const metrics = await (await fetch(`${server.url}/metrics`)).text();
const busy = Number((metrics.match(/^shrink_slots_busy (\d+)/m) || [0, -1])[1]);
server.proc.kill('SIGTERM');
const code = await new Promise((r) => server.proc.on('exit', (c) => r(c)));
const seconds = (Date.now() - t0) / 1000;
const report = { requests: REQUESTS, concurrency: CONCURRENCY, seconds, ...stats, rss_after_warmup_mb: rssWarm,
                 rss_end_mb: rssEnd, slots_busy_at_end: busy, exit_code: code };
console.log(JSON.stringify(report, null, 1));
const ok = stats.wrong === 0 && stats.fivexx === 0 && stats.badOk === stats.bad && busy === 0 && code === 0 &&
           rssEnd - rssWarm <= RSS_SLACK_MB;
if (!ok) console.log(`serve_soak: FAIL${rssEnd - rssWarm > RSS_SLACK_MB ? ` (RSS grew ${(rssEnd - rssWarm).toFixed(1)} MB)` : ''}\n${server.stderr().slice(-2000)}`);
else console.log(`serve_soak: ${stats.ok} valid responses correct, ${stats.badOk} malformed refused, ${stats.aborted} aborted; RSS ${rssWarm.toFixed(1)} -> ${rssEnd.toFixed(1)} MB in ${seconds.toFixed(0)} s`);
process.exit(ok ? 0 : 1);
