// Safetensors reader/writer and sharded checkpoints (see safetensors.h for the format).
//
// Reading: the file is mmap()ed; the 8-byte length is bounds-checked before the header is
// parsed; the JSON is parsed with a callback that records duplicate keys (nlohmann keeps the last
// silently); then every entry is checked (types, dtype, shape, byte count, bounds) and the ranges
// are sorted to find overlaps. Only after all of that is a SafetensorsFile handed out. JSON
// exceptions are caught here and turned into Status; nothing escapes.
//
// Writing: the header is assembled by hand (keys in the caller's order, entry keys in the order
// dtype, shape, data_offsets, compact, space padded to a multiple of 8) because that is exactly
// what the Rust `safetensors` crate behind Hugging Face writes, so a file loaded and re-saved in
// data-offset order is byte-identical to the original. Tensor bytes are streamed from the
// caller's memory into a temporary sibling that is then renamed.
//
// Tested in tests/core/test_safetensors.cpp: round trips of every dtype and odd shapes, HF
// fixtures (sharded F16, BF16), and a corpus of malformed files.
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>

#include "core/fs.h"
#include "core/json_util.h"
#include "core/quant.h"

namespace shrink::core {

using nlohmann::json;

namespace {

// Same cap as the Rust crate: a larger header is a corrupt length, not a real model.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";
constexpr const char* kExpectedDTypes = "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string range_str(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")";
}

std::string basename_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Bytes for `shape` x `dtype`, or an error message on negative dims or 64-bit overflow.
Result<uint64_t> shape_nbytes(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return invalid_input("shape " + shape_str(shape) + " has negative dimension " +
                           std::to_string(d));
    }
    if (__builtin_mul_overflow(numel, uint64_t(d), &numel) ||
        numel > uint64_t(std::numeric_limits<int64_t>::max())) {
      return invalid_input("shape " + shape_str(shape) + " has more elements than fit in 63 bits");
    }
  }
  uint64_t nbytes;
  if (__builtin_mul_overflow(numel, uint64_t(dtype_size(dtype)), &nbytes)) {
    return invalid_input("shape " + shape_str(shape) + " x " + dtype_name(dtype) +
                         " overflows 64 bits");
  }
  return nbytes;
}

// Parse JSON text, rejecting duplicate keys in any object. `what` prefixes messages.
Result<json> parse_json_strict(const char* begin, const char* end, const std::string& what,
                               const char* duplicate_top_level_noun) {
  // nlohmann's lexer takes a NUL byte for the end of input and would ignore what follows; JSON
  // allows no raw NUL anywhere, so reject it up front.
  if (const void* nul = std::memchr(begin, '\0', size_t(end - begin))) {
    return invalid_input(what + ": not valid JSON: NUL byte at offset " +
                         std::to_string(static_cast<const char*>(nul) - begin));
  }
  SHRINK_RETURN_IF_ERROR(json_check_depth(std::string_view(begin, size_t(end - begin)), what));
  std::vector<std::set<std::string>> open_objects;
  std::string dup;
  int dup_depth = 0;
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() && parsed.is_string() &&
            !open_objects.back().insert(parsed.get_ref<const std::string&>()).second &&
            dup.empty()) {
          dup = parsed.get_ref<const std::string&>();
          dup_depth = depth;
        }
        break;
      default:
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(begin, end, cb);
  } catch (const json::exception& e) {
    return invalid_input(what + ": not valid JSON: " + e.what());
  } catch (const std::exception& e) {
    return invalid_input(what + ": cannot parse JSON: " + e.what());
  }
  if (!dup.empty()) {
    if (dup_depth == 1) {
      return invalid_input(what + ": duplicate " + duplicate_top_level_noun + " '" + dup +
                           "' (each name may appear only once)");
    }
    return invalid_input(what + ": duplicate key '" + dup + "' in a JSON object");
  }
  return j;
}

// A non-negative JSON integer as uint64, or an error message naming `what`.
Result<uint64_t> json_u64(const json& v, const std::string& what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    return invalid_input(what + " is " + std::to_string(v.get<int64_t>()) +
                         ", expected a non-negative integer");
  }
  return invalid_input(
      what + " is " +
      (v.is_number_float() ? "a non-integer number" : std::string("a ") + v.type_name()) +
      ", expected a non-negative integer");
}

Status parse_metadata(const json& m, const std::string& path,
                      std::map<std::string, std::string>* out) {
  if (!m.is_object()) {
    return invalid_input(path + ": __metadata__ is " + std::string("a ") + m.type_name() +
                         ", expected an object mapping strings to strings");
  }
  for (const auto& [k, v] : m.items()) {
    if (!v.is_string()) {
      return invalid_input(path + ": __metadata__['" + k + "'] is a " + v.type_name() +
                           ", expected a string");
    }
    (*out)[k] = v.get<std::string>();
  }
  return Status::ok();
}

// Validate one header entry into a TensorInfo. `data_size` is the data section's length.
Result<TensorInfo> parse_entry(const std::string& name, const json& e, uint64_t data_size,
                               uint64_t file_size) {
  if (!e.is_object()) {
    return invalid_input(std::string("entry is a ") + e.type_name() +
                         ", expected an object with dtype, shape and data_offsets");
  }
  TensorInfo t;
  t.name = name;

  auto dt = e.find("dtype");
  SHRINK_CHECK(dt != e.end(), StatusCode::kInvalidInput, "missing 'dtype'");
  SHRINK_CHECK(dt->is_string(), StatusCode::kInvalidInput, "'dtype' is a %s, expected a string",
               dt->type_name());
  const auto& dname = dt->get_ref<const std::string&>();
  const auto dtype = dtype_from_name(dname);
  SHRINK_CHECK(dtype.has_value(), StatusCode::kInvalidInput,
               "unknown dtype '%s'; expected one of %s", dname.c_str(), kExpectedDTypes);
  t.dtype = *dtype;

  auto sh = e.find("shape");
  SHRINK_CHECK(sh != e.end(), StatusCode::kInvalidInput, "missing 'shape'");
  SHRINK_CHECK(sh->is_array(), StatusCode::kInvalidInput, "'shape' is a %s, expected an array",
               sh->type_name());
  for (size_t i = 0; i < sh->size(); ++i) {
    const json& d = (*sh)[i];
    if (d.is_number_integer() && !d.is_number_unsigned()) {
      t.shape.push_back(d.get<int64_t>());  // negative: reported by shape_nbytes with the shape
      continue;
    }
    SHRINK_ASSIGN_OR_RETURN(uint64_t u, json_u64(d, "shape[" + std::to_string(i) + "]"));
    SHRINK_CHECK(u <= uint64_t(std::numeric_limits<int64_t>::max()), StatusCode::kInvalidInput,
                 "shape[%zu] = %llu does not fit in int64", i, (unsigned long long)u);
    t.shape.push_back(int64_t(u));
  }
  SHRINK_ASSIGN_OR_RETURN(const uint64_t need, shape_nbytes(t.shape, t.dtype));

  auto off = e.find("data_offsets");
  SHRINK_CHECK(off != e.end(), StatusCode::kInvalidInput, "missing 'data_offsets'");
  if (!off->is_array() || off->size() != 2) {
    const std::string got = off->is_array()
                                ? "an array of " + std::to_string(off->size()) + " elements"
                                : std::string("a ") + off->type_name();
    return invalid_input("'data_offsets' is " + got +
                         ", expected an array [begin, end] of two integers");
  }
  SHRINK_ASSIGN_OR_RETURN(const uint64_t begin, json_u64((*off)[0], "data_offsets[0]"));
  SHRINK_ASSIGN_OR_RETURN(const uint64_t end, json_u64((*off)[1], "data_offsets[1]"));
  if (begin > end) {
    return invalid_input("data_offsets " + range_str(begin, end) + " has begin > end");
  }
  if (end - begin != need) {
    return invalid_input("data_offsets " + range_str(begin, end) + " hold " +
                         std::to_string(end - begin) + " bytes but shape " + shape_str(t.shape) +
                         " x " + dtype_name(t.dtype) + " needs " + std::to_string(need));
  }
  if (end > data_size) {
    return invalid_input("data_offsets " + range_str(begin, end) +
                         " run past the end of the data section (" + std::to_string(data_size) +
                         " bytes; file is " + std::to_string(file_size) +
                         " bytes); is the file truncated?");
  }
  t.offset = begin;
  t.nbytes = need;
  return t;
}

// Check tensor views for a writer: unique names, sizes consistent, data present.
Status validate_views(const std::vector<TensorView>& tensors) {
  std::set<std::string_view> seen;
  for (const TensorView& t : tensors) {
    const std::string ctx = "tensor '" + t.name + "'";
    if (t.name == "__metadata__") {
      return invalid_input(ctx + ": the name is reserved for the file's metadata");
    }
    if (!seen.insert(t.name).second) {
      return invalid_input(ctx + ": duplicate tensor name (each name may appear only once)");
    }
    Result<uint64_t> need = shape_nbytes(t.shape, t.dtype);
    if (!need.is_ok()) return need.status().with_context(ctx);
    if (*need != t.nbytes) {
      return invalid_input(ctx + ": nbytes is " + std::to_string(t.nbytes) + " but shape " +
                           shape_str(t.shape) + " x " + dtype_name(t.dtype) + " needs " +
                           std::to_string(*need));
    }
    if (t.nbytes > 0 && t.data == nullptr) {
      return invalid_input(ctx + ": data is null but " + std::to_string(t.nbytes) +
                           " bytes are expected");
    }
  }
  return Status::ok();
}

// JSON string literal for `s`; fails on invalid UTF-8.
Result<std::string> json_quote(const std::string& s) {
  try {
    return json(s).dump();
  } catch (const std::exception&) {
    return invalid_input("'" + s + "' is not valid UTF-8");
  }
}

// The 8-byte length and the JSON header of a file holding `tensors` in this order (data offsets
// from the end of the header, which is padded so that data starts 8-byte aligned).
Result<std::string> file_prefix(const std::string& path, const std::vector<TensorView>& tensors,
                                const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (const auto& [k, v] : metadata) {
      SHRINK_ASSIGN_OR_RETURN(std::string qk, json_quote(k));
      SHRINK_ASSIGN_OR_RETURN(std::string qv, json_quote(v));
      if (header.back() != '{') header += ",";
      header += qk + ":" + qv;
    }
    header += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    Result<std::string> qn = json_quote(t.name);
    if (!qn.is_ok()) return qn.status().with_context(path + ": tensor name");
    if (!first) header += ",";
    first = false;
    header += *qn + ":{\"dtype\":\"" + dtype_name(t.dtype) + "\",\"shape\":" + shape_str(t.shape) +
              ",\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + t.nbytes) + "]}";
    offset += t.nbytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
  std::string prefix(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) prefix[size_t(i)] = char(uint8_t(n >> (8 * i)));
  return prefix + header;
}

Status write_one_file(const std::string& path, const std::vector<TensorView>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  SHRINK_ASSIGN_OR_RETURN(std::string prefix, file_prefix(path, tensors, metadata));
  std::vector<ByteSpan> chunks;
  chunks.reserve(tensors.size() + 1);
  chunks.push_back({prefix.data(), prefix.size()});
  for (const TensorView& t : tensors) chunks.push_back({t.data, size_t(t.nbytes)});
  return write_file_atomic_spans(path, chunks);
}

// Which tensors go to which file: one file when max_shard_bytes is 0 or the total fits; else
// greedily, a shard filled until the next tensor would push it past the limit (a tensor larger
// than the limit gets a shard of its own), as Hugging Face shards.
std::vector<std::vector<size_t>> shard_layout(const std::vector<TensorView>& tensors,
                                              uint64_t max_shard_bytes) {
  uint64_t total = 0;
  for (const TensorView& t : tensors) total += t.nbytes;
  std::vector<std::vector<size_t>> shards(1);
  uint64_t cur = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const bool split = max_shard_bytes > 0 && total > max_shard_bytes;
    if (split && !shards.back().empty() && cur + tensors[i].nbytes > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(i);
    cur += tensors[i].nbytes;
  }
  return shards;
}

std::string shard_file_name(size_t i, size_t n) {
  return n == 1 ? std::string(kSingleName) : strfmt("model-%05zu-of-%05zu.safetensors", i + 1, n);
}

// The index as transformers writes it: keys sorted, 2-space indent, a final newline.
Result<std::string> index_text(const std::string& index_path, uint64_t total,
                               const json& weight_map) {
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  try {
    return index.dump(2) + "\n";
  } catch (const std::exception& e) {
    return invalid_input(index_path + ": cannot serialize the index: " + e.what());
  }
}

// A single-file checkpoint: a stale index would take precedence over the file just written.
Status stale_index_remove(const std::string& index_path) {
  if (path_exists(index_path) && ::unlink(index_path.c_str()) != 0) {
    return io_error(index_path + ": cannot remove the stale index: " + std::strerror(errno));
  }
  return Status::ok();
}

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// MappedFile

Result<std::unique_ptr<MappedFile>> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = path + ": cannot open: " + std::strerror(err);
    return (err == ENOENT || err == ENOTDIR) ? not_found(msg) : io_error(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return io_error(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid_input(path + ": not a regular file");
  }
  std::unique_ptr<MappedFile> mf(new MappedFile());
  mf->path_ = path;
  mf->size_ = uint64_t(st.st_size);
  if (mf->size_ > 0) {  // mmap of length 0 fails; an empty file maps to (nullptr, 0)
    void* p = ::mmap(nullptr, size_t(mf->size_), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return io_error(path + ": cannot mmap " + std::to_string(mf->size_) +
                      " bytes: " + std::strerror(err));
    }
    mf->data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  return mf;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_t(size_));
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  SHRINK_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> mf, MappedFile::open(path));
  const uint64_t size = mf->size();
  if (size < 8) {
    return invalid_input(path + ": file is " + std::to_string(size) +
                         " bytes, too short for the 8-byte header length; is it a safetensors "
                         "file?");
  }
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(mf->data()[i]) << (8 * i);
  if (n > size - 8) {
    return invalid_input(path + ": header length " + std::to_string(n) +
                         " runs past the end of the file (" + std::to_string(size) + " bytes)" +
                         (n > kMaxHeaderBytes ? " and exceeds the 100 MB header cap" : "") +
                         "; is the file truncated or not a safetensors file?");
  }
  if (n > kMaxHeaderBytes) {
    return invalid_input(path + ": header length " + std::to_string(n) +
                         " exceeds the 100 MB header cap");
  }
  if (n == 0) return invalid_input(path + ": header length is 0, expected a JSON object");
  const char* hbegin = reinterpret_cast<const char*>(mf->data() + 8);
  SHRINK_ASSIGN_OR_RETURN(json j,
                          parse_json_strict(hbegin, hbegin + n, path + ": header", "tensor name"));
  if (!j.is_object()) {
    return invalid_input(path + ": header is a JSON " + j.type_name() +
                         ", expected an object mapping tensor names to entries");
  }

  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  const uint64_t data_size = size - 8 - n;
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      SHRINK_RETURN_IF_ERROR(parse_metadata(entry, path, &f->metadata_));
      continue;
    }
    Result<TensorInfo> t = parse_entry(name, entry, data_size, size);
    if (!t.is_ok()) return t.status().with_context(path + ": tensor '" + name + "'");
    f->tensors_.push_back(std::move(t).value());
  }

  std::sort(f->tensors_.begin(), f->tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.offset != b.offset) return a.offset < b.offset;
    if (a.nbytes != b.nbytes) return a.nbytes < b.nbytes;
    return a.name < b.name;
  });
  // Empty tensors occupy no bytes, so they cannot overlap anything.
  const TensorInfo* prev = nullptr;
  for (const TensorInfo& t : f->tensors_) {
    if (t.nbytes == 0) continue;
    if (prev != nullptr && t.offset < prev->offset + prev->nbytes) {
      return invalid_input(path + ": tensors '" + prev->name + "' " +
                           range_str(prev->offset, prev->offset + prev->nbytes) + " and '" +
                           t.name + "' " + range_str(t.offset, t.offset + t.nbytes) +
                           " overlap in the data section");
    }
    if (prev == nullptr || t.offset + t.nbytes > prev->offset + prev->nbytes) prev = &t;
  }
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->index_[f->tensors_[i].name] = i;

  f->data_start_ = mf->data() + 8 + n;
  f->file_ = std::move(mf);
  return f;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Status safetensors_write(const std::string& path, const std::vector<TensorView>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  Status st = validate_views(tensors);
  if (!st.is_ok()) return st.with_context(path);
  return write_one_file(path, tensors, metadata);
}

// ---------------------------------------------------------------------------------------------
// Checkpoint

namespace {

// A shard name from weight_map must be a plain file name inside the model directory.
bool is_plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

}  // namespace

namespace {
constexpr size_t kUnpacked = std::numeric_limits<size_t>::max();
}  // namespace

struct Checkpoint::Unpacked {
  TensorInfo info;  // the presented I8 [out, in]
  size_t file = 0;
  const TensorInfo* packed = nullptr;
  bool along_rows = false;  // zero points: packed along dim 0 (int4_unpack_rows)
  std::once_flag once;
  std::vector<int8_t> data;
};

Checkpoint::Checkpoint() = default;
Checkpoint::~Checkpoint() = default;
Checkpoint::Checkpoint(Checkpoint&&) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&&) noexcept = default;

Status Checkpoint::present_packed() {
  std::vector<std::string> packed;
  for (const auto& kv : map_) {
    const std::string& n = kv.first;
    if (n.size() > 14 && n.compare(n.size() - 14, 14, ".weight_packed") == 0) packed.push_back(n);
  }
  for (const std::string& pn : packed) {
    const std::string base = pn.substr(0, pn.size() - 7);  // "<m>.weight"
    const std::string sn = base + "_shape";
    const auto [fi, pt] = map_.at(pn);
    auto sit = map_.find(sn);
    if (sit == map_.end()) {
      return invalid_input(dir_ + ": tensor '" + pn + "' has no '" + sn +
                           "'; expected the unpacked [out, in] beside a packed weight");
    }
    const TensorInfo* st = sit->second.second;
    const uint8_t* sd = files_[sit->second.first]->data(*st);
    if ((st->dtype != DType::kI64 && st->dtype != DType::kI32) || st->numel() != 2) {
      return invalid_input(dir_ + ": tensor '" + sn + "' is " + dtype_name(st->dtype) + " " +
                           shape_str(st->shape) + "; expected I64 or I32 [2] = [out, in]");
    }
    int64_t dims[2];
    for (int i = 0; i < 2; ++i) {
      if (st->dtype == DType::kI64) {
        std::memcpy(&dims[i], sd + 8 * i, 8);
      } else {
        int32_t v;
        std::memcpy(&v, sd + 4 * i, 4);
        dims[i] = v;
      }
    }
    const std::vector<int64_t> want = {dims[0], dims[1] > 0 ? int4_packed_cols(dims[1]) : 0};
    if (dims[0] <= 0 || dims[1] <= 0 || pt->dtype != DType::kI32 || pt->shape != want) {
      return invalid_input(dir_ + ": tensor '" + pn + "' is " + dtype_name(pt->dtype) + " " +
                           shape_str(pt->shape) + " for weight_shape [" + std::to_string(dims[0]) +
                           ", " + std::to_string(dims[1]) + "]; expected I32 " + shape_str(want) +
                           " (4-bit values, eight per int32)");
    }
    if (map_.count(base)) {
      return invalid_input(dir_ + ": tensor '" + base + "' is stored both packed ('" + pn +
                           "') and unpacked; expected one of them");
    }
    auto u = std::make_unique<Unpacked>();
    u->info = {base, DType::kI8, {dims[0], dims[1]}, 0, uint64_t(dims[0] * dims[1])};
    u->file = fi;
    u->packed = pt;
    map_[base] = {kUnpacked, &u->info};
    unpacked_[base] = std::move(u);
    map_.erase(pn);
    map_.erase(sn);
    // Zero points packed along the rows: I32 [ceil(out / 8), groups]. Stored unpacked (I8)
    // they are left as they are.
    const std::string zn = base + "_zero_point";
    auto zit = map_.find(zn);
    if (zit != map_.end() && zit->second.second->dtype == DType::kI32) {
      const TensorInfo* zt = zit->second.second;
      if (zt->shape.size() != 2 || zt->shape[0] != int4_packed_cols(dims[0]) || zt->shape[1] <= 0) {
        return invalid_input(dir_ + ": tensor '" + zn + "' is I32 " + shape_str(zt->shape) +
                             " for weight_shape [" + std::to_string(dims[0]) + ", " +
                             std::to_string(dims[1]) + "]; expected I32 [" +
                             std::to_string(int4_packed_cols(dims[0])) +
                             ", groups] (4-bit zero points, eight per int32 along the outputs)");
      }
      auto z = std::make_unique<Unpacked>();
      z->info = {zn, DType::kI8, {dims[0], zt->shape[1]}, 0, uint64_t(dims[0] * zt->shape[1])};
      z->file = zit->second.first;
      z->packed = zt;
      z->along_rows = true;
      map_[zn] = {kUnpacked, &z->info};
      unpacked_[zn] = std::move(z);
    }
  }
  return Status::ok();
}

Result<Checkpoint> Checkpoint::open(const std::string& dir) {
  if (!is_directory(dir)) {
    if (path_exists(dir)) {
      return invalid_input(dir + ": is not a directory; expected a model directory holding " +
                           kSingleName + " or " + kIndexName);
    }
    return not_found(dir + ": model directory does not exist");
  }
  Checkpoint ck;
  ck.dir_ = dir;
  const std::string index_path = dir + "/" + kIndexName;
  const std::string single_path = dir + "/" + kSingleName;

  if (!path_exists(index_path)) {
    if (!path_exists(single_path)) {
      return not_found(dir + ": no checkpoint found; expected " + kSingleName + " or " +
                       kIndexName);
    }
    SHRINK_ASSIGN_OR_RETURN(auto f, SafetensorsFile::open(single_path));
    for (const TensorInfo& t : f->tensors()) ck.map_[t.name] = {0, &t};
    ck.files_.push_back(std::move(f));
    SHRINK_RETURN_IF_ERROR(ck.present_packed());
    return ck;
  }

  SHRINK_ASSIGN_OR_RETURN(std::string text, read_file(index_path));
  SHRINK_ASSIGN_OR_RETURN(
      json idx, parse_json_strict(text.data(), text.data() + text.size(), index_path, "key"));
  if (!idx.is_object()) {
    return invalid_input(index_path + ": is a JSON " + idx.type_name() +
                         ", expected an object with \"weight_map\"");
  }
  auto wm_it = idx.find("weight_map");
  if (wm_it == idx.end()) return invalid_input(index_path + ": missing \"weight_map\"");
  if (!wm_it->is_object()) {
    return invalid_input(index_path + ": \"weight_map\" is a " + wm_it->type_name() +
                         ", expected an object mapping tensor names to shard files");
  }
  auto md_it = idx.find("metadata");
  if (md_it != idx.end() && !md_it->is_object() && !md_it->is_null()) {
    return invalid_input(index_path + ": \"metadata\" is a " + md_it->type_name() +
                         ", expected an object");
  }
  std::map<std::string, std::string> weight_map;  // tensor -> shard file
  std::set<std::string> shard_names;
  for (const auto& [name, file] : wm_it->items()) {
    if (!file.is_string()) {
      return invalid_input(index_path + ": weight_map['" + name + "'] is a " + file.type_name() +
                           ", expected a shard file name");
    }
    const auto& fname = file.get_ref<const std::string&>();
    if (!is_plain_file_name(fname)) {
      return invalid_input(index_path + ": weight_map['" + name + "'] = '" + fname +
                           "' is not a plain file name inside the model directory");
    }
    weight_map[name] = fname;
    shard_names.insert(fname);
  }

  for (const std::string& shard : shard_names) {
    Result<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::open(dir + "/" + shard);
    if (!f.is_ok()) {
      if (f.status().code() == StatusCode::kNotFound) {
        return not_found(index_path + ": weight_map names shard '" + shard +
                         "', which does not exist: " + f.status().message());
      }
      return f.status();
    }
    const size_t fi = ck.files_.size();
    for (const TensorInfo& t : (*f)->tensors()) {
      auto it = ck.map_.find(t.name);
      if (it != ck.map_.end()) {
        return invalid_input(dir + ": tensor '" + t.name + "' is in two shard files, '" +
                             basename_of(ck.files_[it->second.first]->path()) + "' and '" + shard +
                             "'");
      }
      ck.map_[t.name] = {fi, &t};
    }
    ck.files_.push_back(std::move(f).value());
  }

  for (const auto& [name, shard] : weight_map) {
    auto it = ck.map_.find(name);
    if (it == ck.map_.end()) {
      return invalid_input(index_path + ": weight_map maps tensor '" + name + "' to '" + shard +
                           "', but that file has no such tensor");
    }
    const std::string actual = basename_of(ck.files_[it->second.first]->path());
    if (actual != shard) {
      return invalid_input(index_path + ": weight_map maps tensor '" + name + "' to '" + shard +
                           "', but it is in '" + actual + "'");
    }
  }
  for (const auto& [name, loc] : ck.map_) {
    if (weight_map.count(name) == 0) {
      return invalid_input(index_path + ": tensor '" + name + "' in shard '" +
                           basename_of(ck.files_[loc.first]->path()) +
                           "' is not listed in weight_map");
    }
  }
  SHRINK_RETURN_IF_ERROR(ck.present_packed());
  return ck;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(map_.size());
  for (const auto& kv : map_) out.push_back(kv.first);
  return out;
}

const TensorInfo* Checkpoint::find(std::string_view name) const {
  auto it = map_.find(name);
  return it == map_.end() ? nullptr : it->second.second;
}

void pages_release(const void* p, uint64_t n) {
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
  const uintptr_t lo = (begin + page - 1) / page * page, hi = (begin + n) / page * page;
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

void Checkpoint::release(const TensorInfo& t, uint64_t offset, uint64_t n) const {
  auto it = map_.find(t.name);
  if (it == map_.end() || it->second.first == kUnpacked || offset >= t.nbytes) return;
  pages_release(data(t) + offset, std::min(n, t.nbytes - offset));
}

const uint8_t* Checkpoint::data(const TensorInfo& t) const {
  auto it = map_.find(t.name);
  if (it == map_.end()) return nullptr;
  if (it->second.first != kUnpacked) return files_[it->second.first]->data(*it->second.second);
  Unpacked& u = *unpacked_.find(t.name)->second;
  std::call_once(u.once, [&] {
    u.data.resize(size_t(u.info.nbytes));
    const uint8_t* p = files_[u.file]->data(*u.packed);
    if (u.along_rows)
      int4_unpack_rows(p, u.info.shape[0], u.info.shape[1], u.data.data());
    else
      int4_unpack(p, u.info.shape[0], u.info.shape[1], u.data.data());
  });
  return reinterpret_cast<const uint8_t*>(u.data.data());
}

bool Checkpoint::unpack_region(std::string_view name, const std::vector<int64_t>* rows,
                               int64_t c0, int64_t c1, int8_t* out) const {
  auto it = unpacked_.find(name);
  if (it == unpacked_.end() || it->second->along_rows || c0 % 2 != 0) return false;
  const Unpacked& u = *it->second;
  const int64_t R = u.info.shape[0], C = u.info.shape[1];
  if (c0 < 0 || c1 > C || c0 >= c1) return false;
  const int64_t row_bytes = int4_packed_cols(C) * 4;
  const uint8_t* p = files_[u.file]->data(*u.packed);
  const int64_t n = rows ? int64_t(rows->size()) : R;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows ? (*rows)[size_t(i)] : i;
    if (r < 0 || r >= R) return false;
    int4_unpack(p + r * row_bytes + c0 / 2, 1, c1 - c0, out + i * (c1 - c0));
  }
  return true;
}

const TensorInfo* Checkpoint::packed_of(std::string_view name) const {
  auto it = unpacked_.find(name);
  return it == unpacked_.end() ? nullptr : it->second->packed;
}

std::string Checkpoint::file_of(std::string_view name) const {
  auto it = map_.find(name);
  if (it == map_.end()) return std::string();
  const size_t f =
      it->second.first != kUnpacked ? it->second.first : unpacked_.find(name)->second->file;
  return basename_of(files_[f]->path());
}

const std::map<std::string, std::string>& Checkpoint::metadata() const {
  static const std::map<std::string, std::string> kEmpty;
  return files_.empty() ? kEmpty : files_[0]->metadata();
}

uint64_t Checkpoint::total_bytes() const {  // as stored (packed weights at 4 bits)
  uint64_t n = 0;
  for (const auto& f : files_) {
    for (const TensorInfo& t : f->tensors()) n += t.nbytes;
  }
  return n;
}

Status checkpoint_write(const std::string& dir, const std::vector<TensorView>& tensors,
                        const std::map<std::string, std::string>& metadata,
                        uint64_t max_shard_bytes) {
  if (!is_directory(dir)) return not_found(dir + ": output directory does not exist");
  Status st = validate_views(tensors);
  if (!st.is_ok()) return st.with_context(dir);
  const std::string index_path = dir + "/" + kIndexName;
  const std::vector<std::vector<size_t>> layout = shard_layout(tensors, max_shard_bytes);
  if (layout.size() == 1) {
    SHRINK_RETURN_IF_ERROR(write_one_file(dir + "/" + kSingleName, tensors, metadata));
    return stale_index_remove(index_path);
  }
  uint64_t total = 0;
  json weight_map = json::object();
  for (size_t i = 0; i < layout.size(); ++i) {
    const std::string name = shard_file_name(i, layout.size());
    std::vector<TensorView> shard;
    for (size_t k : layout[i]) {
      shard.push_back(tensors[k]);
      weight_map[tensors[k].name] = name;
      total += tensors[k].nbytes;
    }
    SHRINK_RETURN_IF_ERROR(write_one_file(dir + "/" + name, shard, metadata));
  }
  // Written last, so the index only ever names shards that exist.
  SHRINK_ASSIGN_OR_RETURN(std::string text, index_text(index_path, total, weight_map));
  return write_file_atomic(index_path, text);
}

// ---------------------------------------------------------------------------------------------
// CheckpointWriter

struct CheckpointWriter::Shard {
  std::string name, tmp;
  int fd = -1;
};

Result<std::unique_ptr<CheckpointWriter>> CheckpointWriter::create(
    const std::string& dir, std::vector<TensorView> plan,
    const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes) {
  if (!is_directory(dir)) return not_found(dir + ": output directory does not exist");
  for (TensorView& t : plan) t.data = &t;  // validate_views wants data; none is read here
  Status st = validate_views(plan);
  if (!st.is_ok()) return st.with_context(dir);
  std::unique_ptr<CheckpointWriter> w(new CheckpointWriter());
  w->dir_ = dir;
  const std::vector<std::vector<size_t>> layout = shard_layout(plan, max_shard_bytes);
  for (size_t i = 0; i < layout.size(); ++i) {
    auto shard = std::make_unique<Shard>();
    shard->name = shard_file_name(i, layout.size());
    shard->tmp = dir + "/." + shard->name + ".tmp-" + std::to_string(::getpid());
    std::vector<TensorView> views;
    for (size_t k : layout[i]) views.push_back(plan[k]);
    SHRINK_ASSIGN_OR_RETURN(std::string prefix, file_prefix(dir + "/" + shard->name, views, metadata));
    shard->fd = ::open(shard->tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (shard->fd < 0) return io_error(shard->tmp + ": cannot create: " + std::strerror(errno));
    w->shards_.push_back(std::move(shard));
    SHRINK_RETURN_IF_ERROR(pwrite_all(w->shards_.back()->fd, prefix.data(), prefix.size(), 0,
                                      w->shards_.back()->tmp));
    uint64_t offset = prefix.size();
    for (size_t k : layout[i]) {
      w->slots_[plan[k].name] = Slot{i, offset, plan[k].nbytes, false};
      offset += plan[k].nbytes;
      w->total_ += plan[k].nbytes;
    }
    // The full size now: a tensor written last leaves no hole, and a full disk shows up early.
    if (::ftruncate(w->shards_.back()->fd, off_t(offset)) != 0) {
      return io_error(w->shards_.back()->tmp + ": cannot size: " + std::strerror(errno));
    }
  }
  return w;
}

CheckpointWriter::~CheckpointWriter() {
  if (!finished_) abandon();
}

void CheckpointWriter::abandon() {
  for (auto& s : shards_) {
    if (s->fd >= 0) ::close(s->fd);
    s->fd = -1;
    ::unlink(s->tmp.c_str());
  }
}

Status CheckpointWriter::write(const std::string& name, const void* data, uint64_t nbytes,
                               uint64_t offset) {
  size_t shard = 0;
  uint64_t at = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.find(name);
    if (it == slots_.end()) return internal_error(dir_ + ": tensor '" + name + "' is not in the plan");
    Slot& slot = it->second;
    if (offset > slot.nbytes || nbytes > slot.nbytes - offset || nbytes > slot.nbytes - slot.done) {
      return internal_error(strfmt("%s: tensor '%s': %llu bytes at %llu after %llu written; the "
                                   "plan has %llu", dir_.c_str(), name.c_str(),
                                   (unsigned long long)nbytes, (unsigned long long)offset,
                                   (unsigned long long)slot.done, (unsigned long long)slot.nbytes));
    }
    slot.done += nbytes;
    shard = slot.shard;
    at = slot.offset + offset;
  }
  SHRINK_RETURN_IF_ERROR(pwrite_all(shards_[shard]->fd, data, size_t(nbytes), at, shards_[shard]->tmp));
  bytes_written_ += nbytes;
  return Status::ok();
}

Status CheckpointWriter::finish() {
  for (const auto& [name, slot] : slots_) {
    if (slot.done != slot.nbytes) {
      return internal_error(strfmt("%s: tensor '%s' has %llu of its %llu bytes written", dir_.c_str(),
                                   name.c_str(), (unsigned long long)slot.done,
                                   (unsigned long long)slot.nbytes));
    }
  }
  json weight_map = json::object();
  for (const auto& [name, slot] : slots_) weight_map[name] = shards_[slot.shard]->name;
  for (auto& s : shards_) {
    const int fd = s->fd;
    s->fd = -1;
    if (::close(fd) != 0) return io_error(s->tmp + ": cannot close: " + std::strerror(errno));
    const std::string path = dir_ + "/" + s->name;
    if (::rename(s->tmp.c_str(), path.c_str()) != 0) {
      return io_error("cannot rename " + s->tmp + " to " + path + ": " + std::strerror(errno));
    }
  }
  finished_ = true;
  const std::string index_path = dir_ + "/" + kIndexName;
  if (shards_.size() == 1) return stale_index_remove(index_path);
  SHRINK_ASSIGN_OR_RETURN(std::string text, index_text(index_path, total_, weight_map));
  return write_file_atomic(index_path, text);
}

}  // namespace shrink::core
