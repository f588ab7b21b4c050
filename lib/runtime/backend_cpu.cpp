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

const char* linear_kind_name(LinearKind k) {
  switch (k) {
    case LinearKind::kF32: return "f32";
    case LinearKind::kW8A16:
      return "w8a16";  // (4-bit weights: LinearDesc::bits)
    case LinearKind::kW8A8: return "w8a8";
  }
  return "?";
}

void Backend::argmax_rows(const float* x, int64_t rows, int64_t n) {
  host_row_.resize(size_t(n));
  argmax_.resize(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    to_host(x + r * n, n, host_row_.data());
    argmax_[size_t(r)] = core::argmax(host_row_.data(), n);
  }
}

void Backend::sample_rows(const float* x, int64_t rows, int64_t n, const core::SampleRow* p) {
  host_row_.resize(size_t(n));
  argmax_.resize(size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    to_host(x + r * n, n, host_row_.data());
    argmax_[size_t(r)] = core::sample_pick(host_row_.data(), n, p[r], sample_scratch_);
  }
}

void Backend::argmax_fetch(int32_t* host, int64_t rows) {
  for (int64_t r = 0; r < rows && r < int64_t(argmax_.size()); ++r) host[r] = argmax_[size_t(r)];
}

namespace {

namespace kc = shrink::kernels::cpu;

// Attention: runs of at least this many rows (one slot, consecutive positions) take the blocked
// kernel, in tasks of about kBlockRowsTimesHeads query rows (block rows x heads per KV head).
constexpr int64_t kBlockRunMin = 16;
constexpr int64_t kBlockRowsTimesHeads = 128;

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
  std::vector<int8_t> q;
  std::vector<uint8_t> q4;  // W4A16: kernels.h's 4-bit blocks, [out, ld4] bytes (q empty)
  int64_t ld4 = 0;
  std::vector<float> scale;
  std::vector<float> zs;      // W4A16 asymmetric: zp * scale [out, groups] (else empty)
  std::vector<int32_t> perm;  // g_idx: the kernels read x[perm] (LinearDesc::perm)
  std::vector<int32_t> comp;  // 128 * sum of each (row, group) of q
  int64_t group = 0;
  ActQuant act = ActQuant::kNone;
  float input_scale = 0;
  std::vector<float> bias;
};

// Columns per parallel slice are multiples of this (the kernels' 4-wide tiles, and whole cache
// lines of output).
constexpr int64_t kColAlign = 16;

class CpuBackend : public Backend {
 public:
  CpuBackend(kc::Isa isa, int threads, bool bf16)
      : k_(kc::kernels_for(isa)), threads_(threads), bf16_(bf16) {
    kc::threads_set(threads);
  }

  std::string describe() const override {
    return std::string("cpu ") + kc::isa_name(k_.isa) + (bf16_ ? ", bf16 weights" : "") +
           ", gemm " + kc::gemm_library_name() +
           ", " + std::to_string(threads_) + (threads_ == 1 ? " thread" : " threads") +
           (kc::threads_have_openmp() ? "" : " (no OpenMP)");
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
        kc::parallel_for(d.out * d.in, 4096, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) dst[i] = core::f32_to_bf16(src[i]);
        });
        l->w = {};
        l->wp = nullptr;
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
      if (!d.zp.empty()) {
        l->zs.resize(size_t(d.out * G));
        for (size_t i = 0; i < l->zs.size(); ++i) l->zs[i] = float(d.zp[i]) * l->scale[i];
      }
      l->ld4 = kc::s4_row_bytes(d.in);
      l->q4.resize(size_t(d.out * l->ld4));
      for (int64_t n = 0; n < d.out; ++n) {  // values in [-8, 7]: the engine checked them
        kc::s4_pack_row(l->q.data() + n * d.in, d.in, l->q4.data() + n * l->ld4);
      }
      l->q = {};
      l->weight_bytes = uint64_t(d.out * l->ld4) + uint64_t(d.out * G) * (l->zs.empty() ? 4 : 8);
    }
    return std::unique_ptr<Linear>(std::move(l));
  }

  void embed(const float* table, int64_t dim, const int32_t* ids, int64_t rows,
             float* out) override {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(out + r * dim, table + int64_t(ids[r]) * dim, size_t(dim) * sizeof(float));
    }
  }

  void gather_rows(const float* src, int64_t dim, const int32_t* idx, int64_t rows,
                   float* dst) override {
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(dst + r * dim, src + int64_t(idx[r]) * dim, size_t(dim) * sizeof(float));
    }
  }

  void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
               float eps) override {
    kc::parallel_for(rows, 1, [&](int64_t b, int64_t e) {
      k_.rmsnorm_f32(x + b * n, w, y + b * n, e - b, n, eps);
    });
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
    const int64_t gemv_max = l.kind == LinearKind::kW8A16  ? kc::kGemvMaxMW8A16
                             : l.kind == LinearKind::kW8A8 ? kc::kGemvMaxMW8A8
                                                           : kc::kGemvMaxMFloat;
    const bool big = M > gemv_max && kc::gemm_library_available();
    switch (l.kind) {
      case LinearKind::kF32:
        if (!l.wb.empty()) {
          linear_bf16(l, x, M, y, ldy, big);
          break;
        }
        if (!(big && kc::gemm_f32_nt_library(M, N, K, x, K, l.wp, K, y, ldy))) {
          kc::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
            k_.gemm_f32_nt(M, e - b, K, x, K, l.wp + b * K, K, y + b, ldy);
          });
        }
        break;
      case LinearKind::kW8A16: {
        const int64_t G = (K + l.group - 1) / l.group;
        const bool four = !l.q4.empty();
        if (big) {
          // Prefill: dequantise once into float (cost N*K, against M*N*K for the product),
          // then the library's fp32 GEMM.
          deq_.resize(size_t(N * K));
          kc::parallel_for(N, 1, [&](int64_t b, int64_t e) {
            for (int64_t n = b; n < e; ++n) {
              const int8_t* q = four ? nullptr : l.q.data() + n * K;
              const uint8_t* p4 = four ? l.q4.data() + n * l.ld4 : nullptr;
              float* d = deq_.data() + n * K;
              for (int64_t g = 0; g < G; ++g) {
                const float s = l.scale[size_t(n * G + g)];
                const float z = l.zs.empty() ? 0.0f : l.zs[size_t(n * G + g)];
                const int64_t k1 = std::min(K, (g + 1) * l.group);
                for (int64_t k = g * l.group; k < k1; ++k)
                  d[k] = float(four ? kc::s4_value(p4, k) : q[k]) * s - z;
              }
            }
          });
          if (kc::gemm_f32_nt_library(M, N, K, x, K, deq_.data(), K, y, ldy)) break;
        }
        if (!l.zs.empty()) {  // the per-group sums of x, for the zero-point correction
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
        kc::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
          if (four) {
            k_.gemm_w4a16_nt(M, e - b, K, x, K, l.q4.data() + b * l.ld4, l.ld4,
                             l.scale.data() + b * G, l.group, y + b, ldy);
            if (!l.zs.empty()) {
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
          } else {
            k_.gemm_w8a16_nt(M, e - b, K, x, K, l.q.data() + b * K, K, l.scale.data() + b * G,
                             l.group, y + b, ldy);
          }
        });
        break;
      }
      case LinearKind::kW8A8: {
        qx_.resize(size_t(M * K));
        sx_.resize(size_t(M));
        const float* in_scale = l.act == ActQuant::kStatic ? &l.input_scale : nullptr;
        kc::parallel_for(M, 1, [&](int64_t b, int64_t e) {
          k_.quantize_s8(x + b * K, e - b, K, K, in_scale, qx_.data() + b * K, K, sx_.data() + b);
        });
        if (big && l.group == K) {
          acc_.resize(size_t(M * N));
          if (kc::gemm_s8s8_s32_nt_library(M, N, K, qx_.data(), K, l.q.data(), K, acc_.data(), N)) {
            // The reference epilogue for one group: (0 + float(dot) * b_scale) * a_scale.
            kc::parallel_for(M, 1, [&](int64_t b, int64_t e) {
              for (int64_t m = b; m < e; ++m) {
                for (int64_t n = 0; n < N; ++n) {
                  y[m * ldy + n] = float(acc_[size_t(m * N + n)]) * l.scale[size_t(n)] * sx_[size_t(m)];
                }
              }
            });
            break;
          }
        }
        kc::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
          const int64_t G = (K + l.group - 1) / l.group;
          k_.gemm_s8s8_f32_nt(M, e - b, K, qx_.data(), K, sx_.data(), l.q.data() + b * K, K,
                              l.scale.data() + b * G, l.group, l.comp.data() + b * G, y + b, ldy);
        });
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

  // bf16 weights: see CpuBackendOptions::float_weights.
  void linear_bf16(const CpuLinear& l, const float* x, int64_t M, float* y, int64_t ldy,
                   bool big) {
    const int64_t N = l.out, K = l.in;
    if (big && kc::gemm_bf16_native()) {
      xb_.resize(size_t(M * K));
      kc::parallel_for(M * K, 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) xb_[size_t(i)] = core::f32_to_bf16(x[i]);
      });
      if (kc::gemm_bf16_nt_library(M, N, K, xb_.data(), K, l.wb.data(), K, y, ldy)) return;
    }
    if (big) {  // widen once (N*K), then the library's fp32 GEMM (M*N*K)
      deq_.resize(size_t(N * K));
      kc::parallel_for(N * K, 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) deq_[size_t(i)] = core::bf16_to_f32(l.wb[size_t(i)]);
      });
      if (kc::gemm_f32_nt_library(M, N, K, x, K, deq_.data(), K, y, ldy)) return;
    }
    kc::parallel_for(N, kColAlign, [&](int64_t b, int64_t e) {
      k_.gemm_bf16w_f32_nt(M, e - b, K, x, K, l.wb.data() + b * K, K, y + b, ldy);
    });
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
    const int64_t per_kv = n_heads / n_kv_heads, d = head_dim;
    const float scale = float(1.0 / std::sqrt(double(head_dim)));
    auto key_lo = [&](int64_t p) { return window > 0 ? std::max<int64_t>(0, p - window + 1) : 0; };
    const uint16_t* k16 = reinterpret_cast<const uint16_t*>(c.k);  // KvStorage::kF16
    const uint16_t* v16 = reinterpret_cast<const uint16_t*>(c.v);
    const int8_t* k8 = reinterpret_cast<const int8_t*>(c.k);  // KvStorage::kInt8
    const int8_t* v8 = reinterpret_cast<const int8_t*>(c.v);
    const int64_t max_seq = c.slot_stride / c.kv_dim;
    // The int8 scales of (slot, position, KV head); consecutive positions are n_kv_heads apart.
    auto scale_at = [&](int64_t slot, int64_t pos, int64_t kvh) {
      return (slot * max_seq + pos) * n_kv_heads + kvh;
    };
    // Runs of kBlockRunMin or more rows of one slot at consecutive positions (a prefill chunk)
    // go through the blocked kernel, bq query rows of one KV head group per task; the
    // other rows (decode) through split-K partials (below).
    std::vector<int64_t> single;  // rows outside long runs
    struct Block {
      int64_t row, n;  // first row and row count, in one run
    };
    std::vector<Block> blocks;
    const int64_t bq = std::max<int64_t>(8, kBlockRowsTimesHeads / per_kv);
    for (int64_t r0 = 0; r0 < rows;) {
      int64_t r1 = r0 + 1;
      while (r1 < rows && at.slot[r1] == at.slot[r0] && at.pos[r1] == at.pos[r1 - 1] + 1) ++r1;
      if (r1 - r0 >= kBlockRunMin) {
        for (int64_t b = r0; b < r1; b += bq) blocks.push_back({b, std::min(bq, r1 - b)});
      } else {
        for (int64_t r = r0; r < r1; ++r) single.push_back(r);
      }
      r0 = r1;
    }
    if (!blocks.empty()) {
      // Causal blocks late in a run cost more than early ones: order the tasks 0, n-1, 1, n-2,
      // ... so that each thread's contiguous share holds a mix (work per task is fixed, so
      // results do not depend on the split).
      const int64_t nb = int64_t(blocks.size());
      kc::parallel_for(nb * n_kv_heads, 1, [&](int64_t b, int64_t e) {
        std::vector<float> qb, ob, scratch;
        std::vector<int64_t> lo, hi;
        for (int64_t t = b; t < e; ++t) {
          const int64_t z = t / n_kv_heads, kvh = t % n_kv_heads;
          const Block& blk = blocks[size_t(z % 2 ? nb - 1 - z / 2 : z / 2)];
          const int64_t M = blk.n * per_kv;
          qb.resize(size_t(M * d));
          ob.resize(size_t(M * d));
          lo.resize(size_t(M));
          hi.resize(size_t(M));
          scratch.resize(size_t(kc::attention_block_scratch(M, d)));
          for (int64_t hh = 0; hh < per_kv; ++hh) {
            const int64_t h = kvh * per_kv + hh;
            for (int64_t i = 0; i < blk.n; ++i) {
              const int64_t r = blk.row + i, m = hh * blk.n + i;
              std::memcpy(&qb[size_t(m * d)], q + r * ldq + h * d, size_t(d) * 4);
              lo[size_t(m)] = key_lo(at.pos[r]);
              hi[size_t(m)] = at.pos[r] + 1;
            }
          }
          const int64_t base = int64_t(at.slot[blk.row]) * c.slot_stride + kvh * d;
          if (c.storage == KvStorage::kF16) {
            k_.attention_block_f16kv(qb.data(), M, d, lo.data(), hi.data(), k16 + base, v16 + base,
                                     c.kv_dim, scale, ob.data(), scratch.data());
          } else if (c.storage == KvStorage::kInt8) {
            const int64_t so = scale_at(at.slot[blk.row], 0, kvh);
            k_.attention_block_s8kv(qb.data(), M, d, lo.data(), hi.data(), k8 + base, v8 + base,
                                    c.kv_dim, c.k_scale + so, c.v_scale + so, n_kv_heads, scale,
                                    ob.data(), scratch.data());
          } else {
            k_.attention_block_f32(qb.data(), M, d, lo.data(), hi.data(), c.k + base, c.v + base,
                                   c.kv_dim, scale, ob.data(), scratch.data());
          }
          for (int64_t hh = 0; hh < per_kv; ++hh) {
            const int64_t h = kvh * per_kv + hh;
            for (int64_t i = 0; i < blk.n; ++i) {
              std::memcpy(out + (blk.row + i) * n_heads * d + h * d,
                          &ob[size_t((hh * blk.n + i) * d)], size_t(d) * 4);
            }
          }
        }
      });
    }
    if (single.empty()) return;
    // Decode rows: split-K, one task per (row, KV head, chunk of keys) reading K and V once for
    // the group's per_kv query heads, then one merge per (row, KV head). Chunk lengths depend on
    // the row's key count only, so results do not depend on the thread count or the batch.
    struct Chunk {
      int64_t r, kvh, j0, n;
    };
    std::vector<Chunk> chunks;
    std::vector<int64_t> first;  // per (single row, KV head): its first chunk; then the end
    int64_t max_chunk = 1;
    for (int64_t r : single) {
      const int64_t lo = key_lo(at.pos[r]), n = at.pos[r] + 1 - lo;
      const int64_t len = kc::attention_split_chunk(n);
      max_chunk = std::max(max_chunk, std::min(len, n));
      for (int64_t kvh = 0; kvh < n_kv_heads; ++kvh) {
        first.push_back(int64_t(chunks.size()));
        for (int64_t j = 0; j < n; j += len)
          chunks.push_back({r, kvh, lo + j, std::min(len, n - j)});
      }
    }
    first.push_back(int64_t(chunks.size()));
    const int64_t G = per_kv, T = int64_t(chunks.size());
    part_o_.resize(size_t(T * G * d));
    part_ml_.resize(size_t(2 * T * G));
    float* po = part_o_.data();
    float* pm = part_ml_.data();
    float* pl = pm + T * G;
    kc::parallel_for(T, 1, [&](int64_t b, int64_t e) {
      std::vector<float> scratch(size_t(kc::attention_partial_scratch(G, max_chunk)));
      for (int64_t t = b; t < e; ++t) {
        const Chunk& ch = chunks[size_t(t)];
        const int64_t base =
            int64_t(at.slot[ch.r]) * c.slot_stride + ch.j0 * c.kv_dim + ch.kvh * d;
        const float* qg = q + ch.r * ldq + ch.kvh * G * d;
        if (c.storage == KvStorage::kF16) {
          k_.attention_partial_f16kv(qg, G, d, k16 + base, v16 + base, c.kv_dim, ch.n, scale,
                                     po + t * G * d, pm + t * G, pl + t * G, scratch.data());
        } else if (c.storage == KvStorage::kInt8) {
          const int64_t so = scale_at(at.slot[ch.r], ch.j0, ch.kvh);
          k_.attention_partial_s8kv(qg, G, d, k8 + base, v8 + base, c.kv_dim, c.k_scale + so,
                                    c.v_scale + so, n_kv_heads, ch.n, scale, po + t * G * d,
                                    pm + t * G, pl + t * G, scratch.data());
        } else {
          k_.attention_partial_f32(qg, G, d, c.k + base, c.v + base, c.kv_dim, ch.n, scale,
                                   po + t * G * d, pm + t * G, pl + t * G, scratch.data());
        }
      }
    });
    kc::parallel_for(int64_t(single.size()) * n_kv_heads, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t r = single[size_t(i / n_kv_heads)], kvh = i % n_kv_heads;
        const int64_t f = first[size_t(i)], C = first[size_t(i) + 1] - f;
        kc::attention_merge_f32(C, G, d, po + f * G * d, pm + f * G, pl + f * G,
                                out + r * n_heads * d + kvh * G * d);
      }
    });
  }

  void silu_mul(const float* g, int64_t rows, int64_t n, float* y) override {
    kc::parallel_for(rows, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) k_.silu_mul_f32(g + r * 2 * n, g + r * 2 * n + n, y + r * n, n);
    });
  }

 private:
  const kc::KernelTable& k_;
  int threads_;
  bool bf16_ = false;
  std::vector<uint16_t> xb_;
  // Scratch reused across calls (the engine calls ops from one thread).
  std::vector<float> deq_, sx_, xsum_, xp_;
  std::vector<int8_t> qx_;
  std::vector<int32_t> acc_;
  std::vector<float> part_o_, part_ml_;  // split-K attention partials
};

}  // namespace

Result<std::unique_ptr<Backend>> backend_cpu_create(const CpuBackendOptions& opts) {
  SHRINK_CHECK(opts.threads >= 1, StatusCode::kInvalidInput, "--threads %d: expected >= 1",
               opts.threads);
  kc::Isa isa = kc::isa_active();
  if (!opts.isa.empty()) {
    SHRINK_CHECK(kc::isa_from_name(opts.isa, &isa), StatusCode::kInvalidInput,
                 "isa '%s' is unknown; expected one of ref, avx2, avx512, avx512vnni",
                 opts.isa.c_str());
    SHRINK_CHECK(kc::isa_supported(isa), StatusCode::kInvalidInput,
                 "isa '%s' is not supported by this CPU/build (best: %s)", opts.isa.c_str(),
                 kc::isa_name(kc::isa_best()));
  }
  SHRINK_CHECK(opts.float_weights == "f32" || opts.float_weights == "bf16" ||
                   opts.float_weights.empty(),
               StatusCode::kInvalidInput,
               "cpu float weights '%s': expected f32 or bf16 (f16 needs the cuda device)",
               opts.float_weights.c_str());
  return std::unique_ptr<Backend>(new CpuBackend(isa, opts.threads, opts.float_weights == "bf16"));
}

}  // namespace shrink::runtime
