// Multiple-choice task files: loading and tokenizing (lm-eval's loglikelihood rules) and building
// a HellaSwag-style task from a corpus. See choice_task.h.
#include "core/choice_task.h"
#include "core/json_util.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/dataset.h"
#include "core/fs.h"

namespace shrink::core {

using nlohmann::json;

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

// An array of token ids, each an integer in [0, vocab).
Status ids_from(const json& j, int64_t vocab, const std::string& where, std::vector<int32_t>& out) {
  SHRINK_CHECK(j.is_array(), StatusCode::kInvalidInput, "%s: expected an array of token ids",
               where.c_str());
  out.clear();
  for (size_t i = 0; i < j.size(); ++i) {
    SHRINK_CHECK(j[i].is_number_integer(), StatusCode::kInvalidInput,
                 "%s[%zu]: expected an integer token id", where.c_str(), i);
    const int64_t v = j[i].get<int64_t>();
    SHRINK_CHECK(v >= 0 && v < vocab, StatusCode::kInvalidInput,
                 "%s[%zu]: token id %lld is outside the vocabulary [0, %lld)", where.c_str(), i,
                 (long long)v, (long long)vocab);
    out.push_back(int32_t(v));
  }
  return Status::ok();
}

// Code points of UTF-8 text: Python's len(), which lm-eval's acc_norm divides by.
int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Splits per-choice token sequences (each its conditioning tokens, then its scored tokens) into
// the item's shared context (their common prefix, within every choice's conditioning part) and
// each choice's rest, of which the first `given` tokens condition and the others are scored.
Status split_shared(const std::vector<std::vector<int32_t>>& seqs, const std::vector<size_t>& n_ctx,
                    const std::string& at, ChoiceItem& it) {
  size_t L = *std::min_element(n_ctx.begin(), n_ctx.end());
  for (const auto& s : seqs) {
    size_t k = 0;
    while (k < L && k < s.size() && s[k] == seqs[0][k]) ++k;
    L = k;
  }
  SHRINK_CHECK(L >= 1, StatusCode::kInvalidInput,
               "%s: the choices' contexts share no first token and the tokenizer adds no BOS, so "
               "nothing predicts the first token; expected contexts with a common start",
               at.c_str());
  it.context.assign(seqs[0].begin(), seqs[0].begin() + long(L));
  for (size_t c = 0; c < seqs.size(); ++c) {
    SHRINK_CHECK(seqs[c].size() > n_ctx[c], StatusCode::kInvalidInput,
                 "%s: choice %zu has no tokens of its own; expected a non-empty continuation",
                 at.c_str(), c);
    it.choices.emplace_back(seqs[c].begin() + long(L), seqs[c].end());
    it.given.push_back(int64_t(n_ctx[c] - L));
  }
  if (std::all_of(it.given.begin(), it.given.end(), [](int64_t g) { return g == 0; }))
    it.given.clear();
  return Status::ok();
}

// lm-eval: whitespace that ends the context belongs to the continuation. Returns the context's
// tokens (with the document prefix) and the tokens of context + continuation.
void encode_pair(const Tokenizer& tok, std::string ctx, const std::string& cont,
                 std::vector<int32_t>& ctx_ids, std::vector<int32_t>& whole) {
  size_t keep = ctx.size();
  while (keep > 0 && is_space(ctx[keep - 1])) --keep;
  const std::string moved = ctx.substr(keep);
  ctx.resize(keep);
  ctx_ids = tok.document_prefix();
  const std::vector<int32_t> c = tok.encode(ctx, false);
  ctx_ids.insert(ctx_ids.end(), c.begin(), c.end());
  whole = tok.document_prefix();
  const std::vector<int32_t> w = tok.encode(ctx + moved + cont, false);
  whole.insert(whole.end(), w.begin(), w.end());
}

Result<std::vector<std::string>> strings_from(const json& j, const char* key,
                                              const std::string& at) {
  SHRINK_CHECK(j.contains(key) && j[key].is_array(), StatusCode::kInvalidInput,
               "%s: expected \"%s\", an array of strings", at.c_str(), key);
  std::vector<std::string> out;
  for (size_t c = 0; c < j[key].size(); ++c) {
    SHRINK_CHECK(j[key][c].is_string(), StatusCode::kInvalidInput, "%s: %s[%zu]: expected a string",
                 at.c_str(), key, c);
    out.push_back(j[key][c].get<std::string>());
  }
  return out;
}

Status item_from_json(const json& j, const Tokenizer* tok, int64_t vocab, const std::string& at,
                      ChoiceItem& it) {
  SHRINK_CHECK(j.is_object(), StatusCode::kInvalidInput, "%s: expected a JSON object", at.c_str());
  SHRINK_CHECK(j.contains("label") && j["label"].is_number_integer(), StatusCode::kInvalidInput,
               "%s: expected an integer \"label\" (the index of the right choice)", at.c_str());
  it.label = j["label"].get<int64_t>();
  // Four layouts: a shared context and a continuation per choice, or (as Winogrande's partial
  // scoring) a context per choice and a shared continuation; each in text or in token ids.
  const char* keys[4][2] = {{"context", "choices"},
                            {"context_ids", "choices_ids"},
                            {"contexts", "continuation"},
                            {"contexts_ids", "continuation_ids"}};
  int layout = -1, seen = 0;
  for (int k = 0; k < 4; ++k) {
    if (j.contains(keys[k][0]) || j.contains(keys[k][1])) layout = k, ++seen;
  }
  SHRINK_CHECK(seen == 1, StatusCode::kInvalidInput,
               "%s: expected exactly one of: \"context\" and \"choices\" (text), \"context_ids\" "
               "and \"choices_ids\" (token ids), \"contexts\" and \"continuation\" (a context per "
               "choice), \"contexts_ids\" and \"continuation_ids\"",
               at.c_str());
  SHRINK_CHECK(j.contains(keys[layout][0]) && j.contains(keys[layout][1]),
               StatusCode::kInvalidInput, "%s: expected both \"%s\" and \"%s\"", at.c_str(),
               keys[layout][0], keys[layout][1]);
  const bool ids = layout == 1 || layout == 3;
  SHRINK_CHECK(ids || tok != nullptr, StatusCode::kInvalidInput,
               "%s: a text item needs a tokenizer, and the model has no tokenizer.json (give "
               "--tokenizer, or write the item in token ids)",
               at.c_str());
  std::vector<std::vector<int32_t>> seqs;  // per choice: conditioning tokens, then scored ones
  std::vector<size_t> n_ctx;
  if (layout == 1) {
    std::vector<int32_t> ctx;
    SHRINK_RETURN_IF_ERROR(ids_from(j["context_ids"], vocab, at + ": context_ids", ctx));
    SHRINK_CHECK(!ctx.empty(), StatusCode::kInvalidInput,
                 "%s: the context has no tokens; expected at least one", at.c_str());
    const json& cs = j["choices_ids"];
    SHRINK_CHECK(cs.is_array(), StatusCode::kInvalidInput,
                 "%s: \"choices_ids\": expected an array of arrays of token ids", at.c_str());
    for (size_t c = 0; c < cs.size(); ++c) {
      std::vector<int32_t> ch;
      SHRINK_RETURN_IF_ERROR(
          ids_from(cs[c], vocab, strfmt("%s: choices_ids[%zu]", at.c_str(), c), ch));
      it.norm_length.push_back(double(ch.size()));
      seqs.push_back(ctx);
      seqs.back().insert(seqs.back().end(), ch.begin(), ch.end());
      n_ctx.push_back(ctx.size());
    }
  } else if (layout == 3) {
    std::vector<int32_t> cont;
    SHRINK_RETURN_IF_ERROR(ids_from(j["continuation_ids"], vocab, at + ": continuation_ids", cont));
    const json& cs = j["contexts_ids"];
    SHRINK_CHECK(cs.is_array(), StatusCode::kInvalidInput,
                 "%s: \"contexts_ids\": expected an array of arrays of token ids", at.c_str());
    for (size_t c = 0; c < cs.size(); ++c) {
      std::vector<int32_t> ctx;
      SHRINK_RETURN_IF_ERROR(
          ids_from(cs[c], vocab, strfmt("%s: contexts_ids[%zu]", at.c_str(), c), ctx));
      SHRINK_CHECK(!ctx.empty(), StatusCode::kInvalidInput,
                   "%s: contexts_ids[%zu] has no tokens; expected at least one", at.c_str(), c);
      n_ctx.push_back(ctx.size());
      ctx.insert(ctx.end(), cont.begin(), cont.end());
      seqs.push_back(std::move(ctx));
      it.norm_length.push_back(double(cont.size()));
    }
  } else if (layout == 0) {
    SHRINK_CHECK(j["context"].is_string(), StatusCode::kInvalidInput,
                 "%s: expected a string \"context\"", at.c_str());
    SHRINK_ASSIGN_OR_RETURN(std::vector<std::string> choices, strings_from(j, "choices", at));
    for (const std::string& choice : choices) {
      std::vector<int32_t> ctx, whole;
      encode_pair(*tok, j["context"].get<std::string>(), choice, ctx, whole);
      SHRINK_CHECK(!ctx.empty(), StatusCode::kInvalidInput,
                   "%s: the context is empty and the tokenizer adds no BOS, so the first token "
                   "of a choice has nothing to be predicted from",
                   at.c_str());
      // lm-eval scores context + whole[len(context):]: a merge across the boundary is scored
      // as the model would see it, after the context's own tokens.
      const size_t n0 = std::min(ctx.size(), whole.size());
      n_ctx.push_back(ctx.size());
      ctx.insert(ctx.end(), whole.begin() + long(n0), whole.end());
      seqs.push_back(std::move(ctx));
      it.norm_length.push_back(double(std::max<int64_t>(1, code_points(choice))));
    }
  } else {
    SHRINK_CHECK(j["continuation"].is_string(), StatusCode::kInvalidInput,
                 "%s: expected a string \"continuation\"", at.c_str());
    const std::string cont = j["continuation"].get<std::string>();
    SHRINK_ASSIGN_OR_RETURN(std::vector<std::string> contexts, strings_from(j, "contexts", at));
    for (const std::string& context : contexts) {
      std::vector<int32_t> ctx, whole;
      encode_pair(*tok, context, cont, ctx, whole);
      const size_t n0 = std::min(ctx.size(), whole.size());
      n_ctx.push_back(ctx.size());
      ctx.insert(ctx.end(), whole.begin() + long(n0), whole.end());
      seqs.push_back(std::move(ctx));
      it.norm_length.push_back(double(std::max<int64_t>(1, code_points(cont))));
    }
  }
  SHRINK_CHECK(seqs.size() >= 2, StatusCode::kInvalidInput,
               "%s: %zu choice(s); expected at least 2", at.c_str(), seqs.size());
  SHRINK_RETURN_IF_ERROR(split_shared(seqs, n_ctx, at, it));
  SHRINK_CHECK(it.label >= 0 && it.label < int64_t(it.choices.size()), StatusCode::kInvalidInput,
               "%s: label %lld is not a choice index; expected 0..%zu", at.c_str(),
               (long long)it.label, it.choices.size() - 1);
  return Status::ok();
}

}  // namespace

Result<std::vector<ChoiceItem>> choice_task_load(const std::string& path, const Tokenizer* tok,
                                                 int64_t vocab_size) {
  SHRINK_ASSIGN_OR_RETURN(std::string text, read_file(path));
  std::vector<ChoiceItem> items;
  std::istringstream in(text);
  std::string line;
  for (int64_t ln = 1; std::getline(in, line); ++ln) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string at = strfmt("%s:%lld", path.c_str(), (long long)ln);
    SHRINK_RETURN_IF_ERROR(json_check_depth(line, at));
    const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    SHRINK_CHECK(!j.is_discarded(), StatusCode::kInvalidInput,
                 "%s: not valid JSON; expected one object per line", at.c_str());
    ChoiceItem it;
    SHRINK_RETURN_IF_ERROR(item_from_json(j, tok, vocab_size, at, it));
    items.push_back(std::move(it));
  }
  SHRINK_CHECK(!items.empty(), StatusCode::kInvalidInput,
               "%s: no items; expected one JSON object per line", path.c_str());
  return items;
}

Result<ChoiceTaskBuildResult> choice_task_build(const ChoiceTaskBuildOptions& o,
                                                const std::string& out_path) {
  SHRINK_CHECK(o.choices >= 2 && o.choices <= 16, StatusCode::kInvalidInput,
               "--choices %lld: expected 2..16", (long long)o.choices);
  SHRINK_CHECK(o.min_words >= 2 && o.max_words >= o.min_words, StatusCode::kInvalidInput,
               "--min-words %lld, --max-words %lld: expected 2 <= min <= max",
               (long long)o.min_words, (long long)o.max_words);
  SHRINK_CHECK(o.max_items >= 0, StatusCode::kInvalidInput, "--max-items must be >= 0");
  SHRINK_CHECK(o.val_fraction > 0 && o.val_fraction < 1, StatusCode::kInvalidInput,
               "--val-fraction %g: expected a value in (0, 1)", o.val_fraction);
  SHRINK_ASSIGN_OR_RETURN(Split split, split_from_name(o.split));
  SHRINK_ASSIGN_OR_RETURN(std::unique_ptr<TextReader> reader, TextReader::open(o.data));

  struct Doc {
    std::string context, ending;
    uint64_t index;
  };
  std::vector<Doc> docs;
  ChoiceTaskBuildResult r;
  TextBlock b;
  for (;;) {
    SHRINK_ASSIGN_OR_RETURN(bool more, reader->next(b));
    if (!more) break;
    const bool val = split_is_val(b.doc_index, o.val_fraction, o.split_seed);
    if ((split == Split::kVal && !val) || (split == Split::kTrain && val)) continue;
    // Paragraphs (blank-line separated) of the document; a fortune is usually one.
    size_t p0 = 0;
    while (p0 < b.text.size()) {
      size_t p1 = b.text.find("\n\n", p0);
      if (p1 == std::string::npos) p1 = b.text.size();
      std::string para = b.text.substr(p0, p1 - p0);
      p0 = p1 + 2;
      while (!para.empty() && is_space(para.back())) para.pop_back();
      size_t lead = 0;
      while (lead < para.size() && is_space(para[lead])) ++lead;
      para.erase(0, lead);
      std::vector<size_t> word_end;  // end offset of each word
      for (size_t i = 0; i < para.size(); ++i) {
        if (!is_space(para[i]) && (i + 1 == para.size() || is_space(para[i + 1])))
          word_end.push_back(i + 1);
      }
      const int64_t n = int64_t(word_end.size());
      if (n < o.min_words || n > o.max_words) continue;
      const size_t cut = word_end[size_t(n / 2 - 1)];
      docs.push_back({para.substr(0, cut), para.substr(cut), b.doc_index});
      r.documents++;
    }
  }
  SHRINK_CHECK(int64_t(docs.size()) >= o.choices, StatusCode::kInvalidInput,
               "%s: only %zu documents of %lld..%lld words in the %s split; expected at least "
               "--choices (%lld)",
               o.data.c_str(), docs.size(), (long long)o.min_words, (long long)o.max_words,
               o.split.c_str(), (long long)o.choices);

  // Distractors: endings of other documents of similar length (the nearest 64 by bytes), so the
  // length alone says little; duplicates of the true ending are skipped.
  std::vector<size_t> by_len(docs.size());
  for (size_t i = 0; i < docs.size(); ++i) by_len[i] = i;
  std::stable_sort(by_len.begin(), by_len.end(), [&](size_t a, size_t b) {
    return docs[a].ending.size() < docs[b].ending.size();
  });
  std::vector<size_t> rank(docs.size());
  for (size_t p = 0; p < by_len.size(); ++p) rank[by_len[p]] = p;
  const size_t n_items = o.max_items > 0 ? std::min(docs.size(), size_t(o.max_items)) : docs.size();
  std::mt19937_64 rng(o.seed);
  std::string out;
  for (size_t i = 0; i < n_items; ++i) {
    const size_t p = rank[i], W = 32;
    const size_t lo = p > W ? p - W : 0, hi = std::min(by_len.size(), p + W + 1);
    std::vector<size_t> pool;
    for (size_t q = lo; q < hi; ++q) {
      const size_t d = by_len[q];
      if (d != i && docs[d].ending != docs[i].ending) pool.push_back(d);
    }
    std::vector<std::string> choices;
    while (int64_t(choices.size()) + 1 < o.choices && !pool.empty()) {
      const size_t k = size_t(rng() % pool.size());
      const std::string& e = docs[pool[k]].ending;
      if (std::find(choices.begin(), choices.end(), e) == choices.end()) choices.push_back(e);
      pool.erase(pool.begin() + long(k));
    }
    if (int64_t(choices.size()) + 1 < o.choices) continue;  // too few distinct endings nearby
    const int64_t label = int64_t(rng() % uint64_t(o.choices));
    choices.insert(choices.begin() + label, docs[i].ending);
    json j = {{"context", docs[i].context},
              {"choices", choices},
              {"label", label},
              {"doc", docs[i].index}};
    out += j.dump(-1, ' ', false, json::error_handler_t::replace);
    out += '\n';
    r.items++;
  }
  SHRINK_CHECK(r.items > 0, StatusCode::kInvalidInput,
               "%s: no document has %lld distinct endings of similar length among the others; "
               "expected fewer --choices or more documents",
               o.data.c_str(), (long long)o.choices - 1);
  SHRINK_RETURN_IF_ERROR(write_file_atomic(out_path, out));
  return r;
}

}  // namespace shrink::core
