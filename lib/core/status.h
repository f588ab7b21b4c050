// Status and Result<T>: explicit error values for code that must not throw (core, runtime,
// kernels), plus the mapping from error codes to the process exit codes of ARCHITECTURE.md.
//
// Why: the runtime is deployable and exception-free by design; a Status carries what failed and
// why, so a tool can print it and choose the exit code (2 for bad input, 1 for failure, 3 for a
// failed verification gate). Host code (train, tools) may throw shrink::Error, which carries the
// same code. Tested through every module that returns errors (tests/core/*).
#pragma once

#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace shrink {

enum class StatusCode {
  kOk = 0,
  kInvalidInput,  // malformed file, bad config, bad flag value: exit code 2
  kNotFound,      // a named input does not exist: exit code 2
  kIoError,       // the OS refused a read/write we expected to work: exit code 1
  kInternal,      // a bug or an unexpected state: exit code 1
  kGateFailed,    // a verification gate failed: exit code 3
};

/// Process exit code for a status code (ARCHITECTURE.md "Exit codes").
inline int exit_code_for(StatusCode c) {
  switch (c) {
    case StatusCode::kOk: return 0;
    case StatusCode::kInvalidInput:
    case StatusCode::kNotFound: return 2;
    case StatusCode::kGateFailed: return 3;
    default: return 1;
  }
}

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string msg) : code_(code), msg_(std::move(msg)) {}
  static Status ok() { return {}; }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return msg_; }
  /// Prefix context ("file.safetensors: ") to the message.
  Status with_context(const std::string& ctx) const {
    return is_ok() ? *this : Status(code_, ctx + ": " + msg_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string msg_;
};

/// printf-style formatting into a std::string.
std::string strfmt(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

inline Status invalid_input(std::string msg) { return {StatusCode::kInvalidInput, std::move(msg)}; }
inline Status not_found(std::string msg) { return {StatusCode::kNotFound, std::move(msg)}; }
inline Status io_error(std::string msg) { return {StatusCode::kIoError, std::move(msg)}; }
inline Status internal_error(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }

/// Exception used by host code (train, export, tools); carries a StatusCode for the exit code.
class Error : public std::runtime_error {
 public:
  Error(StatusCode code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  explicit Error(const Status& s) : std::runtime_error(s.message()), code_(s.code()) {}
  StatusCode code() const { return code_; }

 private:
  StatusCode code_;
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT
  bool is_ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return is_ok(); }
  const Status& status() const {
    static const Status kOk;
    return is_ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &std::get<T>(v_); }
  const T* operator->() const { return &std::get<T>(v_); }
  T& operator*() & { return std::get<T>(v_); }
  /// For host code: the value, or throw shrink::Error with the status.
  T take_or_throw() && {
    if (!is_ok()) throw Error(std::get<Status>(v_));
    return std::get<T>(std::move(v_));
  }

 private:
  std::variant<T, Status> v_;
};

/// Throw shrink::Error if the status is not ok (host code only).
inline void throw_if_error(const Status& s) {
  if (!s.is_ok()) throw Error(s);
}

}  // namespace shrink

/// Return a Status of `code` with a formatted message when `cond` is false.
#define SHRINK_CHECK(cond, code, ...)                                   \
  do {                                                                  \
    if (!(cond)) return ::shrink::Status((code), ::shrink::strfmt(__VA_ARGS__)); \
  } while (0)

/// Propagate a non-ok Status.
#define SHRINK_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::shrink::Status _st = (expr);            \
    if (!_st.is_ok()) return _st;             \
  } while (0)

#define SHRINK_CONCAT_INNER(a, b) a##b
#define SHRINK_CONCAT(a, b) SHRINK_CONCAT_INNER(a, b)
/// `SHRINK_ASSIGN_OR_RETURN(auto x, f());` unwraps a Result<T> or returns its Status.
#define SHRINK_ASSIGN_OR_RETURN(lhs, expr) \
  SHRINK_ASSIGN_OR_RETURN_IMPL(SHRINK_CONCAT(_res_, __LINE__), lhs, expr)
#define SHRINK_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.is_ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
