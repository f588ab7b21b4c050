// `shrink-rt serve`: the OpenAI-compatible HTTP server over the continuous-batching scheduler.
// HTTP is cpp-httplib (Debian's libcpp-httplib-dev): one handler thread per open request,
// each waiting on its ServeStream while the scheduler's thread runs the engine.
// Endpoints: POST /v1/completions and POST /v1/chat/completions (the model's chat template),
// each streamed as server-sent events ending in `data: [DONE]` when asked,
// GET /v1/models, GET /health, GET /metrics (Prometheus text). Errors carry OpenAI's shape
// ({"error": {"message", "type", "param", "code"}}): 400 for bad requests, 401 for a wrong or
// missing key when --api-key is set, 404 for another model's name, 503 when the queue is full
// or the server is stopping. A streaming client that goes away cancels its request at the next
// step. stop() stops accepting, lets requests finish within the grace period, cancels the rest.
// Tested end to end in tests/cli/test_serve.sh (the `openai` npm client).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/jinja.h"
#include "core/status.h"
#include "core/tokenizer.h"
#include "runtime/scheduler.h"

namespace shrink::runtime::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (port() tells which)
  std::string api_key;
  std::string model_id;  // the name /v1/models lists and requests may give
  size_t response_cache = 1024;
  int http_threads = 0;  // 0: slots + queue limit + 4
  std::vector<int64_t> eos;
  const core::ChatTemplate* chat_template = nullptr;  // /v1/chat/completions (null: 400)
};

class Server {
 public:
  Server(Scheduler& sched, const core::Tokenizer* tok, ServerOptions o);
  ~Server();
  /// Bind (kIoError naming host:port when it cannot).
  Status bind();
  int port() const;
  /// Serve until stop(); returns once the listener closed.
  Status listen();
  /// Stop accepting, finish or cancel in-flight requests within `grace`, close the listener.
  void stop(std::chrono::milliseconds grace);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace shrink::runtime::serve
