// The CPU backend: kernels/cpu ops chosen once by ISA, GEMMs from oneDNN at prefill sizes and
// from our register-blocked kernels at decode sizes (and everywhere when no library is built),
// all on one OpenMP pool (kernels/cpu/parallel.h).
//
// Weight layouts after load: float32 [out, in] (HF layout; the "nt" kernels read rows of W
// directly), int8 [out, in] plus float scales [out, groups] plus, for the VNNI u8 x s8 path,
// the compensation 128 * sum(group) per (row, group). Work is split over output features
// (GEMM columns) or over (row, head) pairs, so each output element is computed by exactly one
// kernel call and results do not depend on the thread count.
// Tested through the engine in tests/runtime/test_engine.cpp (1 vs 2 threads, every ISA level).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/gemm_library.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/parallel.h"
#include "core/dtype.h"
#include "core/sampling.h"
#include "runtime/backend.h"

namespace shrink::runtime {

namespace {

namespace cpu_kernels = shrink::kernels::cpu;

// Attention: runs of at least this many rows (one slot, consecutive positions) take the blocked
// kernel, in tasks of about kBlockRowsTimesHeads query rows (block rows x heads per KV head).
constexpr int64_t kBlockRunMin = 16;
constexpr int64_t kBlockRowsTimesHeads = 128;

// ---- attention (CpuBackend::attention), in steps ----

// One attention call's query side: rows of q (n_heads heads of head_dim floats at stride ldq) at
// their placements, and the keys each row sees.
struct AttentionQuery {
  const float* q;
  int64_t ldq;
  RowPlacement at;
  int64_t n_heads, n_kv_heads, head_dim, window;
  float scale;  // 1 / sqrt(head_dim)
  int64_t per_kv() const { return n_heads / n_kv_heads; }  // query heads per KV head
  // The first key position a row at position p attends to: p - window + 1 for a sliding window.
  int64_t key_lo(int64_t p) const { return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0; }
};

// One layer's KV cache as the attention kernels read it, from a (slot, position, KV head) on:
// the one place that dispatches on the cache's storage (floats, f16 bit patterns, or int8 with
// one scale per (slot, position, KV head)).
class KvCacheReader {
 public:
  KvCacheReader(const cpu_kernels::KernelTable& k, const KvLayer& c, int64_t n_kv_heads,
                int64_t head_dim)
      : k_(k), c_(c), n_kv_heads_(n_kv_heads), d_(head_dim), max_seq_(c.slot_stride / c.kv_dim) {}

  // The blocked kernel: M query rows (d floats each) of one KV head group against the keys
  // [lo[m], hi[m]) of one slot.
  void block(int64_t slot, int64_t kvh, const float* q, int64_t M, const int64_t* lo,
             const int64_t* hi, float scale, float* out, float* scratch) const {
    const int64_t base = offset(slot, 0, kvh);
    if (c_.storage == KvStorage::kF16) {
      k_.attention_block_f16kv(q, M, d_, lo, hi, f16(c_.k) + base, f16(c_.v) + base, c_.kv_dim,
                               scale, out, scratch);
    } else if (c_.storage == KvStorage::kInt8) {
      const int64_t so = scale_offset(slot, 0, kvh);
      k_.attention_block_s8kv(q, M, d_, lo, hi, s8(c_.k) + base, s8(c_.v) + base, c_.kv_dim,
                              c_.k_scale + so, c_.v_scale + so, n_kv_heads_, scale, out,
                              scratch);
    } else {
      k_.attention_block_f32(q, M, d_, lo, hi, c_.k + base, c_.v + base, c_.kv_dim, scale, out,
                             scratch);
    }
  }

  // The split-K partial: G query heads of one KV head against the n keys from position pos0 of
  // one slot: the unnormalised output o [G, d], the score maximum m [G] and the sum l [G] of
  // exp(score - m), which attention_merge_f32 combines exactly.
  void partial(int64_t slot, int64_t pos0, int64_t kvh, const float* q, int64_t G, int64_t n,
               float scale, float* o, float* m, float* l, float* scratch) const {
    const int64_t base = offset(slot, pos0, kvh);
    if (c_.storage == KvStorage::kF16) {
      k_.attention_partial_f16kv(q, G, d_, f16(c_.k) + base, f16(c_.v) + base, c_.kv_dim, n,
                                 scale, o, m, l, scratch);
    } else if (c_.storage == KvStorage::kInt8) {
      const int64_t so = scale_offset(slot, pos0, kvh);
      k_.attention_partial_s8kv(q, G, d_, s8(c_.k) + base, s8(c_.v) + base, c_.kv_dim,
                                c_.k_scale + so, c_.v_scale + so, n_kv_heads_, n, scale, o, m, l,
                                scratch);
    } else {
      k_.attention_partial_f32(q, G, d_, c_.k + base, c_.v + base, c_.kv_dim, n, scale, o, m, l,
                               scratch);
    }
  }

 private:
  int64_t offset(int64_t slot, int64_t pos, int64_t kvh) const {
    return slot * c_.slot_stride + pos * c_.kv_dim + kvh * d_;
  }
  // The int8 scales: consecutive positions are n_kv_heads apart.
  int64_t scale_offset(int64_t slot, int64_t pos, int64_t kvh) const {
    return (slot * max_seq_ + pos) * n_kv_heads_ + kvh;
  }
  static const uint16_t* f16(const float* p) { return reinterpret_cast<const uint16_t*>(p); }
  static const int8_t* s8(const float* p) { return reinterpret_cast<const int8_t*>(p); }

  const cpu_kernels::KernelTable& k_;
  const KvLayer& c_;
  int64_t n_kv_heads_, d_, max_seq_;
};

// Which rows take which path. Runs of kBlockRunMin or more rows of one slot at consecutive
// positions (a prefill chunk) go through the blocked kernel, cut into blocks of bq rows so that
// a task (one block and one KV head group) holds about kBlockRowsTimesHeads query rows; the other
// rows (decode) go through split-K partials.
struct AttentionWork {
  struct Block {
    int64_t row, n;  // first row and row count, in one run
  };
  std::vector<Block> blocks;
  std::vector<int64_t> single;  // rows outside long runs
};

AttentionWork attention_work_split(int64_t rows, const RowPlacement& at, int64_t per_kv) {
  AttentionWork w;
  const int64_t bq = std::max<int64_t>(8, kBlockRowsTimesHeads / per_kv);
  for (int64_t r0 = 0; r0 < rows;) {
    int64_t r1 = r0 + 1;
    while (r1 < rows && at.slot[r1] == at.slot[r0] && at.pos[r1] == at.pos[r1 - 1] + 1) ++r1;
    if (r1 - r0 >= kBlockRunMin) {
      for (int64_t b = r0; b < r1; b += bq) w.blocks.push_back({b, std::min(bq, r1 - b)});
    } else {
      for (int64_t r = r0; r < r1; ++r) w.single.push_back(r);
    }
    r0 = r1;
  }
  return w;
}

// The blocked path: one task per (block, KV head) gathers the block's rows of the group's per_kv
// query heads into one matrix of M = rows * per_kv query rows, runs the blocked kernel over it and
// scatters the result into out.
void attention_blocks(const AttentionQuery& aq, const KvCacheReader& kv,
                      const std::vector<AttentionWork::Block>& blocks, float* out) {
  const int64_t per_kv = aq.per_kv(), d = aq.head_dim, n_kv_heads = aq.n_kv_heads;
  const RowPlacement& at = aq.at;
  // Causal blocks late in a run cost more than early ones: order the tasks 0, n-1, 1, n-2,
  // ... so that each thread's contiguous share holds a mix (work per task is fixed, so
  // results do not depend on the split).
  const int64_t nb = int64_t(blocks.size());
  cpu_kernels::parallel_for(nb * n_kv_heads, 1, [&](int64_t b, int64_t e) {
    std::vector<float> qb, ob, scratch;
    std::vector<int64_t> lo, hi;
    for (int64_t t = b; t < e; ++t) {
      const int64_t z = t / n_kv_heads, kvh = t % n_kv_heads;
      const AttentionWork::Block& blk = blocks[size_t(z % 2 ? nb - 1 - z / 2 : z / 2)];
      const int64_t M = blk.n * per_kv;
      qb.resize(size_t(M * d));
      ob.resize(size_t(M * d));
      lo.resize(size_t(M));
      hi.resize(size_t(M));
      scratch.resize(size_t(cpu_kernels::attention_block_scratch(M, d)));
      for (int64_t hh = 0; hh < per_kv; ++hh) {
        const int64_t h = kvh * per_kv + hh;
        for (int64_t i = 0; i < blk.n; ++i) {
          const int64_t r = blk.row + i, m = hh * blk.n + i;
          std::memcpy(&qb[size_t(m * d)], aq.q + r * aq.ldq + h * d, size_t(d) * 4);
          lo[size_t(m)] = aq.key_lo(at.pos[r]);
          hi[size_t(m)] = at.pos[r] + 1;
        }
      }
      kv.block(at.slot[blk.row], kvh, qb.data(), M, lo.data(), hi.data(), aq.scale, ob.data(),
               scratch.data());
      for (int64_t hh = 0; hh < per_kv; ++hh) {
        const int64_t h = kvh * per_kv + hh;
        for (int64_t i = 0; i < blk.n; ++i) {
          std::memcpy(out + (blk.row + i) * aq.n_heads * d + h * d,
                      &ob[size_t((hh * blk.n + i) * d)], size_t(d) * 4);
        }
      }
    }
  });
}

// The split-K tasks of the decode rows: one per (row, KV head, chunk of keys). Chunk lengths
// depend on the row's key count only, so results do not depend on the thread count or the
// batch.
struct SplitKPlan {
  struct Chunk {
    int64_t r, kvh, j0, n;  // row, KV head, first key position, key count
  };
  std::vector<Chunk> chunks;
  std::vector<int64_t> first;  // per (single row, KV head): its first chunk; then the end
  int64_t max_chunk = 1;       // the longest chunk (sizes the kernels' scratch)
};

SplitKPlan split_k_plan(const AttentionQuery& aq, const std::vector<int64_t>& single) {
  SplitKPlan p;
  for (int64_t r : single) {
    const int64_t lo = aq.key_lo(aq.at.pos[r]), n = aq.at.pos[r] + 1 - lo;
    const int64_t len = cpu_kernels::attention_split_chunk(n);
    p.max_chunk = std::max(p.max_chunk, std::min(len, n));
    for (int64_t kvh = 0; kvh < aq.n_kv_heads; ++kvh) {
      p.first.push_back(int64_t(p.chunks.size()));
      for (int64_t j = 0; j < n; j += len)
        p.chunks.push_back({r, kvh, lo + j, std::min(len, n - j)});
    }
  }
  p.first.push_back(int64_t(p.chunks.size()));
  return p;
}

// The decode path: the split-K partials, each reading its chunk of K and V once for the group's
// per_kv query heads, then one merge per (row, KV head) into out. part_o and part_ml are the
// partials' scratch, kept between calls.
void attention_split_k(const AttentionQuery& aq, const KvCacheReader& kv,
                       const std::vector<int64_t>& single, std::vector<float>& part_o,
                       std::vector<float>& part_ml, float* out) {
  const SplitKPlan plan = split_k_plan(aq, single);
  const int64_t G = aq.per_kv(), d = aq.head_dim, n_kv_heads = aq.n_kv_heads;
  const int64_t T = int64_t(plan.chunks.size());
  part_o.resize(size_t(T * G * d));
  part_ml.resize(size_t(2 * T * G));
  float* po = part_o.data();
  float* pm = part_ml.data();
  float* pl = pm + T * G;
  cpu_kernels::parallel_for(T, 1, [&](int64_t b, int64_t e) {
    std::vector<float> scratch(size_t(cpu_kernels::attention_partial_scratch(G, plan.max_chunk)));
    for (int64_t t = b; t < e; ++t) {
      const SplitKPlan::Chunk& ch = plan.chunks[size_t(t)];
      kv.partial(aq.at.slot[ch.r], ch.j0, ch.kvh, aq.q + ch.r * aq.ldq + ch.kvh * G * d, G, ch.n,
                 aq.scale, po + t * G * d, pm + t * G, pl + t * G, scratch.data());
    }
  }, 2 * G * plan.max_chunk * d);
  cpu_kernels::parallel_for(int64_t(single.size()) * n_kv_heads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t r = single[size_t(i / n_kv_heads)], kvh = i % n_kv_heads;
      const int64_t f = plan.first[size_t(i)], C = plan.first[size_t(i) + 1] - f;
      cpu_kernels::attention_merge_f32(C, G, d, po + f * G * d, pm + f * G, pl + f * G,
                                       out + r * aq.n_heads * d + kvh * G * d);
    }
  }, 4 * G * d);
}

class CpuTensor : public DeviceTensor {
 public:
  explicit CpuTensor(std::vector<float>&& v) : v_(std::move(v)) {}
  float* data() override { return v_.data(); }
  int64_t numel() const override { return int64_t(v_.size()); }

 private:
  std::vector<float> v_;
};

class CpuLinear : public Linear {
 public:
  std::vector<float> w;
  const float* wp = nullptr;  // w.data() or borrowed
  std::vector<uint16_t> wb;   // bf16 storage (float_weights = bf16); then w/wp are unused
  const uint16_t* wbp = nullptr;  // wb.data() or borrowed (a tied head on a bf16 embedding)
  std::vector<int8_t> q;
  std::vector<uint8_t> q4;  // W4A16/W4A8: kernels.h's 4-bit blocks, [out, ld4] bytes (q empty)
  int64_t ld4 = 0;
  std::vector<float> scale;
  std::vector<uint16_t> scale16;  // W4A8: the scales as f16 bits [out, groups] (scale empty)
  std::vector<float> zs;      // W4A16 asymmetric: zp * scale [out, groups] (else empty)
  std::vector<int32_t> perm;  // g_idx: the kernels read x[perm] (LinearDesc::perm)
  std::vector<int32_t> comp;  // 128 * sum of each (row, group) of q
  int64_t group = 0;
  ActQuant act = ActQuant::kNone;
  float input_scale = 0;
  std::vector<float> bias;
  bool act_rows_split = false;  // LinearDesc::act_rows_split
};

// Columns per parallel slice are multiples of this (the kernels' 4-wide tiles, and whole cache
// lines of output).
constexpr int64_t kColAlign = 16;
// bf16 weights with fp32 arithmetic: products of at least this many rows widen the weights into
// the library GEMM, smaller ones run the hand-written bf16-weight kernel (see linear_bf16).
constexpr int64_t kBf16WidenMinRows = 512;

class CpuBackend : public Backend {
 public:
  CpuBackend(cpu_kernels::Isa isa, int threads, bool bf16, bool bf16_gemm)
      : k_(cpu_kernels::kernels_for(isa)), threads_(threads), bf16_(bf16), bf16_gemm_(bf16_gemm) {
    cpu_kernels::threads_set(threads);
  }

  bool float_weights_bf16() const override { return bf16_; }
  bool host_memory() const override { return true; }
  void set_row_absmax_reduce(std::function<void(float*, int64_t)> fn) override {
    row_absmax_reduce_ = std::move(fn);
  }

  std::string describe() const override {
    return std::string("cpu ") + cpu_kernels::isa_name(k_.isa) +
           (bf16_ ? bf16_gemm_ ? ", bf16 weights and activations" : ", bf16 weights (fp32 arithmetic)"
                  : "") +
           ", gemm " + cpu_kernels::gemm_library_name() +
           ", " + std::to_string(threads_) + (threads_ == 1 ? " thread" : " threads") +
           (cpu_kernels::threads_have_openmp() ? "" : " (no OpenMP)");
  }

  std::unique_ptr<DeviceTensor> tensor_zeros(int64_t n) override {
    return std::make_unique<CpuTensor>(std::vector<float>(size_t(n), 0.0f));
  }
  std::unique_ptr<DeviceTensor> tensor_from_host(std::vector<float>&& host) override {
    return std::make_unique<CpuTensor>(std::move(host));
  }
  void to_host(const float* src, int64_t n, float* dst) override {
    std::memcpy(dst, src, size_t(n) * sizeof(float));
  }

  Result<std::unique_ptr<Linear>> linear_create(LinearDesc&& d) override {
    auto l = std::make_unique<CpuLinear>();
    l->out = d.out;
    l->in = d.in;
    l->kind = d.kind;
    SHRINK_CHECK(d.bias.empty() || int64_t(d.bias.size()) == d.out, StatusCode::kInternal,
                 "%s: bias has %zu values, expected %lld", d.name.c_str(), d.bias.size(),
                 (long long)d.out);
    l->bias = std::move(d.bias);
    if (d.kind == LinearKind::kF32 && bf16_ && (d.wb_borrowed || !d.wb.empty())) {
      SHRINK_CHECK(d.wb_borrowed || int64_t(d.wb.size()) == d.out * d.in, StatusCode::kInternal,
                   "%s: %zu bf16 weights for [%lld, %lld]", d.name.c_str(), d.wb.size(),
                   (long long)d.out, (long long)d.in);
      l->wb = std::move(d.wb);
      l->wbp = d.wb_borrowed ? d.wb_borrowed : l->wb.data();
      l->weight_bytes = uint64_t(d.out * d.in) * 2;
      return std::unique_ptr<Linear>(std::move(l));
    }
    SHRINK_CHECK(d.wb.empty() && !d.wb_borrowed, StatusCode::kInternal,
                 "%s: bf16 weights given to a backend that keeps float32", d.name.c_str());
    if (d.kind == LinearKind::kF32) {
      if (d.w_borrowed) {
        l->wp = d.w_borrowed;
      } else {
        SHRINK_CHECK(int64_t(d.w.size()) == d.out * d.in, StatusCode::kInternal,
                     "%s: %zu weights for [%lld, %lld]", d.name.c_str(), d.w.size(),
                     (long long)d.out, (long long)d.in);
        l->w = std::move(d.w);
        l->wp = l->w.data();
      }
      l->weight_bytes = uint64_t(d.out * d.in) * 4;
      if (bf16_) {
        l->wb.resize(size_t(d.out * d.in));
        const float* src = l->wp;
        uint16_t* dst = l->wb.data();
        cpu_kernels::parallel_for(d.out * d.in, 4096, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) dst[i] = core::f32_to_bf16(src[i]);
        });
        l->w = {};
        l->wp = nullptr;
        l->wbp = l->wb.data();
        l->weight_bytes = uint64_t(d.out * d.in) * 2;
      }
      return std::unique_ptr<Linear>(std::move(l));
    }
    const int64_t G = (d.in + d.group - 1) / d.group;
    SHRINK_CHECK(d.group > 0 && int64_t(d.q.size()) == d.out * d.in &&
                     int64_t(d.scale.size()) == d.out * G &&
                     (d.zp.empty() || int64_t(d.zp.size()) == d.out * G),
                 StatusCode::kInternal, "%s: inconsistent int8 weights", d.name.c_str());
    const bool keep4 =
        d.kind == LinearKind::kW8A16 && d.bits == 4 && (d.group % 32 == 0 || d.group == d.in);
    if (!keep4) linear_desc_fold_zero_points(d);
    if (keep4) {
      // W4A8: gemm_w4a8 (per row or per 32 inputs), with f16 scales; a scale outside f16's
      // normal range (a near-zero group) keeps the layer in W4A16 with float32 scales.
      const bool f16_ok = std::all_of(d.scale.begin(), d.scale.end(), [](float v) {
        const float a = std::fabs(v);
        return a == 0.0f || (a >= 6.103515625e-05f && a <= 65504.0f);
      });
      if (f16_ok) l->act_int8 = d.act_int8;
    } else if (d.kind == LinearKind::kW8A16 && d.act_int8 == ActInt8::kRow &&
               std::none_of(d.q.begin(), d.q.end(), [](int8_t v) { return v == -128; })) {
      // 8-bit weights with int8 activations per token: the W8A8 dynamic kernels, whose VNNI
      // shift trick needs weights in [-127, 127] (-128 keeps float activations).
      d.kind = LinearKind::kW8A8;
      d.act = ActQuant::kDynamic;
      l->kind = d.kind;
      l->act_int8 = ActInt8::kRow;
    }
    l->act_rows_split = d.act_rows_split;
    l->q = std::move(d.q);
    l->perm = std::move(d.perm);
    l->scale = std::move(d.scale);
    l->group = d.group;
    l->act = d.act;
    l->input_scale = d.input_scale;
    if (d.kind == LinearKind::kW8A8) {
      l->comp.resize(size_t(d.out * G));
      for (int64_t n = 0; n < d.out; ++n) {
        for (int64_t g = 0; g < G; ++g) {
          int32_t s = 0;
          const int64_t k1 = std::min(d.in, (g + 1) * d.group);
          for (int64_t k = g * d.group; k < k1; ++k) s += l->q[size_t(n * d.in + k)];
          l->comp[size_t(n * G + g)] = 128 * s;
        }
      }
    }
    l->weight_bytes = uint64_t(d.out * d.in) + uint64_t(d.out * G) * 4;
    if (keep4) {
      // Keep 4-bit weights at 4 bits (kernels.h's blocks of 32): decode reads half the bytes
      // of W8A16. Zero points: sum_k (q - zp) s x = sum_k q s x - sum_g zp s (sum_{k in g} x),
      // the symmetric kernel plus one small correction per group (linear()).
      if (l->act_int8 != ActInt8::kOff) {  // W4A8 reads f16 scales (and so do its zero points)
        l->scale16.resize(l->scale.size());
        for (size_t i = 0; i < l->scale.size(); ++i) {
          l->scale16[i] = core::f32_to_f16(l->scale[i]);
          l->scale[i] = core::f16_to_f32(l->scale16[i]);
        }
      }
      if (!d.zp.empty()) {
        l->zs.resize(size_t(d.out * G));
        for (size_t i = 0; i < l->zs.size(); ++i) l->zs[i] = float(d.zp[i]) * l->scale[i];
      }
      const uint64_t scale_bytes = l->scale16.empty() ? 4 : 2;
      if (!l->scale16.empty()) l->scale = {};
      l->ld4 = cpu_kernels::s4_row_bytes(d.in);
      l->q4.resize(size_t(d.out * l->ld4));
      for (int64_t n = 0; n < d.out; ++n) {  // values in [-8, 7]: the engine checked them
        cpu_kernels::s4_pack_row(l->q.data() + n * d.in, d.in, l->q4.data() + n * l->ld4);
      }
      l->q = {};
      l->weight_bytes =
          uint64_t(d.out * l->ld4) + uint64_t(d.out * G) * (scale_bytes + (l->zs.empty() ? 0 : 4));
    }
    return std::unique_ptr<Linear>(std::move(l));
  }

  void embed(const float* table, int64_t dim, HostInts ids, int64_t rows, float* out) override {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(out + r * dim, table + int64_t(ids.p[r]) * dim, size_t(dim) * sizeof(float));
    }
  }

  void gather_rows(const float* src, int64_t dim, HostInts idx, int64_t rows,
                   float* dst) override {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst + r * dim, src + int64_t(idx.p[r]) * dim, size_t(dim) * sizeof(float));
    }
  }

  void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
               float eps) override {
    cpu_kernels::parallel_for(rows, 1, [&](int64_t b, int64_t e) {
      k_.rmsnorm_f32(x + b * n, w, y + b * n, e - b, n, eps);
    }, 2 * n);
  }

  void linear(const Linear& base, const float* x, int64_t M, float* y, int64_t ldy) override {
    const CpuLinear& l = static_cast<const CpuLinear&>(base);
    const int64_t N = l.out, K = l.in;
    if (!l.perm.empty()) {  // act-order groups: gather the inputs into q's column order
      xp_.resize(size_t(M * K));
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = x + m * K;
        float* o = xp_.data() + m * K;
        for (int64_t j = 0; j < K; ++j) o[j] = xr[l.perm[size_t(j)]];
      }
      x = xp_.data();
    }
    const int64_t gemv_max = l.kind == LinearKind::kW8A16  ? cpu_kernels::kGemvMaxMW8A16
                             : l.kind == LinearKind::kW8A8 ? cpu_kernels::kGemvMaxMW8A8
                                                           : cpu_kernels::kGemvMaxMFloat;
    const bool big = M > gemv_max && cpu_kernels::gemm_library_available();
    switch (l.kind) {
      case LinearKind::kF32:
        if (l.wbp) {
          linear_bf16(l, x, M, y, ldy, big);
          break;
        }
        if (!(big && cpu_kernels::gemm_f32_nt_library(M, N, K, x, K, l.wp, K, y, ldy))) {
          cpu_kernels::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
            k_.gemm_f32_nt(M, e - b, K, x, K, l.wp + b * K, K, y + b, ldy);
          }, M * K);
        }
        break;
      case LinearKind::kW8A16: {
        const int64_t G = (K + l.group - 1) / l.group;
        const bool four = !l.q4.empty();
        if (four && l.act_int8 != ActInt8::kOff) {
          linear_w4a8(l, x, M, y, ldy);
          break;
        }
        // Prefill: dequantise into float (cost N*K, against M*N*K for the product), then the
        // library's fp32 GEMM, a panel at a time.
        if (big && gemm_widened_panels(x, M, N, K, y, ldy, [&](int64_t n, float* d) {
              const int8_t* q = four ? nullptr : l.q.data() + n * K;
              const uint8_t* p4 = four ? l.q4.data() + n * l.ld4 : nullptr;
              for (int64_t g = 0; g < G; ++g) {
                const float s = l.scale[size_t(n * G + g)];
                const float z = l.zs.empty() ? 0.0f : l.zs[size_t(n * G + g)];
                const int64_t k1 = std::min(K, (g + 1) * l.group);
                for (int64_t k = g * l.group; k < k1; ++k)
                  d[k] = float(four ? cpu_kernels::s4_value(p4, k) : q[k]) * s - z;
              }
            })) {
          break;
        }
        if (!l.zs.empty()) group_sums(l, x, M);
        cpu_kernels::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
          if (four) {
            k_.gemm_w4a16_nt(M, e - b, K, x, K, l.q4.data() + b * l.ld4, l.ld4,
                             l.scale.data() + b * G, l.group, y + b, ldy);
            if (!l.zs.empty()) zero_point_correction(l, M, b, e, y, ldy);
          } else {
            k_.gemm_w8a16_nt(M, e - b, K, x, K, l.q.data() + b * K, K, l.scale.data() + b * G,
                             l.group, y + b, ldy);
          }
        }, M * K);
        break;
      }
      case LinearKind::kW8A8: {
        qx_.resize(size_t(M * K));
        sx_.resize(size_t(M));
        const float* in_scale = l.act == ActQuant::kStatic ? &l.input_scale : nullptr;
        if (l.act == ActQuant::kDynamic && l.act_rows_split && row_absmax_reduce_) {
          split_row_scales(x, M, K);
          cpu_kernels::parallel_for(M, 1, [&](int64_t b, int64_t e) {
            for (int64_t m = b; m < e; ++m) {
              k_.quantize_s8(x + m * K, 1, K, K, &rs_[size_t(m)], qx_.data() + m * K, K,
                             sx_.data() + m);
            }
          }, 2 * K);
        } else {
          cpu_kernels::parallel_for(M, 1, [&](int64_t b, int64_t e) {
            k_.quantize_s8(x + b * K, e - b, K, K, in_scale, qx_.data() + b * K, K, sx_.data() + b);
          }, 2 * K);
        }
        if (big && l.group == K) {
          acc_.resize(size_t(M * N));
          if (cpu_kernels::gemm_s8s8_s32_nt_library(M, N, K, qx_.data(), K, l.q.data(), K,
                                                    acc_.data(), N)) {
            // The reference epilogue for one group: (0 + float(dot) * b_scale) * a_scale.
            cpu_kernels::parallel_for(M, 1, [&](int64_t b, int64_t e) {
              for (int64_t m = b; m < e; ++m) {
                for (int64_t n = 0; n < N; ++n) {
                  y[m * ldy + n] = float(acc_[size_t(m * N + n)]) * l.scale[size_t(n)] * sx_[size_t(m)];
                }
              }
            });
            break;
          }
        }
        cpu_kernels::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
          const int64_t G = (K + l.group - 1) / l.group;
          k_.gemm_s8s8_f32_nt(M, e - b, K, qx_.data(), K, sx_.data(), l.q.data() + b * K, K,
                              l.scale.data() + b * G, l.group, l.comp.data() + b * G, y + b, ldy);
        }, M * K);
        break;
      }
    }
    if (!l.bias.empty()) {
      for (int64_t m = 0; m < M; ++m) {
        float* yr = y + m * ldy;
        for (int64_t n = 0; n < N; ++n) yr[n] += l.bias[size_t(n)];
      }
    }
  }

  // The per-group sums of x (xsum_ [M, G]), for the zero-point correction.
  void group_sums(const CpuLinear& l, const float* x, int64_t M) {
    const int64_t K = l.in, G = (K + l.group - 1) / l.group;
    xsum_.resize(size_t(M * G));
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t g = 0; g < G; ++g) {
        const float* xr = x + m * K + g * l.group;
        const int64_t n = std::min(l.group, K - g * l.group);
        float s = 0;
        for (int64_t k = 0; k < n; ++k) s += xr[k];
        xsum_[size_t(m * G + g)] = s;
      }
    }
  }

  // Asymmetric 4 bits: y[:, b:e] -= sum_g zp * scale * (sum of x over group g).
  void zero_point_correction(const CpuLinear& l, int64_t M, int64_t b, int64_t e, float* y,
                             int64_t ldy) const {
    const int64_t G = (l.in + l.group - 1) / l.group;
    for (int64_t m = 0; m < M; ++m) {
      const float* xs = xsum_.data() + m * G;
      float* yr = y + m * ldy;
      for (int64_t n = b; n < e; ++n) {
        const float* z = l.zs.data() + n * G;
        float c = 0;
        for (int64_t g = 0; g < G; ++g) c += z[g] * xs[g];
        yr[n] -= c;
      }
    }
  }

  // A row whose inputs are split over tensor-parallel ranks: its scale is the whole row's
  // max|x| / 127 (quantize_s8's dynamic rule, 1 for a zero row), the ranks' maxima reduced first.
  // Into rs_, which it returns.
  const float* split_row_scales(const float* x, int64_t M, int64_t K) {
    rs_.resize(size_t(M));
    for (int64_t m = 0; m < M; ++m) {
      float a = 0;
      for (int64_t k = 0; k < K; ++k) a = std::max(a, std::fabs(x[m * K + k]));
      rs_[size_t(m)] = a;
    }
    row_absmax_reduce_(rs_.data(), M);
    for (float& s : rs_) s = s > 0 ? s / 127.0f : 1.0f;
    return rs_.data();
  }

  // W4A8: the rows of x quantized to int8 once (quantize_w4a8_act's packed rows, per row or per
  // 32 inputs), then gemm_w4a8 over slices of the weight rows with the f16 scales, decode and
  // prefill alike. The zero-point term of asymmetric weights uses the float sums of x (as W4A16
  // does): only the symmetric part sees the int8 activations.
  void linear_w4a8(const CpuLinear& l, const float* x, int64_t M, float* y, int64_t ldy) {
    const int64_t N = l.out, K = l.in, G = (K + l.group - 1) / l.group;
    const int64_t lda = cpu_kernels::w4a8_act_row_bytes(K);
    const int64_t block = l.act_int8 == ActInt8::kBlock32 ? 32 : 0;
    qa_.resize(size_t(M * lda));
    const float* row_scale = nullptr;
    if (block == 0 && l.act_rows_split && row_absmax_reduce_) {
      row_scale = split_row_scales(x, M, K);  // the whole row's scale, as one process takes it
    }
    // Rows in parallel from about 32 of them (a prefill's): about 16 operations per input
    // (the scale, the rounding, the packing), against kMinParallelWork.
    cpu_kernels::parallel_for(M, 1, [&](int64_t b, int64_t e) {
      cpu_kernels::quantize_w4a8_act(x + b * K, e - b, K, K, block, qa_.data() + b * lda, lda,
                                     row_scale ? row_scale + b : nullptr, k_.quantize_s8);
    }, 16 * K);
    if (!l.zs.empty()) group_sums(l, x, M);
    cpu_kernels::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
      k_.gemm_w4a8_nt(M, e - b, K, qa_.data(), lda, l.q4.data() + b * l.ld4, l.ld4,
                      l.scale16.data() + b * G, l.group, y + b, ldy);
      if (!l.zs.empty()) zero_point_correction(l, M, b, e, y, ldy);
    }, M * K);
  }

  // y = x W^T through the library's fp32 GEMM, W's rows widened to float32 by widen(n, row) a
  // panel of about 8 MiB at a time: the panel bounds the scratch where a whole widened matrix
  // (a 128k x 2048 head: 1 GiB) would not. False, with nothing written, when there is no library.
  template <typename Widen>
  bool gemm_widened_panels(const float* x, int64_t M, int64_t N, int64_t K, float* y, int64_t ldy,
                           Widen&& widen) {
    if (!cpu_kernels::gemm_library_available()) return false;
    const int64_t rows =
        std::max<int64_t>(kColAlign, (int64_t(8) << 20) / (4 * K)) / kColAlign * kColAlign;
    deq_.resize(size_t(std::min(rows, N) * K));
    for (int64_t n0 = 0; n0 < N; n0 += rows) {
      const int64_t nr = std::min(rows, N - n0);
      cpu_kernels::parallel_for(nr, 1, [&](int64_t b, int64_t e) {
        for (int64_t n = b; n < e; ++n) widen(n0 + n, deq_.data() + n * K);
      });
      if (!cpu_kernels::gemm_f32_nt_library(M, nr, K, x, K, deq_.data(), K, y + n0, ldy)) {
        return false;
      }
    }
    return true;
  }

  // bf16 weights: see CpuBackendOptions::float_weights.
  void linear_bf16(const CpuLinear& l, const float* x, int64_t M, float* y, int64_t ldy,
                   bool big) {
    const int64_t N = l.out, K = l.in;
    if (bf16_gemm_) {
      // bf16 activations (round to nearest even) on every path, products summed in fp32: the
      // bf16 matmul for prefill where the CPU has AVX512_BF16, else the paths below on the
      // rounded values. So a row's result does not depend on the batch it runs in (decode
      // rows alone in the GEMV or many in the GEMM), only on summation order.
      if (big && cpu_kernels::gemm_bf16_native()) {
        xb_.resize(size_t(M * K));
        cpu_kernels::parallel_for(M * K, 4096, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) xb_[size_t(i)] = core::f32_to_bf16(x[i]);
        });
        if (cpu_kernels::gemm_bf16_nt_library(M, N, K, xb_.data(), K, l.wbp, K, y, ldy)) return;
      }
      xr_.resize(size_t(M * K));  // the same rounding, kept as float for the paths below
      cpu_kernels::parallel_for(M * K, 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) xr_[size_t(i)] = core::bf16_to_f32(core::f32_to_bf16(x[i]));
      });
      x = xr_.data();
    }
    // Many rows: widened into the library's fp32 GEMM a panel at a time (N*K conversions in
    // all, against M*N*K products).
    if (M >= kBf16WidenMinRows && gemm_widened_panels(x, M, N, K, y, ldy, [&](int64_t n, float* d) {
          const uint16_t* src = l.wbp + n * K;
          for (int64_t k = 0; k < K; ++k) d[k] = core::bf16_to_f32(src[k]);
        })) {
      return;
    }
    // Fewer rows: the hand-written kernel, which widens each weight in registers and so streams
    // half the bytes of the fp32 GEMM (a 128k x 2048 bf16 head in 130-row chunks: 310 tokens/s,
    // against 152 widening panels and 270 with float32 weights).
    cpu_kernels::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
      k_.gemm_bf16w_f32_nt(M, e - b, K, x, K, l.wbp + b * K, K, y + b, ldy);
    }, M * K);
  }

  void add(float* x, const float* y, int64_t n) override {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
  }

  void rope(float* x, int64_t rows, int64_t ldx, int64_t heads, int64_t head_dim,
            const RowPlacement& at, const float* cos, const float* sin) override {
    const int64_t half = head_dim / 2;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = at.pos[r];
      k_.rope_f32(x + r * ldx, heads, head_dim, cos + p * half, sin + p * half);
    }
  }

  void kv_write(const float* k, const float* v, int64_t ld, int64_t rows, const RowPlacement& at,
                const KvLayer& c) override {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t off = int64_t(at.slot[r]) * c.slot_stride + int64_t(at.pos[r]) * c.kv_dim;
      if (c.storage == KvStorage::kF16) {
        k_.convert_f32_f16(k + r * ld, reinterpret_cast<uint16_t*>(c.k) + off, c.kv_dim);
        k_.convert_f32_f16(v + r * ld, reinterpret_cast<uint16_t*>(c.v) + off, c.kv_dim);
        continue;
      }
      if (c.storage == KvStorage::kInt8) {  // per KV head: one row of head_dim per scale
        const int64_t d = c.head_dim, nkv = c.kv_dim / d;
        const int64_t so = (int64_t(at.slot[r]) * (c.slot_stride / c.kv_dim) + at.pos[r]) * nkv;
        k_.quantize_s8(k + r * ld, nkv, d, d, nullptr, reinterpret_cast<int8_t*>(c.k) + off, d,
                       c.k_scale + so);
        k_.quantize_s8(v + r * ld, nkv, d, d, nullptr, reinterpret_cast<int8_t*>(c.v) + off, d,
                       c.v_scale + so);
        continue;
      }
      std::memcpy(c.k + off, k + r * ld, size_t(c.kv_dim) * sizeof(float));
      std::memcpy(c.v + off, v + r * ld, size_t(c.kv_dim) * sizeof(float));
    }
  }

  void attention(const float* q, int64_t ldq, int64_t rows, const RowPlacement& at,
                 const KvLayer& c, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                 int64_t window, float* out) override {
    const float scale = float(1.0 / std::sqrt(double(head_dim)));
    const AttentionQuery aq{q, ldq, at, n_heads, n_kv_heads, head_dim, window, scale};
    const KvCacheReader kv(k_, c, n_kv_heads, head_dim);
    const AttentionWork work = attention_work_split(rows, at, aq.per_kv());
    if (!work.blocks.empty()) attention_blocks(aq, kv, work.blocks, out);
    if (!work.single.empty()) attention_split_k(aq, kv, work.single, part_o_, part_ml_, out);
  }

  void silu_mul(const float* g, int64_t rows, int64_t n, float* y) override {
    cpu_kernels::parallel_for(rows, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) k_.silu_mul_f32(g + r * 2 * n, g + r * 2 * n + n, y + r * n, n);
    }, 8 * n);
  }

 private:
  const cpu_kernels::KernelTable& k_;
  int threads_;
  bool bf16_ = false;
  bool bf16_gemm_ = true;
  std::vector<uint16_t> xb_;
  // Scratch reused across calls (the engine calls ops from one thread).
  std::vector<float> deq_, sx_, xsum_, xp_, xr_;
  std::vector<float> rs_;  // per-row scales of split rows (act_rows_split)
  std::function<void(float*, int64_t)> row_absmax_reduce_;
  std::vector<int8_t> qx_;
  std::vector<uint8_t> qa_;  // W4A8: packed int8 activation rows
  std::vector<int32_t> acc_;
  std::vector<float> part_o_, part_ml_;  // split-K attention partials
};

}  // namespace

Result<std::unique_ptr<Backend>> backend_cpu_create(const CpuBackendOptions& opts) {
  SHRINK_CHECK(opts.threads >= 1, StatusCode::kInvalidInput, "--threads %d: expected >= 1",
               opts.threads);
  cpu_kernels::Isa isa = cpu_kernels::isa_active();
  if (!opts.isa.empty()) {
    SHRINK_CHECK(cpu_kernels::isa_from_name(opts.isa, &isa), StatusCode::kInvalidInput,
                 "isa '%s' is unknown; expected one of ref, avx2, avx512, avx512vnni",
                 opts.isa.c_str());
    SHRINK_CHECK(cpu_kernels::isa_supported(isa), StatusCode::kInvalidInput,
                 "isa '%s' is not supported by this CPU/build (best: %s)", opts.isa.c_str(),
                 cpu_kernels::isa_name(cpu_kernels::isa_best()));
  }
  SHRINK_CHECK(opts.float_weights == "f32" || opts.float_weights == "bf16" ||
                   opts.float_weights.empty(),
               StatusCode::kInvalidInput,
               "cpu float weights '%s': expected f32 or bf16 (f16 needs the cuda device)",
               opts.float_weights.c_str());
  return std::unique_ptr<Backend>(
      new CpuBackend(isa, opts.threads, opts.float_weights == "bf16", opts.bf16_gemm));
}

}  // namespace shrink::runtime
