// Reading JSON that came from a stranger: config.json, tokenizer.json, quantization_config,
// generation_config.json, task and report JSONL lines, safetensors headers.
//
// Why: nlohmann's parser is iterative, but copying, comparing and dump()ing a value recurse once
// per nesting level, so a 100 KB "[[[[..." config field overflows the stack wherever it is later
// copied or printed. Every parser of untrusted text goes through json_parse_untrusted, which
// caps the nesting depth before nlohmann sees the text and reports it at line:col; error
// messages describe values with json_brief (a type, or a short scalar), never a full dump.
// Typed field readers range-check numbers before any cast (1e300 is not an int64).
// Tested in tests/core/test_json_util.cpp and by the fuzz harnesses (tests/fuzz).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace shrink::core {

/// The deepest nesting that an untrusted JSON document may have. HF configs and tokenizers nest
/// 5-8 levels; 64 leaves room for anything real while keeping recursion over a value shallow.
constexpr int kJsonMaxDepth = 64;

/// Ok, or an error "<what>:LINE:COL: JSON nested deeper than <max_depth> levels" for the first
/// '[' or '{' (outside strings) that opens level max_depth + 1. Does not validate otherwise.
Status json_check_depth(std::string_view text, const std::string& what,
                        int max_depth = kJsonMaxDepth);

/// Parse untrusted JSON text: rejects NUL bytes, nesting deeper than kJsonMaxDepth and syntax
/// errors (message "<what>: not valid JSON: parse error at line L, column C: ..."). Never throws.
Result<nlohmann::json> json_parse_untrusted(std::string_view text, const std::string& what);

/// One line of a JSONL file, parsed as untrusted input: the value, or a discarded value
/// (is_discarded()) when the line is not JSON or nests deeper than kJsonMaxDepth. The JSONL
/// readers report "file:line: expected ..." themselves, in the terms of their own format.
nlohmann::json json_parse_line(std::string_view line);

/// "null", "a boolean", "an integer", "a number", "a string", "an array" or "an object".
const char* json_type_name(const nlohmann::json& v);

/// A short description of a value for an error message: a scalar as JSON (strings cut to 40
/// characters), else its type and size ("an array of 3 items", "an object with 2 keys ("a",
/// "b")", naming at most three keys).
std::string json_brief(const nlohmann::json& v);

/// The value as an int64 when it is an integer, or a float with an integral value inside the
/// int64 range (HF writes some sizes as 4096.0); nullopt otherwise (1e300, 2.5, strings...).
std::optional<int64_t> json_as_int64(const nlohmann::json& v);

/// Typed optional fields of an object: absent or null gives `def`; another type is an error
/// "<path>.<key>: expected a string, got an array of 3 items". `obj` must be an object.
Result<std::string> json_string_or(const nlohmann::json& obj, const char* key, std::string def,
                                   const std::string& path);
/// As json_string_or, for an integer (json_as_int64) in [lo, hi].
Result<int64_t> json_int_or(const nlohmann::json& obj, const char* key, int64_t def, int64_t lo,
                            int64_t hi, const std::string& path);
/// As json_string_or, for true or false.
Result<bool> json_bool_or(const nlohmann::json& obj, const char* key, bool def,
                          const std::string& path);

}  // namespace shrink::core
