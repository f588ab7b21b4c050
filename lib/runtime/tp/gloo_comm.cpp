// Gloo tensor-parallel group with an HTTP rendezvous store; see gloo_comm.h.
#include "runtime/tp/gloo_comm.h"

#include <httplib.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

namespace shrink::runtime {

namespace {

using Clock = std::chrono::steady_clock;

// Rank 0's side of the store: keys set once, read by every rank.
class StoreServer {
 public:
  Status start(const std::string& host, int port) {
    server_.Post("/set", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      kv_[req.get_param_value("k")] = req.body;
      res.set_content("ok", "text/plain");
    });
    server_.Get("/get", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = kv_.find(req.get_param_value("k"));
      if (it == kv_.end()) {
        res.status = 404;
        return;
      }
      res.set_content(it->second, "application/octet-stream");
    });
    if (!server_.bind_to_port(host, port)) {
      return Status(StatusCode::kIoError,
                    "tensor parallelism: rank 0 cannot listen on MASTER_ADDR:MASTER_PORT " + host +
                        ":" + std::to_string(port) + " (in use, or not an address of this host)");
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    return Status::ok();
  }
  ~StoreServer() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  httplib::Server server_;
  std::thread thread_;
  std::mutex mu_;
  std::map<std::string, std::string> kv_;
};

// Every rank's client of the store, as Gloo's rendezvous asks for it.
class HttpStore : public gloo::rendezvous::Store {
 public:
  HttpStore(const std::string& host, int port, double timeout_s)
      : client_(host, port), where_(host + ":" + std::to_string(port)), timeout_s_(timeout_s) {
    client_.set_connection_timeout(std::chrono::seconds(5));
    client_.set_read_timeout(std::chrono::seconds(10));
  }
  void set(const std::string& key, const std::vector<char>& data) override {
    const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s_);
    while (true) {  // rank 0's server may not be listening yet
      auto r = client_.Post("/set?k=" + key, std::string(data.begin(), data.end()),
                            "application/octet-stream");
      if (r && r->status == 200) return;
      if (Clock::now() > deadline) {
        throw TpError("tensor parallelism: the rendezvous store at " + where_ +
                      " (rank 0, MASTER_ADDR:MASTER_PORT) did not answer within the timeout");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  std::vector<char> get(const std::string& key) override {
    wait({key});
    auto r = client_.Get("/get?k=" + key);
    if (!r || r->status != 200) {
      throw TpError("tensor parallelism: the rendezvous store at " + where_ + " lost key " + key);
    }
    return std::vector<char>(r->body.begin(), r->body.end());
  }
  void wait(const std::vector<std::string>& keys) override {
    wait(keys, std::chrono::milliseconds(int64_t(timeout_s_ * 1000)));
  }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    const auto deadline = Clock::now() + timeout;
    for (const std::string& k : keys) {
      while (true) {
        auto r = client_.Get("/get?k=" + k);
        if (r && r->status == 200) break;
        if (Clock::now() > deadline) {
          throw TpError("tensor parallelism: rendezvous timed out after " +
                        std::to_string(timeout.count() / 1000) + " s waiting for " + k +
                        " at " + where_ + " (a rank did not start, or died)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }

 private:
  httplib::Client client_;
  std::string where_;
  double timeout_s_;
};

bool loopback(const std::string& a) {
  return a == "localhost" || a.rfind("127.", 0) == 0 || a == "::1";
}

class GlooComm : public TpComm {
 public:
  int rank() const override { return ctx_->rank; }
  int size() const override { return ctx_->size; }

  void allreduce_sum(float* x, int64_t n) override {
    const auto t0 = Clock::now();
    try {
      gloo::AllreduceOptions o(ctx_);
      o.setOutput(x, size_t(n));
      o.setReduceFunction(
          static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
      o.setTag(tag_++);
      o.setTimeout(timeout_);
      gloo::allreduce(o);
    } catch (const std::exception& e) {
      throw TpError(failure("all-reduce", e.what()));
    }
    stats_.allreduce_calls++;
    stats_.allreduce_bytes += uint64_t(n) * 4;
    stats_.allreduce_s += std::chrono::duration<double>(Clock::now() - t0).count();
  }

  void allgather(const float* in, int64_t n, float* out) override {
    const auto t0 = Clock::now();
    try {
      gloo::AllgatherOptions o(ctx_);
      o.setInput(const_cast<float*>(in), size_t(n));
      o.setOutput(out, size_t(n) * size_t(ctx_->size));
      o.setTag(tag_++);
      o.setTimeout(timeout_);
      gloo::allgather(o);
    } catch (const std::exception& e) {
      throw TpError(failure("all-gather", e.what()));
    }
    stats_.allgather_calls++;
    stats_.allgather_bytes += uint64_t(n) * 4;
    stats_.allgather_s += std::chrono::duration<double>(Clock::now() - t0).count();
  }

  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  std::shared_ptr<gloo::transport::Device> dev_;
  std::unique_ptr<StoreServer> server_;
  std::chrono::milliseconds timeout_{30000};
  uint32_t tag_ = 0;

 private:
  std::string failure(const char* what, const char* detail) const {
    return "tensor parallelism: rank " + std::to_string(ctx_->rank) + " of " +
           std::to_string(ctx_->size) + ": " + what +
           " failed (a peer rank died or stalled past --dist-timeout " +
           std::to_string(timeout_.count() / 1000) + " s): " + detail;
  }
};

}  // namespace

Result<std::shared_ptr<TpComm>> tp_join(const core::DistEnv& env, double timeout_s) {
  auto comm = std::make_shared<GlooComm>();
  comm->timeout_ = std::chrono::milliseconds(int64_t(timeout_s * 1000));
  try {
    if (env.rank == 0) {
      comm->server_ = std::make_unique<StoreServer>();
      SHRINK_RETURN_IF_ERROR(comm->server_->start(env.master_addr, env.master_port));
    }
    gloo::transport::tcp::attr attr;
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
      attr.iface = ifname;
    } else if (loopback(env.master_addr)) {
      attr.hostname = "127.0.0.1";
    } else {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      attr.hostname = host;
    }
    comm->dev_ = gloo::transport::tcp::CreateDevice(attr);
    HttpStore store(env.master_addr, env.master_port, timeout_s);
    gloo::rendezvous::PrefixStore prefix("shrink-tp", store);
    comm->ctx_ = std::make_shared<gloo::rendezvous::Context>(env.rank, env.world_size);
    comm->ctx_->setTimeout(comm->timeout_);
    comm->ctx_->connectFullMesh(prefix, comm->dev_);
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, "tensor parallelism: rank " + std::to_string(env.rank) +
                                             " could not join the group of " +
                                             std::to_string(env.world_size) + ": " + e.what());
  }
  return std::shared_ptr<TpComm>(std::move(comm));
}

}  // namespace shrink::runtime
