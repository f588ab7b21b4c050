#!/usr/bin/env python3
# Writes the seed corpora tests/fuzz/corpus/<harness>/, dictionaries tests/fuzz/dict/<h>.dict and
# the regression inputs for the holes issue 25's review found (tests/fuzz/regressions/<h>/review_*)
# from the repository's real files (the teacher in models/, the HF fixtures, recipes/, tasks/,
# Debian's fortunes) plus small crafted files that reach the paths real files do not (every
# dtype, pack-quantized and int8 checkpoints, shards, token shards).
#
# Why a script: the seeds are binary in part (safetensors, token shards); generating them keeps
# them reproducible and reviewable. Deterministic: rerunning rewrites identical files. Python 3
# standard library only. Usage: python3 tests/fuzz/make_corpus.py (from anywhere).
# Tested by the ctests fuzz_replay_<harness>, which run every seed.
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")
DICTS = os.path.join(HERE, "dict")


def read(path, mode="rb"):
    with open(os.path.join(ROOT, path), mode) as f:
        return f.read()


def put(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors ---------------------------------------------------------------------------

DTYPES = {"F64": ("d", 8), "F32": ("f", 4), "F16": ("e", 2), "BF16": (None, 2), "I64": ("q", 8),
          "I32": ("i", 4), "I16": ("h", 2), "I8": ("b", 1), "U8": ("B", 1), "BOOL": ("?", 1)}


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_bytes(dtype, shape, values=None):
    n = numel(shape)
    fmt, size = DTYPES[dtype]
    is_float = dtype in ("F64", "F32", "F16", "BF16")
    if values is None:
        values = [((i * 7) % 11 - 5) * (0.25 if is_float else 1) for i in range(n)]
        if dtype == "U8":
            values = [abs(v) for v in values]
    if dtype == "BF16":
        return b"".join(struct.pack("<f", float(v))[2:] for v in values)
    if dtype == "BOOL":
        return bytes(1 if v else 0 for v in values)
    if is_float:
        return struct.pack("<%d%s" % (n, fmt), *[float(v) for v in values])
    return struct.pack("<%d%s" % (n, fmt), *[int(v) for v in values])


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, bytes); written as the Rust crate writes them."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, data in tensors:
        assert len(data) == numel(shape) * DTYPES[dtype][1], name
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def records(files):
    """The checkpoint harness's layout: '==> NAME <==\\n' + bytes, joined by '\\n'."""
    out = b""
    for i, (name, data) in enumerate(files):
        if isinstance(data, str):
            data = data.encode()
        out += (b"\n" if i else b"") + b"==> " + name.encode() + b" <==\n" + data
    return out


def seeds_safetensors():
    ts = [("t_" + dt.lower(), dt, [2, 3], tensor_bytes(dt, [2, 3])) for dt in DTYPES]
    put("safetensors", "crafted_every_dtype.safetensors", safetensors(ts, {"format": "pt"}))
    put("safetensors", "crafted_empty_and_scalar.safetensors",
        safetensors([("empty", "F32", [0], b""), ("wide_empty", "F16", [4, 0], b""),
                     ("scalar", "F32", [], tensor_bytes("F32", [])),
                     ("row", "I8", [5], tensor_bytes("I8", [5]))]))
    put("safetensors", "crafted_no_tensors.safetensors", safetensors([], {"k": "v"}))
    # Real files written by Hugging Face's safetensors (test fixtures).
    put("safetensors", "hf_reference.safetensors",
        read("tests/fixtures/hf/llama_gqa_llama3rope/reference.safetensors"))
    put("safetensors", "hf_shard_f16.safetensors",
        read("tests/fixtures/hf/llama_mha_sharded_f16/model-00004-of-00004.safetensors"))


# ---- model configs and checkpoints ---------------------------------------------------------

def tiny_config(**extra):
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 16,
         "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
         "max_position_embeddings": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "tie_word_embeddings": True, "torch_dtype": "float32", "bos_token_id": 1,
         "eos_token_id": 2}
    c.update(extra)
    return json.dumps(c, indent=2)


def tiny_specs(c):
    """HF names and shapes of a Llama config's float weights (model_config.cpp's order)."""
    V, H, I = c["vocab_size"], c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    s = [("model.embed_tokens.weight", [V, H])]
    for l in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % l
        s += [(p + "input_layernorm.weight", [H]), (p + "self_attn.q_proj.weight", [q, H]),
              (p + "self_attn.k_proj.weight", [kv, H]), (p + "self_attn.v_proj.weight", [kv, H]),
              (p + "self_attn.o_proj.weight", [H, q]), (p + "post_attention_layernorm.weight", [H]),
              (p + "mlp.gate_proj.weight", [I, H]), (p + "mlp.up_proj.weight", [I, H]),
              (p + "mlp.down_proj.weight", [H, I])]
    s.append(("model.norm.weight", [H]))
    if not c["tie_word_embeddings"]:
        s.append(("lm_head.weight", [V, H]))
    return s


def quant_config(fmt, bits, strategy, group, symmetric, acts):
    w = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy,
         "group_size": group, "dynamic": False, "actorder": None, "observer": "minmax",
         "observer_kwargs": {}}
    a = None
    if acts == "static":
        a = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor",
             "group_size": None, "dynamic": False, "observer": "minmax", "observer_kwargs": {}}
    elif acts == "dynamic":
        a = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
             "group_size": None, "dynamic": True, "observer": None, "observer_kwargs": {}}
    return {"quant_method": "compressed-tensors", "format": fmt,
            "quantization_status": "compressed", "global_compression_ratio": None,
            "kv_cache_scheme": None, "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": w,
                                          "input_activations": a, "output_activations": None}}}


def pack4(vals, rows, cols):
    """int4 values [rows, cols] -> I32 words [rows, ceil(cols / 8)] (nibble = v + 8)."""
    pc = (cols + 7) // 8
    words = []
    for r in range(rows):
        for w in range(pc):
            word = 0
            for k in range(8):
                c = w * 8 + k
                nib = (vals[r * cols + c] + 8) if c < cols else 8
                word |= (nib & 15) << (4 * k)
            words.append(word - (1 << 32) if word >= 1 << 31 else word)
    return struct.pack("<%di" % len(words), *words)


def quantized_tensors(c, scheme):
    out = []
    for name, shape in tiny_specs(c):
        linear = name.startswith("model.layers.") and name.endswith("_proj.weight")
        if not linear:
            out.append((name, "F32", shape, tensor_bytes("F32", shape)))
            continue
        m = name[:-len(".weight")]
        o, i = shape
        if scheme == "w4a16_asym_group":
            g = 8
            vals = [(k * 5) % 16 - 8 for k in range(o * i)]
            out.append((m + ".weight_packed", "I32", [o, (i + 7) // 8], pack4(vals, o, i)))
            out.append((m + ".weight_shape", "I64", [2], struct.pack("<2q", o, i)))
            out.append((m + ".weight_scale", "F16", [o, i // g], tensor_bytes("F16", [o, i // g])))
            zp = [(k * 3) % 16 - 8 for k in range(o * (i // g))]
            # zero points packed along the outputs: transpose, pack rows of the transpose
            zt = [zp[r * (i // g) + gg] for gg in range(i // g) for r in range(o)]
            packed_t = pack4(zt, i // g, o)  # [groups, ceil(o/8)] words
            words = struct.unpack("<%di" % (len(packed_t) // 4), packed_t)
            pc = (o + 7) // 8
            zw = [words[gg * pc + w] for w in range(pc) for gg in range(i // g)]
            out.append((m + ".weight_zero_point", "I32", [pc, i // g],
                        struct.pack("<%di" % len(zw), *zw)))
        else:  # int8, channel scales, static input scales
            out.append((name, "I8", shape, tensor_bytes("I8", shape)))
            out.append((m + ".weight_scale", "F32", [o, 1], tensor_bytes("F32", [o, 1])))
            out.append((m + ".input_scale", "F32", [1], tensor_bytes("F32", [1], [0.5])))
    return out


def seeds_config_and_checkpoint():
    # config: real files first.
    put("config", "teacher.json", read("models/teacher/config.json"))
    for fx in ["llama_gqa_llama3rope", "llama_mha_sharded_f16", "mistral_mqa_linearrope",
               "qwen2_bias_tied_bf16"]:
        put("config", "hf_%s.json" % fx, read("tests/fixtures/hf/%s/config.json" % fx))
    for f in sorted(os.listdir(os.path.join(ROOT, "recipes/configs"))):
        put("config", "recipe_" + f, read("recipes/configs/" + f))
    put("config", "v4_llama3_rope_scaling.json",
        tiny_config(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8}))
    put("config", "v4_mistral_sliding_window.json",
        tiny_config(architectures=["MistralForCausalLM"], model_type="mistral",
                    sliding_window=16, rope_scaling={"type": "linear", "factor": 2.0}))
    put("config", "qwen2_layer_types.json",
        tiny_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                    use_sliding_window=False, max_window_layers=1,
                    layer_types=["full_attention"], eos_token_id=[2, 3]))
    c4 = tiny_config(quantization_config=quant_config("pack-quantized", 4, "group", 8, False, None))
    c8 = tiny_config(quantization_config=quant_config("int-quantized", 8, "channel", None, True,
                                                      "static"))
    c8d = tiny_config(quantization_config=quant_config("int-quantized", 8, "group", 8, True,
                                                       "dynamic"))
    put("config", "w4a16_asym_group.json", c4)
    put("config", "w8a8_static_channel.json", c8)
    put("config", "w8a8_dynamic_group.json", c8d)

    # checkpoint: a real sharded HF checkpoint ...
    fx = "tests/fixtures/hf/llama_mha_sharded_f16/"
    files = [("config.json", read(fx + "config.json")),
             ("model.safetensors.index.json", read(fx + "model.safetensors.index.json"))]
    for k in range(1, 5):
        n = "model-%05d-of-00004.safetensors" % k
        files.append((n, read(fx + n)))
    put("checkpoint", "hf_llama_mha_sharded_f16", records(files))
    # ... and crafted tiny ones: float, sharded, pack-quantized (asym, grouped), int8.
    cfg = json.loads(tiny_config())
    ts = [(n, "F32", s, tensor_bytes("F32", s)) for n, s in tiny_specs(cfg)]
    put("checkpoint", "tiny_llama_f32", records([("config.json", tiny_config()),
                                                 ("model.safetensors", safetensors(ts))]))
    put("checkpoint", "tiny_llama_no_config.safetensors", safetensors(ts, {"format": "pt"}))
    half = len(ts) // 2
    shards = [("model-00001-of-00002.safetensors", ts[:half]),
              ("model-00002-of-00002.safetensors", ts[half:])]
    index = {"metadata": {"total_size": sum(len(t[3]) for t in ts)},
             "weight_map": {t[0]: n for n, part in shards for t in part}}
    put("checkpoint", "tiny_llama_sharded",
        records([("config.json", tiny_config()),
                 ("model.safetensors.index.json", json.dumps(index, indent=2))] +
                [(n, safetensors(part, {"format": "pt"})) for n, part in shards]))
    put("checkpoint", "tiny_w4a16_asym_group",
        records([("config.json", c4),
                 ("model.safetensors", safetensors(quantized_tensors(cfg, "w4a16_asym_group")))]))
    put("checkpoint", "tiny_w8a8_static",
        records([("config.json", c8),
                 ("model.safetensors", safetensors(quantized_tensors(cfg, "w8a8_static")))]))


# ---- tokenizer -----------------------------------------------------------------------------

def gpt2_byte_chars():
    keep = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or b >= 174]
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def tok_doc(vocab, merges, pre, decoder, normalizer=None, post=None, added=None, model_extra=None):
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
             "ignore_merges": False, "vocab": vocab, "merges": merges}
    model.update(model_extra or {})
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added or [],
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": post,
            "decoder": decoder, "model": model}


def added(i, content, special=True):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


SAMPLE = ("Hello world's  123 4567 foo!!\n\n  bar\ttabs \u00e9t\u00e9 \u65e5\u672c\u8a9e "
          "<|endoftext|> <s>x</s> \U0001F44B\u200d ")


def seed_tok(name, doc, text=SAMPLE):
    put("tokenizer", name, json.dumps(doc, ensure_ascii=False).encode() + b"\0" +
        text.encode("utf-8", "surrogatepass"))


def seeds_tokenizer():
    # The teacher's tokenizer (real, byte-level, 4096 tokens), cut to its first 300 merges so
    # that mutating it stays fast; the pipeline and added tokens are the file's own.
    t = json.loads(read("models/teacher/tokenizer.json"))
    merges = t["model"]["merges"][:300]
    byte = gpt2_byte_chars()
    keep = {byte[b] for b in range(256)} | {a.replace(" ", "") for a in merges}
    keep |= {a["content"] for a in t["added_tokens"]}
    vocab = {k: v for k, v in t["model"]["vocab"].items() if k in keep}
    order = sorted(vocab, key=lambda k: vocab[k])
    t["model"]["vocab"] = {k: i for i, k in enumerate(order)}
    for a in t["added_tokens"]:
        a["id"] = t["model"]["vocab"][a["content"]]
    t["model"]["merges"] = merges
    seed_tok("teacher_300_merges", t)

    bv = {byte[b]: b for b in range(256)}
    extra = ["\u0120t", "he", "\u0120the", "in", "\u0120c", "at", "\u0120cat", "er"]
    for k, e in enumerate(extra):
        bv[e] = 256 + k
    bm = ["\u0120 t", "h e", "\u0120t he", "i n", "\u0120 c", "a t", "\u0120c at", "e r"]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    seed_tok("gpt2_byte_level", tok_doc(bv, bm, bl, {"type": "ByteLevel"},
                                        post={"type": "ByteLevel", "trim_offsets": False}))
    # Llama 3 style: Split (Llama 3 regex) + ByteLevel without regex, merges as pairs, specials
    # and a TemplateProcessing BOS.
    llama3_rx = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
                 "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    qwen2_rx = llama3_rx.replace("\\p{N}{1,3}", "\\p{N}")
    v3 = dict(bv)
    v3["<|begin_of_text|>"] = 264
    v3["<|end_of_text|>"] = 265
    pre3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": llama3_rx}, "behavior": "Isolated",
         "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
         "use_regex": False}]}
    post3 = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [264],
                                                  "tokens": ["<|begin_of_text|>"]}}}]}
    seed_tok("llama3_split_template",
             tok_doc(v3, [m.split(" ") for m in bm], pre3, {"type": "ByteLevel"}, post=post3,
                     added=[added(264, "<|begin_of_text|>"), added(265, "<|end_of_text|>")],
                     model_extra={"ignore_merges": True}))
    vq = dict(bv)
    vq["<|endoftext|>"] = 264
    vq["<|im_end|>"] = 265
    preq = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": qwen2_rx}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    seed_tok("qwen2_nfc", tok_doc(vq, bm, preq, {"type": "ByteLevel"}, normalizer={"type": "NFC"},
                                  added=[added(264, "<|endoftext|>"), added(265, "<|im_end|>")]))
    # SentencePiece style (Llama 2 / Mistral): byte fallback, Prepend + Replace, Strip decoder.
    sv = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        sv["<0x%02X>" % b] = 3 + b
    for k, e in enumerate(["\u2581", "a", "b", "\u2581a", "ab", "\u2581\u2581", "\u2581ab"]):
        sv[e] = 259 + k
    sm = [["\u2581", "\u2581"], ["\u2581", "a"], ["a", "b"], ["\u2581a", "b"]]
    sp_norm = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    sp_dec = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    sp_post = {"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                          {"Sequence": {"id": "A", "type_id": 0}}],
               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
    sp_added = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")]
    extra = {"unk_token": "<unk>", "fuse_unk": True, "byte_fallback": True}
    seed_tok("sentencepiece_byte_fallback",
             tok_doc(sv, sm, None, sp_dec, normalizer=sp_norm, post=sp_post, added=sp_added,
                     model_extra=extra))
    meta = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}]}
    seed_tok("metaspace_digits",
             tok_doc(sv, sm, meta, {"type": "Metaspace", "replacement": "\u2581",
                                    "prepend_scheme": "first", "split": False},
                     added=sp_added, model_extra=extra))
    seed_tok("gpt2_empty_text",
             tok_doc(bv, bm, bl, {"type": "ByteLevel"}), "")
    put("tokenizer", "gpt2_invalid_utf8_bytes",
        json.dumps(tok_doc(bv, bm, bl, {"type": "ByteLevel"})).encode() +
        b"\0invalid \xff\xfe bytes \xc3 trunc \xed\xa0\x80 \xc0\xaf \xf4\x90\x80\x80 \x00nul")


# ---- recipes -------------------------------------------------------------------------------

def seeds_recipe():
    sets = {
        "quickstart.yaml": ["teacher=models/teacher", "stages.0.prune.target-params=0.4",
                            "data.train=/usr/share/games/fortunes"],
        "w4a16-gptq.yaml": ["stages.0.quantize.scheme=w4a16", "output=runs/x"],
        "wanda-2of4.yaml": ["teacher.x=1"],
    }
    for f in sorted(os.listdir(os.path.join(ROOT, "recipes"))):
        if not f.endswith(".yaml"):
            continue
        text = read("recipes/" + f)
        put("recipe", f, text)
        if f in sets:
            put("recipe", f[:-5] + "_set.yaml",
                text.rstrip(b"\n") + b"\n#%set\n" + "\n".join(sets[f]).encode() + b"\n")
    put("recipe", "anchors_flow.yaml",
        "version: 1\nteacher: &t models/teacher\ndata: {train: *t, eval: x}\n"
        "stages:\n  - report\n  - prune: {method: structured, target-params: [0.5, 0.6]}\n"
        "  - quantize:\n      scheme: w8a8\n      ignore: [lm_head]\n#%set\nstages.1.prune.x=2\n")


# ---- tasks ---------------------------------------------------------------------------------

def seeds_task():
    lines = read("tasks/fortunes-cloze.jsonl").split(b"\n")
    put("task", "fortunes_cloze_head.jsonl", b"\n".join(lines[:8]) + b"\n")
    put("task", "ids_and_contexts.jsonl",
        '{"context": "the cat sat ", "choices": ["on the mat", "in the hat"], "label": 1}\n'
        '{"context_ids": [3, 4], "choices_ids": [[5], [6, 7, 8]], "label": 0}\n'
        '\n'
        '{"contexts": ["the cat ", "the mat "], "continuation": "sat on the hat", "label": 0}\n'
        '{"contexts_ids": [[3, 4, 5], [3, 6]], "continuation_ids": [7, 8], "label": 0}\n'
        '{"context": "a ", "choices": ["caf\u00e9", "cafe"], "label": 0}\n')
    conv = {
        "hellaswag": '{"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is '
                     'sitting on a roof.", "ctx_b": "he", "label": 3, "endings": ["is using wrap '
                     'to wrap a pair of skis.", "is ripping level tiles off.", "is holding a '
                     'rubik\'s cube.", "starts pulling up roofing on a roof."]}\n'
                     '{"ind": 7, "activity_label": "Baking", "ctx_a": "[header] How to bake bread '
                     '[title] Heat the oven.", "ctx_b": "Then MIX the flour", "label": "1", '
                     '"endings": ["[step] and wait.", "with  water [substeps] slowly."]}\n',
        "arc": '{"id": "Mercury_7", "question": {"stem": "Which is a metal?", "choices": [{"text": '
               '"wood", "label": "A"}, {"text": "iron", "label": "B"}]}, "answerKey": "B"}\n'
               '{"id": "x", "question": "Which is wet?", "choices": {"text": ["sand", "rain", '
               '"salt"], "label": ["1", "2", "3"]}, "answerKey": "2"}\n',
        "openbookqa": '{"id": "7-980", "question_stem": "The sun is responsible for", "choices": '
                      '{"text": ["puppies", "plants sprouting"], "label": ["A", "B"]}, '
                      '"answerKey": "B"}\n',
        "piqa": '{"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Freeze it."}\n'
                '{"goal": "Dry a shirt", "sol1": "Wet it", "sol2": "Hang it", "label": 1}\n'
                '\n#labels\n0\n1\n',
        "winogrande": '{"qID": "3D5G-2", "sentence": "Kyle doesn\'t wear leg warmers to bed, while '
                      'Logan almost always does. _ is more likely to live in a colder climate.", '
                      '"option1": "Kyle", "option2": "Logan", "answer": "2"}\n',
        "mmlu": '{"question": " What is 2 + 2? ", "subject": "elementary_mathematics", "choices": '
                '["3", "4", "5", "22"], "answer": 1}\n'
                '{"question": "Pick C", "choices": ["a", "b", "c"], "answer": "C"}\n',
    }
    for fmt, body in conv.items():
        put("task", "convert_" + fmt, "#" + fmt + "\n" + body)
    put("task", "convert_mmlu_fewshot",
        "#mmlu fewshot=2 max=3\n"
        '{"question": "1 + 1?", "subject": "math", "choices": ["2", "3"], "answer": 0}\n'
        '{"question": "Capital of France?", "subject": "geo", "choices": ["Rome", "Paris"], '
        '"answer": 1}\n'
        '{"question": "2 + 2?", "subject": "math", "choices": ["5", "4"], "answer": 1}\n'
        '{"question": "Capital of Peru?", "subject": "geo", "choices": ["Lima", "Quito"], '
        '"answer": "A"}\n'
        '{"question": "4 + 4?", "subject": "math", "choices": ["9", "8"], "answer": "B"}\n')
    put("task", "convert_arc_fewshot", "#arc fewshot=1\n" + conv["arc"])


# ---- token shards and text -----------------------------------------------------------------

def shard(split, token_bytes, vocab, tokens, fingerprint="0123456789abcdef"):
    h = json.dumps({"format": "shrink.tokens", "version": 1, "token_bytes": token_bytes,
                    "n_tokens": len(tokens), "vocab_size": vocab, "split": split,
                    "tokenizer": fingerprint}, separators=(",", ":")).encode()
    h += b" " * ((64 - (16 + len(h)) % 64) % 64)
    body = struct.pack("<%d%s" % (len(tokens), "H" if token_bytes == 2 else "I"), *tokens)
    return b"SHRKTOK1" + struct.pack("<Q", len(h)) + h + body


def seeds_shard_and_text():
    put("shard", "u16_100_tokens.tok", shard("train", 2, 4096, [(i * 37) % 4096 for i in range(100)]))
    put("shard", "u32_big_vocab.tok", shard("train", 4, 70000, [69999, 0, 65536, 12]))
    put("shard", "empty.tok", shard("val", 2, 300, []))
    fortunes = read("/usr/share/games/fortunes/computers") if os.path.exists(
        "/usr/share/games/fortunes/computers") else b"A fortune.\n%\nAnother one.\n%\n"
    put("text", "fortunes_excerpt", fortunes[:3000].rsplit(b"\n%\n", 1)[0] + b"\n%\n")
    put("text", "jsonl_lines", '{"text": "first document"}\n\n{"text": "caf\u00e9 \\u00e9\\n"}\r\n'
        '{"text": ""}\n{"text": "<|endoftext|> last", "meta": 1}\n')
    put("text", "plain_text", "Plain text, two lines.\r\n\u65e5\u672c\u8a9e and ".encode() + b"\xff\n")


# ---- regressions: the holes issue 25's review found ----------------------------------------

def put_regression(harness, name, data):
    d = os.path.join(HERE, "regressions", harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def regressions_review():
    """Inputs for each hole of issue 25's review (the fuzzer's own finds are added by hand)."""
    deep = "[" * 50000 + "]" * 50000  # 100 KB: overflowed the stack when copied or dump()ed
    c = json.loads(tiny_config())
    c["x"] = None
    put_regression("config", "review_unknown_field_nested_50000_deep.json",
                   json.dumps(c).replace('"x": null', '"x": ' + deep))
    c4 = json.loads(tiny_config(quantization_config=quant_config("pack-quantized", 4, "group", 8,
                                                                 False, None)))
    c4["quantization_config"]["config_groups"]["group_0"]["weights"]["x"] = None
    put_regression("config", "review_quantization_config_nested_50000_deep.json",
                   json.dumps(c4).replace('"x": null', '"x": ' + deep))
    put_regression("config", "review_original_max_position_embeddings_1e300.json",
                   tiny_config(rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                             "original_max_position_embeddings": 1e300}))
    put_regression("config", "review_hidden_size_2e62.json",
                   tiny_config(hidden_size=1 << 62, intermediate_size=1 << 62))
    put_regression("config", "review_kv_cache_size_overflow.json",
                   tiny_config(max_position_embeddings=1 << 28, num_hidden_layers=1 << 12,
                               num_key_value_heads=1 << 12, num_attention_heads=1 << 12,
                               head_dim=1 << 12, hidden_size=1 << 17,
                               intermediate_size=1 << 20, vocab_size=1 << 24))
    q = json.loads(tiny_config(quantization_config=quant_config(
        "pack-quantized", 4, "group", 8, False, None)))
    q["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = "4"
    put_regression("config", "review_quantization_num_bits_string.json", json.dumps(q))
    q["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 1e300
    put_regression("config", "review_quantization_num_bits_1e300.json", json.dumps(q))
    # int4_packed_cols(dims[1]) overflowed for a huge weight_shape before the shape check.
    cfg = json.loads(tiny_config())
    ts = []
    for name, dtype, shape, data in quantized_tensors(cfg, "w4a16_asym_group"):
        if name == "model.layers.0.self_attn.q_proj.weight_shape":
            data = struct.pack("<2q", 8, (1 << 63) - 1)
        ts.append((name, dtype, shape, data))
    put_regression("checkpoint", "review_weight_shape_int64_max",
                   records([("config.json", tiny_config(quantization_config=quant_config(
                       "pack-quantized", 4, "group", 8, False, None))),
                            ("model.safetensors", safetensors(ts))]))
    put_regression("checkpoint", "review_config_nested_50000_deep",
                   records([("config.json", json.dumps(c).replace('"x": null', '"x": ' + deep)),
                            ("model.safetensors", safetensors(
                                [(n, "F32", s, tensor_bytes("F32", s)) for n, s in
                                 tiny_specs(cfg)]))]))
    # A sparse vocabulary id sized the id table by the id, not by the input.
    byte = gpt2_byte_chars()
    v = {byte[b]: b for b in range(256)}
    v["sparse"] = 16777215
    doc = tok_doc(v, [], {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                  {"type": "ByteLevel"})
    put_regression("tokenizer", "review_sparse_vocab_id_16777215",
                   json.dumps(doc).encode() + b"\0text")
    doc["added_tokens"] = [added(16777215, "<|sparse|>")]
    del v["sparse"]
    put_regression("tokenizer", "review_sparse_added_token_id_16777215",
                   json.dumps(doc).encode() + b"\0<|sparse|> text")
    doc = tok_doc({byte[b]: b for b in range(256)}, [],
                  {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
                  {"type": "ByteLevel"})
    doc["x"] = None
    put_regression("tokenizer", "review_unknown_field_nested_50000_deep",
                   json.dumps(doc).replace('"x": null', '"x": ' + deep).encode() + b"\0a")
    put_regression("recipe", "review_set_key_inside_scalar.yaml",
                   read("recipes/quickstart.yaml").rstrip(b"\n") +
                   b"\n#%set\nteacher.x=1\nstages.0.prune.method.y=2\nversion.z=3\n")


# ---- dictionaries --------------------------------------------------------------------------

def q(s):
    if isinstance(s, str):
        s = s.encode("utf-8")
    out = ""
    for b in s:
        if b == 0x22 or b == 0x5C:
            out += "\\" + chr(b)
        elif 32 <= b < 127:
            out += chr(b)
        else:
            out += "\\x%02X" % b
    return '"' + out + '"'


JSON_TOKENS = ["{", "}", "[", "]", ":", ",", "\"", "\"\"", "true", "false", "null", "-1", "0",
               "1e300", "-1e300", "4096.0", "2.5", "18446744073709551615", "9223372036854775807",
               "-9223372036854775808", "2147483648", "16777215", "\\u0000", "\\ud800", "[[[[[[[["]


def keys(names):
    return ['"%s"' % n for n in names]


def write_dict(h, entries):
    os.makedirs(DICTS, exist_ok=True)
    seen, lines = set(), ["# libFuzzer dictionary for fuzz_%s (generated by make_corpus.py)" % h]
    for e in entries:
        if e not in seen:
            seen.add(e)
            lines.append(q(e))
    with open(os.path.join(DICTS, h + ".dict"), "w") as f:
        f.write("\n".join(lines) + "\n")


def dicts():
    st = keys(["dtype", "shape", "data_offsets", "__metadata__", "format", "pt"]) + \
        keys(list(DTYPES) + ["F8_E4M3", "U16", "U32", "U64", "C64"])
    write_dict("safetensors", JSON_TOKENS + st + ["\x00\x00\x00\x00\x00\x00\x00",
                                                  "\xff\xff\xff\xff\xff\xff\xff\xff"])
    cfg = keys(["architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
                "rope_parameters", "rope_type", "type", "factor", "low_freq_factor",
                "high_freq_factor", "original_max_position_embeddings", "attention_bias",
                "mlp_bias", "tie_word_embeddings", "sliding_window", "use_sliding_window",
                "max_window_layers", "layer_types", "bos_token_id", "eos_token_id",
                "torch_dtype", "dtype", "hidden_act", "silu", "llama", "mistral", "qwen2",
                "default", "linear", "llama3", "LlamaForCausalLM", "MistralForCausalLM",
                "Qwen2ForCausalLM", "float32", "bfloat16", "float16", "sliding_attention",
                "full_attention"])
    quant = keys(["quantization_config", "quant_method", "compressed-tensors", "format",
                  "int-quantized", "pack-quantized", "naive-quantized", "config_groups",
                  "group_0", "weights", "input_activations", "num_bits", "symmetric", "strategy",
                  "group_size", "dynamic", "actorder", "observer", "ignore", "channel", "group",
                  "tensor", "token", "static", "minmax", "int", "lm_head", "targets", "Linear"])
    write_dict("config", JSON_TOKENS + cfg + quant)
    ck = ["==> ", " <==\n", "\n==> config.json <==\n", "\n==> model.safetensors <==\n",
          "\n==> model.safetensors.index.json <==\n",
          "\n==> model-00001-of-00002.safetensors <==\n",
          "\n==> model-00002-of-00002.safetensors <==\n"]
    ck += keys(["weight_map", "metadata", "total_size", "model.safetensors",
                "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
    ck += [".weight_packed", ".weight_shape", ".weight_scale", ".weight_zero_point",
           ".weight_g_idx", ".input_scale", "model.layers.0.self_attn.q_proj",
           "model.layers.0.mlp.down_proj", "model.embed_tokens.weight", "lm_head.weight"]
    write_dict("checkpoint", JSON_TOKENS + st + ck + cfg + quant)
    tk = keys(["version", "added_tokens", "normalizer", "normalizers", "pre_tokenizer",
               "pretokenizers", "post_processor", "processors", "decoder", "decoders", "model",
               "type", "vocab", "merges", "unk_token", "fuse_unk", "byte_fallback",
               "ignore_merges", "dropout", "continuing_subword_prefix", "end_of_word_suffix",
               "id", "content", "single_word", "lstrip", "rstrip", "normalized", "special",
               "add_prefix_space", "trim_offsets", "use_regex", "pattern", "Regex", "String",
               "behavior", "invert", "individual_digits", "replacement", "prepend_scheme",
               "split", "prepend", "start", "stop", "single", "pair", "special_tokens", "ids",
               "tokens", "type_id", "SpecialToken", "Sequence", "BPE", "ByteLevel", "Split",
               "Digits", "Metaspace", "NFC", "Prepend", "Replace", "ByteFallback", "Fuse",
               "Strip", "TemplateProcessing", "Isolated", "always", "first", "never", "<s>",
               "</s>", "<unk>", "<|endoftext|>", "<|begin_of_text|>", "<|im_end|>", "<0x41>",
               "\u2581", "\u0120"])
    write_dict("tokenizer", JSON_TOKENS + tk + ["\x00", "\u2581", "\u0120", "\u00e9", "e\u0301",
                                                "\U0001F44B", "\r\n", "'s", "'LL", "123456"])
    rc = ["version: 1\n", "teacher: ", "data:", "train:", "calib:", "eval:", "tokenizer:",
          "task:", "output:", "stages:", "  - ", "- ", ": ", "{", "}", "[", "]", ", ", "\n",
          "\n#%set\n", "=", ".", "stages.0.", "teacher.x=1", "data.train=", "&a ", "*a", "<<: ",
          "!!str ", "!!map ", "---\n", "...\n", "|\n", ">\n", "~", "null", "? ", "\"", "'", "%YAML 1.2\n"]
    rc += ["train", "distill", "prune", "quantize", "eval", "export", "verify", "report",
           "method", "scheme", "target-params", "steps", "format", "max-ppl-increase", "w8a8",
           "w4a16", "structured", "wanda", "smoothquant", "auto"]
    write_dict("recipe", rc)
    tsk = keys(["context", "choices", "label", "context_ids", "choices_ids", "contexts",
                "continuation", "contexts_ids", "continuation_ids", "activity_label", "ctx_a",
                "ctx_b", "endings", "question", "stem", "text", "answerKey", "question_stem",
                "goal", "sol1", "sol2", "sentence", "option1", "option2", "answer", "subject",
                "A", "B", "1", "2"])
    tsk += ["#hellaswag\n", "#arc\n", "#openbookqa\n", "#piqa\n", "#winogrande\n", "#mmlu\n",
            " fewshot=2", " max=1", "\n#labels\n", "_", "[title]", "[header]", " [", "]"]
    write_dict("task", JSON_TOKENS + tsk)
    write_dict("shard", JSON_TOKENS + ["SHRKTOK1"] + keys(
        ["format", "shrink.tokens", "version", "token_bytes", "n_tokens", "vocab_size", "split",
         "tokenizer", "train", "val", "all"]) + ["\x40\x00\x00\x00\x00\x00\x00\x00"])
    write_dict("text", ["\n%\n", "%\n", "{\"text\": \"", "\"}\n", "\r\n", "\\n", "\\u00e9",
                        "\xc3\xa9", "\xff", "\x00"] + JSON_TOKENS)


def main():
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    seeds_safetensors()
    seeds_config_and_checkpoint()
    seeds_tokenizer()
    seeds_recipe()
    seeds_task()
    seeds_shard_and_text()
    regressions_review()
    dicts()
    total = 0
    for d, _, fs in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in fs)
    print("make_corpus.py: %d bytes of seeds in %s" % (total, CORPUS))


if __name__ == "__main__":
    main()
