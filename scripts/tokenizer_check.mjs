// Peer check of shrink's tokenizer against Hugging Face's own JavaScript implementation
// (@huggingface/tokenizers, "Tokenizers.js", the tokenizer of Transformers.js), over the
// tokenizer.json layouts of the Llama family. From one byte-level BPE (by default the teacher's,
// trained by `shrink tokenizer train`) it writes seven tokenizer.json variants that differ only
// in their pipeline, as the real models ship them:
//   gpt2          ByteLevel pre-tokenizer with the GPT-2 regex (shrink's own output)
//   gpt2_split    Split(GPT-2 regex) + ByteLevel(use_regex false)            (GPT-NeoX style)
//   llama3        Split(Llama 3 regex) + ByteLevel, ignore_merges, BOS template (Llama 3)
//   qwen2         NFC + Split(Qwen2 regex) + ByteLevel, <|im_start|> <|im_end|>  (Qwen2)
//   smollm        Digits(individual) + ByteLevel(GPT-2 regex)                  (SmolLM)
//   sp_legacy     SentencePiece BPE: Prepend + Replace normalizer, byte_fallback, <unk> <s> </s>,
//                 decoder Replace + ByteFallback + Fuse + Strip              (Llama 2, Mistral)
//   sp_metaspace  the same vocabulary with a Metaspace pre-tokenizer (prepend_scheme first,
//                 split false) instead of the normalizer               (Mistral v0.3, newer
//                 conversions)
// Not compared here, because Tokenizers.js 0.2 departs from the Rust `tokenizers` crate there
// (shrink follows the crate; tests/core/test_tokenizer.cpp checks them against its documented
// examples): Metaspace with split true (Tokenizers.js ignores `split`), and the Metaspace
// decoder on a first token holding several '▁' (the crate drops them all, Tokenizers.js
// one).
// The SentencePiece vocabulary is the byte-level one re-spelled in characters ('▁' for spaces,
// tokens that are not whole UTF-8 characters dropped, 256 <0xNN> byte tokens added), so most
// non-ASCII characters go through byte fallback.
// For every variant and every text (fortunes, their lines, and hand-written hard cases), shrink
// (`shrink tokenizer encode --jsonl`, with and without --add-special-tokens) and Tokenizers.js
// must give the same ids, and decoding those ids must give the same text. Each variant's
// directory under --work keeps its tokenizer.json and shrink's encodings (encodings.jsonl,
// encodings_special.jsonl: {"text", "ids", "decoded"}) for scripts/hf_tokenizer_check.py, which
// checks them against the Rust crate on a machine that has it (scripts/gpu_carry.sh carries
// them, with sp_split added: Metaspace with split true and the Metaspace decoder).
// Usage: node scripts/tokenizer_check.mjs --shrink BIN --work DIR [--base tokenizer.json]
//        [--docs N] [--json OUT]
// Exit 0 pass, 1 mismatch, 77 when the npm package is missing (tokenizer_check.sh turns that
// into a failure unless SHRINK_SKIP_NPM_PEERS=1: scripts/npm_peers.sh).
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync, readdirSync, statSync, lstatSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const npmDir = process.env.SHRINK_ORT_NODE_DIR || join(repo, '.npm-ort');
let Tokenizer, version;
try {
  const req = createRequire(join(npmDir, 'package.json'));
  ({ Tokenizer } = req('@huggingface/tokenizers'));
  version = JSON.parse(readFileSync(join(npmDir, 'node_modules/@huggingface/tokenizers/package.json'), 'utf8')).version;
} catch (e) {
  console.error(`tokenizer_check: @huggingface/tokenizers not found under ${npmDir} (run ` +
                `scripts/setup.sh): ${e.message}`);
  process.exit(77);
}

const opt = { shrink: join(repo, 'build/bin/shrink'), base: join(repo, 'models/teacher/tokenizer.json'),
              work: null, docs: 3000, json: null };
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i += 2) {
  const k = args[i].replace(/^--/, '');
  if (!(k in opt) || i + 1 >= args.length) {
    console.error(`tokenizer_check: unknown or incomplete option '${args[i]}'`);
    process.exit(2);
  }
  opt[k] = k === 'docs' ? Number(args[i + 1]) : args[i + 1];
}
if (!opt.work) {
  console.error('tokenizer_check: --work DIR is required');
  process.exit(2);
}
mkdirSync(opt.work, { recursive: true });

// ---- texts ---------------------------------------------------------------------------------
const corpus = '/usr/share/games/fortunes';
const docs = [];
for (const f of readdirSync(corpus).sort()) {
  const p = join(corpus, f);
  if (f.endsWith('.dat') || lstatSync(p).isSymbolicLink() || !statSync(p).isFile()) continue;
  const text = new TextDecoder('utf-8').decode(readFileSync(p));
  for (const d of text.split('\n%\n')) if (d.trim()) docs.push(d.replace(/^\n+/, ''));
}
const texts = docs.slice(0, opt.docs);
for (const d of docs.slice(0, 300)) for (const l of d.split('\n')) if (l) texts.push(l);
texts.push(
  "Hello world's  123 foo!!\n\n  bar", 'naïve café — déjà vu', '日本語のテキスト', 'emoji 🙂👍🏽 ok',
  'tabs\tand\r\nCRLF', '   leading and trailing   ', "I'm you're we've they'll he'd",
  "SHOUTING: I'M YOU'RE WE'VE THEY'LL HE'D 'S 'T", "long s: 'ſ and 'ſt",
  '<|endoftext|>special<|endoftext|>', 'x'.repeat(300), '12345678901234567890', '3.14159 and 1,234,567',
  '٣٤٥ Arabic-Indic digits, ½ and Ⅻ', 'a\u0301 combining, e\u0301\u0323 reordered, A\u030A\u0327',
  '\u212B Angstrom sign, \u1100\u1161\u11A8 jamo, 각 syllable', 'Ω≈ç√∫˜µ≤≥÷',
  '\u00a0nbsp\u2003em space', 'x!!\n\ny', 'end.\n\n\n', '\n\n  \n lead', '  two leading', ' one leading',
  'trailing ', '<s>after bos', 'before eos</s> after', '<|begin_of_text|>Llama 3 text',
  '<|im_start|>user\nhi<|im_end|>\n', '\u2581already a metaspace', 'a  b   c    d', '');
// Decomposed (NFD) forms, so that the NFC normalizer has work to do, and Hangul jamo.
texts.push(...docs.filter((d) => /[^\x00-\x7f]/.test(d)).slice(0, 200).map((d) => d.normalize('NFD')));
texts.push('Vi\u1EC7t Nam, ti\u1EBFng Vi\u1EC7t'.normalize('NFD'), '\u1112\u1161\u11AB\u1100\u1173\u11AF',
           'a' + Array.from({ length: 80 }, (_, i) => String.fromCodePoint(0x300 + i)).join(''));
writeFileSync(join(opt.work, 'samples.jsonl'), texts.map((t) => JSON.stringify({ text: t })).join('\n') + '\n');

// ---- variants ------------------------------------------------------------------------------
const base = JSON.parse(readFileSync(opt.base, 'utf8'));
const clone = (x) => JSON.parse(JSON.stringify(x));
const GPT2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const LLAMA3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const split = (re) => ({ type: 'Split', pattern: { Regex: re }, behavior: 'Isolated', invert: false });
const byteLevel = (useRegex) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex });
const added = (id, content) => ({ id, content, single_word: false, lstrip: false, rstrip: false,
                                  normalized: false, special: true });
const template = (tok, id) => ({
  type: 'TemplateProcessing',
  single: [{ SpecialToken: { id: tok, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
  pair: [{ SpecialToken: { id: tok, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
         { SpecialToken: { id: tok, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
  special_tokens: { [tok]: { id: tok, ids: [id], tokens: [tok] } } });
const nvocab = Object.keys(base.model.vocab).length;

const variants = {};
variants.gpt2 = clone(base);
variants.gpt2_split = clone(base);
variants.gpt2_split.pre_tokenizer = { type: 'Sequence', pretokenizers: [split(GPT2), byteLevel(false)] };
variants.llama3 = clone(base);
variants.llama3.pre_tokenizer = { type: 'Sequence', pretokenizers: [split(LLAMA3), byteLevel(false)] };
variants.llama3.model.ignore_merges = true;
variants.llama3.added_tokens.push(added(nvocab, '<|begin_of_text|>'), added(nvocab + 1, '<|end_of_text|>'));
variants.llama3.post_processor = { type: 'Sequence', processors: [
  { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
  template('<|begin_of_text|>', nvocab)] };
variants.qwen2 = clone(base);
variants.qwen2.normalizer = { type: 'NFC' };
variants.qwen2.pre_tokenizer = { type: 'Sequence', pretokenizers: [split(QWEN2), byteLevel(false)] };
variants.qwen2.added_tokens.push(added(nvocab, '<|im_start|>'), added(nvocab + 1, '<|im_end|>'));
variants.smollm = clone(base);
variants.smollm.pre_tokenizer = { type: 'Sequence', pretokenizers: [
  { type: 'Digits', individual_digits: true }, byteLevel(true)] };

// SentencePiece form of the same vocabulary.
const byteOf = new Map();  // GPT-2 byte-to-unicode map, inverted
{
  let n = 0;
  for (let b = 0; b < 256; ++b) {
    const keep = (b >= 33 && b <= 126) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    byteOf.set(String.fromCodePoint(keep ? b : 256 + n++), b);
  }
}
const strict = new TextDecoder('utf-8', { fatal: true });
const spell = (tok) => {
  const bytes = [];
  for (const ch of tok) {
    if (!byteOf.has(ch)) return null;
    bytes.push(byteOf.get(ch));
  }
  try { return strict.decode(Uint8Array.from(bytes)).replaceAll(' ', '\u2581'); } catch { return null; }
};
const specials = new Set(base.added_tokens.map((t) => t.content));
const spVocab = { '<unk>': 0, '<s>': 1, '</s>': 2 };
for (let b = 0; b < 256; ++b) spVocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
let next = 259;
for (const [tok] of Object.entries(base.model.vocab).sort((a, b) => a[1] - b[1])) {
  const s = specials.has(tok) ? null : spell(tok);
  if (s && !(s in spVocab)) spVocab[s] = next++;
}
const spMerges = [];
for (const m of base.model.merges) {
  const [a, b] = typeof m === 'string' ? m.split(' ') : m;
  const sa = spell(a), sb = spell(b);
  if (sa && sb && (sa + sb) in spVocab && sa in spVocab && sb in spVocab) spMerges.push([sa, sb]);
}
const spBase = {
  version: '1.0', truncation: null, padding: null,
  added_tokens: [added(0, '<unk>'), added(1, '<s>'), added(2, '</s>')],
  normalizer: { type: 'Sequence', normalizers: [
    { type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
  pre_tokenizer: null,
  post_processor: template('<s>', 1),
  decoder: { type: 'Sequence', decoders: [
    { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
    { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
  model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null,
           end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false,
           vocab: spVocab, merges: spMerges } };
variants.sp_legacy = spBase;
variants.sp_metaspace = clone(spBase);
variants.sp_metaspace.normalizer = null;
variants.sp_metaspace.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };

// Written with shrink's encodings for the Rust crate (scripts/hf_tokenizer_check.py on the GPU
// machine) but not compared with Tokenizers.js, which departs from the crate here (see above).
const rustOnly = new Set(['sp_split']);
variants.sp_split = clone(variants.sp_metaspace);
variants.sp_split.pre_tokenizer = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };
variants.sp_split.decoder = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true };

// ---- compare -------------------------------------------------------------------------------
const eq = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const report = { tokenizers_js: version, texts: texts.length, variants: {} };
let failed = false;
for (const [name, doc] of Object.entries(variants)) {
  const dir = join(opt.work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(doc));
  const hf = new Tokenizer(doc, { clean_up_tokenization_spaces: false });
  const r = { ids_mismatches: 0, decode_mismatches: 0, special_mismatches: 0, tokens: 0, examples: [] };
  for (const special of [false, true]) {
    const cmd = ['-q', 'tokenizer', 'encode', '--tokenizer', join(dir, 'tokenizer.json'),
                 '--jsonl', join(opt.work, 'samples.jsonl')];
    if (special) cmd.push('--add-special-tokens');
    const out = execFileSync(opt.shrink, cmd, { maxBuffer: 1 << 30 }).toString('utf8');
    writeFileSync(join(dir, special ? 'encodings_special.jsonl' : 'encodings.jsonl'), out);
    const recs = out.split('\n').filter((l) => l).map((l) => JSON.parse(l));
    if (recs.length !== texts.length) throw new Error(`${name}: shrink wrote ${recs.length} lines for ${texts.length} texts`);
    if (rustOnly.has(name)) continue;
    for (let i = 0; i < texts.length; ++i) {
      const ids = hf.encode(texts[i], { add_special_tokens: special }).ids;
      if (!eq(ids, recs[i].ids)) {
        special ? ++r.special_mismatches : ++r.ids_mismatches;
        if (r.examples.length < 5) r.examples.push({ text: texts[i].slice(0, 120), special,
                                                     shrink: recs[i].ids.slice(0, 40), hf: ids.slice(0, 40) });
        continue;
      }
      if (special) continue;
      r.tokens += ids.length;
      const dec = ids.length ? hf.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : '';
      if (dec !== recs[i].decoded) {
        ++r.decode_mismatches;
        if (r.examples.length < 5) r.examples.push({ text: texts[i].slice(0, 120), decoded_shrink: recs[i].decoded.slice(0, 120),
                                                     decoded_hf: dec.slice(0, 120) });
      }
    }
  }
  if (rustOnly.has(name)) {
    report.variants[name] = { compared: false, why: 'Tokenizers.js departs from the Rust crate here' };
    continue;
  }
  if (r.ids_mismatches || r.decode_mismatches || r.special_mismatches || r.tokens === 0) failed = true;
  report.variants[name] = r;
  console.error(`${name.padEnd(13)} ${texts.length} texts, ${r.tokens} tokens: ids ${r.ids_mismatches} ` +
                `mismatches, with special tokens ${r.special_mismatches}, decodes ${r.decode_mismatches}`);
  for (const e of r.examples) console.error('  ' + JSON.stringify(e));
}
if (opt.json) writeFileSync(opt.json, JSON.stringify(report, null, 2) + '\n');
console.log(failed ? 'tokenizer_check: FAIL' : `tokenizer_check: all ${Object.keys(variants).length - rustOnly.size} compared variants agree with tokenizers.js ${version}`);
process.exit(failed ? 1 : 0);
