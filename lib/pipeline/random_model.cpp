// See random_model.h.
#include "pipeline/random_model.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <thread>
#include <vector>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "core/tensor_blocks.h"

namespace shrink::pipeline {

namespace {

constexpr double kInitStd = 0.02;
constexpr int64_t kBlockElements = int64_t(1) << 20;  // generated and written at a time

// splitmix64: a counter-based generator, so element i of tensor t is the same whatever thread
// or block makes it.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// N(0, std^2) for element `i` of the stream `key` (Box-Muller on two uniforms).
float gaussian(uint64_t key, uint64_t i, double std) {
  const uint64_t a = mix64(key ^ mix64(2 * i)), b = mix64(key ^ mix64(2 * i + 1));
  const double u1 = (double(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
  const double u2 = double(b >> 11) * 0x1.0p-53;
  return float(std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2));
}

bool is_norm(core::TensorRole r) {
  return r == core::TensorRole::kAttnNorm || r == core::TensorRole::kMlpNorm ||
         r == core::TensorRole::kFinalNorm;
}

bool is_bias(core::TensorRole r) {
  return r == core::TensorRole::kQBias || r == core::TensorRole::kKBias ||
         r == core::TensorRole::kVBias || r == core::TensorRole::kOBias;
}

// The block's values, converted to the checkpoint's dtype, written at their place.
Status block_write(const core::TensorBlock& blk, const core::TensorSpec& spec,
                   const core::TensorView& view, uint64_t seed, core::CheckpointWriter& w,
                   std::vector<float>& f32, std::vector<uint8_t>& bytes) {
  const int64_t n = blk.end - blk.begin;
  f32.resize(size_t(n));
  const uint64_t key = mix64(seed ^ mix64(0x5eed0000ULL + blk.tensor));
  for (int64_t i = 0; i < n; ++i) {
    f32[size_t(i)] = is_norm(spec.role) ? 1.0f
                     : is_bias(spec.role) ? 0.0f
                                          : gaussian(key, uint64_t(blk.begin + i), kInitStd);
  }
  const size_t es = core::dtype_size(view.dtype);
  bytes.resize(size_t(n) * es);
  core::convert_from_f32(f32.data(), view.dtype, bytes.data(), n);
  return w.write(view.name, bytes.data(), bytes.size(), uint64_t(blk.begin) * es);
}

// Every block by o.threads workers, with progress reported from a thread of its own.
Status blocks_write(const std::vector<core::TensorSpec>& specs,
                    const std::vector<core::TensorView>& plan, const RandomModelOptions& o,
                    core::CheckpointWriter& w, uint64_t total) {
  const std::vector<core::TensorBlock> blocks = core::tensor_blocks(plan, kBlockElements);
  const int threads = std::max(1, o.threads);
  std::vector<std::vector<float>> f32(static_cast<size_t>(threads));
  std::vector<std::vector<uint8_t>> bytes(static_cast<size_t>(threads));
  std::atomic<bool> done{false};
  std::thread progress_thread;
  if (o.progress) {
    progress_thread = std::thread([&] {
      for (; !done; std::this_thread::sleep_for(std::chrono::milliseconds(200))) {
        o.progress(w.bytes_written(), total);
      }
    });
  }
  Status st = core::parallel_each(blocks.size(), threads, [&](size_t k, int worker) {
    const core::TensorBlock& blk = blocks[k];
    return block_write(blk, specs[blk.tensor], plan[blk.tensor], o.seed, w, f32[size_t(worker)],
                       bytes[size_t(worker)]);
  });
  done = true;
  if (progress_thread.joinable()) progress_thread.join();
  if (o.progress) o.progress(w.bytes_written(), total);
  return st;
}

}  // namespace

Status random_model_write(const core::ModelConfig& config, const std::string& out,
                          const RandomModelOptions& o) {
  SHRINK_RETURN_IF_ERROR(core::config_validate(config, "config"));
  const char* dt_name = o.dtype == "float32" ? "F32" : o.dtype == "float16" ? "F16"
                        : o.dtype == "bfloat16" ? "BF16" : nullptr;
  if (!dt_name) {
    return invalid_input("--dtype '" + o.dtype + "'; expected float32, float16 or bfloat16");
  }
  const core::DType dtype = core::dtype_from_name(dt_name).value();
  core::ModelConfig c = config;
  c.dtype = o.dtype;
  c.raw["torch_dtype"] = o.dtype;
  const std::vector<core::TensorSpec> specs = core::expected_tensors(c);
  std::vector<core::TensorView> plan;
  uint64_t total = 0;
  for (const core::TensorSpec& s : specs) {
    int64_t n = 1;
    for (int64_t d : s.shape) n *= d;
    plan.push_back({s.name, dtype, s.shape, nullptr, uint64_t(n) * core::dtype_size(dtype)});
    total += plan.back().nbytes;
  }
  SHRINK_ASSIGN_OR_RETURN(core::AtomicDir dir, core::AtomicDir::create(out));
  SHRINK_ASSIGN_OR_RETURN(
      std::unique_ptr<core::CheckpointWriter> w,
      core::CheckpointWriter::create(dir.path(), plan, {{"format", "pt"}},
                                     o.max_shard_bytes ? o.max_shard_bytes : core::kDefaultMaxShardBytes));
  SHRINK_RETURN_IF_ERROR(blocks_write(specs, plan, o, *w, total));
  SHRINK_RETURN_IF_ERROR(w->finish());
  SHRINK_RETURN_IF_ERROR(core::write_file_atomic(dir.path() + "/config.json", core::config_to_json(c)));
  if (!o.tokenizer.empty()) {
    SHRINK_ASSIGN_OR_RETURN(std::string tok, core::read_file(o.tokenizer));
    SHRINK_RETURN_IF_ERROR(core::write_file_atomic(dir.path() + "/tokenizer.json", tok));
  }
  return dir.commit();
}

}  // namespace shrink::pipeline
