// NCCL tensor-parallel group of the CUDA backend; see backend_cuda_nccl.h.
#include "runtime/backend_cuda_nccl.h"

#include <dlfcn.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#if SHRINK_HAVE_NCCL_H
#include <nccl.h>
#endif

namespace shrink::runtime {

namespace {

using Clock = std::chrono::steady_clock;

// The part of NCCL's C ABI this group calls (nccl.h, stable since NCCL 2.0). Declared here
// because the library is loaded at run time and its header may be absent where the plugin is
// built; checked against nccl.h where that is present.
namespace abi {
using Result = int;  // ncclResult_t
struct CommS;
using Comm = CommS*;  // ncclComm_t
struct UniqueId {
  char internal[128];
};
constexpr Result kSuccess = 0, kInProgress = 7;
constexpr int kFloat32 = 7;       // ncclFloat32
constexpr int kSum = 0, kMax = 2;  // ncclSum, ncclMax
}  // namespace abi

#if SHRINK_HAVE_NCCL_H
static_assert(sizeof(abi::UniqueId) == sizeof(ncclUniqueId), "ncclUniqueId");
static_assert(abi::kSuccess == ncclSuccess && abi::kInProgress == ncclInProgress, "ncclResult_t");
static_assert(abi::kFloat32 == ncclFloat32, "ncclDataType_t");
static_assert(abi::kSum == ncclSum && abi::kMax == ncclMax, "ncclRedOp_t");
#endif

struct Api {
  std::string path;
  abi::Result (*get_version)(int*) = nullptr;
  abi::Result (*get_unique_id)(abi::UniqueId*) = nullptr;
  abi::Result (*comm_init_rank)(abi::Comm*, int, abi::UniqueId, int) = nullptr;
  abi::Result (*comm_destroy)(abi::Comm) = nullptr;
  abi::Result (*comm_abort)(abi::Comm) = nullptr;
  abi::Result (*comm_get_async_error)(abi::Comm, abi::Result*) = nullptr;
  abi::Result (*all_reduce)(const void*, void*, size_t, int, int, abi::Comm,
                            cudaStream_t) = nullptr;
  abi::Result (*all_gather)(const void*, void*, size_t, int, abi::Comm, cudaStream_t) = nullptr;
  const char* (*get_error_string)(abi::Result) = nullptr;
  const char* (*get_last_error)(abi::Comm) = nullptr;  // NCCL >= 2.13; may be null
};

template <typename F>
bool bind(void* lib, const char* name, F& f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

// libnccl.so.2, loaded once: $SHRINK_NCCL_LIBRARY, else by the dynamic linker's search.
const Api* api_load(std::string* error) {
  static Api api;
  static std::string load_error;
  static bool ok = false;
  static std::once_flag once;
  std::call_once(once, [] {
    std::vector<std::string> names;
    if (const char* env = std::getenv("SHRINK_NCCL_LIBRARY"); env && *env) {
      names.push_back(env);
    } else {
      names = {"libnccl.so.2", "libnccl.so"};
    }
    void* lib = nullptr;
    for (const std::string& n : names) {
      lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (lib) {
        api.path = n;
        break;
      }
      const char* e = dlerror();
      load_error += (load_error.empty() ? "" : "; ") + std::string(e ? e : n);
    }
    if (!lib) {
      load_error = "--tp on cuda needs NCCL, which could not be loaded (" + load_error +
                   "); set SHRINK_NCCL_LIBRARY to libnccl.so.2 or add its directory to "
                   "LD_LIBRARY_PATH (pip's nvidia-nccl-cu13 puts it in "
                   "site-packages/nvidia/nccl/lib)";
      return;
    }
    const bool all = bind(lib, "ncclGetVersion", api.get_version) &&
                     bind(lib, "ncclGetUniqueId", api.get_unique_id) &&
                     bind(lib, "ncclCommInitRank", api.comm_init_rank) &&
                     bind(lib, "ncclCommDestroy", api.comm_destroy) &&
                     bind(lib, "ncclCommAbort", api.comm_abort) &&
                     bind(lib, "ncclCommGetAsyncError", api.comm_get_async_error) &&
                     bind(lib, "ncclAllReduce", api.all_reduce) &&
                     bind(lib, "ncclAllGather", api.all_gather) &&
                     bind(lib, "ncclGetErrorString", api.get_error_string);
    bind(lib, "ncclGetLastError", api.get_last_error);
    if (!all) {
      load_error = api.path + " lacks an NCCL 2 entry point (ncclCommAbort, ncclAllGather, ...)";
      return;
    }
    ok = true;
  });
  if (!ok) *error = load_error;
  return ok ? &api : nullptr;
}

}  // namespace

struct NcclGroup::Impl {
  const Api* api = nullptr;
  abi::Comm comm = nullptr;
  cudaStream_t stream = nullptr;
  bool aborted = false;
  int version = 0;

  std::string error_text(abi::Result r) const {
    std::string s = api->get_error_string(r);
    if (api->get_last_error && comm) {
      const char* last = api->get_last_error(comm);
      if (last && *last) s += std::string(" (") + last + ")";
    }
    return s;
  }
  void abort() {
    if (aborted || !comm) return;
    aborted = true;
    api->comm_abort(comm);
    comm = nullptr;
  }
};

NcclGroup::NcclGroup(std::shared_ptr<TpComm> host) : host_(std::move(host)) {}

std::string NcclGroup::failure(const std::string& what, const std::string& detail) const {
  const std::string peer = size() == 2 ? "rank " + std::to_string(1 - rank()) : "a peer rank";
  return "tensor parallelism: rank " + std::to_string(rank()) + " of " + std::to_string(size()) +
         ": NCCL " + what + " failed (" + peer + " died or stalled past --dist-timeout " +
         std::to_string(int(timeout_s)) + " s): " + detail;
}

Result<std::shared_ptr<NcclGroup>> NcclGroup::join(std::shared_ptr<TpComm> host,
                                                   cudaStream_t stream) {
  const int n = host->size(), rank = host->rank();
  std::shared_ptr<NcclGroup> g(new NcclGroup(host));
  g->timeout_s = host->timeout_s;
  g->impl_ = std::make_unique<Impl>();
  g->impl_->stream = stream;
  const std::string at = "tensor parallelism: rank " + std::to_string(rank) + " of " +
                         std::to_string(n) + ": ";
  std::string load_error;
  const Api* api = api_load(&load_error);
  abi::UniqueId id{};
  try {
    // Every rank says whether it has NCCL (and rank 0 its id) before any waits for rank 0's id.
    std::vector<float> failed(size_t(n), 0.0f);
    abi::Result id_result = abi::kSuccess;
    if (api && rank == 0) id_result = api->get_unique_id(&id);
    failed[size_t(rank)] = !api ? 1.0f : id_result != abi::kSuccess ? 2.0f : 0.0f;
    host->allreduce_sum(failed.data(), n);
    if (!api) return Status(StatusCode::kInternal, at + load_error);
    if (id_result != abi::kSuccess) {
      return Status(StatusCode::kInternal,
                    at + "ncclGetUniqueId failed: " + api->get_error_string(id_result));
    }
    for (int r = 0; r < n; ++r) {
      if (failed[size_t(r)] != 0.0f) {
        return Status(StatusCode::kInternal,
                      at + "rank " + std::to_string(r) +
                          (failed[size_t(r)] == 1.0f ? " could not load NCCL"
                                                     : " could not make the NCCL id") +
                          " (its own error says why)");
      }
    }
    std::vector<uint8_t> bytes;
    if (rank == 0) bytes.assign(id.internal, id.internal + sizeof id.internal);
    host->broadcast(bytes);
    if (bytes.size() != sizeof id.internal) {
      return Status(StatusCode::kInternal, at + "rank 0's NCCL id did not arrive whole");
    }
    std::memcpy(id.internal, bytes.data(), bytes.size());
  } catch (const TpError& e) {
    return Status(StatusCode::kInternal, at + "NCCL handshake: " + e.what());
  }
  g->impl_->api = api;
  api->get_version(&g->impl_->version);
  // ncclCommInitRank blocks until every rank has joined: run it on a helper thread (on this
  // thread's device) and wait for it within the timeout. A rank that stalls leaves the helper
  // behind; the process then exits on the error.
  int dev = 0;
  cudaGetDevice(&dev);
  struct Init {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    abi::Result r = abi::kSuccess;
    abi::Comm comm = nullptr;
  };
  auto init = std::make_shared<Init>();
  std::thread([init, api, id, dev, n, rank] {
    cudaSetDevice(dev);
    abi::Comm c = nullptr;
    const abi::Result r = api->comm_init_rank(&c, n, id, rank);
    std::lock_guard<std::mutex> lk(init->mu);
    init->r = r;
    init->comm = c;
    init->done = true;
    init->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lk(init->mu);
  if (!init->cv.wait_for(lk, std::chrono::duration<double>(g->timeout_s),
                         [&] { return init->done; })) {
    return Status(StatusCode::kInternal,
                  at + "ncclCommInitRank did not complete within --dist-timeout " +
                      std::to_string(int(g->timeout_s)) + " s (a peer rank died or stalled)");
  }
  if (init->r != abi::kSuccess) {
    std::string why = api->get_error_string(init->r);
    if (api->get_last_error) {
      const char* last = api->get_last_error(nullptr);
      if (last && *last) why += std::string(": ") + last;
    }
    return Status(StatusCode::kInternal, at + "ncclCommInitRank on device " +
                                             std::to_string(dev) + " failed: " + why +
                                             " (NCCL needs one device per rank)");
  }
  g->impl_->comm = init->comm;
  return g;
}

NcclGroup::~NcclGroup() {
  if (!impl_ || !impl_->comm) return;
  Impl& m = *impl_;
  const Status done = wait_until([&] { return cudaStreamQuery(m.stream); }, "the last collectives");
  if (done.is_ok() && !m.aborted) {
    m.api->comm_destroy(m.comm);
  } else {
    m.abort();
  }
  m.comm = nullptr;
}

std::string NcclGroup::version() const {
  const int v = impl_ ? impl_->version : 0;
  // NCCL_VERSION_CODE: major * 10000 + minor * 100 + patch (2.9 and later).
  return "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

void NcclGroup::reduce(float* x, int64_t n, Reduce op) {
  Impl& m = *impl_;
  const char* what = op == Reduce::kSum ? "all-reduce" : "all-reduce (max)";
  if (m.aborted) throw TpError(failure(what, "the group was aborted after an earlier failure"));
  const abi::Result r = m.api->all_reduce(x, x, size_t(n), abi::kFloat32,
                                          op == Reduce::kSum ? abi::kSum : abi::kMax, m.comm,
                                          m.stream);
  if (r != abi::kSuccess) throw TpError(failure(what, m.error_text(r)));
}

void NcclGroup::gather(const float* in, int64_t n, float* out) {
  Impl& m = *impl_;
  if (m.aborted) throw TpError(failure("all-gather", "the group was aborted after an earlier failure"));
  const abi::Result r =
      m.api->all_gather(in, out, size_t(n), abi::kFloat32, m.comm, m.stream);
  if (r != abi::kSuccess) throw TpError(failure("all-gather", m.error_text(r)));
}

Status NcclGroup::wait_until(const std::function<cudaError_t()>& query, const char* what) {
  Impl& m = *impl_;
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration<double>(timeout_s);
  for (uint64_t i = 0;; ++i) {
    const cudaError_t e = query();
    if (e != cudaErrorNotReady) {
      if (e == cudaSuccess) return Status::ok();
      cudaGetLastError();
      return internal_error(std::string("cuda: ") + what + ": " + cudaGetErrorString(e));
    }
    if (m.aborted) {
      return internal_error(failure(what, "the group was aborted after an earlier failure"));
    }
    if (i % 64 == 0) {  // a peer's connection lost shows here before any timeout
      abi::Result a = abi::kSuccess;
      m.api->comm_get_async_error(m.comm, &a);
      if (a != abi::kSuccess && a != abi::kInProgress) {
        const std::string text = m.error_text(a);
        m.abort();
        return internal_error(failure(std::string("collective, waiting for ") + what, text));
      }
    }
    const auto now = Clock::now();
    if (now > deadline) {
      m.abort();
      return internal_error(failure(std::string("collective, waiting for ") + what,
                                    "it did not complete"));
    }
    tp_wait_pause(now - t0);
  }
}

}  // namespace shrink::runtime
