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

/// One worker's scratch buffers for block_convert_write.
struct ConvertScratch {
  std::vector<float> f32;
  std::vector<uint8_t> out;
};

/// Elements [begin, end) of checkpoint tensor `src`, in dtype `dt` (converted through float32
/// where it differs), written at their place in tensor `name` of `w`. The input pages read are
/// then released (Checkpoint::release), so a pass over a whole model keeps its RSS flat.
Status block_convert_write(const Checkpoint& ck, const TensorInfo& src, const std::string& name,
                           DType dt, int64_t begin, int64_t end, CheckpointWriter& w,
                           ConvertScratch& s);

/// Every tensor of `plan` (names as in `ck`, dtypes as planned) converted and written through
/// `w`, in blocks of `block_elements` on `threads` workers (block_convert_write each).
Status tensors_convert_write(const Checkpoint& ck, const std::vector<TensorView>& plan,
                             CheckpointWriter& w, int threads,
                             int64_t block_elements = int64_t(1) << 20);

/// Calls fn(k, worker) once for every k in [0, n), on `threads` threads (this one included;
/// `worker` in [0, threads) names the thread, for its scratch buffers). After the first error no
/// new k starts, and that error is returned.
Status parallel_each(size_t n, int threads, const std::function<Status(size_t k, int worker)>& fn);

}  // namespace shrink::core
