// Gloo tensor-parallel group with an HTTP rendezvous store; see gloo_comm.h.
#include "runtime/tp/gloo_comm.h"

#include <httplib.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if SHRINK_HAVE_GLOO
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#else
// Without Gloo, the store interface the rendezvous implements (as gloo/rendezvous/store.h).
namespace gloo::rendezvous {
class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) {
    wait(keys);
  }
};
}  // namespace gloo::rendezvous
#endif

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
    // Every heartbeat counter at once ("rank counter" lines; see Heartbeat).
    server_.Get("/beats", [this](const httplib::Request&, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      std::string body;
      for (auto it = kv_.lower_bound("hb-"); it != kv_.end() && it->first.rfind("hb-", 0) == 0; ++it)
        body += it->first.substr(3) + " " + it->second + "\n";
      res.set_content(body, "text/plain");
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

#if SHRINK_HAVE_GLOO
// Gloo's errors name a peer's address, or (a timeout in a ring) no peer at all. So every rank
// beats a counter into rank 0's store every half second and reads everyone's back: a rank whose
// collective failed names the ranks whose counters had stood still for 1.5 s as of its last read
// of the store (which stays valid after rank 0, and its store, exit on their own failure).
class Heartbeat {
 public:
  Heartbeat(const std::string& host, int port, int rank, int size)
      : client_(host, port), rank_(rank), changed_(size_t(size), Clock::now()),
        seen_(size_t(size)), last_read_(Clock::now()) {
    client_.set_connection_timeout(std::chrono::seconds(1));
    client_.set_read_timeout(std::chrono::seconds(1));
    thread_ = std::thread([this] { run(); });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  /// The other ranks whose beat had stood still for 1.5 s at the last read; rank 0 when the store
  /// stopped answering with every beat still moving; "" when nothing is known.
  std::string silent() const {
    std::lock_guard<std::mutex> lk(mu_);
    std::string out;
    for (size_t r = 0; r < changed_.size(); ++r) {
      if (int(r) == rank_ || last_read_ - changed_[r] < std::chrono::milliseconds(1500)) continue;
      out += (out.empty() ? "rank " : ", rank ") + std::to_string(r);
    }
    if (out.empty() && Clock::now() - last_read_ > std::chrono::milliseconds(1500))
      out = "rank 0 (its rendezvous store stopped answering)";
    return out;
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (uint64_t n = 1; !stop_; ++n) {
      lk.unlock();
      client_.Post("/set?k=hb-" + std::to_string(rank_), std::to_string(n), "text/plain");
      auto res = client_.Get("/beats");
      lk.lock();
      if (res && res->status == 200) {
        const auto now = Clock::now();
        last_read_ = now;
        size_t at = 0;
        while (at < res->body.size()) {
          const size_t end = res->body.find('\n', at);
          const std::string line = res->body.substr(at, end - at);
          at = end == std::string::npos ? res->body.size() : end + 1;
          const size_t sp = line.find(' ');
          if (sp == std::string::npos) continue;
          const int r = std::atoi(line.substr(0, sp).c_str());
          if (r < 0 || size_t(r) >= seen_.size()) continue;
          const std::string v = line.substr(sp + 1);
          if (v != seen_[size_t(r)]) {
            seen_[size_t(r)] = v;
            changed_[size_t(r)] = now;
          }
        }
      }
      cv_.wait_for(lk, std::chrono::milliseconds(500), [&] { return stop_; });
    }
  }

  httplib::Client client_;
  int rank_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::vector<Clock::time_point> changed_;  // when each rank's counter last moved
  std::vector<std::string> seen_;
  Clock::time_point last_read_;
  std::thread thread_;
};

class GlooComm : public TpComm {
 public:
  int rank() const override { return ctx_->rank; }
  int size() const override { return ctx_->size; }

  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  std::shared_ptr<gloo::transport::Device> dev_;
  std::unique_ptr<StoreServer> server_;
  std::unique_ptr<Heartbeat> beat_;  // groups of more than two (see failure())
  std::chrono::milliseconds timeout_{30000};
  uint32_t tag_ = 0;

 protected:
  void reduce(float* x, int64_t n, Reduce op) override {
    using Fn = void (*)(void*, const void*, const void*, size_t);
    try {
      gloo::AllreduceOptions o(ctx_);
      o.setOutput(x, size_t(n));
      o.setReduceFunction(op == Reduce::kSum ? static_cast<Fn>(&gloo::sum<float>)
                                             : static_cast<Fn>(&gloo::max<float>));
      o.setTag(tag_++);
      o.setTimeout(timeout_);
      gloo::allreduce(o);
    } catch (const std::exception& e) {
      throw TpError(failure(op == Reduce::kSum ? "all-reduce" : "all-reduce (max)", e.what()));
    }
  }

  void gather(const float* in, int64_t n, float* out) override {
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
  }

 private:
  std::string failure(const char* what, const char* detail) const {
    // Gloo's error names the peer's address, not its rank; with two ranks the peer is known,
    // beyond, the heartbeats that stood still name it.
    std::string peer = "a peer rank";
    if (ctx_->size == 2) {
      peer = "rank " + std::to_string(1 - ctx_->rank);
    } else if (beat_) {
      const std::string s = beat_->silent();
      if (!s.empty()) peer = s;
    }
    return "tensor parallelism: rank " + std::to_string(ctx_->rank) + " of " +
           std::to_string(ctx_->size) + ": " + what + " failed (" + peer +
           " died or stalled past --dist-timeout " + std::to_string(timeout_.count() / 1000) +
           " s): " + detail;
  }
};

#endif  // SHRINK_HAVE_GLOO

// Ranks on one machine: the collectives through a shared-memory segment. Each rank writes its
// values into its own slot and raises its arrival counter; once every rank has arrived, every
// rank sums the slots in rank order (so all ranks get the same sums, bit for bit), then raises
// its departure counter, and the slots are reused once all have departed. A waiting rank spins
// briefly, then yields the core (ranks may outnumber cores), so no thread of a communication
// library has to be scheduled between two steps. A rank that does not arrive within the timeout
// is named in the error.
class ShmComm : public TpComm {
 public:
  static constexpr int64_t kSlotFloats = int64_t(1) << 20;  // 4 MiB per rank; larger calls chunk
  struct alignas(64) Counter {
    std::atomic<uint64_t> v{0};
  };

  ~ShmComm() override {
    if (base_) ::munmap(base_, bytes_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Rank 0 creates the segment and publishes its name; every rank maps it; once all have mapped
  // it, rank 0 unlinks the name (the mapping stays), so nothing is left behind.
  Status open(gloo::rendezvous::Store& store, int rank, int size, double timeout_s) {
    rank_ = rank;
    size_ = size;
    timeout_s_ = timeout_s;
    bytes_ = size_t(2 * size) * sizeof(Counter) + size_t(size) * size_t(kSlotFloats) * 4;
    std::string name;
    if (rank == 0) {
      name = "/shrink-tp-" + std::to_string(::getpid()) + "-" +
             std::to_string(Clock::now().time_since_epoch().count());
      const int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
      if (fd < 0) return Status(StatusCode::kIoError, "tensor parallelism: shm_open " + name + ": " + std::strerror(errno));
      const bool sized = ::ftruncate(fd, off_t(bytes_)) == 0;
      ::close(fd);
      if (!sized) {
        ::shm_unlink(name.c_str());
        return Status(StatusCode::kIoError, "tensor parallelism: cannot size the shared segment (/dev/shm full?)");
      }
      store.set("shm-name", std::vector<char>(name.begin(), name.end()));
    } else {
      const std::vector<char> n = store.get("shm-name");
      name.assign(n.begin(), n.end());
    }
    const int fd = ::shm_open(name.c_str(), O_RDWR, 0600);
    if (fd < 0) return Status(StatusCode::kIoError, "tensor parallelism: shm_open " + name + ": " + std::strerror(errno));
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) return Status(StatusCode::kIoError, "tensor parallelism: mmap of the shared segment failed");
    base_ = static_cast<uint8_t*>(p);
    arrive_ = reinterpret_cast<Counter*>(base_);
    depart_ = arrive_ + size;
    slots_ = reinterpret_cast<float*>(depart_ + size);
    store.set("shm-mapped-" + std::to_string(rank), {'1'});
    if (rank == 0) {
      std::vector<std::string> keys;
      for (int r = 0; r < size; ++r) keys.push_back("shm-mapped-" + std::to_string(r));
      store.wait(keys);
      ::shm_unlink(name.c_str());
    }
    return Status::ok();
  }

 protected:
  // Each chunk's slots combined in rank order, so every rank computes the same values.
  void reduce(float* x, int64_t n, Reduce op) override {
    for (int64_t off = 0; off < n; off += kSlotFloats) {
      const int64_t k = std::min(kSlotFloats, n - off);
      exchange(x + off, k, op == Reduce::kSum ? "all-reduce" : "all-reduce (max)", [&] {
        float* out = x + off;
        std::copy(slot(0), slot(0) + k, out);
        for (int r = 1; r < size_; ++r) {
          const float* s = slot(r);
          if (op == Reduce::kSum) {
            for (int64_t i = 0; i < k; ++i) out[i] += s[i];
          } else {
            for (int64_t i = 0; i < k; ++i) out[i] = std::max(out[i], s[i]);
          }
        }
      });
    }
  }

  void gather(const float* in, int64_t n, float* out) override {
    for (int64_t off = 0; off < n; off += kSlotFloats) {
      const int64_t k = std::min(kSlotFloats, n - off);
      exchange(in + off, k, "all-gather", [&] {
        for (int r = 0; r < size_; ++r) std::copy(slot(r), slot(r) + k, out + int64_t(r) * n + off);
      });
    }
  }

 private:
  float* slot(int r) const { return slots_ + int64_t(r) * kSlotFloats; }

  template <typename Read>
  void exchange(const float* mine, int64_t k, const char* what, Read&& read) {
    const uint64_t s = ++seq_;
    std::copy(mine, mine + k, slot(rank_));
    arrive_[rank_].v.store(s, std::memory_order_release);
    wait_all(arrive_, s, what);
    read();
    depart_[rank_].v.store(s, std::memory_order_release);
    wait_all(depart_, s, what);
  }

  void wait_all(Counter* c, uint64_t s, const char* what) {
    for (int r = 0; r < size_; ++r) {
      if (c[r].v.load(std::memory_order_acquire) >= s) continue;
      const auto t0 = Clock::now();
      const auto deadline = t0 + std::chrono::duration<double>(timeout_s_);
      for (int spin = 0; c[r].v.load(std::memory_order_acquire) < s; ++spin) {
        if (spin < 4000) {
#if defined(__x86_64__)
          __builtin_ia32_pause();
#endif
          continue;
        }
        // An idle serving follower waits here between its leader's iterations: 4% of one
        // core here.
        tp_wait_pause(Clock::now() - t0);
        if ((spin & 1023) == 0 && Clock::now() > deadline) {
          throw TpError("tensor parallelism: rank " + std::to_string(rank_) + " of " +
                        std::to_string(size_) + ": " + what + " failed: rank " +
                        std::to_string(r) + " did not arrive within --dist-timeout " +
                        std::to_string(int(timeout_s_)) + " s (it died or stalled)");
        }
      }
    }
  }

  int rank_ = 0, size_ = 1;
  double timeout_s_ = 60;
  size_t bytes_ = 0;
  uint8_t* base_ = nullptr;
  Counter *arrive_ = nullptr, *depart_ = nullptr;
  float* slots_ = nullptr;
  uint64_t seq_ = 0;
};

}  // namespace

Result<std::shared_ptr<TpComm>> tp_join(const core::DistEnv& env, double timeout_s,
                                        const std::string& transport) {
  SHRINK_CHECK(transport == "auto" || transport == "gloo" || transport == "shm",
               StatusCode::kInvalidInput, "--tp-transport '%s': expected auto, gloo or shm",
               transport.c_str());
  const bool one_machine = env.local_world_size == env.world_size;
  SHRINK_CHECK(transport != "shm" || one_machine, StatusCode::kInvalidInput,
               "--tp-transport shm needs every rank on this machine (LOCAL_WORLD_SIZE %d, "
               "WORLD_SIZE %d)",
               env.local_world_size, env.world_size);
  if (transport == "shm" || (transport == "auto" && one_machine)) {
    auto comm = std::make_shared<ShmComm>();
    comm->timeout_s = timeout_s;
    try {
      std::unique_ptr<StoreServer> server;
      if (env.rank == 0) {
        server = std::make_unique<StoreServer>();
        SHRINK_RETURN_IF_ERROR(server->start(env.master_addr, env.master_port));
      }
      HttpStore store(env.master_addr, env.master_port, timeout_s);
      SHRINK_RETURN_IF_ERROR(comm->open(store, env.rank, env.world_size, timeout_s));
      // Rank 0's store lives until every rank has read from it.
      store.set("joined-" + std::to_string(env.rank), {'1'});
      if (env.rank == 0) {
        std::vector<std::string> keys;
        for (int r = 0; r < env.world_size; ++r) keys.push_back("joined-" + std::to_string(r));
        store.wait(keys);
      }
    } catch (const std::exception& e) {
      return Status(StatusCode::kInternal, "tensor parallelism: rank " + std::to_string(env.rank) +
                                               " could not join the group of " +
                                               std::to_string(env.world_size) + ": " + e.what());
    }
    return std::shared_ptr<TpComm>(std::move(comm));
  }
#if !SHRINK_HAVE_GLOO
  return Status(StatusCode::kInvalidInput,
                "tensor parallelism across machines needs Gloo, which this build lacks "
                "(libgloo-dev); ranks on one machine use --tp-transport shm");
#else
  auto comm = std::make_shared<GlooComm>();
  comm->timeout_s = timeout_s;
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
    if (env.world_size > 2) {
      comm->beat_ = std::make_unique<Heartbeat>(env.master_addr, env.master_port, env.rank,
                                                env.world_size);
    }
  } catch (const std::exception& e) {
    return Status(StatusCode::kInternal, "tensor parallelism: rank " + std::to_string(env.rank) +
                                             " could not join the group of " +
                                             std::to_string(env.world_size) + ": " + e.what());
  }
  return std::shared_ptr<TpComm>(std::move(comm));
#endif
}

}  // namespace shrink::runtime
