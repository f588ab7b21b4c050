// The Backend interface's shared parts (backend.h): the host-side argmax, sampling, bf16
// embedding rows and token fetch that a backend inherits unless it does them on its device.
// Compiled into shrink_runtime and into the CUDA backend's plugin (backend_cuda.cpp).
#include <algorithm>
#include <cstring>

#include "core/dtype.h"
#include "core/sampling.h"
#include "runtime/backend.h"

namespace shrink::runtime {

const char* linear_kind_name(LinearKind k) {
  switch (k) {
    case LinearKind::kF32: return "f32";
    case LinearKind::kW8A16:
      return "w8a16";  // (4-bit weights: LinearDesc::bits)
    case LinearKind::kW8A8: return "w8a8";
  }
  return "?";
}

void Backend::bytes_to_host(const void* src, size_t n, void* dst) {
  if (n) std::memcpy(dst, src, n);
}
void Backend::bytes_from_host(const void* src, size_t n, void* dst) {
  if (n) std::memcpy(dst, src, n);
}

void Backend::argmax_rows(const float* x, int64_t rows, int64_t n) {
  host_row_.resize(size_t(n));
  token_ids_.resize(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    to_host(x + r * n, n, host_row_.data());
    token_ids_[size_t(r)] = core::argmax(host_row_.data(), n);
  }
}

void Backend::sample_rows(const float* x, int64_t rows, int64_t n, const core::SampleRow* p) {
  host_row_.resize(size_t(n));
  token_ids_.resize(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    to_host(x + r * n, n, host_row_.data());
    token_ids_[size_t(r)] = core::sample_pick(host_row_.data(), n, p[r], sample_scratch_);
  }
}

void Backend::embed_bf16(const uint16_t* table, int64_t dim, HostInts ids, int64_t rows,
                         float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    core::convert_to_f32(core::DType::kBF16,
                         reinterpret_cast<const uint8_t*>(table + int64_t(ids.p[r]) * dim),
                         out + r * dim, dim);
  }
}

void Backend::copy_rows(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows,
                        int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::copy(src + r * lds, src + r * lds + cols, dst + r * ldd);
}

void Backend::token_ids_fetch(int32_t* host, int64_t rows) {
  for (int64_t r = 0; r < rows && r < int64_t(token_ids_.size()); ++r) {
    host[r] = token_ids_[size_t(r)];
  }
}

}  // namespace shrink::runtime
