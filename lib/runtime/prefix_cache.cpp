// Prefix cache of KV blocks (prefix_cache.h).
#include "runtime/prefix_cache.h"

#include <algorithm>
#include <cstring>

namespace shrink::runtime {

PrefixCache::PrefixCache(uint64_t budget_bytes, int64_t block_tokens, uint64_t bytes_per_token)
    : budget_(budget_bytes),
      block_(std::max<int64_t>(block_tokens, 1)),
      block_bytes_(uint64_t(std::max<int64_t>(block_tokens, 1)) * bytes_per_token) {}

uint64_t PrefixCache::chain(uint64_t parent, const int32_t* tokens, int64_t n) {
  // FNV-1a over the parent key and the block's token ids, then a 64-bit finalizer (splitmix):
  // a collision is harmless (find() compares the tokens and the parent), only a miss.
  uint64_t h = 1469598103934665603ull ^ parent;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t t = uint32_t(tokens[i]);
    for (int b = 0; b < 4; ++b) {
      h ^= (t >> (8 * b)) & 0xffu;
      h *= 1099511628211ull;
    }
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h | 1;  // 0 is the root's "parent"
}

const PrefixCache::Block* PrefixCache::find(uint64_t parent, uint64_t key,
                                            const int32_t* tokens) const {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  const Block& b = it->second;
  if (b.parent != parent || std::memcmp(b.tokens.data(), tokens, size_t(block_) * 4) != 0)
    return nullptr;
  return &b;
}

void PrefixCache::touch(uint64_t key) {
  Block& b = map_.at(key);
  lru_.splice(lru_.begin(), lru_, b.lru);
}

void PrefixCache::evict_until(uint64_t need) {
  while (bytes_ + need > budget_ && !lru_.empty()) {
    const uint64_t victim = lru_.back();
    lru_.pop_back();
    map_.erase(victim);
    bytes_ -= block_bytes_;
    ++evictions_;
  }
}

Result<int64_t> PrefixCache::restore(Engine& e, int slot, const int32_t* tokens, int64_t limit) {
  ++lookups_;
  if (budget_ == 0 || limit < block_) return int64_t(0);
  std::vector<const Block*> hit;
  std::vector<uint64_t> keys;
  uint64_t parent = 0;
  for (int64_t at = 0; at + block_ <= limit; at += block_) {
    const uint64_t key = chain(parent, tokens + at, block_);
    const Block* b = find(parent, key, tokens + at);
    if (!b) break;
    hit.push_back(b);
    keys.push_back(key);
    parent = key;
  }
  if (hit.empty()) return int64_t(0);
  for (size_t i = 0; i < hit.size(); ++i)
    SHRINK_RETURN_IF_ERROR(e.kv_import(slot, int64_t(i) * block_, block_, hit[i]->kv.data()));
  for (size_t i = keys.size(); i-- > 0;) touch(keys[i]);  // deepest first: the head stays newest
  ++hits_;
  reused_ += uint64_t(hit.size()) * uint64_t(block_);
  return int64_t(hit.size()) * block_;
}

Status PrefixCache::insert(Engine& e, int slot, const int32_t* tokens, int64_t n) {
  if (budget_ < block_bytes_) return Status::ok();
  uint64_t parent = 0;
  std::vector<uint64_t> keys;
  for (int64_t at = 0; at + block_ <= n; at += block_) {
    const uint64_t key = chain(parent, tokens + at, block_);
    if (!find(parent, key, tokens + at)) {
      if (map_.count(key)) {  // a collision with another chain's block: stop caching here
        break;
      }
      evict_until(block_bytes_);
      // Evicting may have dropped this chain's own earlier blocks; a later block without its
      // parent is unreachable, so stop.
      if (parent != 0 && !map_.count(parent)) break;
      Block b;
      b.parent = parent;
      b.tokens.assign(tokens + at, tokens + at + block_);
      b.kv.resize(size_t(block_bytes_));
      SHRINK_RETURN_IF_ERROR(e.kv_export(slot, at, block_, b.kv.data()));
      lru_.push_front(key);
      b.lru = lru_.begin();
      map_.emplace(key, std::move(b));
      bytes_ += block_bytes_;
    } else {
      touch(key);  // keep this chain's head from being evicted for its own tail
    }
    keys.push_back(key);
    parent = key;
  }
  for (size_t i = keys.size(); i-- > 0;)
    if (map_.count(keys[i])) touch(keys[i]);
  return Status::ok();
}

}  // namespace shrink::runtime
