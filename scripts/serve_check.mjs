// The ctest `serve_check`: `shrink-rt serve` driven by the official `openai` npm client.
// Every served completion is checked against `shrink-rt generate` run alone on the same model
// (token ids and text): greedy, seeded sampling, streamed, several at once; then the prefix
// cache (cached_tokens of a repeated long prompt), the response cache (a marked hit with the
// same text), stop strings, errors in OpenAI's shape through the client's error classes (401,
// 400 with the parameter, 404, 503 from a full queue), a client that aborts mid-stream (its
// request is cancelled and the server keeps serving), /health, /metrics, and SIGTERM (exit 0).
// Usage: node scripts/serve_check.mjs --rt SHRINK_RT --model DIR
// Exit 0 pass, 1 fail, 77 when the openai package cannot be loaded.
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const npmDir = process.env.SHRINK_ORT_NODE_DIR || path.join(here, '..', '.npm-ort');
let OpenAI;
try {
  const require = createRequire(path.join(npmDir, 'node_modules', 'x.js'));
  OpenAI = require('openai');
  OpenAI = OpenAI.default || OpenAI;
} catch (e) {
  console.error(`serve_check: cannot load the openai package from ${npmDir}: ${e.message}`);
  process.exit(77);
}

const args = Object.fromEntries(
  process.argv.slice(2).reduce((a, x, i, all) => (x.startsWith('--') ? [...a, [x.slice(2), all[i + 1]]] : a), []));
const RT = args.rt, MODEL = args.model;
// Server and references run with --cpu-weights exact: the default teacher is bf16, and its default
// bf16 activations would turn batched-versus-alone summation-order differences into rounding flips.
const KEY = 'sk-shrink-test';
let failures = 0;
function check(ok, what) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures++;
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
async function expectError0(what, fn, status, test) {
  try { await fn(); check(false, `${what}: no error`); } catch (e) {
    check(e.status === status && (!test || test(e)), `${what}: HTTP ${e.status} ${e.error ? JSON.stringify(e.error).slice(0, 120) : e.message}`);
  }
}

function generate(prompt, n, extra = [], ids = null) {
  const r = spawnSync(RT, ['--cpu-weights', 'exact', '--threads', '1', '--json', 'generate', MODEL, ...(ids ? ['--prompt-ids', ids.join(',')] : ['--prompt', prompt]),
                           '--max-new-tokens', String(n), '--ignore-eos', ...extra], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`shrink-rt generate failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function startServer(extra) {
  return new Promise((resolve, reject) => {
    const p = spawn(RT, ['--cpu-weights', 'exact', '--threads', '1', 'serve', MODEL, '--port', '0', '--ctx', '512', ...extra],
                    { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    p.stderr.on('data', (d) => { err += d; });
    p.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/listening on http:\/\/([\d.]+):(\d+)/);
      if (m) resolve({ proc: p, url: `http://${m[1]}:${m[2]}`, stderr: () => err });
    });
    p.on('exit', (code) => reject(new Error(`shrink-rt serve exited ${code} before listening: ${err}`)));
  });
}

function exited(proc, ms) {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(null), ms);
    proc.on('exit', (code, sig) => { clearTimeout(t); resolve({ code, sig }); });
  });
}

const prompts = ['The meaning of life', 'Once upon a time', 'A fool and his money', 'Q: What is love?\nA:'];
const refs = prompts.map((p) => generate(p, 16));
const sampled = generate(prompts[0], 16, ['--temperature', '0.8', '--top-p', '0.95', '--top-k', '50', '--seed', '7']);
const sampled8 = generate(prompts[0], 16, ['--temperature', '0.8', '--top-p', '0.95', '--top-k', '50', '--seed', '8']);
const newText = (g, p) => g.text.slice(p.length);

// The teacher has no chat template of its own: serve it with SmolLM2's (a ChatML template).
const fs = await import('node:fs');
const os = await import('node:os');
const chatTemplate = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'serve-check-')), 'chat.jinja');
fs.writeFileSync(chatTemplate, JSON.parse(fs.readFileSync(path.join(here, '..', 'tests', 'fixtures', 'chat_templates', 'smollm.json'), 'utf8')).chat_template);
const chatMessages = [{ role: 'system', content: 'You answer with a fortune.' }, { role: 'user', content: 'What does the future hold?' }];
const messagesFile = path.join(path.dirname(chatTemplate), 'messages.json');
fs.writeFileSync(messagesFile, JSON.stringify(chatMessages));
const rendered = spawnSync(RT, ['chat-template', '--template', chatTemplate, '--messages', messagesFile], { encoding: 'utf8' });
if (rendered.status !== 0) throw new Error(`shrink-rt chat-template failed: ${rendered.stderr}`);
const srv = await startServer(['--slots', '4', '--api-key', KEY, '--response-cache', '16', '--max-batch-tokens', '32',
                               '--chat-template', chatTemplate]);
const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: KEY, maxRetries: 0 });
try {
  const models = await client.models.list();
  const id = models.data[0].id;
  check(models.data.length === 1 && id === path.basename(MODEL), `GET /v1/models lists ${id}`);

  // Greedy, plain.
  const r = await client.completions.create({ model: id, prompt: prompts[0], max_tokens: 16, temperature: 0,
                                              ignore_eos: true, return_token_ids: true });
  check(same(r.choices[0].token_ids, refs[0].new_ids), 'greedy completion: the ids of shrink-rt generate');
  check(r.choices[0].text === newText(refs[0], prompts[0]), 'greedy completion: the text of shrink-rt generate');
  check(r.usage.completion_tokens === 16 && r.usage.prompt_tokens === refs[0].prompt_len &&
        r.choices[0].finish_reason === 'length', 'usage and finish_reason');

  // Seeded sampling.
  const s = await client.completions.create({ model: id, prompt: prompts[0], max_tokens: 16, temperature: 0.8,
                                              top_p: 0.95, top_k: 50, seed: 7, ignore_eos: true, return_token_ids: true });
  check(same(s.choices[0].token_ids, sampled.new_ids), 'seeded sampling: the ids of shrink-rt generate --seed 7');

  // n choices: choice i samples with seed + i, each as generate does; usage sums the completions.
  const nc = await client.completions.create({ model: id, prompt: prompts[0], max_tokens: 16, temperature: 0.8, n: 3,
                                               top_p: 0.95, top_k: 50, seed: 7, ignore_eos: true, return_token_ids: true });
  check(nc.choices.length === 3 && nc.choices.every((c, i) => c.index === i) &&
        same(nc.choices[0].token_ids, sampled.new_ids) && same(nc.choices[1].token_ids, sampled8.new_ids) &&
        nc.usage.completion_tokens === 48 && nc.usage.prompt_tokens === refs[0].prompt_len,
        'n = 3: choices 0 and 1 are generate --seed 7 and --seed 8, usage 3 x 16');
  const ns = await client.completions.create({ model: id, prompt: prompts[1], max_tokens: 16, temperature: 0, n: 2,
                                               ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  const nText = ['', ''], nFinish = [null, null];
  let nUsage = null;
  for await (const c of ns) {
    for (const ch of c.choices) { nText[ch.index] += ch.text; nFinish[ch.index] = ch.finish_reason || nFinish[ch.index]; }
    if (c.usage) nUsage = c.usage;
  }
  check(nText.every((t) => t === newText(refs[1], prompts[1])) && nFinish.every((f) => f === 'length') &&
        nUsage && nUsage.completion_tokens === 32, 'n = 2 streamed: both choices the greedy text, usage 2 x 16');

  // Streamed.
  const stream = await client.completions.create({ model: id, prompt: prompts[1], max_tokens: 16, temperature: 0,
                                                   ignore_eos: true, stream: true, stream_options: { include_usage: true } });
  let text = '', finish = null, usage = null;
  for await (const c of stream) {
    if (c.choices.length) { text += c.choices[0].text; finish = c.choices[0].finish_reason || finish; }
    if (c.usage) usage = c.usage;
  }
  check(text === newText(refs[1], prompts[1]) && finish === 'length' && usage && usage.completion_tokens === 16,
        'streamed completion: the same text, finish_reason and usage');

  // Chat: the messages rendered by the template, then generated as generate does from those ids.
  const chat = await client.chat.completions.create({ model: id, messages: chatMessages, max_tokens: 12, temperature: 0,
                                                     ignore_eos: true, return_token_ids: true });
  const chatRef = generate(null, 12, [], chat.choices[0].prompt_token_ids);
  check(rendered.stdout.includes('<|im_start|>assistant\n') && chatRef.text.startsWith(rendered.stdout),
        'chat: the prompt is the rendered template');
  check(same(chat.choices[0].token_ids, chatRef.new_ids) && chat.choices[0].message.role === 'assistant' &&
        chat.choices[0].message.content === chatRef.text.slice(chatRef.text.length - chat.choices[0].message.content.length) &&
        chat.object === 'chat.completion', 'chat completion: the ids of shrink-rt generate on the rendered prompt');
  const chatStream = await client.chat.completions.create({ model: id, messages: chatMessages, max_tokens: 12, temperature: 0,
                                                           ignore_eos: true, stream: true });
  let chatText = '', role = null;
  for await (const c of chatStream) {
    if (c.choices.length) { chatText += c.choices[0].delta.content || ''; role = role || c.choices[0].delta.role; }
  }
  check(chatText === chat.choices[0].message.content && role === 'assistant', 'streamed chat: the same content, role first');
  await expectError0('chat with an image part', () => client.chat.completions.create({ model: id, max_tokens: 1,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }] }), 400,
    (e) => e.param === 'messages[0].content[0]');

  // Several at once, greedy and sampled: each as generated alone (15 tokens: requests the
  // response cache has not seen, so that all of them run).
  const many = await Promise.all([0, 1, 2, 3, 0, 1].map((i, k) =>
    client.completions.create({ model: id, prompt: prompts[i], max_tokens: 15, ignore_eos: true, return_token_ids: true,
                                ...(k === 4 ? { temperature: 0.8, top_p: 0.95, top_k: 50, seed: 7 } : { temperature: 0 }) })));
  check(many.every((m, k) => !m.shrink || k === 4 || k === 5) &&
        many.every((m, k) => same(m.choices[0].token_ids, (k === 4 ? sampled : refs[[0, 1, 2, 3, 0, 1][k]]).new_ids.slice(0, 15))),
        '6 concurrent completions: each equals shrink-rt generate alone');

  // Prefix cache: a long prompt, then the same prompt with another ending.
  const long = 'You are a helpful assistant who answers in proverbs and short fortunes. '.repeat(6);
  const a1 = await client.completions.create({ model: id, prompt: long + 'Hello', max_tokens: 4, temperature: 0 });
  const a2 = await client.completions.create({ model: id, prompt: long + 'Goodbye', max_tokens: 4, temperature: 0 });
  check(a1.usage.prompt_tokens_details.cached_tokens === 0 && a2.usage.prompt_tokens_details.cached_tokens >= 64,
        `prefix cache: the second request reused ${a2.usage.prompt_tokens_details.cached_tokens} of ${a2.usage.prompt_tokens} prompt tokens`);

  // Response cache: the same deterministic request again.
  const h1 = await client.completions.create({ model: id, prompt: prompts[2], max_tokens: 8, temperature: 0 });
  const h2 = await client.completions.create({ model: id, prompt: prompts[2], max_tokens: 8, temperature: 0 });
  check(!h1.shrink && h2.shrink && h2.shrink.response_cache === 'hit' && h2.choices[0].text === h1.choices[0].text &&
        h2.id !== h1.id, 'response cache: a repeated greedy request is a marked hit with the same text');

  // Stop strings: cut before the first occurrence, finish_reason stop.
  const full = newText(refs[0], prompts[0]);
  const stopAt = full.trim().split(/\s+/)[2];
  const st = await client.completions.create({ model: id, prompt: prompts[0], max_tokens: 16, temperature: 0, stop: [stopAt] });
  check(st.choices[0].finish_reason === 'stop' && st.choices[0].text === full.slice(0, full.indexOf(stopAt)),
        `stop string ${JSON.stringify(stopAt)}: the text ends before it`);

  // echo with logprobs (how evaluation harnesses score text): every prompt token, the first
  // with a null log-probability, then the generated tokens with the same log-probabilities as
  // without echo.
  const plainLp = await client.completions.create({ model: id, prompt: prompts[2], max_tokens: 3, temperature: 0, logprobs: 1 });
  const echoLp = await client.completions.create({ model: id, prompt: prompts[2], max_tokens: 3, temperature: 0, logprobs: 1, echo: true });
  const el = echoLp.choices[0].logprobs, pl = plainLp.choices[0].logprobs;
  const P = refs[2].prompt_len;
  check(el.tokens.length === P + 3 && el.token_logprobs[0] === null &&
        el.token_logprobs.slice(1, P).every((v) => typeof v === 'number' && v <= 0) &&
        same(el.tokens.slice(P), pl.tokens) &&
        el.token_logprobs.slice(P).every((v, k) => Math.abs(v - pl.token_logprobs[k]) < 1e-4) &&
        echoLp.choices[0].text === prompts[2] + plainLp.choices[0].text,
        `echo + logprobs: ${P} prompt tokens scored (the first null), then the completion's`);
  const score = await client.completions.create({ model: id, prompt: prompts[2], max_tokens: 0, echo: true, logprobs: 0, stream: true });
  let scored = null;
  for await (const c of score) if (c.choices.length && c.choices[0].logprobs) scored = c.choices[0].logprobs;
  check(scored && scored.token_logprobs.length === P && scored.token_logprobs.slice(1).every((v, k) => Math.abs(v - el.token_logprobs[k + 1]) < 1e-4),
        'echo + logprobs, max_tokens 0, streamed: the prompt scored alone, the same values');

  // logit_bias as the client sends it (token ids as keys): +100 makes every token the biased one.
  const forced = refs[0].new_ids[0] === 5 ? 6 : 5;
  const lb = await client.completions.create({ model: id, prompt: prompts[0], max_tokens: 6, temperature: 0,
                                               logit_bias: { [forced]: 100 }, ignore_eos: true, return_token_ids: true });
  check(lb.choices[0].token_ids.length === 6 && lb.choices[0].token_ids.every((t) => t === forced),
        `logit_bias {${forced}: 100}: every token is ${forced}`);

  // Errors through the client's classes.
  const expectError = async (what, fn, status, test) => {
    try { await fn(); check(false, `${what}: no error`); } catch (e) {
      check(e.status === status && (!test || test(e)), `${what}: HTTP ${e.status} ${e.error ? JSON.stringify(e.error).slice(0, 120) : e.message}`);
    }
  };
  await expectError('a wrong API key', () => new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'nope', maxRetries: 0 })
    .completions.create({ model: id, prompt: 'x', max_tokens: 1 }), 401, (e) => e.code === 'invalid_api_key');
  await expectError('max_tokens of the wrong type', () => client.completions.create({ model: id, prompt: 'x', max_tokens: 'ten' }),
                    400, (e) => e.param === 'max_tokens');
  await expectError('a prompt past the context', () => client.completions.create({ model: id, prompt: 'word '.repeat(600), max_tokens: 1 }),
                    400, (e) => e.code === 'context_length_exceeded');
  await expectError('another model', () => client.completions.create({ model: 'gpt-4', prompt: 'x', max_tokens: 1 }), 404);

  // A client that aborts mid-stream: its request is cancelled, the server serves on.
  const before = await (await fetch(`${srv.url}/metrics`)).text();
  const cancelledOf = (m) => Number((m.match(/^shrink_requests_cancelled_total (\d+)/m) || [0, -1])[1]);
  const ac = new AbortController();
  const ab = await client.completions.create({ model: id, prompt: prompts[3], max_tokens: 400, temperature: 0, ignore_eos: true, stream: true },
                                             { signal: ac.signal });
  let got = 0;
  try { for await (const c of ab) { if (++got === 3) ac.abort(); } } catch (e) { /* aborted */ }
  let after = before;
  for (let i = 0; i < 50 && cancelledOf(after) <= cancelledOf(before); i++) {
    await new Promise((r) => setTimeout(r, 100));
    after = await (await fetch(`${srv.url}/metrics`)).text();
  }
  check(cancelledOf(after) === cancelledOf(before) + 1, 'an aborted stream cancels its request');
  const again = await client.completions.create({ model: id, prompt: prompts[0], max_tokens: 14, temperature: 0, ignore_eos: true, return_token_ids: true });
  check(!again.shrink && same(again.choices[0].token_ids, refs[0].new_ids.slice(0, 14)), 'the server keeps serving after the errors and the abort');

  const health = await fetch(`${srv.url}/health`);
  const metrics = await (await fetch(`${srv.url}/metrics`)).text();
  check(health.status === 200, 'GET /health');
  check(['shrink_requests_total', 'shrink_generation_tokens_total', 'shrink_queue_length', 'shrink_slots_busy',
         'shrink_prefix_cache_hit_rate', 'shrink_prefix_cache_bytes', 'shrink_response_cache_hits_total']
          .every((n) => new RegExp(`^${n} [0-9.e+-]+$`, 'm').test(metrics)) &&
        /^shrink_response_cache_hits_total [1-9]/m.test(metrics), 'GET /metrics: Prometheus text with the serving counters');
  const raw = await fetch(`${srv.url}/v1/completions`, { method: 'POST', headers: { Authorization: `Bearer ${KEY}` }, body: '{"prompt": "x",' });
  const rawBody = await raw.json();
  check(raw.status === 400 && rawBody.error && /not valid JSON/.test(rawBody.error.message), 'malformed JSON: 400 in the OpenAI error shape');
} finally {
  srv.proc.kill('SIGTERM');
  const ex = await exited(srv.proc, 20000);
  check(ex && ex.code === 0, `SIGTERM: exit ${ex ? ex.code : 'none within 20 s'}`);
}

// A full queue: one slot, no waiting room: concurrent requests beyond the first get 503. This
// server also warms its prefix cache with a system prompt (--warm).
const warmPrompt = 'You are a helpful assistant who answers in proverbs and short fortunes. '.repeat(6);
const warmFile = path.join(path.dirname(chatTemplate), 'warm.txt');
fs.writeFileSync(warmFile, JSON.stringify(warmPrompt) + '\n');
const small = await startServer(['--slots', '1', '--queue', '0', '--warm', warmFile]);
try {
  const c1 = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'none', maxRetries: 0 });
  const w = await c1.completions.create({ prompt: warmPrompt + 'Hello', max_tokens: 2, temperature: 0 });
  check(w.usage.prompt_tokens_details.cached_tokens >= 64,
        `--warm: the first request reused ${w.usage.prompt_tokens_details.cached_tokens} of ${w.usage.prompt_tokens} prompt tokens`);
  const results = await Promise.allSettled([0, 1, 2].map(() =>
    c1.completions.create({ prompt: prompts[0], max_tokens: 200, temperature: 0, ignore_eos: true })));
  const busy = results.filter((x) => x.status === 'rejected' && x.reason.status === 503).length;
  const ok = results.filter((x) => x.status === 'fulfilled').length;
  check(busy >= 1 && ok >= 1 && busy + ok === 3, `full queue: ${ok} served, ${busy} refused with 503`);
} finally {
  small.proc.kill('SIGINT');
  const ex = await exited(small.proc, 20000);
  check(ex && ex.code === 0, `SIGINT: exit ${ex ? ex.code : 'none within 20 s'}`);
}

console.log(failures ? `serve_check: ${failures} failed` : 'serve_check: all passed');
process.exit(failures ? 1 : 0);
