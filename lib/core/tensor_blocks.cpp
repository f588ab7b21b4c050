// See tensor_blocks.h.
#include "core/tensor_blocks.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "core/dtype.h"

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

Status block_convert_write(const Checkpoint& ck, const TensorInfo& src, const std::string& name,
                           DType dt, int64_t begin, int64_t end, CheckpointWriter& w,
                           ConvertScratch& s) {
  const int64_t n = end - begin;
  const size_t in_es = dtype_size(src.dtype), out_es = dtype_size(dt);
  const uint8_t* from = ck.data(src) + uint64_t(begin) * in_es;
  Status st;
  if (src.dtype == dt) {
    st = w.write(name, from, uint64_t(n) * out_es, uint64_t(begin) * out_es);
  } else {
    s.f32.resize(size_t(n));
    s.out.resize(size_t(n) * out_es);
    convert_to_f32(src.dtype, from, s.f32.data(), n);
    convert_from_f32(s.f32.data(), dt, s.out.data(), n);
    st = w.write(name, s.out.data(), s.out.size(), uint64_t(begin) * out_es);
  }
  ck.release(src, uint64_t(begin) * in_es, uint64_t(n) * in_es);  // read once: keep RSS flat
  return st;
}

Status tensors_convert_write(const Checkpoint& ck, const std::vector<TensorView>& plan,
                             CheckpointWriter& w, int threads, int64_t block_elements) {
  threads = std::max(1, threads);
  const std::vector<TensorBlock> blocks = tensor_blocks(plan, block_elements);
  std::vector<ConvertScratch> scratch(static_cast<size_t>(threads));
  return parallel_each(blocks.size(), threads, [&](size_t k, int worker) {
    const TensorView& out = plan[blocks[k].tensor];
    const TensorInfo* src = ck.find(out.name);
    if (!src) return Status(StatusCode::kInvalidInput, ck.dir() + ": missing tensor " + out.name);
    return block_convert_write(ck, *src, out.name, out.dtype, blocks[k].begin, blocks[k].end, w,
                               scratch[size_t(worker)]);
  });
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
