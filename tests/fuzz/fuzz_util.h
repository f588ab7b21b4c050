// Shared helpers for the libFuzzer harnesses in tests/fuzz (one header, included by each harness).
//
// What: a per-process scratch directory for parsers that need a path, a splitter that turns one
// fuzz input into several named files (a model directory: config.json + index + shards), and
// FUZZ_CHECK for invariants that hold on every input a parser accepts.
// Why: the parsers under test read files, so the harnesses write their input into a scratch
// directory that is made once per process (under /dev/shm when it is writable, so no disk is
// touched) and reuse the same file names on every run. Bad input must come back as a Status;
// only a broken invariant (a bug, not bad input) stops the process, with __builtin_trap so that
// libFuzzer records the input as a crash.
// Tested by running every harness over its seed corpus and regressions (ctest fuzz_replay_*).
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/tokenizer.h"

namespace shrink::fuzz {

/// Fail the run when an invariant of accepted input does not hold (never for rejected input).
#define FUZZ_CHECK(cond, ...)                                                           \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                                \
      std::fputc('\n', stderr);                                                         \
      __builtin_trap();                                                                 \
    }                                                                                   \
  } while (0)

/// With SHRINK_FUZZ_VERBOSE set (e.g. when replaying seeds), print why an input was rejected,
/// so that a seed that never gets past the first check is noticed.
inline void note_rejected(const char* what, const std::string& message) {
  static const bool verbose = std::getenv("SHRINK_FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "fuzz: %s rejected: %s\n", what, message.c_str());
}

/// The scratch directory of this process, created on first use and removed at exit. Held by a
/// pointer that is never freed, so that the exit handler never sees a destroyed string.
inline const std::string& temp_dir() {
  static const std::string* const dir = [] {
    std::string base = "/dev/shm";
    if (access(base.c_str(), W_OK) != 0) {
      const char* t = std::getenv("TMPDIR");
      base = (t && *t) ? t : "/tmp";
    }
    std::string tmpl = base + "/shrink-fuzz-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      std::perror("shrink fuzz: mkdtemp");
      std::abort();  // the harness cannot run at all; not an input problem
    }
    return new std::string(tmpl);
  }();
  static const bool cleanup = [] {
    return std::atexit([] {
             std::error_code ec;
             std::filesystem::remove_all(*dir, ec);
           }) == 0;
  }();
  (void)cleanup;
  return *dir;
}

/// Remove every entry of the scratch directory (between runs that write different file sets).
inline void clear_temp_dir() {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(temp_dir(), ec)) {
    std::filesystem::remove_all(e.path(), ec);
  }
}

/// Write `bytes` to temp_dir()/name (replacing it) and return the path.
inline std::string write_temp(const std::string& name, std::string_view bytes) {
  const std::string path = temp_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "shrink fuzz: cannot write %s\n", path.c_str());
    std::abort();  // scratch space full or gone: an environment problem, not a finding
  }
  return path;
}

struct FileRecord {
  std::string name;
  std::string_view data;
};

/// A file name the harness may create: 1..64 characters of [A-Za-z0-9._-], not "." or "..".
inline bool plain_name(std::string_view n) {
  if (n.empty() || n.size() > 64 || n == "." || n == "..") return false;
  for (char c : n) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

/// Split a fuzz input into files. Layout (readable, so seeds can be written by hand):
///   ==> config.json <==\n{...}\n==> model.safetensors <==\n<bytes>
/// Each record is "==> NAME <==\n" then its bytes, up to the next "\n==> " or the end. An input
/// that does not start with "==> " is one file named `default_name`. Records with a bad name are
/// dropped; a repeated name keeps the last; at most `max_files` records are kept.
inline std::vector<FileRecord> split_files(std::string_view in, const std::string& default_name,
                                           size_t max_files = 8) {
  static constexpr std::string_view kOpen = "==> ", kClose = " <==\n", kNext = "\n==> ";
  std::vector<FileRecord> out;
  if (in.substr(0, kOpen.size()) != kOpen) {
    out.push_back({default_name, in});
    return out;
  }
  size_t pos = 0;
  while (pos < in.size() && out.size() < max_files) {
    // `pos` is at "==> ".
    const size_t name_begin = pos + kOpen.size();
    const size_t close = in.find(kClose, name_begin);
    if (close == std::string_view::npos) break;
    const std::string_view name = in.substr(name_begin, close - name_begin);
    const size_t data_begin = close + kClose.size();
    size_t next = in.find(kNext, data_begin);
    const size_t data_end = next == std::string_view::npos ? in.size() : next;
    if (plain_name(name)) {
      FileRecord r{std::string(name), in.substr(data_begin, data_end - data_begin)};
      bool replaced = false;
      for (FileRecord& o : out) {
        if (o.name == r.name) {
          o = r;
          replaced = true;
        }
      }
      if (!replaced) out.push_back(r);
    }
    if (next == std::string_view::npos) break;
    pos = next + 1;
  }
  return out;
}

/// Split at the first occurrence of `sep`: (before, after); after is empty without one.
inline std::pair<std::string_view, std::string_view> split_once(std::string_view in,
                                                                std::string_view sep,
                                                                bool* found = nullptr) {
  const size_t p = in.find(sep);
  if (found) *found = p != std::string_view::npos;
  if (p == std::string_view::npos) return {in, std::string_view()};
  return {in.substr(0, p), in.substr(p + sep.size())};
}

/// The lines of `text` (without their '\n'), skipping empty ones.
inline std::vector<std::string> lines_of(std::string_view text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    if (nl > pos) out.emplace_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return out;
}

/// Read every byte of [p, p + n) so that AddressSanitizer sees any read outside a buffer.
inline uint64_t touch_bytes(const uint8_t* p, uint64_t n) {
  uint64_t h = 0;
  for (uint64_t i = 0; i < n; ++i) h = h * 31 + p[i];
  return h;
}

/// A small byte-level BPE (GPT-2 pipeline: the 256 byte tokens, six merges, <|endoftext|>): the
/// tokenizer for text task items, and a round-trip oracle. Made afresh for each input, because
/// a tokenizer caches encoded words: one kept across inputs would grow without bound and make
/// libFuzzer's leak check run on every input.
inline core::Tokenizer make_byte_level_tokenizer() {
  static const std::string sp = core::byte_level_encode(" ");  // "\u0120"
  static const std::vector<std::pair<std::string, std::string>> merges = {
      {sp, "t"}, {"h", "e"}, {sp + "t", "he"}, {"i", "n"}, {"e", "r"}, {sp, "a"}};
  static const std::vector<std::string> vocab = [] {
    std::vector<std::string> v;
    for (int b = 0; b < 256; ++b) v.push_back(core::byte_level_encode(std::string(1, char(b))));
    for (const auto& m : merges) v.push_back(m.first + m.second);
    v.push_back("<|endoftext|>");
    return v;
  }();
  auto r = core::Tokenizer::from_vocab_merges(vocab, merges, {int32_t(vocab.size() - 1)});
  if (!r.is_ok()) {
    std::fprintf(stderr, "shrink fuzz: built-in tokenizer: %s\n", r.status().message().c_str());
    std::abort();  // a harness bug, caught by the replay ctests
  }
  return std::move(r).value();
}

}  // namespace shrink::fuzz
