// Normalization Form C; see core/unicode_nfc.h. Lookups are binary searches over the generated
// tables; Hangul syllables are decomposed and composed arithmetically (Unicode 3.12).
#include "core/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/unicode_nfc_tables.h"
#include "core/utf8.h"

namespace shrink::core {

namespace {

namespace t = nfc_tables;

constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr uint32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;
// A byte that is not valid UTF-8 travels as this bit plus the byte: class 0, composes with
// nothing, written back as the byte.
constexpr uint32_t kRawByte = 0x80000000u;

void encode_one(std::string& out, uint32_t cp) {
  if (cp & kRawByte) {
    out += char(cp & 0xFF);
  } else {
    utf8_append(out, cp);
  }
}

uint8_t ccc(uint32_t cp) {
  if (cp < 0x300 || (cp & kRawByte)) return 0;
  const auto* end = std::end(t::kCcc);
  const auto* it =
      std::lower_bound(std::begin(t::kCcc), end, cp, [](const t::Ccc& e, uint32_t c) { return e.cp < c; });
  return (it != end && it->cp == cp) ? it->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0 && !(cp & kRawByte)) {
    const auto* end = std::end(t::kDecomp);
    const auto* it = std::lower_bound(std::begin(t::kDecomp), end, cp,
                                      [](const t::Decomp& e, uint32_t c) { return e.cp < c; });
    if (it != end && it->cp == cp) {
      out.insert(out.end(), t::kDecompData + it->offset, t::kDecompData + it->offset + it->len);
      return;
    }
  }
  out.push_back(cp);
}

/// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  if ((a | b) & kRawByte) return 0;
  const auto* end = std::end(t::kCompose);
  const auto* it = std::lower_bound(std::begin(t::kCompose), end, std::make_pair(a, b),
                                    [](const t::Compose& e, const std::pair<uint32_t, uint32_t>& k) {
                                      return e.first != k.first ? e.first < k.first
                                                                : e.second < k.second;
                                    });
  return (it != end && it->first == a && it->second == b) ? it->composite : 0;
}

}  // namespace

bool nfc_trivially_stable(std::string_view text) {
  for (char c : text) {
    if (uint8_t(c) >= 0xCC) return false;  // lead bytes of U+0300 and above
  }
  return true;
}

std::string nfc(std::string_view text) {
  if (nfc_trivially_stable(text)) return std::string(text);
  // 1. Full canonical decomposition.
  std::vector<uint32_t> d;
  d.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    uint32_t cp = 0;
    size_t len = utf8_decode(text, i, &cp);
    if (len == 0) cp = kRawByte | uint8_t(text[i]), len = 1;
    decompose(cp, d);
    i += len;
  }
  // 2. Canonical ordering: each run of non-starters sorted stably by class.
  std::vector<uint8_t> cls(d.size());
  for (size_t i = 0; i < d.size(); ++i) cls[i] = ccc(d[i]);
  for (size_t i = 0; i < d.size();) {
    if (cls[i] == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && cls[j] != 0) ++j;
    for (size_t a = i + 1; a < j; ++a) {  // insertion sort: runs are short
      for (size_t b = a; b > i && cls[b - 1] > cls[b]; --b) {
        std::swap(cls[b - 1], cls[b]);
        std::swap(d[b - 1], d[b]);
      }
    }
    i = j;
  }
  // 3. Canonical composition: a character joins the last starter unless something between them
  // blocks it (a starter, or a non-starter of the same or a higher class).
  std::vector<uint32_t> out;
  out.reserve(d.size());
  size_t starter = SIZE_MAX;
  int last_cls = -1;  // class of the last character kept after the starter; -1: none yet
  for (size_t i = 0; i < d.size(); ++i) {
    const uint32_t c = d[i];
    const int cc = cls[i];
    if (starter != SIZE_MAX && (last_cls == -1 || last_cls < cc)) {
      if (const uint32_t comp = compose(out[starter], c)) {
        out[starter] = comp;
        continue;
      }
    }
    if (cc == 0) {
      starter = out.size();
      last_cls = -1;
    } else {
      last_cls = cc;
    }
    out.push_back(c);
  }
  std::string s;
  s.reserve(text.size() + 8);
  for (uint32_t c : out) encode_one(s, c);
  return s;
}

}  // namespace shrink::core
