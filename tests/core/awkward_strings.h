// Strings that break tokenizers: contractions, whitespace runs, digits, emoji sequences, CJK,
// combining marks, invalid and overlong UTF-8, control characters, and text that looks like a
// special token. Shared by the tokenizer tests (core) and the tokenizer trainer's (pipeline).
#pragma once

#include <string>
#include <vector>

namespace shrink::test {

inline const std::vector<std::string>& awkward_strings() {
  static const std::vector<std::string> kStrings = {
      "",
      "a",
      "Hello world's  123 foo!!\n\n  bar",
      "the cat sat in the theater xyz",
      "I'm sure they'll say we've done what you'd do; it's John's.",
      "DON'T ''s 's'",
      "tabs\tand\t\tmore\t \t  \n\r\n trailing   ",
      "   leading spaces",
      "digits 0123456789 12.5e-3 ٣٤٥ ⅷ",
      "emoji 👋🏽 👨‍👩‍👧 🇩🇪!!",
      "日本語のテキスト、中文文本。한국어",
      "combining e\xcc\x81 a\xcc\x8a\xcc\x81 ñ",
      "invalid \xff\xfe bytes \xc3 trunc \xed\xa0\x80 surrogate \xc0\xaf overlong",
      std::string("nul\0inside", 10),
      "\xf4\x90\x80\x80 above U+10FFFF, \xe2\x82 cut",
      "\x01\x02\x7f control",
      "\xc2\xa0nbsp\xe3\x80\x80ideographic space\xe2\x80\xa8line sep",
      "mixed123abc___---...",
      "<|endoftext|> looks special but is not one here",
  };
  return kStrings;
}

}  // namespace shrink::test
