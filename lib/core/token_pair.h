// A pair of token ids packed into one 64-bit key, and a hash for such keys: the key of BPE merge
// tables, which core/tokenizer.cpp encodes with and pipeline/tokenizer_train.cpp learns.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shrink::core {

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
}
inline int32_t pair_left(uint64_t key) {
  return int32_t(key >> 32);
}
inline int32_t pair_right(uint64_t key) {
  return int32_t(key & 0xFFFFFFFFu);
}

/// libstdc++'s std::hash<uint64_t> is the identity, and unordered_map buckets by the low bits,
/// which here are the right-hand id alone: mix the high half in (murmur3's finalizer steps).
struct PairHash {
  size_t operator()(uint64_t k) const {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
};

}  // namespace shrink::core
