// llamacpp_quantize: llama.cpp's own quantizer as a peer, from the prebuilt libllama that
// node-llama-cpp ships (.npm-ort/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/), which
// has no llama-quantize program: it loads the library with dlopen and calls
// llama_model_quantize(), the function llama-quantize is a command line around, with the
// library's default parameters but the type and thread count given. Not linked against llama.cpp,
// so the build does not depend on the npm package; scripts/llamacpp_bench.sh and scale_check.sh
// run it.
//   llamacpp_quantize LIBLLAMA.so IN.gguf OUT.gguf TYPE THREADS
// TYPE: q4_0 q4_1 q8_0 q4_k_m q5_k_m q6_k f16 bf16 (llama.cpp's LLAMA_FTYPE_MOSTLY_*).
// Prints {"type", "seconds"}; exit 0 ok, 1 failure, 2 usage.
#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

namespace {

// llama_model_quantize_params begins with int32 nthread and the llama_ftype; the rest is kept as
// llama_model_quantize_default_params() returns it. The buffer is larger than any version's
// struct, so a by-value return of it (through a hidden pointer, as for any struct over 16 bytes)
// fits.
struct Params {
  int32_t nthread;
  int32_t ftype;
  unsigned char rest[1024];
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: llamacpp_quantize LIBLLAMA.so IN.gguf OUT.gguf TYPE THREADS\n");
    return 2;
  }
  static const std::map<std::string, int32_t> ftypes = {
      {"f16", 1},    {"q4_0", 2},    {"q4_1", 3},    {"q8_0", 7},
      {"q4_k_m", 15}, {"q5_k_m", 17}, {"q6_k", 18},   {"bf16", 32}};
  auto it = ftypes.find(argv[4]);
  if (it == ftypes.end()) {
    std::fprintf(stderr, "llamacpp_quantize: type '%s': expected q4_0, q4_1, q8_0, q4_k_m, q5_k_m, q6_k, f16 or bf16\n", argv[4]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    std::fprintf(stderr, "llamacpp_quantize: %s\n", dlerror());
    return 1;
  }
  using DefaultsFn = Params (*)();
  using QuantizeFn = uint32_t (*)(const char*, const char*, const Params*);
  using InitFn = void (*)();
  auto defaults = reinterpret_cast<DefaultsFn>(dlsym(lib, "llama_model_quantize_default_params"));
  auto quantize = reinterpret_cast<QuantizeFn>(dlsym(lib, "llama_model_quantize"));
  auto init = reinterpret_cast<InitFn>(dlsym(lib, "llama_backend_init"));
  if (!defaults || !quantize) {
    std::fprintf(stderr, "llamacpp_quantize: %s lacks llama_model_quantize\n", argv[1]);
    return 1;
  }
  if (init) init();
  Params p = defaults();
  p.nthread = std::stoi(argv[5]);
  p.ftype = it->second;
  const auto t0 = std::chrono::steady_clock::now();
  const uint32_t rc = quantize(argv[2], argv[3], &p);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rc != 0) {
    std::fprintf(stderr, "llamacpp_quantize: llama_model_quantize failed (%u)\n", rc);
    return 1;
  }
  std::printf("{\"type\": \"%s\", \"seconds\": %.3f}\n", argv[4], s);
  return 0;
}
