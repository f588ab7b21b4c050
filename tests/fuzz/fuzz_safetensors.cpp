// libFuzzer harness: one .safetensors file through SafetensorsFile::open.
//
// The input is the file. An accepted file must describe tensors that lie inside the data
// section, do not overlap, and hold exactly shape x dtype bytes; every byte is read (so ASan and
// the mapping's bounds see any escape). Then the tensors are written back with
// safetensors_write and reopened: the copy must hold the same names, dtypes, shapes, bytes and
// metadata (a file we accept is one we can also write).
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include <algorithm>

#include "core/safetensors.h"
#include "fuzz_util.h"

using namespace shrink;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      fuzz::write_temp("model.safetensors", {reinterpret_cast<const char*>(data), size});
  auto opened = core::SafetensorsFile::open(path);
  if (!opened.is_ok()) {
    fuzz::note_rejected("safetensors", opened.status().message());
    FUZZ_CHECK(!opened.status().message().empty(), "an error without a message");
    return 0;
  }
  const core::SafetensorsFile& f = *opened.value();
  FUZZ_CHECK(size >= 8, "accepted a %zu-byte file", size);
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t(data[i]) << (8 * i);
  FUZZ_CHECK(header_len <= size - 8, "header length %llu past the end",
             (unsigned long long)header_len);
  const uint64_t data_size = size - 8 - header_len;

  std::vector<core::TensorView> views;
  uint64_t prev_end = 0;
  for (const core::TensorInfo& t : f.tensors()) {
    FUZZ_CHECK(t.offset <= data_size && t.nbytes <= data_size - t.offset,
               "tensor '%s' [%llu, +%llu) outside the %llu-byte data section", t.name.c_str(),
               (unsigned long long)t.offset, (unsigned long long)t.nbytes,
               (unsigned long long)data_size);
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      FUZZ_CHECK(d >= 0, "tensor '%s' has a negative dimension", t.name.c_str());
      numel *= uint64_t(d);
    }
    FUZZ_CHECK(numel * core::dtype_size(t.dtype) == t.nbytes, "tensor '%s' size mismatch",
               t.name.c_str());
    if (t.nbytes > 0) {
      FUZZ_CHECK(t.offset >= prev_end, "tensor '%s' overlaps its predecessor", t.name.c_str());
      prev_end = t.offset + t.nbytes;
    }
    FUZZ_CHECK(f.find(t.name) == &t, "find('%s') does not return the tensor", t.name.c_str());
    fuzz::touch_bytes(f.data(t), t.nbytes);
    views.push_back({t.name, t.dtype, t.shape, f.data(t), t.nbytes});
  }

  // Write what was read and read it back.
  const std::string copy = fuzz::temp_dir() + "/copy.safetensors";
  Status st = core::safetensors_write(copy, views, f.metadata());
  FUZZ_CHECK(st.is_ok(), "cannot write back an accepted file: %s", st.message().c_str());
  auto again = core::SafetensorsFile::open(copy);
  FUZZ_CHECK(again.is_ok(), "cannot reopen the written copy: %s", again.status().message().c_str());
  const core::SafetensorsFile& g = *again.value();
  FUZZ_CHECK(g.tensors().size() == views.size(), "tensor count changed");
  FUZZ_CHECK(g.metadata() == f.metadata(), "metadata changed");
  for (const core::TensorView& v : views) {
    const core::TensorInfo* t = g.find(v.name);
    FUZZ_CHECK(t != nullptr, "tensor '%s' lost", v.name.c_str());
    FUZZ_CHECK(t->dtype == v.dtype && t->shape == v.shape && t->nbytes == v.nbytes,
               "tensor '%s' changed", v.name.c_str());
    FUZZ_CHECK(v.nbytes == 0 || std::memcmp(g.data(*t), v.data, v.nbytes) == 0,
               "tensor '%s' bytes changed", v.name.c_str());
  }
  return 0;
}
