// Untrusted JSON: depth cap, parse without exceptions, short value descriptions. See json_util.h.
#include "core/json_util.h"

#include <cmath>
#include <cstring>

namespace shrink::core {

using nlohmann::json;

Status json_check_depth(std::string_view text, const std::string& what, int max_depth) {
  int depth = 0;
  int64_t line = 1, col = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    ++col;
    if (c == '\n') {
      ++line;
      col = 0;
      continue;
    }
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        return invalid_input(what + ":" + std::to_string(line) + ":" + std::to_string(col) +
                             ": JSON nested deeper than " + std::to_string(max_depth) +
                             " levels; expected at most " + std::to_string(max_depth));
      }
    } else if (c == ']' || c == '}') {
      if (depth > 0) --depth;  // unbalanced text is the parser's to report
    }
  }
  return Status::ok();
}

json json_parse_line(std::string_view line) {
  if (!json_check_depth(line, "").is_ok()) return json(json::value_t::discarded);
  return json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
}

Result<json> json_parse_untrusted(std::string_view text, const std::string& what) {
  // nlohmann's lexer would stop at a NUL byte and ignore what follows; JSON allows none.
  if (const void* nul = std::memchr(text.data(), '\0', text.size())) {
    return invalid_input(what + ": not valid JSON: NUL byte at offset " +
                         std::to_string(static_cast<const char*>(nul) - text.data()));
  }
  SHRINK_RETURN_IF_ERROR(json_check_depth(text, what));
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded()) return j;
  // Parse again with exceptions for the message ("parse error at line 1, column 2: ...").
  std::string msg = "parse error";
  try {
    (void)json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    msg = e.what();
    const size_t tag_end = msg.find("] ");
    if (msg.rfind("[json.exception", 0) == 0 && tag_end != std::string::npos) {
      msg = msg.substr(tag_end + 2);
    }
  }
  return invalid_input(what + ": not valid JSON: " + msg);
}

const char* json_type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_binary()) return "binary data";
  if (v.is_discarded()) return "invalid JSON";
  return "an object";
}

std::string json_brief(const json& v) {
  constexpr size_t kMaxChars = 40;
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s.size() <= kMaxChars) return json(s).dump(-1, ' ', false, json::error_handler_t::replace);
    return json(s.substr(0, kMaxChars)).dump(-1, ' ', false, json::error_handler_t::replace) +
           "... (" + std::to_string(s.size()) + " bytes)";
  }
  if (v.is_array()) {
    return "an array of " + std::to_string(v.size()) + (v.size() == 1 ? " item" : " items");
  }
  if (v.is_object()) {  // the first keys name the object's kind ({"Regex": ...})
    std::string keys;
    size_t k = 0;
    for (auto it = v.begin(); it != v.end() && k < 3; ++it, ++k) {
      keys += (k ? ", " : "") + json_brief(json(it.key()));
    }
    if (v.size() > 3) keys += ", ...";
    return "an object with " + std::to_string(v.size()) + (v.size() == 1 ? " key" : " keys") +
           (keys.empty() ? "" : " (" + keys + ")");
  }
  if (v.is_null() || v.is_boolean() || v.is_number()) return v.dump();
  return json_type_name(v);
}

std::optional<int64_t> json_as_int64(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(INT64_MAX)) return std::nullopt;
    return int64_t(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    // [-2^63, 2^63): the doubles that convert to int64 without undefined behaviour.
    if (!std::isfinite(d) || std::floor(d) != d || d < -9223372036854775808.0 ||
        d >= 9223372036854775808.0) {
      return std::nullopt;
    }
    return int64_t(d);
  }
  return std::nullopt;
}

namespace {
const json* field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}
Status wrong_type(const json& v, const char* key, const char* expected, const std::string& path) {
  return invalid_input(path + "." + key + ": expected " + expected + ", got " + json_brief(v));
}
}  // namespace

Result<std::string> json_string_or(const json& obj, const char* key, std::string def,
                                   const std::string& path) {
  const json* v = field(obj, key);
  if (!v) return def;
  if (!v->is_string()) return wrong_type(*v, key, "a string", path);
  return v->get<std::string>();
}

Result<int64_t> json_int_or(const json& obj, const char* key, int64_t def, int64_t lo,
                            int64_t hi, const std::string& path) {
  const json* v = field(obj, key);
  if (!v) return def;
  const std::string range = "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  const std::optional<int64_t> i = json_as_int64(*v);
  if (!i || *i < lo || *i > hi) return wrong_type(*v, key, range.c_str(), path);
  return *i;
}

Result<bool> json_bool_or(const json& obj, const char* key, bool def, const std::string& path) {
  const json* v = field(obj, key);
  if (!v) return def;
  if (!v->is_boolean()) return wrong_type(*v, key, "true or false", path);
  return v->get<bool>();
}

}  // namespace shrink::core
