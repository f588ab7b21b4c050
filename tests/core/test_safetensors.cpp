// Tests for core/dtype.h and core/safetensors.h.
//
// Covers: dtype names and conversions (exhaustive f16 round trips and tie rounding), safetensors
// round trips of every dtype with scalar/empty/odd shapes, bit-exact re-saves, sharded
// checkpoints, a corpus of malformed files (each must fail with kInvalidInput or kNotFound and a
// message naming the problem), a seeded mutation fuzz that must never crash, and the Hugging
// Face-made fixtures under tests/fixtures/hf (which our writer must reproduce byte for byte).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/quant.h"
#include "core/safetensors.h"

namespace shrink::core {
namespace {

namespace fsys = std::filesystem;
using namespace std::string_literals;

const std::string kFixtures = SHRINK_FIXTURES_DIR;

// A fresh directory under the gtest temp dir, removed on destruction.
class TmpDir {
 public:
  TmpDir() {
    static int counter = 0;
    path_ = (fsys::path(::testing::TempDir()) /
             ("shrink_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    fsys::remove_all(path_);
    fsys::create_directories(path_);
  }
  ~TmpDir() {
    std::error_code ec;
    fsys::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// 8-byte little-endian length (the header's, unless overridden), header, data.
std::string raw_file(const std::string& header, const std::string& data,
                     std::optional<uint64_t> length = std::nullopt) {
  const uint64_t n = length ? *length : header.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char(uint8_t(n >> (8 * i)));
  return out + header + data;
}

void expect_message_has(const Status& st, std::initializer_list<std::string> needles) {
  for (const std::string& n : needles) {
    EXPECT_NE(st.message().find(n), std::string::npos)
        << "message: " << st.message() << "\nexpected it to contain: " << n;
  }
}

// Open `bytes` written to a temp file; expect an error of `code` whose message has `needles`.
void expect_open_fails(const std::string& bytes, StatusCode code,
                       std::initializer_list<std::string> needles) {
  TmpDir dir;
  const std::string path = dir.file("bad.safetensors");
  spit(path, bytes);
  auto r = SafetensorsFile::open(path);
  ASSERT_FALSE(r.is_ok()) << "a malformed file opened";
  EXPECT_EQ(r.status().code(), code) << r.status().message();
  expect_message_has(r.status(), needles);
  expect_message_has(r.status(), {"bad.safetensors"});
}

std::string random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = char(rng() & 0xff);
  return s;
}

const DType kAllDTypes[] = {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64,
                            DType::kI32, DType::kI16, DType::kI8,  DType::kU8,   DType::kBool};

float bits_to_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---------------------------------------------------------------------------------------------
// DType

TEST(DTypeTest, NamesSizesAndParsing) {
  const size_t sizes[] = {8, 4, 2, 2, 8, 4, 2, 1, 1, 1};
  const char* names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_STREQ(dtype_name(kAllDTypes[i]), names[i]);
    EXPECT_EQ(dtype_size(kAllDTypes[i]), sizes[i]);
    EXPECT_EQ(dtype_from_name(names[i]), kAllDTypes[i]);
    EXPECT_EQ(dtype_is_float(kAllDTypes[i]), i < 4);
  }
  EXPECT_FALSE(dtype_from_name("f32").has_value());
  EXPECT_FALSE(dtype_from_name("F8_E4M3").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
}

TEST(DTypeTest, F16KnownValues) {
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);  // largest finite f16
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // halfway to 2^16: ties to even, which is inf
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even is 0
  EXPECT_EQ(f32_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 ulps: even is 2
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie, even mantissa 0
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie, even mantissa 2
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.0f, -24)), 0x03ff);      // largest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(2047.0f, -25)), 0x0400);      // rounds up into the normals
  const uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(bits_to_f32(0x7f800001u)))));  // low payload NaN

  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
}

// Every f16 survives f16 -> f32 -> f16, and every midpoint between neighbours rounds to the
// even neighbour while the floats just either side of it round to the nearer one.
TEST(DTypeTest, F16ExhaustiveRoundTripAndTies) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << h;
      ASSERT_EQ((h & 0x7c00), 0x7c00u);
      continue;
    }
    ASSERT_EQ(f32_to_f16(f), h) << "h=" << h;
  }
  for (uint32_t h = 0; h < 0x7bff; ++h) {  // positive finite neighbours (h, h+1)
    const float a = f16_to_f32(uint16_t(h)), b = f16_to_f32(uint16_t(h + 1));
    const float mid = a + (b - a) / 2;  // exact: f16 neighbours differ in at most 12 bits
    ASSERT_EQ(f32_to_f16(mid), (h & 1) ? h + 1 : h) << "h=" << h;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, 0.0f)), h) << "h=" << h;
    ASSERT_EQ(f32_to_f16(std::nextafter(mid, 1e9f)), h + 1) << "h=" << h;
    ASSERT_EQ(f32_to_f16(-mid), 0x8000u | ((h & 1) ? h + 1 : h)) << "h=" << h;
  }
}

TEST(DTypeTest, BF16Rounding) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3f808000u)), 0x3f80);  // tie, even
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x3f808001u)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x7f7fffffu)), 0x7f80);  // overflows to inf
  EXPECT_EQ(f32_to_bf16(bits_to_f32(0x00000001u)), 0x0000);  // subnormal rounds to 0
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_to_f32(0x7f800001u)))));
  EXPECT_EQ(bf16_to_f32(0xc000), -2.0f);
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = bf16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h);
  }
}

TEST(DTypeTest, ConvertToAndFromF32) {
  const double f64[] = {1.5, -2.25};
  const int64_t i64[] = {-7, 1 << 20};
  const int32_t i32[] = {-3, 42};
  const int16_t i16[] = {-32768, 32767};
  const int8_t i8[] = {-128, 127};
  const uint8_t u8[] = {0, 255};
  const uint8_t b[] = {0, 3};
  const uint16_t f16[] = {0x3c00, 0xc100};   // 1, -2.5
  const uint16_t bf16[] = {0x3fc0, 0xc020};  // 1.5, -2.5
  const float f32[] = {0.5f, -0.75f};
  struct Case {
    DType t;
    const void* src;
    float want[2];
  } cases[] = {
      {DType::kF64, f64, {1.5f, -2.25f}},      {DType::kF32, f32, {0.5f, -0.75f}},
      {DType::kF16, f16, {1.0f, -2.5f}},       {DType::kBF16, bf16, {1.5f, -2.5f}},
      {DType::kI64, i64, {-7.0f, 1048576.f}},  {DType::kI32, i32, {-3.0f, 42.0f}},
      {DType::kI16, i16, {-32768.f, 32767.f}}, {DType::kI8, i8, {-128.f, 127.f}},
      {DType::kU8, u8, {0.0f, 255.0f}},        {DType::kBool, b, {0.0f, 1.0f}},
  };
  for (const Case& c : cases) {
    float out[2] = {-1, -1};
    convert_to_f32(c.t, c.src, out, 2);
    EXPECT_EQ(out[0], c.want[0]) << dtype_name(c.t);
    EXPECT_EQ(out[1], c.want[1]) << dtype_name(c.t);
  }
  // Unaligned source (tensors inside a mapped file need not be aligned).
  alignas(4) uint8_t buf[9] = {};
  const float v = 3.25f;
  std::memcpy(buf + 1, &v, 4);
  float out = 0;
  convert_to_f32(DType::kF32, buf + 1, &out, 1);
  EXPECT_EQ(out, 3.25f);

  const float src[] = {1.0f, -2.5f, 65520.0f, 1.0f + std::ldexp(1.0f, -11)};
  uint16_t h[4];
  convert_from_f32(src, DType::kF16, h, 4);
  EXPECT_EQ(h[0], 0x3c00);
  EXPECT_EQ(h[1], 0xc100);
  EXPECT_EQ(h[2], 0x7c00);
  EXPECT_EQ(h[3], 0x3c00);
  uint16_t bh[4];
  convert_from_f32(src, DType::kBF16, bh, 4);
  EXPECT_EQ(bh[0], 0x3f80);
  EXPECT_EQ(bh[1], 0xc020);
  double d[4];
  convert_from_f32(src, DType::kF64, d, 4);
  EXPECT_EQ(d[2], 65520.0);
  float f[4];
  convert_from_f32(src, DType::kF32, f, 4);
  EXPECT_EQ(std::memcmp(f, src, sizeof(f)), 0);
}

// ---------------------------------------------------------------------------------------------
// Safetensors round trips

struct OwnedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
  TensorView view() const { return {name, dtype, shape, bytes.data(), bytes.size()}; }
};

std::vector<OwnedTensor> make_all_dtype_tensors() {
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {3, 5}, {2, 1, 3}};
  std::vector<OwnedTensor> out;
  uint32_t seed = 1;
  for (DType t : kAllDTypes) {
    for (const auto& shape : shapes) {
      int64_t numel = 1;
      for (int64_t d : shape) numel *= d;
      OwnedTensor o;
      o.name = std::string("t.") + dtype_name(t) + "." + std::to_string(shape.size()) + "." +
               std::to_string(numel);
      o.dtype = t;
      o.shape = shape;
      o.bytes = random_bytes(size_t(numel) * dtype_size(t), seed++);
      out.push_back(std::move(o));
    }
  }
  return out;
}

std::vector<TensorView> views_of(const std::vector<OwnedTensor>& ts) {
  std::vector<TensorView> v;
  for (const auto& t : ts) v.push_back(t.view());
  return v;
}

TEST(SafetensorsTest, RoundTripAllDTypesAndShapes) {
  TmpDir dir;
  const auto tensors = make_all_dtype_tensors();
  const std::map<std::string, std::string> md = {{"format", "pt"}, {"note", "\"quoted\" ü"}};
  const std::string path = dir.file("rt.safetensors");
  ASSERT_TRUE(safetensors_write(path, views_of(tensors), md).is_ok());
  EXPECT_FALSE(path_exists(path + ".tmp-" + std::to_string(::getpid())));

  auto r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  const SafetensorsFile& f = **r;
  EXPECT_EQ(f.metadata(), md);
  ASSERT_EQ(f.tensors().size(), tensors.size());
  for (const OwnedTensor& t : tensors) {
    const TensorInfo* info = f.find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    EXPECT_EQ(info->nbytes, t.bytes.size());
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(f.data(*info)), info->nbytes), t.bytes);
  }
  EXPECT_EQ(f.find("t.F32.0.1")->numel(), 1);  // scalar
  EXPECT_EQ(f.find("t.F32.1.0")->numel(), 0);
  EXPECT_EQ(f.find("nope"), nullptr);
  // tensors() is in data-offset order, which for our writer is the order given.
  uint64_t prev = 0;
  for (const TensorInfo& t : f.tensors()) {
    EXPECT_GE(t.offset, prev);
    prev = t.offset;
  }
}

TEST(SafetensorsTest, HeaderLayoutMatchesTheFormat) {
  TmpDir dir;
  const std::string a(12, 'a'), b(4, 'b');
  const std::string path = dir.file("layout.safetensors");
  // "z" first: offsets follow the order given, not the name order.
  ASSERT_TRUE(safetensors_write(path, {{"z", DType::kF32, {3}, a.data(), 12},
                                       {"a", DType::kI8, {2, 2}, b.data(), 4}})
                  .is_ok());
  const std::string bytes = slurp(path);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(bytes[size_t(i)])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1),
            "{\"z\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
            "\"a\":{\"dtype\":\"I8\",\"shape\":[2,2],\"data_offsets\":[12,16]}}");
  EXPECT_EQ(bytes.substr(8 + n), a + b);
}

TEST(SafetensorsTest, ResaveIsBitExact) {
  TmpDir dir;
  const auto tensors = make_all_dtype_tensors();
  const std::string p1 = dir.file("one.safetensors"), p2 = dir.file("two.safetensors");
  ASSERT_TRUE(safetensors_write(p1, views_of(tensors), {{"format", "pt"}}).is_ok());
  auto r = SafetensorsFile::open(p1);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  std::vector<TensorView> views;
  for (const TensorInfo& t : (*r)->tensors())
    views.push_back({t.name, t.dtype, t.shape, (*r)->data(t), t.nbytes});
  ASSERT_TRUE(safetensors_write(p2, views, (*r)->metadata()).is_ok());
  EXPECT_EQ(slurp(p1), slurp(p2));
}

TEST(SafetensorsTest, WriteRejectsBadViews) {
  TmpDir dir;
  const std::string path = dir.file("w.safetensors");
  const std::string buf(64, 'x');
  auto expect_bad = [&](std::vector<TensorView> views, std::initializer_list<std::string> needles) {
    Status st = safetensors_write(path, views);
    ASSERT_FALSE(st.is_ok());
    EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
    expect_message_has(st, needles);
    EXPECT_FALSE(path_exists(path));
  };
  expect_bad({{"a.weight", DType::kF32, {2, 3}, buf.data(), 12}},
             {"a.weight", "nbytes is 12", "[2,3] x F32 needs 24"});
  expect_bad({{"a", DType::kF32, {1}, buf.data(), 4}, {"a", DType::kF32, {1}, buf.data(), 4}},
             {"'a'", "duplicate"});
  expect_bad({{"neg", DType::kF32, {2, -1}, buf.data(), 0}}, {"neg", "negative dimension -1"});
  expect_bad({{"__metadata__", DType::kU8, {1}, buf.data(), 1}}, {"reserved"});
  expect_bad({{"null", DType::kU8, {4}, nullptr, 4}}, {"null", "data is null"});
  expect_bad({{"bad\xff", DType::kU8, {1}, buf.data(), 1}}, {"UTF-8"});

  Status st = safetensors_write(dir.file("no/such/dir/x.safetensors"), {});
  EXPECT_FALSE(st.is_ok());
}

TEST(SafetensorsTest, EmptyFileWithNoTensors) {
  TmpDir dir;
  const std::string path = dir.file("empty.safetensors");
  ASSERT_TRUE(safetensors_write(path, {}).is_ok());
  auto r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_TRUE((*r)->tensors().empty());
  EXPECT_TRUE((*r)->metadata().empty());
}

TEST(SafetensorsTest, GapsUnalignedHeadersAndEmptyTensorsAreAccepted) {
  // Header length 60 (not a multiple of 8), a 4-byte gap between tensors, trailing bytes, and an
  // empty tensor whose offsets sit inside another's range.
  const std::string h = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]},)"
                        R"("e":{"dtype":"F32","shape":[0,7],"data_offsets":[2,2]}})";
  TmpDir dir;
  const std::string path = dir.file("gaps.safetensors");
  spit(path, raw_file(h, "AAAA....BBBBtrailing"));
  auto r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ((*r)->tensors().size(), 3u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*r)->data(*(*r)->find("b"))), 4), "BBBB");
}

TEST(SafetensorsTest, NotFound) {
  auto r = SafetensorsFile::open("/nonexistent/dir/model.safetensors");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  expect_message_has(r.status(), {"/nonexistent/dir/model.safetensors"});
}

// ---------------------------------------------------------------------------------------------
// Malformed corpus

const std::string kGoodEntry = R"({"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

TEST(SafetensorsMalformedTest, EmptyFile) {
  expect_open_fails("", StatusCode::kInvalidInput, {"0 bytes", "8-byte header length"});
}

TEST(SafetensorsMalformedTest, ShorterThanLength) {
  expect_open_fails(std::string("\x10\x00\x00", 3), StatusCode::kInvalidInput, {"3 bytes"});
}

TEST(SafetensorsMalformedTest, HeaderLengthPastEof) {
  expect_open_fails(raw_file("{}", "", 1000), StatusCode::kInvalidInput,
                    {"header length 1000", "past the end of the file (10 bytes)"});
}

TEST(SafetensorsMalformedTest, HugeHeaderLength) {
  expect_open_fails(raw_file("{}", "", uint64_t(1) << 62), StatusCode::kInvalidInput,
                    {"header length 4611686018427387904", "100 MB"});
  expect_open_fails(raw_file("{}", "", ~uint64_t(0)), StatusCode::kInvalidInput,
                    {"header length 18446744073709551615"});
}

TEST(SafetensorsMalformedTest, HeaderLengthOverCapInsideFile) {
  // A sparse 120 MB file whose length field claims a 110 MB header: inside the file, over the cap.
  TmpDir dir;
  const std::string path = dir.file("big.safetensors");
  spit(path, raw_file("{}", "", 110ull * 1000 * 1000));
  fsys::resize_file(path, 120ull * 1000 * 1000);
  auto r = SafetensorsFile::open(path);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
  expect_message_has(r.status(), {"header length 110000000", "exceeds the 100 MB header cap"});
}

TEST(SafetensorsMalformedTest, ZeroHeaderLength) {
  expect_open_fails(raw_file("", "abcd"), StatusCode::kInvalidInput, {"header length is 0"});
}

TEST(SafetensorsMalformedTest, BadJson) {
  expect_open_fails(raw_file(R"({"a": {"dtype": )", ""), StatusCode::kInvalidInput,
                    {"header", "not valid JSON"});
  expect_open_fails(raw_file("{}\0\0\0\0\0\0"s, ""), StatusCode::kInvalidInput,
                    {"not valid JSON", "NUL byte at offset 2"});
  expect_open_fails(raw_file("{}  x", ""), StatusCode::kInvalidInput, {"not valid JSON"});
}

TEST(SafetensorsMalformedTest, HeaderNotAnObject) {
  expect_open_fails(raw_file("[1,2,3]", ""), StatusCode::kInvalidInput,
                    {"header is a JSON array", "expected an object"});
}

TEST(SafetensorsMalformedTest, EntryNotAnObject) {
  expect_open_fails(raw_file(R"({"w":[1,2]})", ""), StatusCode::kInvalidInput,
                    {"tensor 'w'", "entry is a array"});
}

TEST(SafetensorsMalformedTest, MissingOrWrongTypedFields) {
  const std::string d(8, '\0');
  expect_open_fails(raw_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "missing 'dtype'"});
  expect_open_fails(raw_file(R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "'dtype' is a number"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "missing 'shape'"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "'shape' is a string"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "shape[0]", "non-integer"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"F32","shape":[2]}})", d), StatusCode::kInvalidInput,
                    {"tensor 'w'", "missing 'data_offsets'"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "array of 3 elements"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "data_offsets[0] is -8"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":["0",8]}})", d),
                    StatusCode::kInvalidInput, {"tensor 'w'", "data_offsets[0] is a string"});
}

TEST(SafetensorsMalformedTest, UnknownDType) {
  expect_open_fails(
      raw_file(R"({"w":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})", std::string(8, 0)),
      StatusCode::kInvalidInput, {"tensor 'w'", "unknown dtype 'F8_E4M3'", "F32", "BF16", "BOOL"});
}

TEST(SafetensorsMalformedTest, NegativeShape) {
  expect_open_fails(
      raw_file(R"({"w":{"dtype":"F32","shape":[-2,1],"data_offsets":[0,8]}})", std::string(8, 0)),
      StatusCode::kInvalidInput, {"tensor 'w'", "shape [-2,1]", "negative dimension -2"});
}

TEST(SafetensorsMalformedTest, ShapeProductOverflow) {
  expect_open_fails(
      raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
               std::string(8, 0)),
      StatusCode::kInvalidInput, {"tensor 'w'", "63 bits"});
  expect_open_fails(
      raw_file(R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})",
               std::string(8, 0)),
      StatusCode::kInvalidInput, {"tensor 'w'", "overflows 64 bits"});
  expect_open_fails(
      raw_file(R"({"w":{"dtype":"F64","shape":[18446744073709551615],"data_offsets":[0,8]}})",
               std::string(8, 0)),
      StatusCode::kInvalidInput, {"tensor 'w'", "does not fit in int64"});
}

TEST(SafetensorsMalformedTest, ShapeTimesDTypeMismatch) {
  expect_open_fails(
      raw_file(R"({"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}})",
               std::string(12, 0)),
      StatusCode::kInvalidInput,
      {"bad.safetensors: tensor 'a.weight': data_offsets [0, 12) hold 12 bytes but shape [2,3] x "
       "F32 needs 24"});
}

TEST(SafetensorsMalformedTest, BeginAfterEnd) {
  expect_open_fails(
      raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", std::string(8, 0)),
      StatusCode::kInvalidInput, {"tensor 'w'", "[8, 4)", "begin > end"});
}

TEST(SafetensorsMalformedTest, OffsetsOutsideTheFile) {
  expect_open_fails(
      raw_file(R"({"w":{"dtype":"U8","shape":[1000],"data_offsets":[0,1000]}})", "tiny"),
      StatusCode::kInvalidInput, {"tensor 'w'", "[0, 1000)", "past the end of the data section"});
  expect_open_fails(raw_file(R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[99,99]}})", "tiny"),
                    StatusCode::kInvalidInput, {"tensor 'w'", "[99, 99)"});
}

TEST(SafetensorsMalformedTest, TruncatedFile) {
  TmpDir dir;
  const std::string path = dir.file("cut.safetensors");
  const std::string data(64, 'x');
  ASSERT_TRUE(safetensors_write(path, {{"first", DType::kF32, {8}, data.data(), 32},
                                       {"last", DType::kF32, {8}, data.data(), 32}})
                  .is_ok());
  std::string bytes = slurp(path);
  bytes.resize(bytes.size() - 5);
  expect_open_fails(bytes, StatusCode::kInvalidInput, {"tensor 'last'", "truncated"});
}

TEST(SafetensorsMalformedTest, OverlappingOffsets) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                        R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  expect_open_fails(raw_file(h, std::string(24, 0)), StatusCode::kInvalidInput,
                    {"'a' [0, 16)", "'b' [8, 24)", "overlap"});
  // Containment (b inside a, listed first by name) is an overlap too.
  const std::string h2 = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},)"
                         R"("b":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},)"
                         R"("c":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}})";
  expect_open_fails(raw_file(h2, std::string(16, 0)), StatusCode::kInvalidInput, {"overlap"});
}

TEST(SafetensorsMalformedTest, DuplicateName) {
  const std::string h = R"({"w":)" + kGoodEntry + R"(,"w":)" + kGoodEntry + "}";
  expect_open_fails(raw_file(h, std::string(8, 0)), StatusCode::kInvalidInput,
                    {"duplicate tensor name 'w'"});
  // A duplicate key inside an entry is caught as well.
  const std::string h2 = R"({"w":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}})";
  expect_open_fails(raw_file(h2, std::string(8, 0)), StatusCode::kInvalidInput,
                    {"duplicate key 'dtype'"});
}

TEST(SafetensorsMalformedTest, MetadataNotAStringMap) {
  expect_open_fails(raw_file(R"({"__metadata__":{"format":1}})", ""), StatusCode::kInvalidInput,
                    {"__metadata__['format']", "expected a string"});
  expect_open_fails(raw_file(R"({"__metadata__":"pt"})", ""), StatusCode::kInvalidInput,
                    {"__metadata__", "expected an object"});
}

TEST(SafetensorsMalformedTest, NotARegularFile) {
  TmpDir dir;
  auto r = SafetensorsFile::open(dir.path());
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
}

// Seeded mutations of a valid file: every open either succeeds (and then every tensor's bytes
// lie inside the mapping) or fails with kInvalidInput. The point is no crash and no other code.
TEST(SafetensorsMalformedTest, MutationFuzzNeverCrashes) {
  TmpDir dir;
  const auto tensors = make_all_dtype_tensors();
  const std::string good_path = dir.file("good.safetensors");
  ASSERT_TRUE(safetensors_write(good_path, views_of(tensors), {{"format", "pt"}}).is_ok());
  const std::string good = slurp(good_path);
  std::mt19937 rng(1234);
  int opened = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::string b = good;
    const int kind = int(rng() % 4);
    if (kind == 0) {
      b.resize(rng() % b.size());
    } else {
      const int flips = 1 + int(rng() % 4);
      for (int k = 0; k < flips; ++k) {
        // Mostly hit the length and header, where the interesting structure is.
        const size_t span = (kind == 3) ? b.size() : std::min<size_t>(b.size(), 8 + 600);
        const size_t pos = rng() % span;
        b[pos] = (kind == 1) ? char(rng() & 0xff) : char(b[pos] ^ (1 << (rng() % 8)));
      }
    }
    // A fresh name each time: rewriting one file in place makes ext4 flush it on every close.
    const std::string path = dir.file("fuzz" + std::to_string(iter) + ".safetensors");
    spit(path, b);
    auto r = SafetensorsFile::open(path);
    fsys::remove(path);  // the mapping stays valid
    if (r.is_ok()) {
      ++opened;
      uint64_t n = 0;
      for (int i = 0; i < 8; ++i) n |= uint64_t(uint8_t(b[size_t(i)])) << (8 * i);
      unsigned sum = 0;
      for (const TensorInfo& t : (*r)->tensors()) {
        ASSERT_LE(t.offset + t.nbytes, b.size() - 8 - n) << t.name;
        const uint8_t* p = (*r)->data(t);
        for (uint64_t k = 0; k < t.nbytes; ++k) sum += p[k];  // touch every byte
      }
      (void)sum;
    } else {
      ASSERT_EQ(r.status().code(), StatusCode::kInvalidInput) << r.status().message();
      ASSERT_FALSE(r.status().message().empty());
    }
  }
  EXPECT_GT(opened, 0);  // some mutations (data bytes) leave the file valid
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

std::vector<OwnedTensor> make_model_tensors(int n, size_t bytes_each) {
  std::vector<OwnedTensor> out;
  for (int i = 0; i < n; ++i) {
    OwnedTensor t;
    t.name = "model.layers." + std::to_string(i) + ".weight";
    t.dtype = DType::kF16;
    t.shape = {int64_t(bytes_each / 2)};
    t.bytes = random_bytes(bytes_each, uint32_t(100 + i));
    out.push_back(std::move(t));
  }
  return out;
}

void expect_checkpoint_matches(const Checkpoint& ck, const std::vector<OwnedTensor>& tensors) {
  ASSERT_EQ(ck.names().size(), tensors.size());
  for (const OwnedTensor& t : tensors) {
    const TensorInfo* info = ck.find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype);
    EXPECT_EQ(info->shape, t.shape);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(ck.data(*info)), info->nbytes), t.bytes);
  }
}

TEST(SafetensorsCheckpointTest, SingleFile) {
  TmpDir dir;
  const auto tensors = make_model_tensors(3, 100);
  ASSERT_TRUE(checkpoint_write(dir.path(), views_of(tensors), {{"format", "pt"}}).is_ok());
  EXPECT_TRUE(path_exists(dir.file("model.safetensors")));
  EXPECT_FALSE(path_exists(dir.file("model.safetensors.index.json")));
  auto ck = Checkpoint::open(dir.path());
  ASSERT_TRUE(ck.is_ok()) << ck.status().message();
  EXPECT_EQ(ck->num_files(), 1u);
  EXPECT_EQ(ck->total_bytes(), 300u);
  EXPECT_EQ(ck->metadata().at("format"), "pt");
  EXPECT_EQ(ck->file_of("model.layers.1.weight"), "model.safetensors");
  EXPECT_EQ(ck->find("nope"), nullptr);
  auto names = ck->names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  expect_checkpoint_matches(*ck, tensors);
}

TEST(SafetensorsCheckpointTest, ShardedWriteAndOpen) {
  TmpDir dir;
  // 5 x 100 bytes with a 250-byte limit: greedy gives {0,1} {2,3} {4}.
  const auto tensors = make_model_tensors(5, 100);
  ASSERT_TRUE(checkpoint_write(dir.path(), views_of(tensors), {{"format", "pt"}}, 250).is_ok());
  for (const char* f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                        "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(path_exists(dir.file(f))) << f;
  }
  EXPECT_FALSE(path_exists(dir.file("model.safetensors")));
  const auto idx = nlohmann::json::parse(slurp(dir.file("model.safetensors.index.json")));
  EXPECT_EQ(idx["metadata"]["total_size"], 500);
  EXPECT_EQ(idx["weight_map"]["model.layers.0.weight"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["model.layers.3.weight"], "model-00002-of-00003.safetensors");
  EXPECT_EQ(idx["weight_map"]["model.layers.4.weight"], "model-00003-of-00003.safetensors");

  auto ck = Checkpoint::open(dir.path());
  ASSERT_TRUE(ck.is_ok()) << ck.status().message();
  EXPECT_EQ(ck->num_files(), 3u);
  EXPECT_EQ(ck->total_bytes(), 500u);
  EXPECT_EQ(ck->file_of("model.layers.2.weight"), "model-00002-of-00003.safetensors");
  EXPECT_EQ(ck->metadata().at("format"), "pt");
  expect_checkpoint_matches(*ck, tensors);

  // Re-writing the same directory unsharded drops the stale index, so the new file is used.
  const auto fewer = make_model_tensors(2, 10);
  ASSERT_TRUE(checkpoint_write(dir.path(), views_of(fewer)).is_ok());
  EXPECT_FALSE(path_exists(dir.file("model.safetensors.index.json")));
  auto ck2 = Checkpoint::open(dir.path());
  ASSERT_TRUE(ck2.is_ok()) << ck2.status().message();
  expect_checkpoint_matches(*ck2, fewer);
}

TEST(SafetensorsCheckpointTest, OversizedTensorGetsItsOwnShard) {
  TmpDir dir;
  auto tensors = make_model_tensors(3, 100);
  tensors[1].bytes = random_bytes(1000, 7);
  tensors[1].shape = {500};
  ASSERT_TRUE(checkpoint_write(dir.path(), views_of(tensors), {}, 150).is_ok());
  auto ck = Checkpoint::open(dir.path());
  ASSERT_TRUE(ck.is_ok()) << ck.status().message();
  EXPECT_EQ(ck->num_files(), 3u);
  EXPECT_EQ(ck->file_of("model.layers.1.weight"), "model-00002-of-00003.safetensors");
  expect_checkpoint_matches(*ck, tensors);
}

TEST(SafetensorsCheckpointTest, WriteValidatesBeforeWritingAnything) {
  TmpDir dir;
  auto tensors = make_model_tensors(3, 100);
  tensors[2].name = tensors[0].name;
  Status st = checkpoint_write(dir.path(), views_of(tensors), {}, 150);
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput);
  expect_message_has(st, {"model.layers.0.weight", "duplicate"});
  EXPECT_TRUE(fsys::is_empty(dir.path()));
  EXPECT_EQ(checkpoint_write(dir.file("missing"), {}).code(), StatusCode::kNotFound);
}

// The streaming writer: tensors arrive in any order and from several threads, and the files are
// byte for byte those of checkpoint_write (which writes sequentially from a complete list).
TEST(SafetensorsCheckpointTest, StreamingWriterEqualsCheckpointWriteInAnyOrder) {
  auto tensors = make_model_tensors(7, 100);
  tensors[3].bytes = random_bytes(1000, 3);  // an oversized tensor: a shard of its own
  tensors[3].shape = {500};
  for (uint64_t max_shard : {uint64_t(0), uint64_t(250)}) {
    TmpDir ref, out;
    ASSERT_TRUE(checkpoint_write(ref.path(), views_of(tensors), {{"format", "pt"}}, max_shard).is_ok());
    auto w = CheckpointWriter::create(out.path(), views_of(tensors), {{"format", "pt"}}, max_shard);
    ASSERT_TRUE(w.is_ok()) << w.status().message();
    std::vector<std::thread> threads;
    std::vector<Status> results(tensors.size());
    for (size_t k = 0; k < tensors.size(); ++k) {  // last tensor first, two at a time
      const size_t i = tensors.size() - 1 - k;
      threads.emplace_back([&, i] {
        results[i] = w.value()->write(tensors[i].name, tensors[i].bytes.data(), tensors[i].bytes.size());
      });
      if (threads.size() == 2) {
        for (auto& t : threads) t.join();
        threads.clear();
      }
    }
    for (auto& t : threads) t.join();
    for (const Status& r : results) ASSERT_TRUE(r.is_ok()) << r.message();
    ASSERT_TRUE(w.value()->finish().is_ok());
    EXPECT_EQ(w.value()->bytes_written(), 1600u);
    std::vector<std::string> files;
    for (const auto& e : fsys::directory_iterator(ref.path())) files.push_back(e.path().filename().string());
    EXPECT_EQ(files.size(), max_shard ? 6u : 1u);  // {0,1} {2} {3} {4,5} {6} + index
    for (const auto& f : files) EXPECT_EQ(slurp(out.file(f)), slurp(ref.file(f))) << f;
    size_t n_out = 0;
    for (const auto& e : fsys::directory_iterator(out.path())) n_out += e.is_regular_file();
    EXPECT_EQ(n_out, files.size());  // no temporary file left
  }
}

// release() drops pages from resident memory, never the data: reading again gives the same bytes.
TEST(SafetensorsCheckpointTest, ReleasedRangesReadBackUnchanged) {
  TmpDir dir;
  auto tensors = make_model_tensors(2, 100);
  tensors[1].bytes = random_bytes(3 << 20, 11);  // spans many pages
  tensors[1].shape = {int64_t(3) << 19};
  ASSERT_TRUE(checkpoint_write(dir.path(), views_of(tensors)).is_ok());
  auto ck = Checkpoint::open(dir.path());
  ASSERT_TRUE(ck.is_ok());
  const TensorInfo* t = ck->find(tensors[1].name);
  ASSERT_NE(t, nullptr);
  ck->release(*t, 12345, 2 << 20);
  ck->release(*t, 0, t->nbytes + 100);  // clipped to the tensor
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(ck->data(*t)), t->nbytes), tensors[1].bytes);
}

TEST(SafetensorsCheckpointTest, StreamingWriterRefusesWhatIsNotPlannedAndCleansUp) {
  TmpDir dir;
  const auto tensors = make_model_tensors(3, 100);
  {
    auto w = CheckpointWriter::create(dir.path(), views_of(tensors), {}, 150);
    ASSERT_TRUE(w.is_ok());
    const std::string bytes(100, 'x');
    expect_message_has(w.value()->write("nope", bytes.data(), 100), {"'nope' is not in the plan"});
    expect_message_has(w.value()->write(tensors[0].name, bytes.data(), 10, 95),
                       {"10 bytes at 95 after 0 written; the plan has 100"});
    ASSERT_TRUE(w.value()->write(tensors[0].name, bytes.data(), 60, 40).is_ok());  // in two parts
    ASSERT_TRUE(w.value()->write(tensors[0].name, bytes.data(), 40, 0).is_ok());
    expect_message_has(w.value()->write(tensors[0].name, bytes.data(), 1), {"after 100 written"});
    ASSERT_TRUE(w.value()->write(tensors[1].name, bytes.data(), 50).is_ok());
    expect_message_has(w.value()->finish(), {"'model.layers.1.weight' has 50 of its 100 bytes written"});
  }
  EXPECT_TRUE(fsys::is_empty(dir.path()));  // the unfinished writer removed its shards
  auto dup = tensors;
  dup[2].name = dup[0].name;
  expect_message_has(CheckpointWriter::create(dir.path(), views_of(dup)).status(), {"duplicate"});
  EXPECT_EQ(CheckpointWriter::create(dir.file("missing"), views_of(tensors)).status().code(),
            StatusCode::kNotFound);
}

// Write a 2-shard checkpoint and then replace its index with `index` text.
void write_with_index(const TmpDir& dir, const std::string& index) {
  const auto tensors = make_model_tensors(2, 100);
  ASSERT_TRUE(checkpoint_write(dir.path(), views_of(tensors), {}, 150).is_ok());
  spit(dir.file("model.safetensors.index.json"), index);
}

Status open_status(const std::string& dir) {
  auto ck = Checkpoint::open(dir);
  return ck.status();
}

TEST(SafetensorsCheckpointTest, IndexNamesAMissingTensor) {
  TmpDir dir;
  write_with_index(dir, R"({"metadata":{"total_size":200},"weight_map":{
      "model.layers.0.weight":"model-00001-of-00002.safetensors",
      "model.layers.1.weight":"model-00002-of-00002.safetensors",
      "ghost.weight":"model-00001-of-00002.safetensors"}})");
  Status st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"model.safetensors.index.json", "'ghost.weight'",
                          "model-00001-of-00002.safetensors", "no such tensor"});
}

TEST(SafetensorsCheckpointTest, IndexNamesTheWrongShard) {
  TmpDir dir;
  write_with_index(dir, R"({"weight_map":{
      "model.layers.0.weight":"model-00001-of-00002.safetensors",
      "model.layers.1.weight":"model-00001-of-00002.safetensors"}})");
  Status st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  // Shard 2 is not named at all, so the mapped tensor is simply missing from shard 1.
  expect_message_has(st, {"'model.layers.1.weight'"});
}

TEST(SafetensorsCheckpointTest, TensorMissingFromWeightMap) {
  TmpDir dir;
  write_with_index(dir, R"({"weight_map":{
      "model.layers.0.weight":"model-00001-of-00002.safetensors"}})");
  const auto extra = make_model_tensors(2, 100);
  ASSERT_TRUE(
      safetensors_write(dir.file("model-00001-of-00002.safetensors"), views_of(extra)).is_ok());
  Status st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"'model.layers.1.weight'", "not listed in weight_map"});
}

TEST(SafetensorsCheckpointTest, TensorInTwoShards) {
  TmpDir dir;
  const auto tensors = make_model_tensors(2, 100);
  ASSERT_TRUE(safetensors_write(dir.file("a.safetensors"), views_of(tensors)).is_ok());
  ASSERT_TRUE(safetensors_write(dir.file("b.safetensors"), {tensors[1].view()}).is_ok());
  spit(dir.file("model.safetensors.index.json"), R"({"weight_map":{
      "model.layers.0.weight":"a.safetensors","model.layers.1.weight":"b.safetensors"}})");
  Status st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(
      st, {"'model.layers.1.weight'", "two shard files", "a.safetensors", "b.safetensors"});
}

TEST(SafetensorsCheckpointTest, MalformedIndex) {
  TmpDir dir;
  write_with_index(dir, R"({"weight_map":{"model.layers.0.weight":"nope.safetensors"}})");
  Status st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kNotFound) << st.message();
  expect_message_has(st, {"nope.safetensors"});

  write_with_index(dir, R"({"weight_map":{"model.layers.0.weight":"../x.safetensors"}})");
  st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"'../x.safetensors'", "plain file name"});

  write_with_index(dir, R"({"weight_map":{"w":1}})");
  st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"weight_map['w']"});

  write_with_index(dir, R"({"metadata":{}})");
  st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"missing \"weight_map\""});

  write_with_index(dir, R"({"weight_map":{"w":"a","w":"b"}})");
  st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"duplicate key 'w'"});

  write_with_index(dir, "{not json");
  st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"model.safetensors.index.json", "not valid JSON"});
}

TEST(SafetensorsCheckpointTest, MalformedShardIsReported) {
  TmpDir dir;
  write_with_index(dir, R"({"weight_map":{
      "model.layers.0.weight":"model-00001-of-00002.safetensors",
      "model.layers.1.weight":"model-00002-of-00002.safetensors"}})");
  spit(dir.file("model-00002-of-00002.safetensors"), "junk");
  Status st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  expect_message_has(st, {"model-00002-of-00002.safetensors"});
}

// compressed-tensors pack-quantized 4-bit weights: presented as the I8 `.weight` readers expect
// (the packed and shape tensors hidden, the file named, the stored bytes counted), and malformed
// packings refused naming the tensor.
TEST(SafetensorsCheckpointTest, PackedFourBitWeightsArePresentedAsInt8) {
  const std::vector<int8_t> q = {-8, 7, 0, 1, -1, 2, 3, -4, 5, -5, 6,   // row 0 (11 values)
                                 4,  -2, -3, 0, 0, 7, -8, 1, 1, 2, -7};  // row 1
  std::vector<uint8_t> packed(2 * 2 * 4);  // 2 rows of ceil(11 / 8) = 2 words
  int4_pack(q.data(), 2, 11, packed.data());
  const int64_t shape[2] = {2, 11};
  const float other = 1.5f;
  auto write = [&](const std::string& dir, std::vector<int64_t> pshape, bool with_shape,
                   bool with_plain) {
    std::vector<TensorView> v = {{"m.weight_packed", DType::kI32, pshape, packed.data(),
                                  uint64_t(pshape[0] * pshape[1] * 4)},
                                 {"other", DType::kF32, {1}, &other, 4}};
    if (with_shape) v.push_back({"m.weight_shape", DType::kI64, {2}, shape, 16});
    if (with_plain) v.push_back({"m.weight", DType::kI8, {2, 11}, q.data(), 22});
    ASSERT_TRUE(checkpoint_write(dir, v).is_ok());
  };
  {
    TmpDir d;
    write(d.path(), {2, 2}, true, false);
    auto ck = Checkpoint::open(d.path());
    ASSERT_TRUE(ck.is_ok()) << ck.status().message();
    EXPECT_EQ(ck->names(), (std::vector<std::string>{"m.weight", "other"}));
    const TensorInfo* t = ck->find("m.weight");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, DType::kI8);
    EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 11}));
    // A region (a tensor-parallel rank's rows and columns) unpacked from its own bytes: rows
    // 1 then 0, columns [2, 9), against the values written; odd first columns are refused.
    const std::vector<int64_t> rows = {1, 0};
    std::vector<int8_t> part(14, 99);
    ASSERT_TRUE(ck->unpack_region("m.weight", &rows, 2, 9, part.data()));
    std::vector<int8_t> want;
    for (int64_t r : rows)
      for (int64_t k = 2; k < 9; ++k) want.push_back(q[size_t(r * 11 + k)]);
    EXPECT_EQ(part, want);
    ASSERT_TRUE(ck->unpack_region("m.weight", nullptr, 10, 11, part.data()));
    EXPECT_EQ(part[0], q[10]);
    EXPECT_EQ(part[1], q[21]);
    EXPECT_FALSE(ck->unpack_region("m.weight", nullptr, 3, 9, part.data()));
    EXPECT_FALSE(ck->unpack_region("other", nullptr, 0, 1, part.data()));
    const int8_t* v = reinterpret_cast<const int8_t*>(ck->data(*t));
    EXPECT_EQ(std::vector<int8_t>(v, v + 22), q);
    EXPECT_EQ(ck->data(*t), ck->data(*t));  // unpacked once
    ASSERT_NE(ck->packed_of("m.weight"), nullptr);
    EXPECT_EQ(ck->packed_of("other"), nullptr);
    EXPECT_EQ(ck->file_of("m.weight"), "model.safetensors");
    EXPECT_EQ(ck->total_bytes(), 16u + 16u + 4u);  // as stored
  }
  struct Bad {
    std::vector<int64_t> pshape;
    bool with_shape, with_plain;
    std::string want;
  };
  for (const Bad& b : {Bad{{2, 2}, false, false, "'m.weight_packed' has no 'm.weight_shape'"},
                       Bad{{4, 1}, true, false, "expected I32 [2,2]"},  // same bytes
                       Bad{{2, 2}, true, true, "stored both packed"}}) {
    TmpDir d;
    write(d.path(), b.pshape, b.with_shape, b.with_plain);
    auto ck = Checkpoint::open(d.path());
    ASSERT_FALSE(ck.is_ok()) << b.want;
    EXPECT_EQ(ck.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(ck.status().message().find(b.want), std::string::npos) << ck.status().message();
  }
}

// A huge weight_shape (issue 25): int4_packed_cols(INT64_MAX) computed (cols + 7) / 8 and
// overflowed before the shape check; the sanitizer build (scripts/sanitize.sh) runs this too.
TEST(SafetensorsCheckpointTest, HugePackedWeightShapeIsRefusedWithoutOverflow) {
  EXPECT_EQ(int4_packed_cols(std::numeric_limits<int64_t>::max()),
            std::numeric_limits<int64_t>::max() / 8 + 1);
  EXPECT_EQ(int4_packed_cols(0), 0);
  EXPECT_EQ(int4_packed_cols(8), 1);
  EXPECT_EQ(int4_packed_cols(9), 2);
  const int32_t packed[4] = {0, 0, 0, 0};
  for (int64_t cols : {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max() - 3,
                       int64_t(-1)}) {
    const int64_t shape[2] = {2, cols};
    TmpDir d;
    ASSERT_TRUE(checkpoint_write(d.path(), {{"m.weight_packed", DType::kI32, {2, 2}, packed, 16},
                                            {"m.weight_shape", DType::kI64, {2}, shape, 16}})
                    .is_ok());
    auto ck = Checkpoint::open(d.path());
    ASSERT_FALSE(ck.is_ok());
    EXPECT_EQ(ck.status().code(), StatusCode::kInvalidInput);
    EXPECT_NE(ck.status().message().find("m.weight_packed"), std::string::npos)
        << ck.status().message();
  }
}

// A header nested deeper than kJsonMaxDepth is refused before nlohmann builds it.
TEST(SafetensorsMalformedTest, DeeplyNestedHeader) {
  TmpDir d;
  const std::string header =
      "{\"__metadata__\": {\"x\": \"" + std::string(10, 'a') + "\"}, \"t\": " +
      std::string(100000, '[') + std::string(100000, ']') + "}";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&bytes[0], &n, 8);
  bytes += header;
  const std::string path = d.file("deep.safetensors");
  std::ofstream(path, std::ios::binary) << bytes;
  auto f = SafetensorsFile::open(path);
  ASSERT_FALSE(f.is_ok());
  EXPECT_EQ(f.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(f.status().message().find("nested deeper than 64 levels"), std::string::npos)
      << f.status().message().substr(0, 300);
}

TEST(SafetensorsCheckpointTest, MissingCheckpoint) {
  TmpDir dir;
  Status st = open_status(dir.path());
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  expect_message_has(st, {dir.path(), "model.safetensors", "model.safetensors.index.json"});
  st = open_status(dir.file("absent"));
  EXPECT_EQ(st.code(), StatusCode::kNotFound);
  expect_message_has(st, {"absent", "does not exist"});
  spit(dir.file("plain"), "x");
  EXPECT_EQ(open_status(dir.file("plain")).code(), StatusCode::kInvalidInput);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face fixtures (made by transformers' save_pretrained)

std::vector<TensorView> views_of_checkpoint(const Checkpoint& ck) {
  std::vector<TensorView> v;
  for (const std::string& n : ck.names()) {
    const TensorInfo* t = ck.find(n);
    v.push_back({t->name, t->dtype, t->shape, ck.data(*t), t->nbytes});
  }
  return v;
}

void expect_same_tensors(const Checkpoint& a, const Checkpoint& b) {
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    const TensorInfo *ta = a.find(n), *tb = b.find(n);
    EXPECT_EQ(ta->dtype, tb->dtype) << n;
    EXPECT_EQ(ta->shape, tb->shape) << n;
    ASSERT_EQ(ta->nbytes, tb->nbytes) << n;
    EXPECT_EQ(std::memcmp(a.data(*ta), b.data(*tb), ta->nbytes), 0) << n;
  }
}

// Our writer reproduces an HF-written file byte for byte when given its tensors in file order.
void expect_resave_identical(const std::string& path) {
  auto f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.is_ok()) << f.status().message();
  std::vector<TensorView> views;
  for (const TensorInfo& t : (*f)->tensors())
    views.push_back({t.name, t.dtype, t.shape, (*f)->data(t), t.nbytes});
  TmpDir dir;
  ASSERT_TRUE(safetensors_write(dir.file("copy.safetensors"), views, (*f)->metadata()).is_ok());
  EXPECT_TRUE(slurp(dir.file("copy.safetensors")) == slurp(path)) << path;
}

TEST(SafetensorsHfTest, ShardedF16Checkpoint) {
  const std::string dir = kFixtures + "/hf/llama_mha_sharded_f16";
  auto ck = Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok()) << ck.status().message();
  EXPECT_EQ(ck->num_files(), 4u);
  EXPECT_EQ(ck->names().size(), 21u);
  EXPECT_EQ(ck->total_bytes(), 216704u);  // the index's total_size
  EXPECT_EQ(ck->metadata().at("format"), "pt");
  for (const std::string& n : ck->names()) EXPECT_EQ(ck->find(n)->dtype, DType::kF16) << n;
  const TensorInfo* emb = ck->find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{300, 64}));
  EXPECT_EQ(ck->file_of("model.embed_tokens.weight"), "model-00001-of-00004.safetensors");
  EXPECT_EQ(ck->file_of("lm_head.weight"), "model-00004-of-00004.safetensors");
  // Values are sane after conversion (a trained-from-init model: small and finite).
  std::vector<float> f(size_t(emb->numel()));
  convert_to_f32(emb->dtype, ck->data(*emb), f.data(), emb->numel());
  for (float v : f) ASSERT_TRUE(std::isfinite(v) && std::fabs(v) < 10.0f);

  for (int i = 1; i <= 4; ++i) {
    expect_resave_identical(dir + "/model-0000" + std::to_string(i) + "-of-00004.safetensors");
  }
  TmpDir out;
  ASSERT_TRUE(
      checkpoint_write(out.path(), views_of_checkpoint(*ck), ck->metadata(), 60000).is_ok());
  auto re = Checkpoint::open(out.path());
  ASSERT_TRUE(re.is_ok()) << re.status().message();
  EXPECT_GT(re->num_files(), 1u);
  expect_same_tensors(*ck, *re);
}

TEST(SafetensorsHfTest, SingleFileBF16Checkpoint) {
  const std::string dir = kFixtures + "/hf/qwen2_bias_tied_bf16";
  auto ck = Checkpoint::open(dir);
  ASSERT_TRUE(ck.is_ok()) << ck.status().message();
  EXPECT_EQ(ck->num_files(), 1u);
  EXPECT_EQ(ck->names().size(), 26u);
  EXPECT_EQ(ck->find("lm_head.weight"), nullptr);  // tied to the embedding
  for (const std::string& n : ck->names()) EXPECT_EQ(ck->find(n)->dtype, DType::kBF16) << n;
  const TensorInfo* emb = ck->find("model.embed_tokens.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->shape, (std::vector<int64_t>{300, 64}));
  const TensorInfo* bias = ck->find("model.layers.0.self_attn.q_proj.bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->shape.size(), 1u);

  expect_resave_identical(dir + "/model.safetensors");
  TmpDir out;
  ASSERT_TRUE(checkpoint_write(out.path(), views_of_checkpoint(*ck), ck->metadata()).is_ok());
  auto re = Checkpoint::open(out.path());
  ASSERT_TRUE(re.is_ok()) << re.status().message();
  expect_same_tensors(*ck, *re);
}

TEST(SafetensorsHfTest, AllFixtureFilesOpen) {
  for (const auto& entry : fsys::recursive_directory_iterator(kFixtures + "/hf")) {
    if (entry.path().extension() != ".safetensors") continue;
    auto f = SafetensorsFile::open(entry.path().string());
    EXPECT_TRUE(f.is_ok()) << f.status().message();
  }
}

}  // namespace
}  // namespace shrink::core
