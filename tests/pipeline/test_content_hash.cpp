// ContentHasher (pipeline/content_hash.h): content, not paths, decides the hash; the cache spares
// reads of unchanged files and notices changed ones; directories cover names and contents.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "pipeline/content_hash.h"
#include "tests/util.h"

namespace shrink::pipeline {
namespace {

namespace fs = std::filesystem;

class ContentHashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir("hash");
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  void write(const std::string& name, const std::string& text) const {
    fs::create_directories(fs::path(path(name)).parent_path());
    std::ofstream(path(name), std::ios::binary) << text;
  }
  std::string dir_;
};

TEST_F(ContentHashTest, SameBytesSameHashAtAnyPathAndOneByteChangesIt) {
  write("a.txt", "the cat sat on the mat\n");
  write("b.txt", "the cat sat on the mat\n");
  write("c.txt", "the cat sat on the hat\n");  // same size, one byte differs
  ContentHasher h;
  const std::string a = h.hash(path("a.txt")).take_or_throw();
  EXPECT_EQ(a.size(), 16u);
  EXPECT_EQ(a, h.hash(path("b.txt")).take_or_throw());
  EXPECT_NE(a, h.hash(path("c.txt")).take_or_throw());
  // XXH3-64 of no bytes, from xxHash's own test vectors.
  write("empty", "");
  EXPECT_EQ(h.hash(path("empty")).take_or_throw(), "2d06800538d394c2");
}

TEST_F(ContentHashTest, CacheSkipsUnchangedFilesAndRereadsEditedOnes) {
  write("data.txt", std::string(10000, 'x'));
  const std::string cache = path("cache.json");
  std::string first;
  {
    ContentHasher h(cache);
    first = h.hash(path("data.txt")).take_or_throw();
    EXPECT_EQ(h.bytes_read(), 10000u);
    ASSERT_TRUE(h.save().is_ok());
  }
  {
    ContentHasher h(cache);  // a later run: nothing to read
    EXPECT_EQ(h.hash(path("data.txt")).take_or_throw(), first);
    EXPECT_EQ(h.bytes_read(), 0u);
  }
  write("data.txt", std::string(9999, 'x') + "y");  // edited in place, same size
  ContentHasher h(cache);
  EXPECT_NE(h.hash(path("data.txt")).take_or_throw(), first);
  EXPECT_EQ(h.bytes_read(), 10000u);
}

TEST_F(ContentHashTest, DirectoryCoversNamesAndContentsInAnyListingOrder) {
  write("d1/x/one.txt", "1");
  write("d1/two.txt", "2");
  write("d2/two.txt", "2");
  write("d2/x/one.txt", "1");  // created in the other order
  ContentHasher h;
  const std::string d1 = h.hash(path("d1")).take_or_throw();
  EXPECT_EQ(d1, h.hash(path("d2")).take_or_throw());
  fs::rename(path("d2/two.txt"), path("d2/three.txt"));
  EXPECT_NE(d1, h.hash(path("d2")).take_or_throw());
  write("d1/four.txt", "");
  EXPECT_NE(d1, h.hash(path("d1")).take_or_throw());
}

TEST_F(ContentHashTest, MissingPathAndCorruptCache) {
  write("cache.json", "{\"version\": 1, \"entries\": [[[");
  ContentHasher h(path("cache.json"));  // unreadable cache: empty, not an error
  auto r = h.hash(path("nope"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("nope"), std::string::npos);
}

TEST_F(ContentHashTest, ToolIdentityIsTheVersionAndTheExecutablesHash) {
  ContentHasher h;
  const std::string id = tool_identity(h).take_or_throw();
  EXPECT_EQ(id, std::string(SHRINK_VERSION) + "+" + h.hash("/proc/self/exe").take_or_throw());
}

}  // namespace
}  // namespace shrink::pipeline
