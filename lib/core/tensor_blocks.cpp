// See tensor_blocks.h.
#include "core/tensor_blocks.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

namespace shrink::core {

std::vector<TensorBlock> tensor_blocks(const std::vector<TensorView>& tensors,
                                       int64_t block_elements) {
  std::vector<TensorBlock> blocks;
  for (size_t t = 0; t < tensors.size(); ++t) {
    int64_t n = 1;
    for (int64_t d : tensors[t].shape) n *= d;
    for (int64_t b = 0; b < n; b += block_elements) {
      blocks.push_back({t, b, std::min(n, b + block_elements)});
    }
  }
  return blocks;
}

Status parallel_each(size_t n, int threads, const std::function<Status(size_t k, int worker)>& fn) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  Status first_error;
  auto worker = [&](int w) {
    for (size_t k; !failed && (k = next++) < n;) {
      Status st = fn(k, w);
      if (!st.is_ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (!failed.exchange(true)) first_error = st;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int w = 1; w < std::max(1, threads); ++w) pool.emplace_back(worker, w);
  worker(0);
  for (auto& t : pool) t.join();
  return first_error;
}

}  // namespace shrink::core
