// Tests for core/fs.h: whole-file reads, atomic writes (no temporary left behind), and AtomicDir
// (nothing at the final path until commit, replacement of an existing directory, cleanup of an
// uncommitted one, moves, removal of a killed process's leftovers). Kills themselves are in
// tests/cli/test_faults.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "core/fs.h"

namespace shrink::core {
namespace {

namespace fsys = std::filesystem;

class FsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    root_ = (fsys::path(::testing::TempDir()) /
             ("shrink_fs_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    fsys::remove_all(root_);
    fsys::create_directories(root_);
  }
  void TearDown() override {
    std::error_code ec;
    fsys::remove_all(root_, ec);
  }
  std::string p(const std::string& rel) const { return root_ + "/" + rel; }
  // Entries of the root directory, by name.
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fsys::directory_iterator(root_)) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string root_;
};

TEST_F(FsTest, WriteThenReadRoundTrips) {
  const std::string content("binary\0data\xff", 12);
  ASSERT_TRUE(write_file_atomic(p("a.bin"), content).is_ok());
  auto r = read_file(p("a.bin"));
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_EQ(*r, content);
  EXPECT_EQ(listing(), std::vector<std::string>{"a.bin"});  // no temporary left behind

  ASSERT_TRUE(write_file_atomic(p("a.bin"), "").is_ok());  // replace with an empty file
  EXPECT_EQ(read_file(p("a.bin")).value(), "");

  const std::string x = "xy", y = "z";
  ASSERT_TRUE(
      write_file_atomic_spans(p("b.bin"), {{x.data(), 2}, {nullptr, 0}, {y.data(), 1}}).is_ok());
  EXPECT_EQ(read_file(p("b.bin")).value(), "xyz");
}

TEST_F(FsTest, Errors) {
  auto r = read_file(p("missing.txt"));
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("missing.txt"), std::string::npos);

  auto d = read_file(root_);
  ASSERT_FALSE(d.is_ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidInput);

  Status st = write_file_atomic(p("no/such/dir/f.txt"), "x");
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("no/such/dir/f.txt"), std::string::npos) << st.message();
}

TEST_F(FsTest, PathPredicates) {
  ASSERT_TRUE(write_file_atomic(p("f"), "x").is_ok());
  EXPECT_TRUE(path_exists(p("f")));
  EXPECT_FALSE(is_directory(p("f")));
  EXPECT_TRUE(path_exists(root_));
  EXPECT_TRUE(is_directory(root_));
  EXPECT_FALSE(path_exists(p("nope")));
  EXPECT_FALSE(is_directory(p("nope")));
}

TEST_F(FsTest, AtomicDirAppearsOnlyOnCommit) {
  auto ad = AtomicDir::create(p("out/model"));  // parent "out" is created
  ASSERT_TRUE(ad.is_ok()) << ad.status().message();
  EXPECT_TRUE(is_directory(ad->path()));
  EXPECT_EQ(ad->final_path(), p("out/model"));
  EXPECT_EQ(fsys::path(ad->path()).parent_path(), fsys::path(p("out")));
  ASSERT_TRUE(write_file_atomic(ad->path() + "/w.txt", "hello").is_ok());
  EXPECT_FALSE(path_exists(p("out/model")));
  ASSERT_TRUE(ad->commit().is_ok());
  EXPECT_EQ(read_file(p("out/model/w.txt")).value(), "hello");
  EXPECT_FALSE(path_exists(ad->path()));
  EXPECT_FALSE(ad->commit().is_ok());  // a second commit is a bug, reported not crashed
}

TEST_F(FsTest, AtomicDirReplacesExistingDirectory) {
  fsys::create_directories(p("model"));
  ASSERT_TRUE(write_file_atomic(p("model/old.txt"), "old").is_ok());
  {
    auto ad = AtomicDir::create(p("model/"));  // a trailing slash names the same directory
    ASSERT_TRUE(ad.is_ok()) << ad.status().message();
    ASSERT_TRUE(write_file_atomic(ad->path() + "/new.txt", "new").is_ok());
    EXPECT_TRUE(path_exists(p("model/old.txt")));  // untouched until commit
    ASSERT_TRUE(ad->commit().is_ok());
  }
  EXPECT_FALSE(path_exists(p("model/old.txt")));
  EXPECT_EQ(read_file(p("model/new.txt")).value(), "new");
  EXPECT_EQ(listing(), std::vector<std::string>{"model"});  // no .tmp-* or .old-* left
}

TEST_F(FsTest, AtomicDirRefusesToReplaceAFile) {
  ASSERT_TRUE(write_file_atomic(p("model"), "i am a file").is_ok());
  auto ad = AtomicDir::create(p("model"));
  ASSERT_TRUE(ad.is_ok());
  Status st = ad->commit();
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput) << st.message();
  EXPECT_EQ(read_file(p("model")).value(), "i am a file");
}

TEST_F(FsTest, UncommittedAtomicDirIsRemoved) {
  std::string tmp;
  {
    auto ad = AtomicDir::create(p("model"));
    ASSERT_TRUE(ad.is_ok());
    tmp = ad->path();
    ASSERT_TRUE(write_file_atomic(tmp + "/partial", "x").is_ok());
  }
  EXPECT_FALSE(path_exists(tmp));
  EXPECT_FALSE(path_exists(p("model")));
  EXPECT_TRUE(listing().empty());
}

TEST_F(FsTest, AtomicDirMoveTransfersOwnership) {
  auto a = AtomicDir::create(p("m"));
  ASSERT_TRUE(a.is_ok());
  auto b = AtomicDir::create(p("m"));
  ASSERT_TRUE(b.is_ok());
  EXPECT_NE(a->path(), b->path());  // two in flight do not collide
  std::string tmp = a->path();
  {
    AtomicDir moved(std::move(*a));
    EXPECT_EQ(moved.path(), tmp);
    EXPECT_TRUE(is_directory(tmp));  // the moved-from object's state must not delete it
  }
  EXPECT_FALSE(path_exists(tmp));  // the new owner cleaned up
  ASSERT_TRUE(b->commit().is_ok());
  EXPECT_TRUE(is_directory(p("m")));
}

// A process killed before commit() leaves "<final>.tmp-<pid>-<n>"; the next AtomicDir for the
// same path deletes it, but never a live one's (locked), a just-made empty one (it may not be
// locked yet) or a name that is not ours.
TEST_F(FsTest, AtomicDirSweepsStaleTemporaries) {
  fsys::create_directories(p("model.tmp-999999-0"));
  ASSERT_TRUE(write_file_atomic(p("model.tmp-999999-0/model.safetensors"), "partial").is_ok());
  fsys::create_directories(p("model.tmp-999999-1"));  // empty and young: left alone
  fsys::create_directories(p("model.tmp-backup"));    // not a temporary name
  ASSERT_TRUE(write_file_atomic(p("model.tmp-backup/keep"), "x").is_ok());
  fsys::create_directories(p("other.tmp-999999-0"));  // another output's
  ASSERT_TRUE(write_file_atomic(p("other.tmp-999999-0/x"), "x").is_ok());
  auto live = AtomicDir::create(p("model"));
  ASSERT_TRUE(live.is_ok());
  ASSERT_TRUE(write_file_atomic(live->path() + "/w", "in flight").is_ok());
  auto ad = AtomicDir::create(p("model"));
  ASSERT_TRUE(ad.is_ok());
  const std::string live_name = fsys::path(live->path()).filename();
  const std::string ad_name = fsys::path(ad->path()).filename();
  std::vector<std::string> want = {ad_name, live_name, "model.tmp-999999-1", "model.tmp-backup",
                                   "other.tmp-999999-0"};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(listing(), want);
  ASSERT_TRUE(ad->commit().is_ok());
  EXPECT_TRUE(is_directory(live->path()));  // a commit does not sweep either
}

TEST_F(FsTest, AtomicDirRejectsUnusablePaths) {
  EXPECT_EQ(AtomicDir::create("").status().code(), StatusCode::kInvalidInput);
  EXPECT_EQ(AtomicDir::create("/").status().code(), StatusCode::kInvalidInput);
}

}  // namespace
}  // namespace shrink::core

namespace shrink::core {
namespace {

// Sizes as users write them (--max-memory): powers of 1024, optional iB/B, clear errors.
TEST(BytesParse, SuffixesArePowersOf1024AndJunkIsRefused) {
  EXPECT_EQ(bytes_parse("4G").value(), uint64_t(4) << 30);
  EXPECT_EQ(bytes_parse("512M").value(), uint64_t(512) << 20);
  EXPECT_EQ(bytes_parse("1.5GiB").value(), uint64_t(3) << 29);
  EXPECT_EQ(bytes_parse("64k").value(), uint64_t(65536));
  EXPECT_EQ(bytes_parse("2TB").value(), uint64_t(2) << 40);
  EXPECT_EQ(bytes_parse("100").value(), uint64_t(100));
  EXPECT_EQ(bytes_parse("100B").value(), uint64_t(100));
  for (const char* bad : {"", "G", "4X", "4GG", "-1G", "four", "4 G", "nan"}) {
    auto r = bytes_parse(bad);
    ASSERT_FALSE(r.is_ok()) << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput) << bad;
    EXPECT_NE(r.status().message().find("expected a number of bytes"), std::string::npos) << bad;
  }
}

// A spilled buffer is a file mapping: what is written reads back after its pages are released,
// and the file leaves no name behind.
TEST(ScratchBuffer, SpilledPagesReadBackAfterRelease) {
  const std::string dir = fsys::temp_directory_path() / ("shrink_spill_" + std::to_string(getpid()));
  fsys::create_directories(dir);
  const uint64_t n = uint64_t(3) << 20;
  for (bool spill : {false, true}) {
    ScratchBuffer b = ScratchBuffer::create(n, spill, dir).take_or_throw();
    ASSERT_EQ(b.size(), n);
    EXPECT_EQ(b.spilled(), spill);
    for (uint64_t i = 0; i < n; ++i) b.data()[i] = uint8_t(i * 131 + 7);
    b.release(0, n);
    uint64_t wrong = 0;
    for (uint64_t i = 0; i < n; ++i) wrong += b.data()[i] != uint8_t(i * 131 + 7);
    EXPECT_EQ(wrong, 0u) << spill;
  }
  EXPECT_TRUE(fsys::is_empty(dir));
  fsys::remove_all(dir);
}

}  // namespace
}  // namespace shrink::core
