// The serving scheduler's prefix cache: KV-cache rows of prompts already seen, kept in host
// memory as blocks of `block_tokens` tokens and reused by any request that starts with the same
// tokens, which then prefills only the rest (vLLM's automatic prefix caching).
//
// Why blocks keyed by a hash chain rather than a radix tree over tokens (SGLang): a block of B
// tokens is a fixed number of bytes (B * Engine::kv_bytes_per_token()), so the budget is counted
// exactly and eviction is one LRU list; the key of block i hashes block i - 1's key with its own
// tokens, so a lookup walks the prompt once, block by block, and a hit means the whole prefix
// matches (each block also keeps its tokens and its parent's key, so a hash collision is a miss,
// never wrong rows). What a radix tree would add, sharing below block granularity, is at most
// B - 1 tokens of prefill per request. Blocks are touched deepest first on a hit, so the LRU
// order evicts a chain's tail before its head.
// The bytes are the cache's own representation (f32, f16 or int8 with scales), copied out of and
// into engine slots (Engine::kv_export / kv_import): reused rows give the attention the fresh
// rows gave. Not thread-safe: the scheduler's thread owns it.
// Tested in tests/runtime/test_serve.cpp.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "runtime/engine.h"

namespace shrink::runtime {

class PrefixCache {
 public:
  /// budget_bytes = 0 disables the cache (lookups miss, inserts keep nothing).
  PrefixCache(uint64_t budget_bytes, int64_t block_tokens, uint64_t bytes_per_token);

  /// Import into `slot` (empty) the longest cached prefix of tokens[0, limit), a whole number of
  /// blocks; returns the tokens imported (0 on a miss).
  Result<int64_t> restore(Engine& e, int slot, const int32_t* tokens, int64_t limit);
  /// Copy the whole blocks of tokens[0, n) that the cache lacks out of `slot` (which holds at
  /// least n tokens), evicting least recently used blocks to stay within the budget.
  Status insert(Engine& e, int slot, const int32_t* tokens, int64_t n);

  uint64_t bytes() const { return bytes_; }
  uint64_t budget() const { return budget_; }
  int64_t blocks() const { return int64_t(map_.size()); }
  int64_t block_tokens() const { return block_; }
  uint64_t lookups() const { return lookups_; }
  uint64_t hits() const { return hits_; }           // lookups that reused >= 1 block
  uint64_t tokens_reused() const { return reused_; }
  uint64_t evictions() const { return evictions_; }

 private:
  struct Block {
    uint64_t parent = 0;
    std::vector<int32_t> tokens;
    std::vector<uint8_t> kv;
    std::list<uint64_t>::iterator lru;  // front = most recent
  };
  static uint64_t chain(uint64_t parent, const int32_t* tokens, int64_t n);
  const Block* find(uint64_t parent, uint64_t key, const int32_t* tokens) const;
  void touch(uint64_t key);
  void evict_until(uint64_t need);

  uint64_t budget_;
  int64_t block_;
  uint64_t block_bytes_;
  uint64_t bytes_ = 0;
  std::unordered_map<uint64_t, Block> map_;
  std::list<uint64_t> lru_;
  uint64_t lookups_ = 0, hits_ = 0, reused_ = 0, evictions_ = 0;
};

}  // namespace shrink::runtime
