// c10d process group and the bucketed gradient reducer (see dist.h).
#include "train/dist.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>

#include "core/status.h"

namespace shrink::train {

namespace {

using Ms = std::chrono::milliseconds;
Ms to_ms(double s) { return Ms(int64_t(s * 1000.0)); }

[[noreturn]] void lost(const char* what, double timeout_s, const std::exception& e) {
  std::string msg = e.what();
  if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);  // drop c10 backtraces
  throw Error(StatusCode::kIoError,
              std::string("data-parallel: ") + what + " failed: " + msg +
                  ". Another rank has died, or stalled for longer than --dist-timeout (" +
                  std::to_string(int(timeout_s)) +
                  " s). Rerun with --resume to continue from the last checkpoint");
}

}  // namespace

struct DistGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

struct DistGroup::Pending {
  c10::intrusive_ptr<c10d::Work> work;
};

DistGroup::DistGroup(std::unique_ptr<Impl> impl, int rank, int size, double timeout_s)
    : impl_(std::move(impl)), rank_(rank), size_(size), timeout_s_(timeout_s) {}

DistGroup::~DistGroup() = default;

std::unique_ptr<DistGroup> DistGroup::join_store(const c10::intrusive_ptr<c10d::Store>& store,
                                                 int rank, int size, double timeout_s) {
  auto impl = std::make_unique<Impl>();
  impl->store = store;
  auto opts = c10d::ProcessGroupGloo::Options::create(to_ms(timeout_s));
  // The device binds where this rank is reachable: GLOO_SOCKET_IFNAME names an interface (as
  // with PyTorch); loopback rendezvous stays on loopback; otherwise the hostname's address.
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  const char* addr = std::getenv("MASTER_ADDR");
  std::string master = addr ? addr : "127.0.0.1";
  try {
    if (ifname && *ifname) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (master == "127.0.0.1" || master == "localhost") {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = 2;
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("shrink/pg", store);
    impl->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, size, opts);
  } catch (const std::exception& e) {
    lost("joining the Gloo process group", timeout_s, e);
  }
  return std::unique_ptr<DistGroup>(new DistGroup(std::move(impl), rank, size, timeout_s));
}

std::unique_ptr<DistGroup> DistGroup::join(const core::DistEnv& env, double timeout_s) {
  c10d::TCPStoreOptions so;
  so.port = uint16_t(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = size_t(env.world_size);
  so.waitWorkers = true;
  so.timeout = to_ms(timeout_s);
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    throw Error(StatusCode::kIoError,
                "data-parallel: rank " + std::to_string(env.rank) + " of " +
                    std::to_string(env.world_size) + " could not meet the others at " +
                    env.master_addr + ":" + std::to_string(env.master_port) +
                    " (MASTER_ADDR:MASTER_PORT) within --dist-timeout " +
                    std::to_string(int(timeout_s)) + " s: " + msg +
                    ". Start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE");
  }
  return join_store(store, env.rank, env.world_size, timeout_s);
}

void DistGroup::broadcast(std::vector<torch::Tensor> tensors, int root) {
  if (size_ == 1) return;
  c10d::BroadcastOptions bo;
  bo.rootRank = root;
  try {
    // One flat buffer: a single collective instead of one per parameter.
    std::vector<torch::Tensor> flat_parts;
    for (auto& t : tensors) flat_parts.push_back(t.detach().reshape({-1}).to(torch::kFloat32));
    std::vector<torch::Tensor> flat = {torch::cat(flat_parts)};
    impl_->pg->broadcast(flat, bo)->wait();
    int64_t off = 0;
    torch::NoGradGuard ng;
    for (auto& t : tensors) {
      t.copy_(flat[0].narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    lost("broadcasting the weights from rank 0", timeout_s_, e);
  }
}

void DistGroup::allreduce_sum(torch::Tensor t, const char* what) {
  if (size_ == 1) return;
  auto p = allreduce_start(t);
  wait(*p, what);
}

std::shared_ptr<DistGroup::Pending> DistGroup::allreduce_start(torch::Tensor t) {
  auto p = std::make_shared<Pending>();
  std::vector<torch::Tensor> v = {t};
  try {
    p->work = impl_->pg->allreduce(v);
  } catch (const std::exception& e) {
    lost("starting an all-reduce", timeout_s_, e);
  }
  return p;
}

void DistGroup::wait(Pending& p, const char* what) {
  try {
    p.work->wait();
  } catch (const std::exception& e) {
    lost(what, timeout_s_, e);
  }
}

void DistGroup::barrier(const char* what, double timeout_s) {
  if (size_ == 1) return;
  c10d::BarrierOptions bo;
  bo.timeout = to_ms(timeout_s > 0 ? timeout_s : timeout_s_);
  try {
    impl_->pg->barrier(bo)->wait();
  } catch (const std::exception& e) {
    lost(what, timeout_s > 0 ? timeout_s : timeout_s_, e);
  }
}

// ---- GradReducer ---------------------------------------------------------------------------

// Runs after AccumulateGrad has written the parameter's .grad for this backward.
struct ReadyHook : torch::autograd::FunctionPostHook {
  ReadyHook(GradReducer* r, size_t i) : reducer(r), index(i) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    reducer->on_grad_ready(index);
    return outputs;
  }
  GradReducer* reducer;
  size_t index;
};

GradReducer::GradReducer(DistGroup* group, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : group_(group), params_(std::move(params)) {
  bucket_of_.assign(params_.size(), 0);
  // Reverse registration order: the output side's gradients arrive first in backward.
  Bucket cur;
  int64_t cur_bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const int64_t bytes = params_[k].numel() * int64_t(sizeof(float));
    if (!cur.params.empty() && cur_bytes + bytes > bucket_bytes) {
      buckets_.push_back(std::move(cur));
      cur = Bucket{};
      cur_bytes = 0;
    }
    cur.params.push_back(k);
    cur.offsets.push_back(cur_bytes / int64_t(sizeof(float)));
    cur_bytes += bytes;
    grad_bytes_ += bytes;
  }
  if (!cur.params.empty()) buckets_.push_back(std::move(cur));
  for (size_t b = 0; b < buckets_.size(); ++b) {
    int64_t n = 0;
    for (size_t k : buckets_[b].params) {
      bucket_of_[k] = b;
      n += params_[k].numel();
    }
    buckets_[b].flat = torch::zeros({n}, torch::kFloat32);
  }
  for (size_t k = 0; k < params_.size(); ++k) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[k]);
    TORCH_CHECK(acc, "GradReducer: parameter ", k, " is not a leaf that requires grad");
    hook_keys_.push_back(acc->add_post_hook(std::make_unique<ReadyHook>(this, k)));
    accumulators_.push_back(std::move(acc));
  }
}

GradReducer::~GradReducer() {
  // Hooks point at this object: take them off the (possibly longer-lived) accumulators.
  for (size_t k = 0; k < accumulators_.size(); ++k) accumulators_[k]->del_post_hook(hook_keys_[k]);
}

double GradReducer::ring_bytes_sent() const {
  const double n = group_->size();
  return 2.0 * (n - 1.0) / n * double(grad_bytes_);
}

void GradReducer::arm() {
  armed_ = true;
  next_launch_ = 0;
  overlapped_ = 0;
  for (auto& b : buckets_) {
    b.ready = 0;
    b.pending.reset();
  }
}

void GradReducer::launch(Bucket& b) {
  for (size_t j = 0; j < b.params.size(); ++j) {
    const torch::Tensor& p = params_[b.params[j]];
    auto dst = b.flat.narrow(0, b.offsets[j], p.numel());
    if (p.grad().defined()) {
      dst.copy_(p.grad().reshape({-1}));
    } else {
      dst.zero_();  // unused in this step's graph: contributes zero, as in DDP
    }
  }
  b.pending = group_->allreduce_start(b.flat);
}

void GradReducer::launch_ready() {
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].ready == int64_t(buckets_[next_launch_].params.size())) {
    launch(buckets_[next_launch_]);
    ++overlapped_;
    ++next_launch_;
  }
}

void GradReducer::on_grad_ready(size_t k) {
  if (!armed_) return;
  buckets_[bucket_of_[k]].ready++;
  launch_ready();
}

void GradReducer::finish() {
  if (!armed_) return;
  armed_ = false;
  auto t0 = std::chrono::steady_clock::now();
  for (; next_launch_ < buckets_.size(); ++next_launch_) launch(buckets_[next_launch_]);
  torch::NoGradGuard ng;
  const double inv = 1.0 / double(group_->size());
  for (auto& b : buckets_) {
    group_->wait(*b.pending, "the gradient all-reduce");
    b.flat.mul_(inv);
    for (size_t j = 0; j < b.params.size(); ++j) {
      torch::Tensor& p = params_[b.params[j]];
      auto src = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(src);
      } else {
        p.mutable_grad() = src.clone();
      }
    }
    b.pending.reset();
  }
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace shrink::train
