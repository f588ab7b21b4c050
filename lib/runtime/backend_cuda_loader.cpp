// backend_cuda_create (backend.h): the CUDA backend is a plugin, libshrink_backend_cuda.so, which
// links the CUDA runtime and cuBLASLt; shrink_runtime and the programs do not. It is loaded the
// first time a CUDA backend is asked for, so CPU work neither needs the CUDA libraries on the
// machine nor keeps them resident (cuBLASLt alone: about 146 MiB from start-up).
// Tested: tests/runtime/test_engine.cpp (the error on a machine without a device or plugin),
// tests/cuda/test_backend.cpp (everything through the loaded plugin on a GPU).
#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "core/fs.h"
#include "runtime/backend.h"

namespace shrink::runtime {

namespace {

struct Plugin {
  BackendCudaCreateFn create = nullptr;
  std::string error;  // why it could not be loaded
};

// Loads the plugin once: $SHRINK_CUDA_BACKEND, else beside the executable, else ../lib from it.
const Plugin& plugin() {
  static Plugin p;
  static std::once_flag once;
  std::call_once(once, [] {
    std::vector<std::string> paths;
    if (const char* env = std::getenv("SHRINK_CUDA_BACKEND"); env && *env) {
      paths.push_back(env);
    } else {
      const std::string dir = core::executable_dir();
      paths.push_back(dir + "/" + kBackendCudaLibrary);
      paths.push_back(dir + "/../lib/" + kBackendCudaLibrary);
    }
    for (const std::string& path : paths) {
      if (access(path.c_str(), F_OK) != 0) {
        p.error += (p.error.empty() ? "" : "; ") + path + ": not found";
        continue;
      }
      void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) {
        const char* e = dlerror();
        p.error += (p.error.empty() ? "" : "; ") + std::string(e ? e : path + ": dlopen failed");
        continue;
      }
      p.create = reinterpret_cast<BackendCudaCreateFn>(dlsym(h, kBackendCudaSymbol));
      if (p.create) {
        p.error.clear();
        return;
      }
      p.error += (p.error.empty() ? "" : "; ") + path + ": no symbol " + kBackendCudaSymbol;
      dlclose(h);
    }
  });
  return p;
}

}  // namespace

Result<std::unique_ptr<Backend>> backend_cuda_create(const CudaBackendOptions& opts) {
#ifndef SHRINK_CUDA_PLUGIN
  (void)opts;
  return invalid_input(
      "--device cuda: this build has no CUDA support (configure with -DSHRINK_WITH_CUDA=ON on a "
      "machine with nvcc)");
#else
  const Plugin& p = plugin();
  if (!p.create) {
    return invalid_input("--device cuda: the CUDA backend could not be loaded (" + p.error +
                         "); it needs the CUDA 13 runtime and cuBLASLt (libcudart.so.13, "
                         "libcublasLt.so.13)");
  }
  std::string error;
  Backend* b = p.create(&opts, &error);
  if (!b) return invalid_input(error);
  return std::unique_ptr<Backend>(b);
#endif
}

}  // namespace shrink::runtime
