// bpe_train: a byte-level BPE trainer that writes GPT-2 style tokenizers.
//
// Design: documents are cut at special-token strings and split with the same GPT-2
// pre-tokenizer as encoding, and only the distinct words and their counts are kept. The base
// vocabulary is the special tokens (ids 0..) and the 256 bytes in byte order. Each step merges
// the most frequent adjacent pair. Updates are incremental: a pair -> words index says which
// words to rewrite, a merge applies count deltas only to the pairs around each rewritten
// occurrence, and a max-heap with lazy invalidation (an entry is checked against the live count
// when popped) finds the next pair. Ties break by the pair's byte strings (left, then right,
// smallest first), so the result does not depend on hash-map order: same input, same tokenizer.
// Tested in tests/pipeline/test_tokenizer_train.cpp (determinism, compression, round trip).
#include <algorithm>
#include <queue>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/token_pair.h"
#include "core/tokenizer.h"
#include "pipeline/tokenizer_train.h"

namespace shrink::pipeline {

using core::PairHash;
using core::pair_key;
using core::pair_left;
using core::pair_right;
using core::Tokenizer;
using core::byte_level_encode;
using core::pretokenize_gpt2;

namespace {

struct Word {
  std::vector<int32_t> syms;
  int64_t count;
};

struct HeapEntry {
  int64_t count;
  uint64_t pair;
};

/// Calls `fn` on each maximal piece of `doc` that holds no special token.
template <typename Fn>
void split_on_specials(std::string_view doc, const std::vector<std::string>& specials, Fn&& fn) {
  size_t start = 0;
  while (start < doc.size()) {
    size_t best = std::string_view::npos;
    size_t best_len = 0;
    for (const std::string& s : specials) {
      const size_t at = doc.find(s, start);
      if (at < best || (at == best && s.size() > best_len)) best = at, best_len = s.size();
    }
    if (best == std::string_view::npos) break;
    if (best > start) fn(doc.substr(start, best - start));
    start = best + best_len;
  }
  if (start < doc.size()) fn(doc.substr(start));
}

}  // namespace

Result<Tokenizer> bpe_train(const std::function<bool(std::string&)>& next_doc,
                            const BpeTrainOptions& opts) {
  const auto n_special = int32_t(opts.special_tokens.size());
  SHRINK_CHECK(opts.vocab_size >= n_special + 256, StatusCode::kInvalidInput,
               "bpe_train: vocab_size %d is too small; expected at least %d (%d special tokens "
               "+ 256 bytes)",
               opts.vocab_size, n_special + 256, n_special);
  SHRINK_CHECK(opts.min_frequency >= 1, StatusCode::kInvalidInput,
               "bpe_train: min_frequency %d is not supported; expected >= 1", opts.min_frequency);

  // Base vocabulary. `key` is the vocab string (byte-level form; a special token's content).
  std::vector<std::string> raw;  // token bytes, for tie-breaking
  std::vector<std::string> key;
  std::unordered_map<std::string, int32_t> id_of_key;
  std::vector<int32_t> special_ids;
  for (const std::string& s : opts.special_tokens) {
    SHRINK_CHECK(!s.empty(), StatusCode::kInvalidInput, "bpe_train: empty special token");
    SHRINK_CHECK(!id_of_key.count(s), StatusCode::kInvalidInput,
                 "bpe_train: special token '%s' is listed twice", s.c_str());
    special_ids.push_back(int32_t(key.size()));
    id_of_key[s] = int32_t(key.size());
    raw.push_back(s);
    key.push_back(s);
  }
  for (int b = 0; b < 256; ++b) {
    const std::string bytes(1, char(b));
    std::string k = byte_level_encode(bytes);
    SHRINK_CHECK(!id_of_key.count(k), StatusCode::kInvalidInput,
                 "bpe_train: special token '%s' collides with the byte token for 0x%02X", k.c_str(),
                 b);
    id_of_key[k] = int32_t(key.size());
    raw.push_back(bytes);
    key.push_back(std::move(k));
  }

  // Count words.
  std::unordered_map<std::string, int64_t> word_counts;
  std::string doc;
  while (next_doc(doc)) {
    split_on_specials(doc, opts.special_tokens, [&](std::string_view piece) {
      for (std::string_view w : pretokenize_gpt2(piece)) ++word_counts[std::string(w)];
    });
  }
  // Sorted, so word indices (and with them every container below) are deterministic.
  std::vector<std::pair<std::string, int64_t>> sorted(word_counts.begin(), word_counts.end());
  word_counts.clear();
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words;
  words.reserve(sorted.size());
  for (const auto& [w, c] : sorted) {
    Word word{{}, c};
    word.syms.reserve(w.size());
    for (char ch : w) word.syms.push_back(n_special + uint8_t(ch));
    words.push_back(std::move(word));
  }
  sorted.clear();

  // Pair counts and the pair -> words index (a word may be listed more than once; harmless).
  std::unordered_map<uint64_t, int64_t, PairHash> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>, PairHash> where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].syms;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t k = pair_key(s[i], s[i + 1]);
      pair_count[k] += words[w].count;
      where[k].push_back(int32_t(w));
    }
  }

  // Max-heap on count; ties: smaller (left bytes, right bytes) first.
  auto lower_priority = [&raw](const HeapEntry& x, const HeapEntry& y) {
    if (x.count != y.count) return x.count < y.count;
    const std::string& xl = raw[size_t(pair_left(x.pair))];
    const std::string& yl = raw[size_t(pair_left(y.pair))];
    if (xl != yl) return xl > yl;
    return raw[size_t(pair_right(x.pair))] > raw[size_t(pair_right(y.pair))];
  };
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, decltype(lower_priority)> heap(
      lower_priority);
  {
    // Pushed in key order so the heap's internal layout is deterministic too.
    std::vector<std::pair<uint64_t, int64_t>> init(pair_count.begin(), pair_count.end());
    std::sort(init.begin(), init.end());
    for (const auto& [k, c] : init) heap.push({c, k});
  }

  const int64_t merges_wanted = int64_t(opts.vocab_size) - int64_t(key.size());
  std::vector<std::pair<std::string, std::string>> merges;
  std::unordered_map<uint64_t, int64_t, PairHash> delta;
  std::vector<std::pair<uint64_t, int32_t>> gained;  // (pair, word) for pairs a word gained
  std::vector<int32_t> rewritten;
  while (int64_t(key.size()) < opts.vocab_size && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.pair);
    const int64_t live = pc == pair_count.end() ? 0 : pc->second;
    if (live != top.count) {
      // Stale. A smaller live count is pushed again; a larger one already has its own entry.
      if (live > 0 && live < top.count) heap.push({live, top.pair});
      continue;
    }
    if (live < opts.min_frequency) break;

    const int32_t a = pair_left(top.pair);
    const int32_t b = pair_right(top.pair);
    std::string new_key = key[size_t(a)] + key[size_t(b)];
    int32_t merged;
    auto existing = id_of_key.find(new_key);
    if (existing != id_of_key.end()) {
      merged = existing->second;  // the same string reached by another split: reuse its id
    } else {
      merged = int32_t(key.size());
      id_of_key.emplace(new_key, merged);
      raw.push_back(raw[size_t(a)] + raw[size_t(b)]);
      key.push_back(std::move(new_key));
    }
    merges.emplace_back(key[size_t(a)], key[size_t(b)]);

    // Rewrite every word holding (a, b), recording count deltas for the neighbouring pairs.
    auto wit = where.find(top.pair);
    rewritten.clear();
    if (wit != where.end()) {
      rewritten = std::move(wit->second);
      where.erase(wit);
    }
    std::sort(rewritten.begin(), rewritten.end());
    rewritten.erase(std::unique(rewritten.begin(), rewritten.end()), rewritten.end());
    delta.clear();
    gained.clear();
    std::vector<int32_t> out;
    for (int32_t w : rewritten) {
      std::vector<int32_t>& s = words[size_t(w)].syms;
      const int64_t c = words[size_t(w)].count;
      out.clear();
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          if (!out.empty()) {
            delta[pair_key(out.back(), a)] -= c;
            delta[pair_key(out.back(), merged)] += c;
            gained.emplace_back(pair_key(out.back(), merged), w);
          }
          delta[top.pair] -= c;
          if (i + 2 < s.size()) {
            delta[pair_key(b, s[i + 2])] -= c;
            delta[pair_key(merged, s[i + 2])] += c;
            gained.emplace_back(pair_key(merged, s[i + 2]), w);
          }
          out.push_back(merged);
          i += 2;
        } else {
          out.push_back(s[i]);
          ++i;
        }
      }
      s.assign(out.begin(), out.end());
    }
    for (const auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& cnt = pair_count[k];
      cnt += d;
      if (cnt <= 0) {
        pair_count.erase(k);
      } else if (d > 0) {
        heap.push({cnt, k});
      }
    }
    for (const auto& [k, w] : gained) where[k].push_back(w);

    if (opts.progress && (merges.size() % 64 == 0)) {
      opts.progress(int64_t(merges.size()), merges_wanted);
    }
  }
  if (opts.progress) opts.progress(int64_t(merges.size()), merges_wanted);
  return Tokenizer::from_vocab_merges(std::move(key), merges, special_ids);
}

}  // namespace shrink::pipeline
