// Work split for streaming tensor passes (shrink convert, init --streaming): every tensor cut into
// blocks of elements, and a pool that runs one block at a time per thread. Memory is then one
// block per thread, whatever the tensors' sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/safetensors.h"
#include "core/status.h"

namespace shrink::core {

/// Elements [begin, end) of tensors[tensor].
struct TensorBlock {
  size_t tensor;
  int64_t begin, end;
};

/// Each tensor's elements in blocks of at most `block_elements`, tensor by tensor.
std::vector<TensorBlock> tensor_blocks(const std::vector<TensorView>& tensors,
                                       int64_t block_elements);

/// Calls fn(k, worker) once for every k in [0, n), on `threads` threads (this one included;
/// `worker` in [0, threads) names the thread, for its scratch buffers). After the first error no
/// new k starts, and that error is returned.
Status parallel_each(size_t n, int threads, const std::function<Status(size_t k, int worker)>& fn);

}  // namespace shrink::core
