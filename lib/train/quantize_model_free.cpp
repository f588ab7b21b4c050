// The model-free path of `shrink quantize`: round-to-nearest schemes (W8A16, W4A16 with or
// without zero points, W8A8 with dynamic activations) need neither calibration nor a model, so
// they run tensor by tensor, as llama.cpp's llama-quantize and llm-compressor's model-free PTQ
// do. The input stays memory-mapped; the output's layout is fixed up front
// (core::CheckpointWriter, sharded at 5 GB); the work is cut into blocks (rows of a quantized
// weight, elements of a float tensor) that `threads` workers read, quantize or convert, and
// write at their offsets, releasing the input pages behind them. Memory is a few blocks per
// thread whatever the model's size, and no LibTorch model or full-model copy is ever made.
// The bytes written equal the LibTorch path's (tests/train/test_quantize.cpp compares them).
#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/tensor_blocks.h"
#include "train/quantize_common.h"

namespace shrink::train {

namespace {

// A linear weight written quantized: its float source and the shape of its outputs.
struct QuantTarget {
  std::string module;  // "model.layers.0.mlp.down_proj"
  const core::TensorInfo* src = nullptr;
  int64_t rows = 0, cols = 0, groups = 1;
};

// A unit of work: rows [begin, end) of quantized target `target`, or elements [begin, end) of
// float tensor `source` written as plan entry `out`.
struct Job {
  const QuantTarget* target = nullptr;
  const core::TensorInfo* source = nullptr;
  size_t out = 0;
  int64_t begin = 0, end = 0;
};

// The whole pass: the output tensors in the LibTorch path's order, the quantized targets, and
// the jobs that produce them.
struct ModelFreePlan {
  std::vector<core::TensorView> tensors;
  std::vector<QuantTarget> targets;
  std::vector<Job> jobs;
  uint64_t bytes_before = 0;  // the model's float tensors in config.json's dtype
  uint64_t bytes_after = 0;   // the written tensors, weight_shape records aside
  uint64_t bytes_to_read = 0;
};

// Rows per job: about `block` weights, a multiple of 8 so that packed zero points (eight rows per
// int32 word) split at word boundaries.
int64_t rows_per_job(int64_t cols, int64_t block) {
  const int64_t r = std::max<int64_t>(1, block / std::max<int64_t>(cols, 1));
  return std::max<int64_t>(8, r / 8 * 8);
}

// The plan of the output (config `cfg`, made from input config `in`), with jobs for the tensors
// `wanted` selects.
ModelFreePlan model_free_plan(const core::ModelConfig& in, const core::ModelConfig& cfg,
                              const core::Checkpoint& ck, const core::QuantScheme& s,
                              const std::set<std::string>& quantized, int64_t block,
                              const std::function<bool(const core::TensorSpec&)>& wanted) {
  ModelFreePlan p;
  p.tensors = quantized_plan(cfg, s, quantized);
  p.bytes_after = quantized_plan_bytes(p.tensors);
  std::map<std::string, size_t> index;
  for (size_t k = 0; k < p.tensors.size(); ++k) index[p.tensors[k].name] = k;
  const core::DType fdt = float_dtype(cfg);
  const std::vector<core::TensorSpec> specs = core::expected_tensors(cfg);
  p.targets.reserve(specs.size());  // jobs point into it
  for (const core::TensorSpec& spec : specs) {
    if (!wanted(spec)) continue;
    const core::TensorInfo* src = ck.find(source_name(in, spec.name));
    int64_t numel = 1;
    for (int64_t d : spec.shape) numel *= d;
    if (source_name(in, spec.name) == spec.name) {  // the input's own tensors
      p.bytes_before += uint64_t(numel) * core::dtype_size(fdt);
    }
    p.bytes_to_read += src->nbytes;
    const std::string mod = spec.name.substr(0, spec.name.rfind('.'));
    auto out = index.find(spec.name);
    if (!(quantized.count(mod) && spec.name.size() > 7 &&
          spec.name.compare(spec.name.size() - 7, 7, ".weight") == 0)) {
      for (int64_t b = 0; b < numel; b += block) {
        p.jobs.push_back({nullptr, src, out->second, b, std::min(numel, b + block)});
      }
      continue;
    }
    p.targets.push_back({mod, src, spec.shape[0], spec.shape[1],
                         s.group_size > 0 ? spec.shape[1] / s.group_size : 1});
    const int64_t step = rows_per_job(p.targets.back().cols, block);
    for (int64_t r = 0; r < p.targets.back().rows; r += step) {
      p.jobs.push_back({&p.targets.back(), nullptr, 0, r, std::min(p.targets.back().rows, r + step)});
    }
  }
  return p;
}

// One worker's buffers for a block of quantized rows.
struct QuantScratch {
  std::vector<float> w, scale;
  std::vector<int8_t> q, zp;
  std::vector<uint8_t> packed, zp_packed;
  core::ConvertScratch convert;
};

// Rows [r0, r1) of a quantized weight: read and widened to float32, rounded, packed and written.
Status rows_quantize(const core::Checkpoint& ck, const QuantTarget& t, const core::QuantScheme& s,
                     int64_t r0, int64_t r1, core::CheckpointWriter& w, QuantScratch& b) {
  const int64_t n = r1 - r0, elems = n * t.cols;
  const size_t es = core::dtype_size(t.src->dtype);
  const uint64_t in_off = uint64_t(r0 * t.cols) * es;
  b.w.resize(size_t(elems));
  b.q.resize(size_t(elems));
  b.scale.resize(size_t(n * t.groups));
  b.zp.resize(s.symmetric ? 0 : size_t(n * t.groups));
  core::convert_to_f32(t.src->dtype, ck.data(*t.src) + in_off, b.w.data(), elems);
  ck.release(*t.src, in_off, uint64_t(elems) * es);
  Status st = core::rtn_quantize_rows(b.w.data(), n, t.cols, s.group_size, s.bits, !s.symmetric,
                                      b.q.data(), b.scale.data(), b.zp.data());
  if (!st.is_ok()) {
    return invalid_input(t.module + ".weight: " + st.message() + " (of the rows from " +
                               std::to_string(r0) + ")");
  }
  if (s.bits == 8) {
    st = w.write(t.module + ".weight", b.q.data(), uint64_t(elems), uint64_t(r0 * t.cols));
  } else {
    const int64_t words = core::int4_packed_cols(t.cols);
    b.packed.resize(size_t(n * words * 4));
    core::int4_pack(b.q.data(), n, t.cols, b.packed.data());
    st = w.write(t.module + ".weight_packed", b.packed.data(), b.packed.size(),
                 uint64_t(r0 * words * 4));
    if (st.is_ok() && r0 == 0) {
      const int64_t shape[2] = {t.rows, t.cols};
      st = w.write(t.module + ".weight_shape", shape, sizeof shape);
    }
    if (st.is_ok() && !s.symmetric) {
      b.zp_packed.resize(size_t(core::int4_packed_cols(n) * t.groups * 4));
      core::int4_pack_rows(b.zp.data(), n, t.groups, b.zp_packed.data());
      st = w.write(t.module + ".weight_zero_point", b.zp_packed.data(), b.zp_packed.size(),
                   uint64_t(r0 / 8 * t.groups * 4));
    }
  }
  if (!st.is_ok()) return st;
  return w.write(t.module + ".weight_scale", b.scale.data(), b.scale.size() * 4,
                 uint64_t(r0 * t.groups * 4));
}

// Every job, by o.threads workers, with progress in MiB read.
void jobs_run(const core::Checkpoint& ck, const ModelFreePlan& p, const core::QuantScheme& s,
              core::CheckpointWriter& w, const QuantizeOptions& o) {
  const int threads = std::max(1, o.threads);
  std::vector<QuantScratch> scratch(static_cast<size_t>(threads));
  core::Progress prog("quantize " + o.scheme, p.bytes_to_read >> 20, "MiB", o.progress);
  std::mutex mu;
  uint64_t read = 0;
  throw_if_error(core::parallel_each(p.jobs.size(), threads, [&](size_t k, int worker) {
    const Job& j = p.jobs[k];
    QuantScratch& b = scratch[size_t(worker)];
    Status st;
    uint64_t bytes = 0;
    if (j.target) {
      st = rows_quantize(ck, *j.target, s, j.begin, j.end, w, b);
      bytes = uint64_t((j.end - j.begin) * j.target->cols) * core::dtype_size(j.target->src->dtype);
    } else {
      const core::TensorView& out = p.tensors[j.out];
      st = core::block_convert_write(ck, *j.source, out.name, out.dtype, j.begin, j.end, w,
                                     b.convert);
      bytes = uint64_t(j.end - j.begin) * core::dtype_size(j.source->dtype);
    }
    std::lock_guard<std::mutex> lock(mu);
    read += bytes;
    prog.update(read >> 20);
    return st;
  }));
  prog.finish();
}

}  // namespace

void outer_tensors_write(const core::Checkpoint& ck, const core::ModelConfig& in,
                         const core::ModelConfig& out, const core::QuantScheme& s,
                         const std::set<std::string>& quantized, core::CheckpointWriter& w,
                         int threads) {
  QuantizeOptions o;
  o.threads = threads;
  o.progress = false;
  const ModelFreePlan plan = model_free_plan(in, out, ck, s, quantized, o.block_elements,
                                             [](const core::TensorSpec& t) { return t.layer < 0; });
  jobs_run(ck, plan, s, w, o);
}

QuantizeResult quantize_model_free(const QuantizeOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  if (cfg.has_quantization()) {
    throw Error(StatusCode::kInvalidInput, o.model + ": the model is already quantized");
  }
  const core::Checkpoint ck = core::Checkpoint::open(o.model).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ck));
  const core::QuantScheme scheme = quant_scheme_for(o, cfg);
  const bool head = head_targeted(o);
  const core::ModelConfig out_cfg = output_config(cfg, head);
  const ModuleSplit mods = modules_split(quant_heads(o, cfg.num_layers), {}, head);
  const ModelFreePlan plan =
      model_free_plan(cfg, out_cfg, ck, scheme, mods.quantized,
                      std::max<int64_t>(1, o.block_elements), [](const core::TensorSpec&) { return true; });

  auto dir = core::AtomicDir::create(o.out).take_or_throw();
  auto w = core::CheckpointWriter::create(dir.path(), plan.tensors, {{"format", "pt"}},
                                          core::kDefaultMaxShardBytes)
               .take_or_throw();
  jobs_run(ck, plan, scheme, *w, o);
  throw_if_error(w->finish());
  quantized_sidecars_write(o, scheme, mods.ignore, out_cfg, dir.path());

  nlohmann::json report = quant_format_report(o, scheme);
  report["calibration"] = nullptr;
  report["model_free"] = true;
  report["threads"] = std::max(1, o.threads);
  report["bytes_before"] = plan.bytes_before;
  report["bytes_after"] = plan.bytes_after;
  report["bytes_read"] = plan.bytes_to_read;
  report["bytes_written"] = w->bytes_written();
  report["quantized_modules"] = mods.quantized.size();
  report["quantize_seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (o.eval_tokens) accuracy_report_dirs(o, dir.path(), report);
  report["peak_rss_mb"] = core::peak_rss_mib();
  report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  throw_if_error(core::write_file_atomic(dir.path() + "/quantize.json", report.dump(2) + "\n"));
  throw_if_error(dir.commit());
  return {report};
}

}  // namespace shrink::train
