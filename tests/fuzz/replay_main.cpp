// Corpus replay without libFuzzer: runs a harness's LLVMFuzzerTestOneInput over every file of
// the directories (recursively) and files named on the command line, in sorted order.
//
// Why: the normal (gcc) build has no libFuzzer, yet every seed and every crash the fuzzer ever
// found (tests/fuzz/regressions/<harness>/) must keep passing there; linked with this main, each
// harness becomes the ctest fuzz_replay_<harness>. A missing directory is skipped (regressions/
// exists only once something was found); a harness that crashes or traps fails the test, and the
// file being run is printed first so the failure names it.
// Usage: fuzz_replay_<harness> DIR_OR_FILE...
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    const fs::path p(argv[i]);
    if (fs::is_regular_file(p, ec)) {
      files.push_back(p);
    } else if (fs::is_directory(p, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(p, ec)) {
        if (e.is_regular_file(ec)) files.push_back(e.path());
      }
    } else {
      std::fprintf(stderr, "replay: %s does not exist; skipped\n", argv[i]);
    }
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<char> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
    if (!in.eof() && in.fail()) {
      std::fprintf(stderr, "replay: cannot read %s\n", f.c_str());
      return 1;
    }
    std::fprintf(stderr, "replay: %s (%zu bytes)\n", f.c_str(), bytes.size());
    // A copy in its own allocation, so that reads past the end hit ASan's redzone.
    std::vector<uint8_t> buf(bytes.begin(), bytes.end());
    LLVMFuzzerTestOneInput(buf.data(), buf.size());
  }
  std::fprintf(stderr, "replay: %zu inputs ran\n", files.size());
  return files.empty() ? 1 : 0;
}
