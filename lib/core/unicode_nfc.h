// Unicode Normalization Form C (canonical decomposition, canonical ordering, canonical
// composition), for tokenizer.json's "NFC" normalizer (Qwen2 and others).
//
// Text that holds no code point at or above U+0300 is already in NFC and is returned unchanged
// without decoding (every code point below U+0300 is NFC-stable and none composes with
// another). Bytes that are not valid UTF-8 are kept as they are and block composition across
// them. Tables: core/unicode_nfc_tables.h (scripts/gen_unicode_nfc.py).
// Tested in tests/core/test_tokenizer.cpp (against Python's unicodedata on fixed strings).
#pragma once

#include <string>
#include <string_view>

namespace shrink::core {

/// NFC of `text` (UTF-8 in, UTF-8 out).
std::string nfc(std::string_view text);
/// True when nfc(text) is certainly text itself without looking deeper (no code point >= U+0300).
bool nfc_trivially_stable(std::string_view text);

}  // namespace shrink::core
