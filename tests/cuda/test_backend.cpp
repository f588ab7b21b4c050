// The CUDA backend against the CPU backend, op by op and end to end. Every GPU kernel is
// exercised through the Backend interface with identical inputs on both backends, over shapes
// that include odd sizes (K not a multiple of the vector width -> the generic GEMV; M across
// the GEMV / cuBLASLt boundary; GQA, MQA, sliding windows, head_dim 16..128):
//   - rmsnorm (+ residual add), silu_mul, rope, kv_write, rope_kv_write, attention (decode and
//     prefill tiles), argmax: to float32 rounding (relative 1e-5);
//   - linear: f32 weights exact fp32 (1e-5), f16/bf16 weights (1e-2 / 3e-2: the weights' own
//     rounding), W8A16 channel/group and W4A16 packed two to a byte (1e-5: both dequantise to
//     the same float weights), W8A8
//     dynamic/static channel/group (1e-5: the int8 products are exact, the quantised
//     activations identical);
//   - the engine: logits on the HF fixtures, greedy tokens equal CPU vs GPU (f32 weights, and
//     int8 W8A16 / W8A8 models), a mixed-length batch, CUDA graphs == eager bit for bit, and a
//     random-weight model of the smollm-135m shape;
//   - sampling on the device: equal to core::sample_select (the kernel's reference) row for
//     row up to the Llama-3 vocabulary, and sampled generation equal to the CPU's.
// Every GPU test calls GTEST_SKIP() when no CUDA device is present (CI), and says so.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/sampling.h"
#include "kernels/cuda/device.h"
#include "runtime/api.h"
#include "runtime/backend.h"
#include "runtime/engine.h"
#include "tests/runtime/util.h"

using namespace shrink;
using runtime::Backend;
using runtime::DeviceTensor;

#define SKIP_WITHOUT_GPU() \
  if (cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device present: GPU test not run"

namespace {

std::vector<float> randv(size_t n, uint32_t seed, float a = 1.0f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-a, a);
  std::vector<float> v(n);
  for (float& x : v) x = u(g);
  return v;
}

// ||a - b|| / ||b|| (NaN fails).
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

struct Pair {
  std::unique_ptr<Backend> cpu, gpu;
  static Pair make(const std::string& wt = "f32") {
    Pair p;
    runtime::CpuBackendOptions co;
    p.cpu = runtime::backend_cpu_create(co).take_or_throw();
    runtime::CudaBackendOptions go;
    go.float_weights = wt;
    p.gpu = runtime::backend_cuda_create(go).take_or_throw();
    return p;
  }
};

struct T2 {
  std::unique_ptr<DeviceTensor> c, g;
  float* cp() { return c->data(); }
  float* gp() { return g->data(); }
};

T2 both(Pair& p, const std::vector<float>& v) {
  return {p.cpu->tensor_from_host(std::vector<float>(v)), p.gpu->tensor_from_host(std::vector<float>(v))};
}

std::vector<float> host(Pair& p, T2& t, bool gpu) {
  std::vector<float> out(size_t(t.c->numel()));
  if (gpu) p.gpu->to_host(t.gp(), t.g->numel(), out.data());
  else p.cpu->to_host(t.cp(), t.c->numel(), out.data());
  return out;
}

void expect_close(Pair& p, T2& t, double tol, const std::string& what) {
  const double e = rel_err(host(p, t, true), host(p, t, false));
  EXPECT_LE(e, tol) << what;
  EXPECT_TRUE(p.gpu->take_error().is_ok()) << what;
}

// RoPE cos/sin tables [max_seq, head_dim / 2] (theta 10000) on both backends.
std::pair<T2, T2> rope_tables(Pair& p, int64_t max_seq, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  std::vector<float> cs(size_t(max_seq * half)), sn(size_t(max_seq * half));
  for (int64_t i = 0; i < max_seq * half; ++i) {
    const float a = float(i / half) * std::pow(10000.0f, -float(i % half) / float(half));
    cs[size_t(i)] = std::cos(a);
    sn[size_t(i)] = std::sin(a);
  }
  return {both(p, cs), both(p, sn)};
}

}  // namespace

TEST(CudaOps, RmsNormAndResidualAdd) {
  SKIP_WITHOUT_GPU();
  Pair p = Pair::make();
  for (int64_t rows : {1, 3, 17}) {
    for (int64_t n : {7, 64, 2051}) {
      auto x = both(p, randv(size_t(rows * n), 1)), d = both(p, randv(size_t(rows * n), 2));
      auto w = both(p, randv(size_t(n), 3)), y = both(p, std::vector<float>(size_t(rows * n), NAN));
      p.cpu->rmsnorm(x.cp(), w.cp(), y.cp(), rows, n, 1e-5f);
      p.gpu->rmsnorm(x.gp(), w.gp(), y.gp(), rows, n, 1e-5f);
      expect_close(p, y, 1e-6, "rmsnorm " + std::to_string(rows) + "x" + std::to_string(n));
      p.cpu->add_rmsnorm(x.cp(), d.cp(), w.cp(), y.cp(), rows, n, 1e-6f);
      p.gpu->add_rmsnorm(x.gp(), d.gp(), w.gp(), y.gp(), rows, n, 1e-6f);
      expect_close(p, x, 1e-7, "add_rmsnorm x");
      expect_close(p, y, 1e-6, "add_rmsnorm y");
    }
  }
}

TEST(CudaOps, SiluMulAddArgmax) {
  SKIP_WITHOUT_GPU();
  Pair p = Pair::make();
  for (int64_t rows : {1, 5}) {
    for (int64_t n : {3, 96, 8193}) {
      auto g = both(p, randv(size_t(rows * 2 * n), 4, 4.0f));
      auto y = both(p, std::vector<float>(size_t(rows * n), NAN));
      p.cpu->silu_mul(g.cp(), rows, n, y.cp());
      p.gpu->silu_mul(g.gp(), rows, n, y.gp());
      expect_close(p, y, 1e-6, "silu_mul");
      auto z = both(p, randv(size_t(rows * n), 5));
      p.cpu->add(y.cp(), z.cp(), rows * n);
      p.gpu->add(y.gp(), z.gp(), rows * n);
      expect_close(p, y, 1e-7, "add");
    }
  }
  // argmax: ties go to the lowest index.
  std::vector<float> v = randv(3 * 50001, 6);
  v[1 * 50001 + 777] = 5.0f;
  v[1 * 50001 + 40000] = 5.0f;
  auto t = both(p, v);
  std::vector<int32_t> gc(3), gg(3);
  p.cpu->argmax_rows(t.cp(), 3, 50001);
  p.cpu->token_ids_fetch(gc.data(), 3);
  p.gpu->argmax_rows(t.gp(), 3, 50001);
  p.gpu->token_ids_fetch(gg.data(), 3);
  EXPECT_EQ(gg, gc);
  EXPECT_EQ(gg[1], 777);
}

TEST(CudaOps, SampleRowsEqualTheSelectionReference) {
  SKIP_WITHOUT_GPU();
  Pair p = Pair::make();
  std::mt19937_64 g(9);
  std::normal_distribution<float> nd;
  std::uniform_real_distribution<double> ud(0.0, 0.999);
  int rows_checked = 0, sorted_differ = 0;
  for (int64_t n : {1, 7, 1000, 50001, 128256}) {
    // 24 rows: greedy, plain temperature, top-k (incl. >= n), top-p, both; some with ties.
    std::vector<core::SampleRow> rows;
    std::vector<float> x;
    for (int r = 0; r < 24; ++r) {
      core::SampleRow q;
      q.temperature = r % 6 == 0 ? 0.0f : (r % 3 == 0 ? 0.7f : 1.1f);
      q.top_k = r % 4 == 1 ? 40 : (r % 4 == 2 ? int32_t(n) + 1 : 0);
      q.top_p = r % 5 >= 3 ? 0.9f : 1.0f;
      q.u = r == 5 ? 0.0 : ud(g);
      rows.push_back(q);
      for (int64_t i = 0; i < n; ++i) {
        const float v = nd(g) * (r % 2 ? 3.0f : 8.0f);
        x.push_back(r % 7 == 3 ? std::round(v) : v);
      }
    }
    auto t = p.gpu->tensor_from_host(std::vector<float>(x));
    std::vector<int32_t> got(rows.size());
    p.gpu->sample_rows(t->data(), int64_t(rows.size()), n, rows.data());
    p.gpu->token_ids_fetch(got.data(), int64_t(rows.size()));
    ASSERT_TRUE(p.gpu->take_error().is_ok());
    std::vector<std::pair<float, int32_t>> scratch;
    for (size_t r = 0; r < rows.size(); ++r) {
      const float* xr = x.data() + r * size_t(n);
      EXPECT_EQ(got[r], core::sample_select(xr, n, rows[r])) << "n " << n << " row " << r;
      sorted_differ += got[r] != core::sample_sorted(xr, n, rows[r], scratch);
      ++rows_checked;
    }
  }
  std::printf("device sampler: %d rows equal the selection reference; %d differ from the sorted "
              "reference (boundary rounding)\n", rows_checked, sorted_differ);
  EXPECT_LE(sorted_differ, 1);
}

TEST(CudaOps, RopeKvWriteAndAttention) {
  SKIP_WITHOUT_GPU();
  Pair p = Pair::make();
  struct Case { int64_t nh, nkv, hd, window; };
  for (Case cs : {Case{4, 2, 16, 0}, Case{8, 2, 64, 0}, Case{4, 1, 128, 0}, Case{6, 3, 20, 5},
                  Case{32, 8, 64, 0}}) {
    const int64_t slots = 3, max_seq = 300, kvd = cs.nkv * cs.hd, ld = (cs.nh + 2 * cs.nkv) * cs.hd;
    const std::string what = "nh " + std::to_string(cs.nh) + " nkv " + std::to_string(cs.nkv) +
                             " hd " + std::to_string(cs.hd) + " window " + std::to_string(cs.window);
    // Random cache contents everywhere (positions not written below hold old keys).
    auto kc = both(p, randv(size_t(slots * max_seq * kvd), 7)), vc = both(p, randv(size_t(slots * max_seq * kvd), 8));
    auto [cosv, sinv] = rope_tables(p, max_seq, cs.hd);
    // Prefill-like batch: a run of 70 rows in slot 1 from position 5, then 2 single rows.
    std::vector<int32_t> slot, pos;
    for (int i = 0; i < 70; ++i) { slot.push_back(1); pos.push_back(5 + i); }
    slot.push_back(0); pos.push_back(0);
    slot.push_back(2); pos.push_back(299);
    const int64_t rows = int64_t(slot.size());
    runtime::RowPlacement at{slot.data(), pos.data()};
    auto qkv = both(p, randv(size_t(rows * ld), 9));
    runtime::KvLayer cc{kc.cp(), vc.cp(), max_seq * kvd, kvd}, cg{kc.gp(), vc.gp(), max_seq * kvd, kvd};
    p.cpu->rope_kv_write(qkv.cp(), rows, ld, cs.nh, cs.nkv, cs.hd, at, cosv.cp(), sinv.cp(), cc);
    p.gpu->rope_kv_write(qkv.gp(), rows, ld, cs.nh, cs.nkv, cs.hd, at, cosv.gp(), sinv.gp(), cg);
    expect_close(p, qkv, 1e-7, "rope_kv_write qkv " + what);
    expect_close(p, kc, 1e-7, "rope_kv_write k cache " + what);
    expect_close(p, vc, 1e-7, "rope_kv_write v cache " + what);
    auto out = both(p, std::vector<float>(size_t(rows * cs.nh * cs.hd), NAN));
    p.cpu->attention(qkv.cp(), ld, rows, at, cc, cs.nh, cs.nkv, cs.hd, cs.window, out.cp());
    p.gpu->attention(qkv.gp(), ld, rows, at, cg, cs.nh, cs.nkv, cs.hd, cs.window, out.gp());
    expect_close(p, out, 1e-5, "attention (prefill tiles) " + what);
    // Decode: one row per slot at different positions (split-K over 300 keys).
    std::vector<int32_t> dslot = {2, 0, 1}, dpos = {299, 0, 131};
    runtime::RowPlacement dat{dslot.data(), dpos.data()};
    auto dout = both(p, std::vector<float>(size_t(3 * cs.nh * cs.hd), NAN));
    p.cpu->attention(qkv.cp(), ld, 3, dat, cc, cs.nh, cs.nkv, cs.hd, cs.window, dout.cp());
    p.gpu->attention(qkv.gp(), ld, 3, dat, cg, cs.nh, cs.nkv, cs.hd, cs.window, dout.gp());
    expect_close(p, dout, 1e-5, "attention (decode) " + what);
    // Separate rope / kv_write equal the fused op.
    auto q2 = both(p, randv(size_t(rows * ld), 10));
    p.cpu->rope(q2.cp(), rows, ld, cs.nh + cs.nkv, cs.hd, at, cosv.cp(), sinv.cp());
    p.gpu->rope(q2.gp(), rows, ld, cs.nh + cs.nkv, cs.hd, at, cosv.gp(), sinv.gp());
    expect_close(p, q2, 1e-7, "rope " + what);
    p.cpu->kv_write(q2.cp(), q2.cp() + kvd, ld, rows, at, cc);
    p.gpu->kv_write(q2.gp(), q2.gp() + kvd, ld, rows, at, cg);
    expect_close(p, kc, 1e-7, "kv_write " + what);
  }
}

// The f16 and int8 caches: the same bytes (and int8 scales) as the CPU's after rope_kv_write
// and kv_write (both backends rotate to the same bits, then round or quantize identically), and
// attention over them within float rounding, for prefill tiles and split-K decode.
TEST(CudaOps, NarrowKvCachesEqualTheCpus) {
  SKIP_WITHOUT_GPU();
  Pair p = Pair::make();
  struct Case { int64_t nh, nkv, hd, window; };
  for (runtime::KvStorage st : {runtime::KvStorage::kF16, runtime::KvStorage::kInt8}) {
    const bool s8 = st == runtime::KvStorage::kInt8;
    for (Case cs : {Case{4, 2, 16, 0}, Case{8, 2, 64, 0}, Case{4, 1, 128, 0}, Case{6, 3, 20, 5}}) {
      const int64_t slots = 3, max_seq = 300, kvd = cs.nkv * cs.hd, ld = (cs.nh + 2 * cs.nkv) * cs.hd;
      const std::string what = std::string(s8 ? "int8" : "f16") + " nh " + std::to_string(cs.nh) +
                               " nkv " + std::to_string(cs.nkv) + " hd " + std::to_string(cs.hd);
      const int64_t elems = slots * max_seq * kvd, floats = s8 ? (elems + 3) / 4 : (elems + 1) / 2;
      auto kc = both(p, std::vector<float>(size_t(floats), 0.0f));
      auto vc = both(p, std::vector<float>(size_t(floats), 0.0f));
      auto ks = both(p, std::vector<float>(size_t(slots * max_seq * cs.nkv), 0.0f));
      auto vs = both(p, std::vector<float>(size_t(slots * max_seq * cs.nkv), 0.0f));
      auto [cosv, sinv] = rope_tables(p, max_seq, cs.hd);
      // Every position of slot 1 up to 290 written (prefill), one row in slots 0 and 2.
      std::vector<int32_t> slot, pos;
      for (int i = 0; i < 290; ++i) { slot.push_back(1); pos.push_back(i); }
      slot.push_back(0); pos.push_back(0);
      slot.push_back(2); pos.push_back(299);
      const int64_t rows = int64_t(slot.size());
      runtime::RowPlacement at{slot.data(), pos.data()};
      auto qkv = both(p, randv(size_t(rows * ld), 9));
      auto layer = [&](bool gpu) {
        runtime::KvLayer c{gpu ? kc.gp() : kc.cp(), gpu ? vc.gp() : vc.cp(), max_seq * kvd, kvd};
        c.storage = st;
        c.head_dim = cs.hd;
        if (s8) {
          c.k_scale = gpu ? ks.gp() : ks.cp();
          c.v_scale = gpu ? vs.gp() : vs.cp();
        }
        return c;
      };
      const runtime::KvLayer cc = layer(false), cg = layer(true);
      p.cpu->rope_kv_write(qkv.cp(), rows, ld, cs.nh, cs.nkv, cs.hd, at, cosv.cp(), sinv.cp(), cc);
      p.gpu->rope_kv_write(qkv.gp(), rows, ld, cs.nh, cs.nkv, cs.hd, at, cosv.gp(), sinv.gp(), cg);
      EXPECT_TRUE(p.gpu->take_error().is_ok()) << what;
      auto bytes_equal = [&](T2& t, const std::string& name) {
        const std::vector<float> g = host(p, t, true), c = host(p, t, false);
        EXPECT_EQ(std::memcmp(g.data(), c.data(), g.size() * 4), 0) << name << " " << what;
      };
      bytes_equal(kc, "k cache");
      bytes_equal(vc, "v cache");
      if (s8) {
        bytes_equal(ks, "k scales");
        bytes_equal(vs, "v scales");
      }
      auto out = both(p, std::vector<float>(size_t(rows * cs.nh * cs.hd), NAN));
      p.cpu->attention(qkv.cp(), ld, rows, at, cc, cs.nh, cs.nkv, cs.hd, cs.window, out.cp());
      p.gpu->attention(qkv.gp(), ld, rows, at, cg, cs.nh, cs.nkv, cs.hd, cs.window, out.gp());
      expect_close(p, out, 1e-5, "attention (prefill tiles) " + what);
      std::vector<int32_t> dslot = {2, 0, 1}, dpos = {299, 0, 289};  // 3 splits for the last
      runtime::RowPlacement dat{dslot.data(), dpos.data()};
      auto dout = both(p, std::vector<float>(size_t(3 * cs.nh * cs.hd), NAN));
      p.cpu->attention(qkv.cp(), ld, 3, dat, cc, cs.nh, cs.nkv, cs.hd, cs.window, dout.cp());
      p.gpu->attention(qkv.gp(), ld, 3, dat, cg, cs.nh, cs.nkv, cs.hd, cs.window, dout.gp());
      expect_close(p, dout, 1e-5, "attention (decode) " + what);
      // kv_write on its own: rows 0..9 of slot 1 again from other values.
      auto q2 = both(p, randv(size_t(10 * ld), 10));
      runtime::RowPlacement at10{slot.data(), pos.data()};
      p.cpu->kv_write(q2.cp(), q2.cp() + kvd, ld, 10, at10, cc);
      p.gpu->kv_write(q2.gp(), q2.gp() + kvd, ld, 10, at10, cg);
      bytes_equal(kc, "kv_write k cache");
      bytes_equal(vc, "kv_write v cache");
      if (s8) bytes_equal(ks, "kv_write k scales");
    }
  }
}

namespace {

struct LinCase {
  runtime::LinearKind kind;
  int64_t group;  // 0 = per channel
  runtime::ActQuant act;
  std::string wt;
  double tol;
  int bits = 8;       // 4: values in [-8, 7] (W4A16), which the CPU keeps at 4 bits
  bool asym = false;  // 4 bits with zero points (the CPU corrects, the GPU folds q - zp)
  bool perm = false;  // act-order groups (LinearDesc::perm; both backends gather the inputs)
};

void check_linear(const LinCase& lc, int64_t M, int64_t N, int64_t K, bool bias) {
  Pair p = Pair::make(lc.wt);
  const int64_t group = lc.group ? lc.group : K;
  const int64_t G = (K + group - 1) / group;
  std::vector<float> w = randv(size_t(N * K), 11, 0.05f);
  auto make = [&]() {
    runtime::LinearDesc d;
    d.name = "test";
    d.out = N;
    d.in = K;
    d.kind = lc.kind;
    if (lc.kind == runtime::LinearKind::kF32) {
      d.w = w;
    } else {
      d.q.resize(size_t(N * K));
      d.scale.resize(size_t(N * G));
      if (lc.asym) {
        d.zp.resize(size_t(N * G));
        runtime::quant_weight_u4(w.data(), N, K, group, d.q.data(), d.scale.data(), d.zp.data());
      } else if (lc.bits == 4) {
        runtime::quant_weight_s4(w.data(), N, K, group, d.q.data(), d.scale.data());
      } else {
        runtime::quant_weight_s8(w.data(), N, K, group, d.q.data(), d.scale.data());
      }
      d.bits = lc.bits;
      if (lc.perm) {
        d.perm.resize(size_t(K));
        // A permutation: 7 is coprime with every K below (64, 100, 512).
        for (int64_t j = 0; j < K; ++j) d.perm[size_t(j)] = int32_t((j * 7 + 3) % K);
      }
      d.group = group;
      d.act = lc.act;
      d.input_scale = 0.02f;
    }
    if (bias) d.bias = randv(size_t(N), 12);
    return d;
  };
  auto lcpu = p.cpu->linear_create(make()).take_or_throw();
  auto lgpu = p.gpu->linear_create(make()).take_or_throw();
  auto x = both(p, randv(size_t(M * K), 13));
  const int64_t ldy = N + 3;
  auto y = both(p, std::vector<float>(size_t(M * ldy), 0.0f));
  p.cpu->linear(*lcpu, x.cp(), M, y.cp(), ldy);
  p.gpu->linear(*lgpu, x.gp(), M, y.gp(), ldy);
  char what[160];
  std::snprintf(
      what, sizeof what, "linear %s%s%s%s%s w=%s M=%lld N=%lld K=%lld group=%lld bias=%d",
      runtime::linear_kind_name(lc.kind), lc.bits == 4 ? (lc.asym ? "-4bit-asym" : "-4bit") : "",
      lc.act == runtime::ActQuant::kStatic ? "-static" : "",
      lc.act == runtime::ActQuant::kDynamic ? "-dynamic" : "", lc.perm ? "-perm" : "",
      lc.wt.c_str(), (long long)M, (long long)N, (long long)K, (long long)lc.group, int(bias));
  expect_close(p, y, lc.tol, what);
  // Through the fused producer: rmsnorm writes the forms the linear reads.
  if (lc.kind == runtime::LinearKind::kW8A8 || lc.wt != "f32") {
    auto nw = both(p, randv(size_t(K), 14));
    auto xn = both(p, std::vector<float>(size_t(M * K), 0.0f));
    p.cpu->rmsnorm(x.cp(), nw.cp(), xn.cp(), M, K, 1e-5f);
    p.gpu->rmsnorm(x.gp(), nw.gp(), xn.gp(), M, K, 1e-5f);
    p.cpu->linear(*lcpu, xn.cp(), M, y.cp(), ldy);
    p.gpu->linear(*lgpu, xn.gp(), M, y.gp(), ldy);
    // W8A8 after a float rmsnorm: the rows may differ in the last bit, which can move a value
    // across a rounding boundary of the int8 grid (one step of scale): a looser bound.
    expect_close(p, y, lc.kind == runtime::LinearKind::kW8A8 ? 2e-3 : lc.tol,
                 std::string(what) + " after rmsnorm");
  }
}

}  // namespace

TEST(CudaOps, LinearEveryKindAgainstCpu) {
  SKIP_WITHOUT_GPU();
  using runtime::ActQuant;
  using runtime::LinearKind;
  const std::vector<LinCase> cases = {
      {LinearKind::kF32, 0, ActQuant::kNone, "f32", 1e-5},
      {LinearKind::kF32, 0, ActQuant::kNone, "f16", 1e-2},
      {LinearKind::kF32, 0, ActQuant::kNone, "bf16", 3e-2},
      {LinearKind::kW8A16, 0, ActQuant::kNone, "f32", 1e-5},
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f32", 1e-5},
      {LinearKind::kW8A16, 0, ActQuant::kNone, "f16", 1e-2},
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f32", 1e-5, 4},
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f16", 1e-2, 4},  // packed 4-bit, f16 prefill
      {LinearKind::kW8A16, 0, ActQuant::kNone, "f32", 1e-5, 4},   // packed 4-bit per channel
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f32", 1e-5, 4, false, true},  // ... act-order
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f32", 1e-5, 4, true},
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f32", 1e-5, 8, false, true},
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f32", 1e-5, 4, true, true},
      {LinearKind::kW8A16, 32, ActQuant::kNone, "f16", 1e-2, 8, false, true},
      {LinearKind::kW8A8, 32, ActQuant::kDynamic, "f16", 1e-5, 8, false, true},
      {LinearKind::kW8A8, 0, ActQuant::kDynamic, "f16", 1e-5},
      {LinearKind::kW8A8, 32, ActQuant::kDynamic, "f16", 1e-5},
      {LinearKind::kW8A8, 0, ActQuant::kStatic, "f16", 1e-5},
  };
  struct Shape { int64_t N, K; };
  for (const LinCase& lc : cases) {
    for (Shape s : {Shape{37, 64}, Shape{64, 100}, Shape{256, 512}}) {
      // 128: past W8A16's chunked GEMV (4 x 16 rows), so cuBLASLt and the dequantization run.
      for (int64_t M : {1, 3, 4, 5, 16, 17, 64, 128}) check_linear(lc, M, s.N, s.K, M == 3);
    }
  }
}

// ---- the engine ---------------------------------------------------------------------------------

namespace {

std::unique_ptr<runtime::Engine> load(const std::string& dir, const std::string& device,
                                      const std::string& wt = "", int max_batch = 1,
                                      bool graphs = true) {
  runtime::EngineOptions o;
  o.device = device;
  o.float_weights = wt;
  o.max_batch = max_batch;
  o.graphs = graphs;
  auto r = runtime::Engine::load(dir, o);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

std::vector<int32_t> greedy(runtime::Engine& e, const std::vector<int32_t>& prompt, int64_t n) {
  runtime::GenerateOptions g;
  g.max_new_tokens = n;
  g.stop_at_eos = false;
  auto r = runtime::generate(e, prompt, g);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return r.is_ok() ? r->ids : std::vector<int32_t>{};
}

std::vector<float> logits_all(runtime::Engine& e, const std::vector<int32_t>& ids) {
  std::vector<float> out;
  e.reset_all();
  Status s = e.forward({{0, ids.data(), int64_t(ids.size())}}, true, out);
  EXPECT_TRUE(s.is_ok()) << s.message();
  return out;
}

const std::vector<int32_t> kPrompt = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4};

core::QuantScheme scheme(runtime::ActQuant act, int64_t group = 0) {
  core::QuantScheme s;
  s.activations = act == runtime::ActQuant::kStatic    ? "static"
                  : act == runtime::ActQuant::kDynamic ? "dynamic"
                                                       : "none";
  if (group) {
    s.weight_strategy = "group";
    s.group_size = group;
  }
  return s;
}

}  // namespace

class CudaFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(CudaFixture, GreedyTokensAndLogitsMatchCpu) {
  SKIP_WITHOUT_GPU();
  const std::string dir = test::fixture(GetParam());
  auto cpu = load(dir, "cpu");
  auto gpu = load(dir, "cuda", "f32");
  auto g16 = load(dir, "cuda", "f16");
  ASSERT_TRUE(cpu && gpu && g16);
  // Logits: exact fp32 GEMMs agree to float rounding; f16 weights to their own rounding.
  auto lc = logits_all(*cpu, kPrompt);
  EXPECT_LE(rel_err(logits_all(*gpu, kPrompt), lc), 1e-5) << GetParam();
  EXPECT_LE(rel_err(logits_all(*g16, kPrompt), lc), 2e-2) << GetParam();
  // Greedy continuation, token for token (decode steps through CUDA graphs).
  const std::vector<int32_t> prompt(kPrompt.begin(), kPrompt.begin() + 6);
  const auto want = greedy(*cpu, prompt, 24);
  EXPECT_EQ(greedy(*gpu, prompt, 24), want) << GetParam();
  std::printf("%s: f16-weight greedy ids %s the CPU's\n", GetParam(),
              greedy(*g16, prompt, 24) == want ? "equal" : "DIFFER from");
}

INSTANTIATE_TEST_SUITE_P(HfFixtures, CudaFixture,
                         ::testing::Values("llama_gqa_llama3rope", "qwen2_bias_tied_bf16",
                                           "mistral_mqa_linearrope", "llama_mha_sharded_f16"));

TEST(CudaEngine, Int8ModelsGreedyMatchCpu) {
  SKIP_WITHOUT_GPU();
  // gidx: GPTQ act-order groups (weight_g_idx), whose inputs both backends gather.
  struct C {
    runtime::ActQuant act;
    int64_t group;
    const char* name;
    bool gidx = false;
  };
  for (C c :
       {C{runtime::ActQuant::kNone, 0, "w8a16"}, C{runtime::ActQuant::kNone, 32, "w8a16g32"},
        C{runtime::ActQuant::kDynamic, 0, "w8a8dyn"}, C{runtime::ActQuant::kStatic, 0, "w8a8st"},
        C{runtime::ActQuant::kDynamic, 32, "w8a8g32"},
        C{runtime::ActQuant::kNone, 32, "w8a16g32gidx", true},
        C{runtime::ActQuant::kDynamic, 32, "w8a8g32gidx", true}}) {
    const std::string q = test::temp_dir(std::string("cuda_") + c.name);
    test::quantize_dir(test::fixture("llama_gqa_llama3rope"), q, scheme(c.act, c.group), 0.05f, "",
                       c.gidx);
    auto cpu = load(q, "cpu");
    auto gpu = load(q, "cuda", "f32");
    ASSERT_TRUE(cpu && gpu);
    auto lc = logits_all(*cpu, kPrompt);
    EXPECT_LE(rel_err(logits_all(*gpu, kPrompt), lc), c.act == runtime::ActQuant::kNone ? 1e-5 : 2e-3)
        << c.name;
    const std::vector<int32_t> prompt(kPrompt.begin(), kPrompt.begin() + 5);
    EXPECT_EQ(greedy(*gpu, prompt, 20), greedy(*cpu, prompt, 20)) << c.name;
  }
}

TEST(CudaEngine, MixedBatchAndGraphsEqualEager) {
  SKIP_WITHOUT_GPU();
  const std::string dir = test::fixture("llama_gqa_llama3rope");
  auto cpu = load(dir, "cpu", "", 3);
  auto gpu = load(dir, "cuda", "f32", 3, true);
  auto eager = load(dir, "cuda", "f32", 3, false);
  ASSERT_TRUE(cpu && gpu && eager);
  std::vector<int32_t> a(kPrompt.begin(), kPrompt.begin() + 13), b(kPrompt.begin() + 2, kPrompt.begin() + 5),
      c = {7};
  std::vector<std::vector<float>> outs;
  for (runtime::Engine* e : {cpu.get(), gpu.get(), eager.get()}) {
    std::vector<float> all, step;
    ASSERT_TRUE(e->forward({{0, a.data(), 13}, {1, b.data(), 3}, {2, c.data(), 1}}, false, all).is_ok());
    // Decode steps for all three slots at different positions (recorded, then replayed).
    for (int s = 0; s < 6; ++s) {
      std::vector<int32_t> t = {int32_t(s + 1), int32_t(s + 2), int32_t(s + 3)};
      ASSERT_TRUE(e->forward({{0, &t[0], 1}, {1, &t[1], 1}, {2, &t[2], 1}}, false, step).is_ok());
      all.insert(all.end(), step.begin(), step.end());
    }
    outs.push_back(all);
  }
  EXPECT_LE(rel_err(outs[1], outs[0]), 1e-5);
  EXPECT_EQ(outs[1], outs[2]) << "graph replay differs from eager execution";
}

TEST(CudaEngine, WideDecodeGraphsThroughCublasLtEqualEager) {
  SKIP_WITHOUT_GPU();
  // 8 rows per decode step with f16 weights: above the GEMV limit, so the captured graphs hold
  // cuBLASLt matmuls (and the 16-bit activation copies) as well as the fused kernels.
  const std::string dir = test::fixture("qwen2_bias_tied_bf16");
  auto gpu = load(dir, "cuda", "f16", 8, true);
  auto eager = load(dir, "cuda", "f16", 8, false);
  ASSERT_TRUE(gpu && eager);
  std::vector<std::vector<float>> outs;
  for (runtime::Engine* e : {gpu.get(), eager.get()}) {
    std::vector<runtime::SeqChunk> pre;
    for (int b = 0; b < 8; ++b) pre.push_back({b, kPrompt.data() + b, 3 + b});
    std::vector<float> all, step;
    ASSERT_TRUE(e->forward(pre, false, all).is_ok());
    for (int s = 0; s < 5; ++s) {
      std::vector<int32_t> t(8);
      std::vector<runtime::SeqChunk> ch;
      for (int b = 0; b < 8; ++b) {
        t[size_t(b)] = int32_t(1 + (s * 8 + b) % 50);
        ch.push_back({b, &t[size_t(b)], 1});
      }
      ASSERT_TRUE(e->forward(ch, false, step).is_ok());
      all.insert(all.end(), step.begin(), step.end());
    }
    outs.push_back(all);
  }
  EXPECT_EQ(outs[0], outs[1]) << "graph replay with cuBLASLt differs from eager execution";
}

TEST(CudaEngine, RandomSmollmShapeGreedyMatchesCpu) {
  SKIP_WITHOUT_GPU();
  core::ModelConfig c = runtime::bench_shape("smollm-135m").take_or_throw();
  c.num_layers = 6;  // keeps the CPU side fast; the per-layer math is the full shape's
  std::vector<int32_t> prompt = {1, 5021, 77, 3000, 12, 49000, 8};
  for (const char* dtype : {"f32", "w8a16", "w8a8"}) {
    runtime::EngineOptions oc, og;
    oc.max_seq_len = og.max_seq_len = 64;
    og.device = "cuda";
    og.float_weights = "f32";
    auto cpu = runtime::Engine::create_random(c, dtype, 7, oc).take_or_throw();
    auto gpu = runtime::Engine::create_random(c, dtype, 7, og).take_or_throw();
    auto lc = logits_all(*cpu, prompt);
    EXPECT_LE(rel_err(logits_all(*gpu, prompt), lc), std::string(dtype) == "w8a8" ? 2e-3 : 1e-5) << dtype;
    EXPECT_EQ(greedy(*gpu, prompt, 16), greedy(*cpu, prompt, 16)) << dtype;
  }
}

TEST(CudaEngine, SampledGenerateMatchesCpu) {
  SKIP_WITHOUT_GPU();
  // Sampling on the device, decode steps replayed from CUDA graphs with a fresh draw each.
  const std::string dir = test::fixture("llama_gqa_llama3rope");
  auto cpu = load(dir, "cpu");
  auto gpu = load(dir, "cuda", "f32");
  auto eager = load(dir, "cuda", "f32", 1, false);
  ASSERT_TRUE(cpu && gpu && eager);
  const std::vector<int32_t> prompt(kPrompt.begin(), kPrompt.begin() + 6);
  for (core::SamplingParams sp : {core::SamplingParams{1.0f, 0, 1.0f},
                                  core::SamplingParams{0.8f, 20, 1.0f},
                                  core::SamplingParams{1.2f, 0, 0.9f}}) {
    runtime::GenerateOptions o;
    o.max_new_tokens = 24;
    o.stop_at_eos = false;
    o.sampling = sp;
    o.seed = 17;
    auto rc = runtime::generate(*cpu, prompt, o).take_or_throw();
    auto rg = runtime::generate(*gpu, prompt, o).take_or_throw();
    auto re = runtime::generate(*eager, prompt, o).take_or_throw();
    EXPECT_EQ(rg.ids, rc.ids) << "T " << sp.temperature << " k " << sp.top_k << " p " << sp.top_p;
    EXPECT_EQ(rg.ids, re.ids) << "graph replay samples differently from eager execution";
  }
}

TEST(CudaEngine, SpeculativeGreedyEqualsGreedy) {
  SKIP_WITHOUT_GPU();
  // A Qwen2 draft for the Llama target on the device: verification forwards of k + 1 rows, cache
  // truncation between rounds, then graph-replayed decode steps; ids equal plain greedy.
  const std::string dir = test::fixture("llama_gqa_llama3rope");
  auto gpu = load(dir, "cuda", "f32");
  auto draft = load(test::fixture("qwen2_bias_tied_bf16"), "cuda", "f32");
  ASSERT_TRUE(gpu && draft);
  const std::vector<int32_t> prompt(kPrompt.begin(), kPrompt.begin() + 6);
  runtime::GenerateOptions o;
  o.max_new_tokens = 32;
  o.stop_at_eos = false;
  auto want = runtime::generate(*gpu, prompt, o).take_or_throw();
  auto cpu = load(dir, "cpu");
  ASSERT_TRUE(cpu);
  auto cpu_want = runtime::generate(*cpu, prompt, o).take_or_throw();
  for (int64_t k : {1, 4}) {
    auto got = runtime::generate_speculative(*gpu, *draft, prompt, o, k).take_or_throw();
    EXPECT_EQ(got.ids, want.ids) << "k " << k;
    // The target on the CPU with the draft on the device: the CPU's own greedy ids.
    auto mixed = runtime::generate_speculative(*cpu, *draft, prompt, o, k).take_or_throw();
    EXPECT_EQ(mixed.ids, cpu_want.ids) << "k " << k;
  }
}

TEST(CudaEngine, NoDeviceOrBadOptionsFailClearly) {
  runtime::EngineOptions o;
  o.device = "tpu";
  auto r = runtime::Engine::load(test::fixture("llama_gqa_llama3rope"), o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("expected cpu or cuda"), std::string::npos);
  o.device = "cpu";
  o.float_weights = "f16";
  r = runtime::Engine::load(test::fixture("llama_gqa_llama3rope"), o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("cuda"), std::string::npos);
  if (cuda::device_count() == 0) {
    o.device = "cuda";
    o.float_weights = "";
    r = runtime::Engine::load(test::fixture("llama_gqa_llama3rope"), o);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("no CUDA device"), std::string::npos) << r.status().message();
  }
}

namespace {

uint64_t counter(const std::vector<std::pair<std::string, uint64_t>>& c, const std::string& name) {
  for (const auto& [k, v] : c) {
    if (k == name) return v;
  }
  ADD_FAILURE() << "no counter " << name;
  return 0;
}

}  // namespace

TEST(CudaEngine, CublasLtRunsForPrefillPlansPerBucketAndGraphsRecordFromTheSecondStep) {
  SKIP_WITHOUT_GPU();
  core::ModelConfig c = runtime::bench_shape("smollm-135m").take_or_throw();
  c.num_layers = 2;
  for (const char* dtype : {"f32", "w8a8"}) {  // f16 weights (cuBLASLt f16), W8A8 (int8 IMMA)
    runtime::EngineOptions o;
    o.device = "cuda";
    o.float_weights = "f16";
    o.max_seq_len = 512;
    auto e = runtime::Engine::create_random(c, dtype, 7, o).take_or_throw();
    std::vector<int32_t> ids(300);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(1 + (i * 37) % 40000);
    std::vector<float> logits;
    // Prompts of 65..80 rows share one M bucket (128): one plan per weight shape.
    for (int64_t n = 65; n <= 80; ++n) {
      ASSERT_TRUE(e->forward({{0, ids.data(), n}}, false, logits).is_ok());
      ASSERT_TRUE(e->truncate(0, 0).is_ok());
    }
    auto cnt = e->backend_counters();
    EXPECT_GT(counter(cnt, "lt_gemm"), 0u) << dtype << ": cuBLASLt never ran for a 65-row prefill";
    EXPECT_EQ(counter(cnt, "lt_fallback"), 0u) << dtype;
    EXPECT_EQ(counter(cnt, "lt_plan_failures"), 0u) << dtype;
    // fused q/k/v, o, fused gate/up, down (and the head for f32): at most 5 shapes in one bucket.
    EXPECT_LE(counter(cnt, "lt_plans_cached"), 5u) << dtype;
    // Decode: the first step of a key runs eagerly, the second records, the third replays.
    ASSERT_TRUE(e->forward({{0, ids.data(), 8}}, false, logits).is_ok());
    for (int s = 0; s < 3; ++s) {
      ASSERT_TRUE(e->forward({{0, &ids[size_t(8 + s)], 1}}, false, logits).is_ok());
      cnt = e->backend_counters();
      EXPECT_EQ(counter(cnt, "graph_captures"), s >= 1 ? 1u : 0u) << dtype << " step " << s;
      EXPECT_EQ(counter(cnt, "graph_replays"), s >= 2 ? 1u : 0u) << dtype << " step " << s;
    }
    EXPECT_EQ(counter(cnt, "graph_capture_failures"), 0u) << dtype;
  }
}

TEST(CudaOps, Int8GemmRefusedShapesFallBackCountedAndCorrect) {
  SKIP_WITHOUT_GPU();
  // N = 37 breaks the IMMA precondition (m % 4): the GEMV runs, the result is still right.
  check_linear({runtime::LinearKind::kW8A8, 0, runtime::ActQuant::kDynamic, "f16", 1e-5}, 64, 37,
               64, false);
  Pair p = Pair::make("f16");
  runtime::LinearDesc d;
  d.name = "n37";
  d.out = 37;
  d.in = 64;
  d.kind = runtime::LinearKind::kW8A8;
  d.act = runtime::ActQuant::kDynamic;
  d.group = 64;
  d.q.assign(37 * 64, 1);
  d.scale.assign(37, 0.01f);
  auto l = p.gpu->linear_create(std::move(d)).take_or_throw();
  auto x = both(p, randv(64 * 64, 3));
  auto y = both(p, std::vector<float>(64 * 37, 0.0f));
  p.gpu->linear(*l, x.gp(), 64, y.gp(), 37);
  EXPECT_TRUE(p.gpu->take_error().is_ok());
  EXPECT_EQ(counter(p.gpu->counters(), "lt_fallback"), 1u);
  EXPECT_EQ(counter(p.gpu->counters(), "lt_gemm"), 0u);
}

TEST(CudaOps, OutOfMemoryIsAnErrorNotANullLaunch) {
  SKIP_WITHOUT_GPU();
  Pair p = Pair::make("f16");
  auto t = p.gpu->tensor_zeros(int64_t(1) << 42);  // 16 TiB
  EXPECT_EQ(t->data(), nullptr);
  Status st = p.gpu->take_error();
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("out of device memory: needed 16384.00 GiB, free"), std::string::npos)
      << st.message();
  // The backend goes on: a small tensor and an op work.
  auto x = both(p, randv(4 * 64, 5));
  auto w = both(p, randv(64, 6));
  auto y = both(p, std::vector<float>(4 * 64, 0.0f));
  p.cpu->rmsnorm(x.cp(), w.cp(), y.cp(), 4, 64, 1e-5f);
  p.gpu->rmsnorm(x.gp(), w.gp(), y.gp(), 4, 64, 1e-5f);
  expect_close(p, y, 1e-5, "rmsnorm after a failed allocation");
}

TEST(CudaEngine, F16AndInt8KvCachesMatchTheCpus) {
  SKIP_WITHOUT_GPU();
  const std::string dir = test::fixture("llama_gqa_llama3rope");
  auto make = [&](const std::string& device, const std::string& kv) {
    runtime::EngineOptions o;
    o.device = device;
    o.float_weights = device == "cuda" ? "f32" : "";
    o.kv_cache = kv;
    o.max_batch = 2;
    return runtime::Engine::load(dir, o).take_or_throw();
  };
  // A prefill (tiles), then decode steps (split-K), in two slots of different lengths.
  auto run = [&](runtime::Engine& e) {
    std::vector<int32_t> a(kPrompt.begin(), kPrompt.begin() + 13), b(kPrompt.begin() + 2, kPrompt.begin() + 7);
    std::vector<float> all, step;
    EXPECT_TRUE(e.forward({{0, a.data(), 13}, {1, b.data(), 5}}, false, all).is_ok());
    for (int s = 0; s < 5; ++s) {
      std::vector<int32_t> t = {int32_t(s + 3), int32_t(s + 9)};
      EXPECT_TRUE(e.forward({{0, &t[0], 1}, {1, &t[1], 1}}, false, step).is_ok());
      all.insert(all.end(), step.begin(), step.end());
    }
    return all;
  };
  auto gpu32 = make("cuda", "f32");
  const std::vector<float> ref32 = run(*gpu32);
  // f16 stores the CPU's bits; int8 may move a value by one step where the float keys differ
  // in the last bit (summation order), hence its looser bound.
  for (const auto& [kv, tol] : {std::pair<std::string, double>{"f16", 1e-5}, {"int8", 2e-3}}) {
    SCOPED_TRACE(kv);
    auto cpu = make("cpu", kv);
    auto gpu = make("cuda", kv);
    const std::vector<float> c = run(*cpu), g = run(*gpu);
    EXPECT_LE(rel_err(g, c), tol) << "cuda " << kv << " cache against the cpu's";
    // The storage is really narrower: the f32 cache gives other logits, but close ones.
    EXPECT_GT(rel_err(ref32, g), 1e-7);
    EXPECT_LE(rel_err(ref32, g), 3e-2);
    EXPECT_EQ(greedy(*gpu, kPrompt, 12), greedy(*cpu, kPrompt, 12));
  }
}
