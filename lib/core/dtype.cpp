// Dtype table and element conversions (see dtype.h).
//
// f16 <-> f32 is done with integer arithmetic only, so the result does not depend on the FPU's
// rounding mode or on flush-to-zero flags: f32 -> f16 rounds to nearest even, including into and
// within the subnormal range, overflows to infinity, and keeps NaN a (quiet) NaN with the top
// payload bits. Element reads and writes go through memcpy because tensors inside a mapped file
// need not be aligned. Tested in tests/core/test_safetensors.cpp (DType* tests).
#include "core/dtype.h"

#include <cmath>
#include <limits>

namespace shrink::core {

namespace {

struct DTypeEntry {
  DType type;
  const char* name;
  size_t size;
  bool is_float;
};

constexpr DTypeEntry kDTypes[] = {
    {DType::kF64, "F64", 8, true},  {DType::kF32, "F32", 4, true},
    {DType::kF16, "F16", 2, true},  {DType::kBF16, "BF16", 2, true},
    {DType::kI64, "I64", 8, false}, {DType::kI32, "I32", 4, false},
    {DType::kI16, "I16", 2, false}, {DType::kI8, "I8", 1, false},
    {DType::kU8, "U8", 1, false},   {DType::kBool, "BOOL", 1, false},
};

const DTypeEntry& entry(DType t) {
  for (const auto& e : kDTypes)
    if (e.type == t) return e;
  return kDTypes[1];  // unreachable for valid enum values
}

template <typename T>
T load(const void* base, int64_t i) {
  T v;
  std::memcpy(&v, static_cast<const uint8_t*>(base) + i * int64_t(sizeof(T)), sizeof(T));
  return v;
}

template <typename T>
void store(void* base, int64_t i, T v) {
  std::memcpy(static_cast<uint8_t*>(base) + i * int64_t(sizeof(T)), &v, sizeof(T));
}

template <typename T>
void to_f32(const void* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(load<T>(src, i));
}

// Round to nearest (ties away from zero, as lrintf is mode-dependent) and saturate; NaN -> 0.
template <typename T>
T f32_to_int_saturating(float f) {
  if (std::isnan(f)) return T(0);
  const double r = std::round(double(f));
  if (r <= double(std::numeric_limits<T>::min())) return std::numeric_limits<T>::min();
  if (r >= double(std::numeric_limits<T>::max())) return std::numeric_limits<T>::max();
  return static_cast<T>(r);
}

template <typename T>
void from_f32_int(const float* src, void* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) store<T>(dst, i, f32_to_int_saturating<T>(src[i]));
}

}  // namespace

const char* dtype_name(DType t) {
  return entry(t).name;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& e : kDTypes)
    if (name == e.name) return e.type;
  return std::nullopt;
}

size_t dtype_size(DType t) {
  return entry(t).size;
}

bool dtype_is_float(DType t) {
  return entry(t).is_float;
}

float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;  // +-0
    } else {
      // Subnormal: value = mant * 2^-24; normalize into an f32 normal.
      int e = -14;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --e;
      }
      mant &= 0x3ffu;
      bits = sign | (uint32_t(e + 127) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with its payload
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) {
    // NaN: keep the top payload bits and force the quiet bit so the result stays a NaN.
    return uint16_t(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
  }
  if (x >= 0x47800000u) return uint16_t(sign | 0x7c00u);  // >= 65536 (or inf): infinity
  if (x < 0x38800000u) {
    // Below the smallest f16 normal (2^-14): result is subnormal or zero, in units of 2^-24.
    const uint32_t e = x >> 23;  // biased f32 exponent
    if (e < 102) return sign;    // < 2^-25: rounds to zero (exactly 2^-25 ties to even, 0)
    const uint32_t mant = (x & 0x7fffffu) | 0x800000u;  // 24-bit significand
    const uint32_t shift = 126 - e;                     // 14..24
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;  // may carry into the smallest normal
    return uint16_t(sign | q);
  }
  // Normal range: rebias the exponent, then round the 13 dropped bits to nearest even. A carry
  // out of the mantissa bumps the exponent, and from 65520 upward lands exactly on infinity.
  const uint32_t odd = (x >> 13) & 1u;
  x += (uint32_t(15 - 127) << 23) + 0xfffu + odd;
  return uint16_t(sign | (x >> 13));
}

void convert_to_f32(DType src_type, const void* src, float* dst, int64_t n) {
  switch (src_type) {
    case DType::kF64:
      to_f32<double>(src, dst, n);
      break;
    case DType::kF32:
      if (n > 0) std::memcpy(dst, src, size_t(n) * 4);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load<uint16_t>(src, i));
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load<uint16_t>(src, i));
      break;
    case DType::kI64:
      to_f32<int64_t>(src, dst, n);
      break;
    case DType::kI32:
      to_f32<int32_t>(src, dst, n);
      break;
    case DType::kI16:
      to_f32<int16_t>(src, dst, n);
      break;
    case DType::kI8:
      to_f32<int8_t>(src, dst, n);
      break;
    case DType::kU8:
      to_f32<uint8_t>(src, dst, n);
      break;
    case DType::kBool:
      for (int64_t i = 0; i < n; ++i) dst[i] = load<uint8_t>(src, i) != 0 ? 1.0f : 0.0f;
      break;
  }
}

std::vector<int64_t> indices_to_i64(DType src_type, const void* src, int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n), 0);
  if (src_type == DType::kI32) {
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = load<int32_t>(src, i);
  } else if (src_type == DType::kI64) {
    for (int64_t i = 0; i < n; ++i) v[size_t(i)] = load<int64_t>(src, i);
  }
  return v;
}

void convert_from_f32(const float* src, DType dst_type, void* dst, int64_t n) {
  switch (dst_type) {
    case DType::kF64:
      for (int64_t i = 0; i < n; ++i) store<double>(dst, i, double(src[i]));
      break;
    case DType::kF32:
      if (n > 0) std::memcpy(dst, src, size_t(n) * 4);
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) store<uint16_t>(dst, i, f32_to_f16(src[i]));
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) store<uint16_t>(dst, i, f32_to_bf16(src[i]));
      break;
    // Integer targets are not part of the contract; they round and saturate rather than invoke
    // undefined behaviour on out-of-range values.
    case DType::kI64:
      from_f32_int<int64_t>(src, dst, n);
      break;
    case DType::kI32:
      from_f32_int<int32_t>(src, dst, n);
      break;
    case DType::kI16:
      from_f32_int<int16_t>(src, dst, n);
      break;
    case DType::kI8:
      from_f32_int<int8_t>(src, dst, n);
      break;
    case DType::kU8:
      from_f32_int<uint8_t>(src, dst, n);
      break;
    case DType::kBool:
      for (int64_t i = 0; i < n; ++i) store<uint8_t>(dst, i, src[i] != 0.0f ? 1 : 0);
      break;
  }
}

}  // namespace shrink::core
