// The model-free path of `shrink prune`: magnitude pruning (per matrix, N:M or global) needs neither
// calibration nor a model, so it runs tensor by tensor, as `shrink quantize`'s round to nearest
// does (quantize_model_free.cpp). The input stays memory-mapped; the output's layout is fixed
// up front (core::CheckpointWriter, sharded at 5 GB). Each target matrix is one job (its
// threshold needs all of it: memory is two float32 copies of the largest matrix per thread);
// the other tensors are converted in blocks. --scope global first finds its one threshold in
// two counting passes over the matrices (global_cut_find). No LibTorch model or full-model copy is made, and
// the bytes written equal the LibTorch path's wherever no two weights of a matrix tie at the
// threshold (tests/train/test_prune.cpp compares them).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <regex>

#include "core/dataset.h"
#include "core/fs.h"
#include "core/progress.h"
#include "core/safetensors.h"
#include "core/tensor_blocks.h"
#include "train/model_files.h"
#include "train/prune_common.h"
#include "train/quantize_common.h"

namespace shrink::train {

Status magnitude_prune_matrix(float* w, int64_t rows, int64_t cols, double sparsity, NMPattern nm) {
  const int64_t n = rows * cols;
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(w[i])) {
      return invalid_input("non-finite weight " + std::to_string(w[i]) + " at row " +
                           std::to_string(i / cols) + ", column " + std::to_string(i % cols));
    }
  }
  if (nm.on()) {
    if (cols % nm.m != 0) {
      return invalid_input("pattern " + std::to_string(nm.n) + ":" + std::to_string(nm.m) +
                           " needs input widths divisible by " + std::to_string(nm.m) +
                           ", but a matrix has " + std::to_string(cols));
    }
    std::vector<int64_t> order(size_t(nm.m));
    for (int64_t g = 0; g < n; g += nm.m) {
      float* v = w + g;
      for (int64_t k = 0; k < nm.m; ++k) order[size_t(k)] = k;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return std::fabs(v[a]) < std::fabs(v[b]); });
      for (int64_t k = 0; k < nm.m - nm.n; ++k) v[order[size_t(k)]] *= 0.f;
    }
    return Status::ok();
  }
  const int64_t k = prune_count(sparsity, n);
  if (k == 0) return Status::ok();
  std::vector<float> mag(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) mag[size_t(i)] = std::fabs(w[i]);
  std::nth_element(mag.begin(), mag.begin() + (k - 1), mag.end());
  const float t = mag[size_t(k - 1)];  // the k-th smallest magnitude
  int64_t below = 0;
  for (int64_t i = 0; i < n; ++i) below += std::fabs(w[i]) < t;
  magnitude_cut_apply(w, n, {t, k - below});  // ties at t: the lowest indices go
  return Status::ok();
}

void magnitude_cut_apply(float* w, int64_t n, MagnitudeCut cut) {
  int64_t ties = cut.ties;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(w[i]);
    if (a < cut.t) {
      w[i] *= 0.f;
    } else if (a == cut.t && ties > 0) {
      w[i] *= 0.f;
      --ties;
    }
  }
}

namespace {

// A target matrix: its float source, its output tensor and the sparsity it gets.
struct PruneMatrix {
  std::string module;
  const core::TensorInfo* src = nullptr;
  size_t out = 0;  // in the plan
  int64_t rows = 0, cols = 0;
  double sparsity = 0;
  std::optional<MagnitudeCut> cut;  // --scope global: the matrix's share of the one threshold
};

// A unit of work: a whole target matrix, or elements [begin, end) of another tensor.
struct PruneJob {
  const PruneMatrix* matrix = nullptr;
  const core::TensorInfo* source = nullptr;
  size_t out = 0;
  int64_t begin = 0, end = 0;
};

struct PrunePlan {
  std::vector<core::TensorView> tensors;
  std::vector<PruneMatrix> matrices;
  std::vector<PruneJob> jobs;
  std::vector<std::string> reported;  // the 2-D tensors' modules that --targets matches
  uint64_t bytes_to_read = 0;
};

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

PrunePlan prune_plan(const core::ModelConfig& cfg, const core::Checkpoint& ck, const PruneTargets& pt,
                     core::DType dt, int64_t block) {
  PrunePlan p;
  const std::vector<core::TensorSpec> specs = core::expected_tensors(cfg);
  p.matrices.reserve(specs.size());  // jobs point into it
  for (const core::TensorSpec& s : specs) {
    const core::TensorInfo* src = ck.find(s.name);
    const int64_t n = numel_of(s.shape);
    p.tensors.push_back({s.name, dt, s.shape, nullptr, uint64_t(n) * core::dtype_size(dt)});
    p.bytes_to_read += src->nbytes;
    const bool weight = s.name.size() > 7 && s.name.compare(s.name.size() - 7, 7, ".weight") == 0;
    const std::string mod = s.name.substr(0, s.name.rfind('.'));
    if (s.shape.size() == 2 && std::regex_match(mod, pt.targets)) p.reported.push_back(mod);
    if (s.shape.size() == 2 && weight && pt.has(mod)) {
      p.matrices.push_back({mod, src, p.tensors.size() - 1, s.shape[0], s.shape[1], pt.sparsity_of(mod), std::nullopt});
      p.jobs.push_back({&p.matrices.back(), nullptr, p.tensors.size() - 1, 0, n});
      continue;
    }
    for (int64_t b = 0; b < n; b += block) {
      p.jobs.push_back({nullptr, src, p.tensors.size() - 1, b, std::min(n, b + block)});
    }
  }
  return p;
}

}  // namespace

int64_t float_nonzeros(const uint8_t* data, core::DType dt, int64_t n) {
  int64_t nz = 0;
  if (core::dtype_size(dt) == 4) {
    for (int64_t i = 0; i < n; ++i) {
      uint32_t b;
      std::memcpy(&b, data + 4 * i, 4);
      nz += (b & 0x7fffffffu) != 0;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, data + 2 * i, 2);
      nz += (b & 0x7fffu) != 0;
    }
  }
  return nz;
}

namespace {

struct PruneScratch {
  std::vector<float> w;
  std::vector<uint8_t> out;
  core::ConvertScratch convert;
};


// A whole target matrix: widened, pruned, counted, narrowed to the output dtype and written.
Status matrix_prune(const core::Checkpoint& ck, const PruneMatrix& mx, NMPattern nm,
                    const core::TensorView& out, core::CheckpointWriter& w, PruneScratch& b,
                    PruneCounts& counts) {
  const int64_t n = mx.rows * mx.cols;
  b.w.resize(size_t(n));
  core::convert_to_f32(mx.src->dtype, ck.data(*mx.src), b.w.data(), n);
  ck.release(*mx.src, 0, mx.src->nbytes);
  if (mx.cut) {
    magnitude_cut_apply(b.w.data(), n, *mx.cut);
  } else {
    Status st = magnitude_prune_matrix(b.w.data(), mx.rows, mx.cols, mx.sparsity, nm);
    if (!st.is_ok()) return invalid_input(mx.module + ".weight: " + st.message());
  }
  int64_t zeros = 0;
  for (float v : b.w) zeros += v == 0.f;
  b.out.resize(size_t(out.nbytes));
  core::convert_from_f32(b.w.data(), out.dtype, b.out.data(), n);
  {
    std::lock_guard<std::mutex> lock(counts.mu);
    counts.zeros[mx.module] = zeros;
    counts.nonzero += n - zeros;
  }
  return w.write(out.name, b.out.data(), b.out.size());
}

// ---- One threshold over every target matrix (--scope global) ----------------------------------
// The k-th smallest |w| of all target matrices together, found without holding them: |w|'s
// float32 bits order as the magnitudes do, so a histogram of their high 16 bits (one pass) gives
// the bin the threshold lies in, and the low 16 bits of the values in that bin (a second pass,
// kept per matrix) give it exactly, with how many weights of each matrix equal it. Weights equal
// to the threshold go in the order of the matrices and of their elements (the LibTorch path's
// topk breaks such ties its own way). Each pass reads each matrix a block at a time, on --threads
// workers; the source pages are released once read.

constexpr int64_t kCutBlock = int64_t(1) << 20;  // elements widened to float32 at a time

uint32_t magnitude_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b & 0x7fffffffu;
}

// Calls fn(values, count) for each block of matrix mx widened to float32.
Status matrix_blocks(const core::Checkpoint& ck, const PruneMatrix& mx, std::vector<float>& buf,
                     const std::function<void(const float*, int64_t)>& fn) {
  const int64_t n = mx.rows * mx.cols;
  const uint64_t es = core::dtype_size(mx.src->dtype);
  buf.resize(size_t(std::min(n, kCutBlock)));
  for (int64_t b = 0; b < n; b += kCutBlock) {
    const int64_t len = std::min(kCutBlock, n - b);
    core::convert_to_f32(mx.src->dtype, ck.data(*mx.src) + uint64_t(b) * es, buf.data(), len);
    ck.release(*mx.src, uint64_t(b) * es, uint64_t(len) * es);
    for (int64_t i = 0; i < len; ++i) {
      if (!std::isfinite(buf[size_t(i)])) {
        return invalid_input(mx.module + ".weight: non-finite weight " +
                             std::to_string(buf[size_t(i)]) + " at row " +
                             std::to_string((b + i) / mx.cols) + ", column " +
                             std::to_string((b + i) % mx.cols));
      }
    }
    fn(buf.data(), len);
  }
  return Status::ok();
}

// Sets every matrix's cut so that exactly prune_count(sparsity, all weights) of them go.
void global_cut_find(const core::Checkpoint& ck, std::vector<PruneMatrix>& mats, double sparsity,
                     int threads, core::Progress& prog) {
  int64_t total = 0;
  for (const PruneMatrix& mx : mats) total += mx.rows * mx.cols;
  const int64_t k = prune_count(sparsity, total);
  threads = std::max(1, threads);
  std::vector<std::vector<float>> buf(static_cast<size_t>(threads));
  std::mutex mu;
  uint64_t read = 0;
  auto done = [&](const PruneMatrix& mx) {
    std::lock_guard<std::mutex> lock(mu);
    read += mx.src->nbytes;
    prog.update(read >> 20);
  };
  // Pass 1: the high 16 bits.
  std::vector<std::vector<int64_t>> high(size_t(threads), std::vector<int64_t>(65536, 0));
  throw_if_error(core::parallel_each(mats.size(), threads, [&](size_t j, int worker) {
    std::vector<int64_t>& h = high[size_t(worker)];
    Status st = matrix_blocks(ck, mats[j], buf[size_t(worker)], [&](const float* v, int64_t len) {
      for (int64_t i = 0; i < len; ++i) ++h[magnitude_bits(v[i]) >> 16];
    });
    done(mats[j]);
    return st;
  }));
  for (PruneMatrix& mx : mats) mx.cut = MagnitudeCut{0.f, 0};  // nothing below 0: none go
  if (k == 0) return;
  int64_t below = 0;
  uint32_t bin = 0;
  for (;; ++bin) {
    int64_t c = 0;
    for (const auto& h : high) c += h[bin];
    if (below + c >= k) break;
    below += c;
  }
  // Pass 2: the low 16 bits of the values in that bin, per matrix.
  std::vector<std::vector<uint16_t>> low(mats.size());
  throw_if_error(core::parallel_each(mats.size(), threads, [&](size_t j, int worker) {
    std::vector<uint16_t>& l = low[j];
    Status st = matrix_blocks(ck, mats[j], buf[size_t(worker)], [&](const float* v, int64_t len) {
      for (int64_t i = 0; i < len; ++i) {
        const uint32_t b = magnitude_bits(v[i]);
        if ((b >> 16) == bin) l.push_back(uint16_t(b & 0xffffu));
      }
    });
    done(mats[j]);
    return st;
  }));
  std::vector<int64_t> hist(65536, 0);
  for (const auto& l : low) {
    for (uint16_t x : l) ++hist[x];
  }
  uint32_t lo = 0;
  for (; below + hist[lo] < k; ++lo) below += hist[lo];
  const uint32_t bits = (bin << 16) | lo;
  float t;
  std::memcpy(&t, &bits, 4);
  int64_t ties_left = k - below;  // of the weights equal to t, in matrix order
  for (size_t j = 0; j < mats.size(); ++j) {
    const int64_t eq = std::count(low[j].begin(), low[j].end(), uint16_t(lo));
    const int64_t take = std::min(eq, ties_left);
    mats[j].cut = MagnitudeCut{t, take};
    ties_left -= take;
  }
}

void prune_jobs_run(const core::Checkpoint& ck, const PrunePlan& p, const PruneTargets& pt,
                    core::CheckpointWriter& w, const PruneOptions& o, PruneCounts& counts) {
  const int threads = std::max(1, o.threads);
  std::vector<PruneScratch> scratch(static_cast<size_t>(threads));
  core::Progress prog("prune magnitude", p.bytes_to_read >> 20, "MiB", o.progress);
  throw_if_error(core::parallel_each(p.jobs.size(), threads, [&](size_t k, int worker) {
    const PruneJob& j = p.jobs[k];
    PruneScratch& b = scratch[size_t(worker)];
    const core::TensorView& out = p.tensors[j.out];
    Status st;
    uint64_t bytes = 0;
    if (j.matrix) {
      st = matrix_prune(ck, *j.matrix, pt.nm, out, w, b, counts);
      bytes = j.matrix->src->nbytes;
    } else {
      const size_t es = core::dtype_size(j.source->dtype);
      const int64_t nz = float_nonzeros(ck.data(*j.source) + uint64_t(j.begin) * es, j.source->dtype,
                                  j.end - j.begin);
      st = core::block_convert_write(ck, *j.source, out.name, out.dtype, j.begin, j.end, w,
                                     b.convert);
      bytes = uint64_t(j.end - j.begin) * es;
      std::lock_guard<std::mutex> lock(counts.mu);
      counts.nonzero += nz;
    }
    std::lock_guard<std::mutex> lock(counts.mu);
    counts.read += bytes;
    prog.update(counts.read >> 20);
    return st;
  }));
  prog.finish();
}

// prune.json's sparsity account, as sparsity_report (prune.cpp) gives it: every 2-D module that
// --targets matches (those --ignore keeps included), its fraction of zeros, and the totals.
nlohmann::json sparsity_account(const std::vector<std::string>& reported,
                                const core::Checkpoint& ck, const PruneCounts& counts) {
  nlohmann::json per = nlohmann::json::object();
  int64_t zeros = 0, total = 0;
  for (const std::string& mod : reported) {
    const core::TensorInfo* t = ck.find(mod + ".weight");
    const int64_t n = t->numel();
    auto it = counts.zeros.find(mod);
    // A module --targets matches but --ignore keeps: its zeros are those it came with.
    const int64_t z = it != counts.zeros.end()
                          ? it->second
                          : n - float_nonzeros(ck.data(*t), t->dtype, n);
    per[mod] = double(z) / double(n);
    zeros += z;
    total += n;
  }
  return {{"per_module", per}, {"targeted_sparsity", total ? double(zeros) / double(total) : 0.0},
          {"targeted_zeros", zeros}, {"targeted_params", total}};
}

}  // namespace

std::string prune_tokenizer(const PruneOptions& o) {
  const std::string own = o.model + "/tokenizer.json";
  return !o.tokenizer.empty() ? o.tokenizer : (std::filesystem::exists(own) ? own : "");
}

PruneResult prune_output_finish(const PruneOptions& o, const core::ModelConfig& cfg,
                                const core::Checkpoint& ck, core::CheckpointWriter& w,
                                core::AtomicDir& dir, const PruneCounts& counts,
                                const std::vector<std::string>& reported, nlohmann::json report,
                                std::chrono::steady_clock::time_point t0) {
  throw_if_error(w.finish());
  const core::DType dt = float_dtype(cfg);
  const int64_t params = config_parameters(cfg);
  const int64_t per = dt == core::DType::kF32 ? 4 : 2;
  report["params_before"] = params;
  report["params_after"] = params;
  report["bytes_before"] = params * per;
  report["bytes_after"] = params * per;
  report["sparsity"] = sparsity_account(reported, ck, counts);
  report["pattern"] = o.pattern.empty() ? nlohmann::json(nullptr) : nlohmann::json(o.pattern);
  report["target_sparsity"] = o.sparsity;
  report["nonzero_params_after"] = counts.nonzero;
  report["bytes_read"] = ck.total_bytes();
  report["bytes_written"] = w.bytes_written();
  core::ModelConfig out_cfg = cfg;
  out_cfg.dtype = dt == core::DType::kF32 ? "float32" : dt == core::DType::kF16 ? "float16" : "bfloat16";
  model_sidecars_write(out_cfg, dir.path(), prune_tokenizer(o),
                       {{"stage", "prune"}, {"method", o.method}, {"from", o.model},
                        {"sparsity", report["sparsity"]["targeted_sparsity"]}},
                       params);
  return prune_report_commit(o, dir, std::move(report), t0);
}

PruneResult prune_report_commit(const PruneOptions& o, core::AtomicDir& dir, nlohmann::json report,
                                std::chrono::steady_clock::time_point t0) {
  if (o.eval_tokens) prune_eval_dirs(o, dir.path(), report);
  report["peak_rss_mb"] = core::peak_rss_mib();
  report["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  throw_if_error(core::write_file_atomic(dir.path() + "/prune.json", report.dump(2) + "\n"));
  throw_if_error(dir.commit());
  return {report};
}

PruneResult prune_model_free(const PruneOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const core::ModelConfig cfg = core::config_load(o.model).take_or_throw();
  if (cfg.has_quantization()) {
    throw Error(StatusCode::kInvalidInput,
                o.model + ": the model is quantized (quantization_config in config.json); prune "
                          "works on float models");
  }
  const core::Checkpoint ck = core::Checkpoint::open(o.model).take_or_throw();
  throw_if_error(core::checkpoint_check(cfg, ck));
  const PruneTargets pt(o);
  const core::DType dt = float_dtype(cfg);
  PrunePlan plan = prune_plan(cfg, ck, pt, dt, int64_t(1) << 20);
  if (plan.matrices.empty()) {
    throw Error(StatusCode::kInvalidInput,
                "--targets '" + o.targets + "' matches no linear layer of " + o.model);
  }
  if (o.scope == "global" && !pt.nm.on()) {
    uint64_t matrix_bytes = 0;
    for (const PruneMatrix& mx : plan.matrices) matrix_bytes += 2 * mx.src->nbytes;
    core::Progress prog("global threshold", matrix_bytes >> 20, "MiB", o.progress);
    global_cut_find(ck, plan.matrices, o.sparsity, o.threads, prog);
    prog.finish();
  }

  auto dir = core::AtomicDir::create(o.out).take_or_throw();
  auto w = core::CheckpointWriter::create(dir.path(), plan.tensors, {{"format", "pt"}},
                                          core::kDefaultMaxShardBytes)
               .take_or_throw();
  PruneCounts counts;
  prune_jobs_run(ck, plan, pt, *w, o, counts);

  nlohmann::json report = {{"method", o.method}, {"model", o.model}, {"model_free", true},
                           {"threads", std::max(1, o.threads)}};
  return prune_output_finish(o, cfg, ck, *w, dir, counts, plan.reported, std::move(report), t0);
}

}  // namespace shrink::train
