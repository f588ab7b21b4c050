// The ctest `jinja_check`: shrink's chat-template renderer (lib/core/jinja.cpp, through
// `shrink-rt chat-template --contexts`) against Hugging Face's own, @huggingface/jinja, on the
// chat templates of Llama 3.2, Qwen2, Qwen2.5, Mistral v0.3 and SmolLM2
// (tests/fixtures/chat_templates/) over many message lists: with and without a system prompt,
// one to five turns, add_generation_prompt on and off, tools and tool calls, non-ASCII text,
// blank and padded content, and lists a template refuses (raise_exception: both must fail).
// Usage: node scripts/jinja_check.mjs --rt SHRINK_RT --work DIR
// Exit 0 pass, 1 fail, 77 when @huggingface/jinja cannot be loaded.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const npmDir = process.env.SHRINK_ORT_NODE_DIR || path.join(here, '..', '.npm-ort');
let Template;
try {
  const require = createRequire(path.join(npmDir, 'node_modules', 'x.js'));
  ({ Template } = require('@huggingface/jinja'));
} catch (e) {
  console.error(`jinja_check: cannot load @huggingface/jinja from ${npmDir}: ${e.message}`);
  process.exit(77);
}
const args = Object.fromEntries(
  process.argv.slice(2).reduce((a, x, i, all) => (x.startsWith('--') ? [...a, [x.slice(2), all[i + 1]]] : a), []));
fs.mkdirSync(args.work, { recursive: true });
const fixtures = path.join(here, '..', 'tests', 'fixtures', 'chat_templates');

const tools = [{
  type: 'function',
  function: {
    name: 'get_weather', description: 'Get the current weather in a city',
    parameters: { type: 'object', properties: { city: { type: 'string', description: 'The city' },
                                                unit: { type: 'string', enum: ['celsius', 'fahrenheit'] } },
                  required: ['city'] },
  },
}];
const texts = ['Hello!', 'What is the capital of France?', '  padded with spaces  ', 'two\nlines\n',
               'naïve café — 日本語 😀', '', 'Tell me a {{ joke }} with {% tags %} inside', 'x'.repeat(300)];
function conversations() {
  const out = [];
  const pick = (k) => texts[k % texts.length];
  for (let turns = 1; turns <= 5; turns++) {
    for (const system of [null, 'You are a helpful assistant.', 'Be brief.\nAnswer in French.']) {
      for (let shift = 0; shift < 3; shift++) {
        const m = system === null ? [] : [{ role: 'system', content: system }];
        for (let t = 0; t < turns; t++) {
          m.push({ role: 'user', content: pick(t + shift) });
          if (t + 1 < turns) m.push({ role: 'assistant', content: pick(t + shift + 3) });
        }
        out.push(m);
      }
    }
  }
  out.push([{ role: 'user', content: 'a' }, { role: 'user', content: 'b' }]);           // not alternating
  out.push([{ role: 'assistant', content: 'I start' }, { role: 'user', content: 'ok' }]);
  out.push([{ role: 'user', content: 'Weather in Paris?' },
            { role: 'assistant', content: '', tool_calls: [{ id: 'call9abcd', type: 'function',
              function: { name: 'get_weather', arguments: { city: 'Paris', unit: 'celsius' } } }] },
            { role: 'tool', tool_call_id: 'call9abcd', name: 'get_weather', content: '{"temp": 21}' }]);
  return out;
}

let failures = 0, compared = 0;
for (const file of fs.readdirSync(fixtures).filter((f) => f.endsWith('.json')).sort()) {
  const fx = JSON.parse(fs.readFileSync(path.join(fixtures, file), 'utf8'));
  const ref = new Template(fx.chat_template);
  const contexts = [];
  for (const messages of conversations()) {
    for (const add_generation_prompt of [true, false]) {
      for (const withTools of [false, true]) {
        const ctx = { messages, add_generation_prompt, bos_token: fx.bos_token, eos_token: fx.eos_token,
                      date_string: '26 Jul 2024' };
        if (withTools) ctx.tools = tools;
        contexts.push(ctx);
      }
    }
  }
  const ctxFile = path.join(args.work, `${file}.contexts.json`);
  fs.writeFileSync(ctxFile, JSON.stringify(contexts));
  const r = spawnSync(args.rt, ['chat-template', '--template', path.join(fixtures, file), '--contexts', ctxFile],
                      { encoding: 'utf8', maxBuffer: 1 << 28 });
  if (r.status !== 0) {
    console.log(`FAIL ${file}: shrink-rt chat-template exited ${r.status}: ${r.stderr.trim()}`);
    failures++;
    continue;
  }
  const ours = JSON.parse(r.stdout);
  let bad = 0, errorsBoth = 0;
  contexts.forEach((ctx, k) => {
    let want, wantErr = null;
    try { want = ref.render(ctx); } catch (e) { wantErr = e.message; }
    const got = ours[k];
    compared++;
    if (wantErr !== null || got.error !== undefined) {
      if (wantErr !== null && got.error !== undefined) { errorsBoth++; return; }
      if (bad++ < 3) console.log(`FAIL ${file} #${k}: reference ${wantErr ? 'error: ' + wantErr : 'ok'}, shrink ${got.error ? 'error: ' + got.error : 'ok'}`);
      return;
    }
    if (got.text !== want) {
      if (bad++ < 3) {
        let at = 0;
        while (at < want.length && want[at] === got.text[at]) at++;
        console.log(`FAIL ${file} #${k}: differs at ${at}:\n  reference ${JSON.stringify(want.slice(Math.max(0, at - 40), at + 60))}\n  shrink    ${JSON.stringify(got.text.slice(Math.max(0, at - 40), at + 60))}`);
      }
    }
  });
  failures += bad;
  console.log(`${bad ? 'FAIL' : 'ok  '} ${file}: ${contexts.length - bad} of ${contexts.length} contexts equal (${errorsBoth} refused by both)`);
}
console.log(failures ? `jinja_check: ${failures} differences` : `jinja_check: all ${compared} renderings equal`);
process.exit(failures ? 1 : 0);
