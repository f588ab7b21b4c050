// Overflow-checked integer arithmetic for sizes derived from untrusted input (config.json
// dimensions, tensor shapes, command-line context lengths).
//
// Why: a size such as layers x context x kv_heads x head_dim x bytes is a product of numbers a
// stranger chose; signed overflow there is undefined behaviour and, worse, a small wrapped
// allocation followed by large writes. Every such product goes through checked_mul, which says
// when the result leaves int64. Tested in tests/core/test_json_util.cpp.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>

namespace shrink::core {

/// The product of non-negative factors, or nullopt when it exceeds INT64_MAX (or a factor is
/// negative).
inline std::optional<int64_t> checked_mul(std::initializer_list<int64_t> factors) {
  int64_t p = 1;
  for (int64_t f : factors) {
    if (f < 0 || __builtin_mul_overflow(p, f, &p)) return std::nullopt;
  }
  return p;
}

/// a + b for non-negative a and b, or nullopt on overflow.
inline std::optional<int64_t> checked_add(int64_t a, int64_t b) {
  int64_t s = 0;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &s)) return std::nullopt;
  return s;
}

}  // namespace shrink::core
