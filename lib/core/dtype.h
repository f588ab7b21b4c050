// Element types of checkpoint tensors and conversions between them.
//
// Why: safetensors names dtypes by strings ("F32", "BF16", ...); every module that touches tensor
// bytes (checkpoint I/O, the LibTorch bridge, the runtime) needs the same table and the same
// rounding. F16/BF16 conversions round to nearest even, as PyTorch does, so a save after a load
// is bit-exact. Tested in tests/core/test_safetensors.cpp.
#pragma once

#include <cstdint>
#include <vector>
#include <cstring>
#include <optional>
#include <string_view>

namespace shrink::core {

enum class DType : uint8_t { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

/// The safetensors name of a dtype ("F32").
const char* dtype_name(DType t);
/// Parse a safetensors dtype name; nullopt if unknown.
std::optional<DType> dtype_from_name(std::string_view name);
/// Bytes per element.
size_t dtype_size(DType t);
bool dtype_is_float(DType t);

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
/// Round-to-nearest-even; NaN stays NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

/// Convert n elements of a float or integer dtype to float32.
void convert_to_f32(DType src_type, const void* src, float* dst, int64_t n);
/// Convert n float32 values to a float dtype (F32, F16, BF16, F64).
void convert_from_f32(const float* src, DType dst_type, void* dst, int64_t n);
/// n little-endian I32 or I64 values (indices such as GPTQ's weight_g_idx) as int64; the caller
/// checks the dtype (any other gives zeros).
std::vector<int64_t> indices_to_i64(DType src_type, const void* src, int64_t n);

}  // namespace shrink::core
