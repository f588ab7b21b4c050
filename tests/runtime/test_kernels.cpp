// Every CPU kernel variant this machine supports against its scalar reference, over a sweep of
// shapes that includes odd sizes (tails shorter than a vector, single rows/columns, groups that
// do not divide K). int8 GEMMs and activation quantization must match bit for bit (exact int32
// dot products, same float epilogue); float kernels within a relative tolerance that covers
// summation order (float lanes vs. the reference's double accumulation). A level the CPU lacks
// is reported as a skipped KernelsIsa.VariantsTestedAgainstRef/<isa>, not dropped silently.
#include <gtest/gtest.h>

#include <cstring>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/gemm_library.h"
#include "kernels/cpu/kernels.h"

using namespace shrink::kernels::cpu;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

std::vector<int8_t> rand_s8(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<int8_t> v(n);
  for (int8_t& x : v) x = int8_t(int(g() % 255) - 127);
  return v;
}

// max |a - b| / (|b| + floor): relative error with a floor for values near zero.
void expect_close(const std::vector<float>& a, const std::vector<float>& b, float rtol,
                  float floor, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_LE(std::fabs(a[i] - b[i]), rtol * (std::fabs(b[i]) + floor))
        << what << " at " << i << ": " << a[i] << " vs " << b[i];
  }
}

std::vector<Isa> vector_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni}) {
    if (isa_supported(i)) v.push_back(i);
  }
  return v;
}

const int64_t kSizes[] = {1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 100};

}  // namespace

namespace {
// The top 16 bits of each float (a bf16 bit pattern, truncated) and the floats they stand for.
void bf16_halves(const std::vector<float>& x, std::vector<uint16_t>* h, std::vector<float>* w) {
  h->resize(x.size());
  w->resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &x[i], 4);
    (*h)[i] = uint16_t(u >> 16);
    u &= 0xffff0000u;
    std::memcpy(&(*w)[i], &u, 4);
  }
}
}  // namespace

TEST(Kernels, ReportsIsa) {
  EXPECT_TRUE(isa_supported(Isa::kRef));
  std::printf("isa: best %s, active %s; gemm library: %s\n", isa_name(isa_best()),
              isa_name(isa_active()), gemm_library_name());
  if (vector_isas().empty()) GTEST_SKIP() << "no vector ISA on this CPU: only ref is tested";
}

// One test per vector ISA, so that what this machine could not test shows in the report: the
// Kernels.* sweeps below loop over vector_isas(), which leaves out the levels the CPU lacks, and
// a CI machine without AVX-512 would otherwise pass them without a word about those variants.
class KernelsIsa : public ::testing::TestWithParam<const char*> {};

TEST_P(KernelsIsa, VariantsTestedAgainstRef) {
  Isa isa;
  ASSERT_TRUE(isa_from_name(GetParam(), &isa)) << GetParam();
  if (!isa_supported(isa)) {
    GTEST_SKIP() << "CPU lacks " << GetParam() << ": its kernels are not tested here";
  }
  const std::vector<Isa> v = vector_isas();  // the level is in every sweep below
  EXPECT_NE(std::find(v.begin(), v.end(), isa), v.end()) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Cpu, KernelsIsa, ::testing::Values("avx2", "avx512", "avx512vnni"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param);
                         });

TEST(Kernels, RmsnormRopeSiluMatchRef) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  for (Isa isa : vector_isas()) {
    const KernelTable& k = kernels_for(isa);
    for (int64_t n : kSizes) {
      const std::string tag = std::string(isa_name(isa)) + " n=" + std::to_string(n);
      auto x = randn(static_cast<size_t>(3 * n), 1), w = randn(static_cast<size_t>(n), 2);
      std::vector<float> a(x.size()), b(x.size());
      ref.rmsnorm_f32(x.data(), w.data(), a.data(), 3, n, 1e-5f);
      k.rmsnorm_f32(x.data(), w.data(), b.data(), 3, n, 1e-5f);
      expect_close(b, a, 1e-5f, 1e-3f, "rmsnorm " + tag);

      // silu: values in [-20, 20] to exercise the exp range.
      auto g = randn(static_cast<size_t>(n), 3, 6.0f), u = randn(static_cast<size_t>(n), 4);
      std::vector<float> s1(static_cast<size_t>(n)), s2(static_cast<size_t>(n));
      ref.silu_mul_f32(g.data(), u.data(), s1.data(), n);
      k.silu_mul_f32(g.data(), u.data(), s2.data(), n);
      expect_close(s2, s1, 1e-5f, 1e-6f, "silu_mul " + tag);

      // rope: d = 2n, 3 heads; the same unfused float ops, so bit-identical.
      auto r1 = randn(static_cast<size_t>(3 * 2 * n), 5), c = randn(static_cast<size_t>(n), 6), sn = randn(static_cast<size_t>(n), 7);
      auto r2 = r1;
      ref.rope_f32(r1.data(), 3, 2 * n, c.data(), sn.data());
      k.rope_f32(r2.data(), 3, 2 * n, c.data(), sn.data());
      EXPECT_EQ(r1, r2) << "rope " << tag;
    }
  }
}

// The blocked (prefill) kernel against the one-query reference row by row: causal ranges that
// start anywhere (a later prefill chunk), sliding windows, rows of several heads with different
// ranges, key counts across block boundaries, odd head_dims and row counts off the tile size.
TEST(Kernels, AttentionBlockMatchesRef) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  std::vector<Isa> isas = vector_isas();
  isas.push_back(Isa::kRef);
  for (Isa isa : isas) {
    for (int64_t d : {8, 14, 64, 80}) {
      for (int64_t M : {1, 3, 16, 37}) {
        for (int64_t case_ = 0; case_ < 3; ++case_) {
          const int64_t stride = d * 2 + 3;
          const int64_t p0 = case_ == 0 ? 0 : case_ == 1 ? 61 : 150, window = case_ == 2 ? 70 : 0;
          const int64_t heads = M >= 16 ? 2 : 1, per = M / heads;
          std::vector<int64_t> lo(static_cast<size_t>(M)), hi(static_cast<size_t>(M));
          for (int64_t m = 0; m < M; ++m) {
            const int64_t p = p0 + (m % std::max<int64_t>(per, 1));  // head-major, as the backend
            hi[size_t(m)] = p + 1;
            lo[size_t(m)] = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
          }
          const int64_t keys = p0 + M + 1;
          auto q = randn(size_t(M * d), 21), kc = randn(size_t(keys * stride), 22, 2.0f),
               vc = randn(size_t(keys * stride), 23);
          std::vector<float> o1(size_t(M * d)), o2(size_t(M * d), 7.0f),
              scratch(size_t(attention_block_scratch(M, d)));
          const float scale = 1.0f / std::sqrt(float(d));
          ref.attention_block_f32(q.data(), M, d, lo.data(), hi.data(), kc.data(), vc.data(), stride,
                                  scale, o1.data(), scratch.data());
          kernels_for(isa).attention_block_f32(q.data(), M, d, lo.data(), hi.data(), kc.data(),
                                               vc.data(), stride, scale, o2.data(), scratch.data());
          const std::string tag = std::string("attention_block ") + isa_name(isa) + " d=" +
                                  std::to_string(d) + " M=" + std::to_string(M) +
                                  " p0=" + std::to_string(p0) + " window=" + std::to_string(window);
          // Outputs are means of ~100 values of size ~1: summation order moves them by ~1e-7
          // absolute, so the floor is 1e-6 absolute (1e-4 relative above 1e-2).
          expect_close(o2, o1, 1e-4f, 1e-2f, tag);
          // Row by row, the decode path of the same level (split-K partial, one chunk) agrees.
          std::vector<float> s(static_cast<size_t>(attention_partial_scratch(1, keys))),
              o3(static_cast<size_t>(d)), o4(static_cast<size_t>(d));
          for (int64_t m = 0; m < M; ++m) {
            const int64_t lm = lo[size_t(m)], n = hi[size_t(m)] - lm;
            float mx = 0, l = 0;
            kernels_for(isa).attention_partial_f32(q.data() + m * d, 1, d, kc.data() + lm * stride,
                                                   vc.data() + lm * stride, stride, n, scale,
                                                   o3.data(), &mx, &l, s.data());
            attention_merge_f32(1, 1, d, o3.data(), &mx, &l, o4.data());
            expect_close(std::vector<float>(o2.begin() + m * d, o2.begin() + (m + 1) * d), o4,
                         1e-4f, 1e-2f, tag + " row " + std::to_string(m));
          }
        }
      }
    }
  }
}

// Split-K decode attention: each level's chunk partial (o, m, l) against the reference, and
// chunks merged against the one-query reference per head, for GQA groups of 1-7 heads, odd
// head_dims, key counts off the vector width and the chunking the backend uses.
TEST(Kernels, AttentionPartialMatchesRefAndMerges) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  auto vec = [](int64_t n, float fill = 0.0f) { return std::vector<float>(size_t(n), fill); };
  std::vector<Isa> isas = vector_isas();
  isas.push_back(Isa::kRef);
  for (Isa isa : isas) {
    const KernelTable& kt = kernels_for(isa);
    for (int64_t d : {2, 8, 14, 16, 64, 80, 128}) {
      for (int64_t G : {1, 3, 5, 7}) {
        for (int64_t keys : {1, 5, 16, 17, 64, 100, 300}) {
          const int64_t stride = d * 2 + 3;
          const std::string tag = std::string("attention_partial ") + isa_name(isa) + " d=" +
                                  std::to_string(d) + " G=" + std::to_string(G) +
                                  " keys=" + std::to_string(keys);
          auto q = randn(size_t(G * d), 31), kc = randn(size_t(keys * stride), 32, 2.0f),
               vc = randn(size_t(keys * stride), 33);
          const float scale = 1.0f / std::sqrt(float(d));
          auto o1 = vec(G * d), m1 = vec(G), l1 = vec(G), o2 = vec(G * d, 7.0f), m2 = vec(G),
               l2 = vec(G), scratch = vec(attention_partial_scratch(G, keys));
          ref.attention_partial_f32(q.data(), G, d, kc.data(), vc.data(), stride, keys, scale,
                                    o1.data(), m1.data(), l1.data(), scratch.data());
          kt.attention_partial_f32(q.data(), G, d, kc.data(), vc.data(), stride, keys, scale,
                                   o2.data(), m2.data(), l2.data(), scratch.data());
          // Scores differ by float vs double dot products (~1e-6 relative); l and o are sums of up
          // to 300 terms of size <= 1 and <= ~3, so the floors are absolute 1e-6 and 1e-4.
          expect_close(m2, m1, 1e-4f, 1e-2f, tag + " m");
          expect_close(l2, l1, 1e-4f, 1e-2f, tag + " l");
          expect_close(o2, o1, 1e-4f, 1.0f, tag + " o");
          // Merged chunks (the backend's chunk length, and a ragged 7-key split) equal the
          // one-query reference, head by head.
          for (int64_t chunk : {attention_split_chunk(keys), int64_t(7)}) {
            const int64_t C = (keys + chunk - 1) / chunk;
            auto op = vec(C * G * d), mp = vec(C * G), lp = vec(C * G), out = vec(G * d, NAN);
            for (int64_t c = 0; c < C; ++c) {
              const int64_t j0 = c * chunk, n = std::min(chunk, keys - j0);
              kt.attention_partial_f32(q.data(), G, d, kc.data() + j0 * stride,
                                       vc.data() + j0 * stride, stride, n, scale,
                                       op.data() + c * G * d, mp.data() + c * G,
                                       lp.data() + c * G, scratch.data());
            }
            attention_merge_f32(C, G, d, op.data(), mp.data(), lp.data(), out.data());
            auto s = vec(keys), want = vec(G * d);
            for (int64_t g = 0; g < G; ++g)
              attention_f32_ref(q.data() + g * d, kc.data(), vc.data(), stride, keys, d, scale,
                                want.data() + g * d, s.data());
            expect_close(out, want, 1e-4f, 1e-2f, tag + " merged, chunk " + std::to_string(chunk));
          }
        }
      }
    }
  }
}

// f32 -> f16 for the KV cache: every level equals core's exact conversion (round to nearest
// even), over normal values at every scale, subnormals, exact ties, the overflow boundary and
// lengths off the vector width.
TEST(Kernels, ConvertF32F16EqualsCore) {
  std::vector<float> x;
  for (float sc : {1e-7f, 1e-5f, 1e-3f, 1.0f, 300.0f, 3e4f}) {
    const auto r = randn(1000, 41, sc);
    x.insert(x.end(), r.begin(), r.end());
  }
  for (int e = -26; e <= 15; ++e) {  // ties: halfway between neighbouring f16 values
    const float b = std::ldexp(1.0f, e);
    for (float f : {b, b * (1 + 1.0f / 2048), b * (1 + 3.0f / 2048), -b * (1 + 5.0f / 2048)})
      x.push_back(f);
  }
  for (float f : {65504.0f, 65519.0f, 65520.0f, 1e6f, -1e6f, INFINITY, -INFINITY, 0.0f, -0.0f})
    x.push_back(f);
  std::vector<Isa> isas = vector_isas();
  isas.push_back(Isa::kRef);
  for (Isa isa : isas) {
    for (int64_t n : {int64_t(x.size()), int64_t(13), int64_t(1)}) {
      std::vector<uint16_t> y(x.size(), 0xbeef);
      kernels_for(isa).convert_f32_f16(x.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(y[size_t(i)], shrink::core::f32_to_f16(x[size_t(i)]))
            << isa_name(isa) << " x=" << x[size_t(i)] << " at " << i;
      for (size_t i = size_t(n); i < y.size(); ++i) ASSERT_EQ(y[i], 0xbeef) << "wrote past n";
    }
  }
}

// The f16 KV cache kernels convert on load and then do the float kernels' arithmetic: on the
// same cache widened to float they agree bit for bit (partials and prefill blocks, every level).
TEST(Kernels, F16KvAttentionEqualsF32OnTheWidenedCache) {
  std::vector<Isa> isas = vector_isas();
  isas.push_back(Isa::kRef);
  for (Isa isa : isas) {
    const KernelTable& kt = kernels_for(isa);
    for (int64_t d : {8, 14, 64, 80}) {
      const int64_t keys = 150, stride = 2 * d + 3, G = 3, M = 20;
      const std::string tag = std::string(isa_name(isa)) + " d=" + std::to_string(d);
      auto q = randn(size_t(G * d), 51), kf = randn(size_t(keys * stride), 52, 2.0f),
           vf = randn(size_t(keys * stride), 53);
      std::vector<uint16_t> kh(kf.size()), vh(vf.size());
      kt.convert_f32_f16(kf.data(), kh.data(), int64_t(kf.size()));
      kt.convert_f32_f16(vf.data(), vh.data(), int64_t(vf.size()));
      for (size_t i = 0; i < kf.size(); ++i) {
        kf[i] = shrink::core::f16_to_f32(kh[i]);
        vf[i] = shrink::core::f16_to_f32(vh[i]);
      }
      const float scale = 1.0f / std::sqrt(float(d));
      std::vector<float> o1(size_t(G * d)), o2(size_t(G * d)), ml1(size_t(2 * G)),
          ml2(size_t(2 * G)), s(size_t(attention_partial_scratch(G, keys)));
      kt.attention_partial_f32(q.data(), G, d, kf.data(), vf.data(), stride, keys, scale, o1.data(),
                               ml1.data(), ml1.data() + G, s.data());
      kt.attention_partial_f16kv(q.data(), G, d, kh.data(), vh.data(), stride, keys, scale,
                                 o2.data(), ml2.data(), ml2.data() + G, s.data());
      EXPECT_EQ(o2, o1) << "partial " << tag;
      EXPECT_EQ(ml2, ml1) << "partial max/sum " << tag;
      std::vector<int64_t> lo(static_cast<size_t>(M)), hi(static_cast<size_t>(M));
      for (int64_t m = 0; m < M; ++m) {
        hi[size_t(m)] = 100 + m + 1;
        lo[size_t(m)] = m % 2 ? 40 + m : 0;  // some rows windowed
      }
      auto qb = randn(size_t(M * d), 54);
      std::vector<float> b1(size_t(M * d)), b2(size_t(M * d)),
          sb(size_t(attention_block_scratch(M, d)));
      kt.attention_block_f32(qb.data(), M, d, lo.data(), hi.data(), kf.data(), vf.data(), stride,
                             scale, b1.data(), sb.data());
      kt.attention_block_f16kv(qb.data(), M, d, lo.data(), hi.data(), kh.data(), vh.data(), stride,
                               scale, b2.data(), sb.data());
      EXPECT_EQ(b2, b1) << "block " << tag;
    }
  }
}

// The int8 KV cache kernels (per-key scales, as quantize_s8 writes them per token and KV head)
// against their references, which widen the cache to float first: decode partials and prefill
// blocks, every level, scales strided as in the cache ([pos][kv head]).
TEST(Kernels, Int8KvAttentionMatchesRef) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  std::vector<Isa> isas = vector_isas();
  isas.push_back(Isa::kRef);
  for (Isa isa : isas) {
    const KernelTable& kt = kernels_for(isa);
    for (int64_t d : {8, 14, 64, 80}) {
      const int64_t keys = 150, stride = 2 * d + 3, G = 3, M = 20, ss = 2;
      const std::string tag = std::string(isa_name(isa)) + " d=" + std::to_string(d);
      auto kf = randn(size_t(keys * stride), 62, 2.0f), vf = randn(size_t(keys * stride), 63);
      std::vector<int8_t> kq(kf.size()), vq(vf.size());
      std::vector<float> ks(size_t(keys * ss)), vs(size_t(keys * ss));
      for (int64_t j = 0; j < keys; ++j) {  // one row of d per key, scales at stride ss
        ref.quantize_s8(kf.data() + j * stride, 1, d, d, nullptr, kq.data() + j * stride, d,
                        ks.data() + j * ss);
        ref.quantize_s8(vf.data() + j * stride, 1, d, d, nullptr, vq.data() + j * stride, d,
                        vs.data() + j * ss);
      }
      auto q = randn(size_t(G * d), 61);
      const float scale = 1.0f / std::sqrt(float(d));
      std::vector<float> o1(size_t(G * d)), o2(size_t(G * d)), m1(3), m2(3), l1(3), l2(3),
          s(size_t(attention_partial_scratch(G, keys)));
      ref.attention_partial_s8kv(q.data(), G, d, kq.data(), vq.data(), stride, ks.data(),
                                 vs.data(), ss, keys, scale, o1.data(), m1.data(), l1.data(),
                                 s.data());
      kt.attention_partial_s8kv(q.data(), G, d, kq.data(), vq.data(), stride, ks.data(), vs.data(),
                                ss, keys, scale, o2.data(), m2.data(), l2.data(), s.data());
      expect_close(m2, m1, 1e-4f, 1e-2f, "partial m " + tag);
      expect_close(l2, l1, 1e-4f, 1e-2f, "partial l " + tag);
      expect_close(o2, o1, 1e-4f, 1.0f, "partial o " + tag);
      std::vector<int64_t> lo(static_cast<size_t>(M)), hi(static_cast<size_t>(M));
      for (int64_t m = 0; m < M; ++m) {
        hi[size_t(m)] = 100 + m + 1;
        lo[size_t(m)] = m % 2 ? 40 + m : 0;
      }
      auto qb = randn(size_t(M * d), 64);
      std::vector<float> b1(size_t(M * d)), b2(size_t(M * d)),
          sb(size_t(attention_block_scratch(M, d)));
      ref.attention_block_s8kv(qb.data(), M, d, lo.data(), hi.data(), kq.data(), vq.data(), stride,
                               ks.data(), vs.data(), ss, scale, b1.data(), sb.data());
      kt.attention_block_s8kv(qb.data(), M, d, lo.data(), hi.data(), kq.data(), vq.data(), stride,
                              ks.data(), vs.data(), ss, scale, b2.data(), sb.data());
      expect_close(b2, b1, 1e-4f, 1e-2f, "block " + tag);
    }
  }
}

TEST(Kernels, GemmF32AndW8a16MatchRef) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  for (Isa isa : vector_isas()) {
    const KernelTable& k = kernels_for(isa);
    for (int64_t M : {1, 2, 3, 4, 5, 7, 8, 9, 17, 64, 65}) {  // 65: above kGemvMaxM, the tiles
      for (int64_t N : {1, 3, 4, 7, 70}) {
        for (int64_t K : {1, 7, 16, 33, 100, 130}) {
          const std::string tag = std::string(isa_name(isa)) + " M=" + std::to_string(M) +
                                  " N=" + std::to_string(N) + " K=" + std::to_string(K);
          const int64_t lda = K + 3, ldc = N + 2;
          auto A = randn(static_cast<size_t>(M * lda), 21), B = randn(static_cast<size_t>(N * K), 22);
          std::vector<float> c1(static_cast<size_t>(M * ldc)), c2(static_cast<size_t>(M * ldc));
          ref.gemm_f32_nt(M, N, K, A.data(), lda, B.data(), K, c1.data(), ldc);
          k.gemm_f32_nt(M, N, K, A.data(), lda, B.data(), K, c2.data(), ldc);
          // Tolerance: two float summation orders of K <= 130 unit-variance products differ by
          // about 6e-8 * sum|a b| ~ 5e-6 absolute, whatever the sum (cancellations give small
          // sums with the same absolute error), so the floor is the sums' scale, about 1.
          expect_close(c2, c1, 2e-5f, 1.0f, "gemm_f32 " + tag);
          if (M >= 2 && M <= kGemvMaxM) {  // decode-sized batches: a row's result does not depend on M
            std::vector<float> c3(static_cast<size_t>(2 * ldc));
            k.gemm_f32_nt(2, N, K, A.data(), lda, B.data(), K, c3.data(), ldc);
            EXPECT_TRUE(std::equal(c3.begin(), c3.begin() + N, c2.begin()) &&
                        std::equal(c3.begin() + ldc, c3.begin() + ldc + N, c2.begin() + ldc))
                << "gemm_f32 rows differ between M=2 and " << tag;
          }
          // bf16 weights: the top halves of B's floats (truncation is fine for a kernel test);
          // the kernel widens them exactly, so it must equal the f32 kernel on the widened B.
          std::vector<uint16_t> bh;
          std::vector<float> bw;
          bf16_halves(B, &bh, &bw);
          std::vector<float> h1(static_cast<size_t>(M * ldc)), h2(static_cast<size_t>(M * ldc)),
              h3(static_cast<size_t>(M * ldc));
          ref.gemm_bf16w_f32_nt(M, N, K, A.data(), lda, bh.data(), K, h1.data(), ldc);
          k.gemm_bf16w_f32_nt(M, N, K, A.data(), lda, bh.data(), K, h2.data(), ldc);
          k.gemm_f32_nt(M, N, K, A.data(), lda, bw.data(), K, h3.data(), ldc);
          expect_close(h2, h1, 2e-5f, 1.0f, "gemm_bf16w_f32 " + tag);
          EXPECT_EQ(h2, h3) << "bf16w kernel != f32 kernel on the widened weights, " << tag;
          for (int64_t group : {K, int64_t(32), int64_t(5)}) {
            const int64_t G = (K + group - 1) / group;
            auto q = rand_s8(static_cast<size_t>(N * K), 23);
            auto s = randn(static_cast<size_t>(N * G), 24, 0.01f);
            std::vector<float> w1(static_cast<size_t>(M * ldc)), w2(static_cast<size_t>(M * ldc));
            ref.gemm_w8a16_nt(M, N, K, A.data(), lda, q.data(), K, s.data(), group, w1.data(), ldc);
            k.gemm_w8a16_nt(M, N, K, A.data(), lda, q.data(), K, s.data(), group, w2.data(), ldc);
            expect_close(w2, w1, 2e-5f, 1.0f, "gemm_w8a16 g=" + std::to_string(group) + " " + tag);
            if (M >= 2 && M <= kGemvMaxM) {  // as for gemm_f32: a row's result does not depend on M
              std::vector<float> w3(static_cast<size_t>(2 * ldc));
              k.gemm_w8a16_nt(2, N, K, A.data(), lda, q.data(), K, s.data(), group, w3.data(), ldc);
              EXPECT_TRUE(std::equal(w3.begin(), w3.begin() + N, w2.begin()) &&
                          std::equal(w3.begin() + ldc, w3.begin() + ldc + N, w2.begin() + ldc))
                  << "gemm_w8a16 rows differ between M=2 and g=" << group << " " << tag;
            }
          }
        }
      }
    }
  }
}

// 4-bit weights: the packed layout round-trips, the reference equals W8A16's on the same values,
// and every ISA matches the reference (and a row's result does not depend on M).
TEST(Kernels, GemmW4a16MatchesRefAndW8a16) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  std::vector<Isa> isas = vector_isas();
  isas.push_back(Isa::kRef);
  for (int64_t K : {1, 31, 32, 33, 64, 100, 130, 256}) {
    for (int64_t N : {1, 3, 17, 40}) {
      std::vector<int8_t> q(size_t(N * K));
      std::mt19937 rng(uint32_t(K * 131 + N));
      for (auto& v : q) v = int8_t(int(rng() % 16) - 8);
      const int64_t ldb = s4_row_bytes(K) + 16;  // a row stride beyond the packed bytes
      std::vector<uint8_t> p(size_t(N * ldb), 0xAB);
      for (int64_t n = 0; n < N; ++n) s4_pack_row(q.data() + n * K, K, p.data() + n * ldb);
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t k = 0; k < K; ++k)
          ASSERT_EQ(s4_value(p.data() + n * ldb, k), q[size_t(n * K + k)]);
      }
      std::vector<int64_t> groups = {K};
      if (K % 32 == 0 && K > 32) groups.push_back(32);
      for (int64_t group : groups) {
        const int64_t G = (K + group - 1) / group;
        auto s = randn(static_cast<size_t>(N * G), 25, 0.05f);
        for (int64_t M : {1, 2, 5, 8, 9, 64, 65, 130}) {
          const int64_t lda = K + 3, ldc = N + 2;
          const std::string tag = "M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                  " K=" + std::to_string(K) + " g=" + std::to_string(group);
          auto A = randn(static_cast<size_t>(M * lda), 26);
          std::vector<float> r8(size_t(M * ldc)), r4(size_t(M * ldc));
          ref.gemm_w8a16_nt(M, N, K, A.data(), lda, q.data(), K, s.data(), group, r8.data(), ldc);
          ref.gemm_w4a16_nt(M, N, K, A.data(), lda, p.data(), ldb, s.data(), group, r4.data(), ldc);
          EXPECT_EQ(r4, r8) << "ref w4a16 != ref w8a16 on the same values, " << tag;
          for (Isa isa : isas) {
            const KernelTable& k = kernels_for(isa);
            std::vector<float> c(size_t(M * ldc));
            k.gemm_w4a16_nt(M, N, K, A.data(), lda, p.data(), ldb, s.data(), group, c.data(), ldc);
            expect_close(c, r4, 2e-5f, 0.2f,
                         std::string("gemm_w4a16 ") + isa_name(isa) + " " + tag);
            if (M >= 2) {  // rows 0 and 1 as in a batch of two
              std::vector<float> c2(size_t(2 * ldc));
              k.gemm_w4a16_nt(2, N, K, A.data(), lda, p.data(), ldb, s.data(), group, c2.data(),
                              ldc);
              EXPECT_TRUE(std::equal(c2.begin(), c2.begin() + N, c.begin()) &&
                          std::equal(c2.begin() + ldc, c2.begin() + ldc + N, c.begin() + ldc))
                  << "gemm_w4a16 rows differ between M=2 and " << tag << " " << isa_name(isa);
            }
          }
        }
      }
    }
  }
}

// W4A8's activation packing against quantization derived here by hand: per row or per 32
// inputs, s = max|x| / 127, q = clamp(round_half_even(x / s)), the -8 * sum correction lanes,
// and zeros past K.
TEST(Kernels, W4a8ActivationPackingMatchesHandQuantization) {
  for (int64_t K : {1, 31, 32, 33, 100, 128, 200, 576}) {
    for (int64_t block : {int64_t(0), int64_t(32)}) {
      const int64_t rows = 3, ldx = K + 5, ldp = w4a8_act_row_bytes(K) + 64;
      auto x = randn(size_t(rows * ldx), uint32_t(K + block), 2.0f);
      for (int64_t k = 0; k < std::min<int64_t>(K, 32); ++k) x[size_t(2 * ldx + k)] = 0;  // a zero block
      std::vector<uint8_t> P(size_t(rows * ldp), 0xCD);
      quantize_w4a8_act(x.data(), rows, K, ldx, block, P.data(), ldp);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x.data() + r * ldx;
        const uint8_t* pr = P.data() + r * ldp;
        for (int64_t k0 = 0; k0 < K; k0 += 32) {
          const int64_t b0 = block == 0 ? 0 : k0, b1 = block == 0 ? K : std::min(K, k0 + 32);
          float amax = 0;
          for (int64_t k = b0; k < b1; ++k) amax = std::max(amax, std::fabs(xr[k]));
          const float s = amax > 0 ? amax / 127.0f : 1.0f;
          ASSERT_EQ(w4a8_act_scale(pr, k0), s) << "K=" << K << " block=" << block << " k0=" << k0;
          int32_t sum = 0;
          for (int64_t k = k0; k < std::min(K, k0 + 32); ++k) {
            const int want = int(std::min(127.0f, std::max(-127.0f, std::nearbyint(xr[k] / s))));
            ASSERT_EQ(w4a8_act_value(pr, k), want) << "K=" << K << " block=" << block << " k=" << k;
            sum += want;
          }
          int32_t corr;
          const uint8_t* chunk = pr + k0 / kW4a8Chunk * kW4a8ChunkBytes;
          std::memcpy(&corr, chunk + 128 + 16 * ((k0 % kW4a8Chunk) / 32), 4);
          EXPECT_EQ(corr, -8 * sum);
        }
        for (int64_t k = K; k < (K + kW4a8Chunk - 1) / kW4a8Chunk * kW4a8Chunk; ++k)
          ASSERT_EQ(w4a8_act_value(pr, k), 0) << "padding past K=" << K;
      }
      // Every ISA's quantize_s8 (the backend passes the kernel table's) packs the same bytes.
      for (Isa isa : vector_isas()) {
        std::vector<uint8_t> Q(size_t(rows * ldp), 0xCD);
        quantize_w4a8_act(x.data(), rows, K, ldx, block, Q.data(), ldp, nullptr,
                          kernels_for(isa).quantize_s8);
        EXPECT_EQ(Q, P) << "quantize_w4a8_act with " << isa_name(isa) << "'s quantize_s8, K=" << K
                        << " block=" << block;
      }
    }
  }
}

// gemm_w4a8: the reference against the float product of the dequantized weights and the
// original activations (the error is bounded by the activation rounding, half a step per input),
// every variant against the reference, and a row's result the same bits at every M up to
// kW4a8GemvMaxM (decode GEMV, multi-row GEMV; the GEMM, beyond, sums in its own order).
TEST(Kernels, GemmW4a8MatchesRefAndFloatProduct) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  std::vector<Isa> isas = vector_isas();
  isas.push_back(Isa::kRef);
  for (int64_t K : {32, 33, 64, 100, 128, 192, 200, 320, 576}) {  // 192: a half-empty last chunk
    for (int64_t N : {1, 3, 17, 40}) {
      std::vector<int8_t> q(size_t(N * K));
      std::mt19937 rng(uint32_t(K * 7 + N));
      for (auto& v : q) v = int8_t(int(rng() % 16) - 8);
      const int64_t ldb = s4_row_bytes(K) + 16;
      std::vector<uint8_t> p(size_t(N * ldb), 0xAB);
      for (int64_t n = 0; n < N; ++n) s4_pack_row(q.data() + n * K, K, p.data() + n * ldb);
      std::vector<int64_t> groups = {K};
      if (K % 32 == 0 && K > 32) groups.push_back(32);
      if (K % 64 == 0 && K > 64) groups.push_back(64);
      if (K % 160 == 0) groups.push_back(160);
      for (int64_t group : groups) {
        const int64_t G = (K + group - 1) / group;
        auto s = randn(size_t(N * G), 27, 0.05f);
        std::vector<uint16_t> s16(s.size());  // the kernel's f16 scales; s: their exact values
        for (size_t i = 0; i < s.size(); ++i) {
          s16[i] = shrink::core::f32_to_f16(s[i]);
          s[i] = shrink::core::f16_to_f32(s16[i]);
        }
        for (int64_t block : {int64_t(0), int64_t(32)}) {
          for (int64_t M : {1, 2, 5, 8, 9, 17, 33, 70}) {
            const int64_t ldx = K + 3, lda = w4a8_act_row_bytes(K), ldc = N + 2;
            const std::string tag = "M=" + std::to_string(M) + " N=" + std::to_string(N) +
                                    " K=" + std::to_string(K) + " g=" + std::to_string(group) +
                                    " block=" + std::to_string(block);
            auto x = randn(size_t(M * ldx), uint32_t(28 + M));
            std::vector<uint8_t> A(size_t(M * lda));
            quantize_w4a8_act(x.data(), M, K, ldx, block, A.data(), lda);
            std::vector<float> r(size_t(M * ldc));
            ref.gemm_w4a8_nt(M, N, K, A.data(), lda, p.data(), ldb, s16.data(), group, r.data(), ldc);
            std::vector<float> mag(size_t(M * ldc), 0.0f);  // sum of |terms|: the tolerance's scale
            for (int64_t m = 0; m < M; ++m) {
              for (int64_t n = 0; n < N; ++n) {
                double exact = 0, bound = 0, absum = 0;
                for (int64_t k = 0; k < K; ++k) {
                  const double w = double(q[size_t(n * K + k)]) * s[size_t(n * G + k / group)];
                  const double sa = w4a8_act_scale(A.data() + m * lda, k);
                  exact += w * x[size_t(m * ldx + k)];
                  bound += std::fabs(w) * sa * 0.5;
                  absum += std::fabs(w * sa * w4a8_act_value(A.data() + m * lda, k));
                }
                mag[size_t(m * ldc + n)] = float(absum);
                ASSERT_LE(std::fabs(r[size_t(m * ldc + n)] - exact), bound * 1.0001 + 1e-6)
                    << "ref w4a8 vs the float product, " << tag << " m=" << m << " n=" << n;
              }
            }
            for (Isa isa : isas) {
              const KernelTable& k = kernels_for(isa);
              std::vector<float> c(size_t(M * ldc));
              k.gemm_w4a8_nt(M, N, K, A.data(), lda, p.data(), ldb, s16.data(), group, c.data(), ldc);
              for (int64_t m = 0; m < M; ++m) {
                for (int64_t n = 0; n < N; ++n) {
                  const size_t i = size_t(m * ldc + n);
                  ASSERT_LE(std::fabs(c[i] - r[i]), 2e-6f * mag[i] + 1e-7f)
                      << "gemm_w4a8 " << isa_name(isa) << " " << tag << " m=" << m << " n=" << n;
                }
              }
              if (M >= 2 && M <= kW4a8GemvMaxM) {  // rows 0 and 1 alone and as a batch of two
                std::vector<float> c1(static_cast<size_t>(ldc)), c2(static_cast<size_t>(2 * ldc));
                k.gemm_w4a8_nt(1, N, K, A.data() + lda, lda, p.data(), ldb, s16.data(), group,
                               c1.data(), ldc);
                k.gemm_w4a8_nt(2, N, K, A.data(), lda, p.data(), ldb, s16.data(), group, c2.data(),
                               ldc);
                EXPECT_TRUE(std::equal(c2.begin(), c2.begin() + N, c.begin()) &&
                            std::equal(c2.begin() + ldc, c2.begin() + ldc + N, c.begin() + ldc))
                    << "gemm_w4a8 rows differ between M=2 and " << tag << " " << isa_name(isa);
                EXPECT_TRUE(std::equal(c1.begin(), c1.begin() + N, c.begin() + ldc))
                    << "gemm_w4a8 row 1 differs between M=1 and " << tag << " " << isa_name(isa);
              }
            }
          }
        }
      }
    }
  }
}

TEST(Kernels, QuantizeAndS8GemmAreBitExact) {
  const KernelTable& ref = kernels_for(Isa::kRef);
  for (Isa isa : vector_isas()) {
    const KernelTable& k = kernels_for(isa);
    for (int64_t M : {1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 65}) {
      for (int64_t N : {1, 4, 7, 65}) {
        for (int64_t K : {1, 15, 16, 64, 65, 130, 257}) {
          const std::string tag = std::string(isa_name(isa)) + " M=" + std::to_string(M) +
                                  " N=" + std::to_string(N) + " K=" + std::to_string(K);
          auto x = randn(static_cast<size_t>(M * K), 31, 3.0f);
          std::vector<int8_t> qa(static_cast<size_t>(M * K)), qb(static_cast<size_t>(M * K));
          std::vector<float> sa(static_cast<size_t>(M)), sb(static_cast<size_t>(M));
          ref.quantize_s8(x.data(), M, K, K, nullptr, qa.data(), K, sa.data());
          k.quantize_s8(x.data(), M, K, K, nullptr, qb.data(), K, sb.data());
          ASSERT_EQ(qa, qb) << "quantize dynamic " << tag;
          ASSERT_EQ(sa, sb) << tag;
          const float st = 0.02f;
          ref.quantize_s8(x.data(), M, K, K, &st, qa.data(), K, sa.data());
          k.quantize_s8(x.data(), M, K, K, &st, qb.data(), K, sb.data());
          ASSERT_EQ(qa, qb) << "quantize static (saturating) " << tag;
          for (int64_t group : {K, int64_t(32), int64_t(64)}) {
            const int64_t G = (K + group - 1) / group;
            auto w = rand_s8(static_cast<size_t>(N * K), 32);
            auto ws = randn(static_cast<size_t>(N * G), 33, 0.01f);
            std::vector<int32_t> comp(static_cast<size_t>(N * G));
            for (int64_t n = 0; n < N; ++n)
              for (int64_t kk = 0; kk < K; ++kk) comp[static_cast<size_t>(n * G + kk / group)] += 128 * w[static_cast<size_t>(n * K + kk)];
            std::vector<float> c1(static_cast<size_t>(M * N)), c2(static_cast<size_t>(M * N));
            ref.gemm_s8s8_f32_nt(M, N, K, qa.data(), K, sa.data(), w.data(), K, ws.data(), group,
                                 comp.data(), c1.data(), N);
            k.gemm_s8s8_f32_nt(M, N, K, qa.data(), K, sa.data(), w.data(), K, ws.data(), group,
                               comp.data(), c2.data(), N);
            ASSERT_EQ(c1, c2) << "gemm_s8s8 g=" << group << " " << tag;
          }
        }
      }
    }
  }
}

TEST(Kernels, RmsnormQuantEqualsRmsnormThenQuantize) {
  for (Isa isa : {Isa::kRef, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_supported(isa)) continue;
    const KernelTable& k = kernels_for(isa);
    for (int64_t n : kSizes) {
      auto x = randn(static_cast<size_t>(2 * n), 41), w = randn(static_cast<size_t>(n), 42);
      std::vector<float> y(static_cast<size_t>(2 * n)), s1(2), s2(2), scratch(static_cast<size_t>(n));
      std::vector<int8_t> q1(static_cast<size_t>(2 * n)), q2(static_cast<size_t>(2 * n));
      k.rmsnorm_f32(x.data(), w.data(), y.data(), 2, n, 1e-6f);
      k.quantize_s8(y.data(), 2, n, n, nullptr, q1.data(), n, s1.data());
      k.rmsnorm_quant_s8(x.data(), w.data(), 2, n, 1e-6f, nullptr, q2.data(), n, s2.data(), scratch.data());
      EXPECT_EQ(q1, q2) << isa_name(isa) << " n=" << n;
      EXPECT_EQ(s1, s2);
    }
  }
}

TEST(Kernels, GemmLibraryMatchesRef) {
  if (!gemm_library_available()) GTEST_SKIP() << "built without a GEMM library";
  const KernelTable& ref = kernels_for(Isa::kRef);
  for (int64_t M : {8, 13, 64}) {
    for (int64_t N : {1, 17, 96}) {
      for (int64_t K : {5, 64, 130}) {
        auto A = randn(static_cast<size_t>(M * K), 51), B = randn(static_cast<size_t>(N * K), 52);
        std::vector<float> c1(static_cast<size_t>(M * N)), c2(static_cast<size_t>(M * N));
        ref.gemm_f32_nt(M, N, K, A.data(), K, B.data(), K, c1.data(), N);
        ASSERT_TRUE(gemm_f32_nt_library(M, N, K, A.data(), K, B.data(), K, c2.data(), N));
        expect_close(c2, c1, 2e-5f, 1e-1f, "library f32");
        auto qa = rand_s8(static_cast<size_t>(M * K), 53), qb = rand_s8(static_cast<size_t>(N * K), 54);
        std::vector<int32_t> i1(static_cast<size_t>(M * N)), i2(static_cast<size_t>(M * N));
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k) i1[static_cast<size_t>(m * N + n)] += qa[static_cast<size_t>(m * K + k)] * qb[static_cast<size_t>(n * K + k)];
        ASSERT_TRUE(gemm_s8s8_s32_nt_library(M, N, K, qa.data(), K, qb.data(), K, i2.data(), N));
        ASSERT_EQ(i1, i2) << "library s8s8 M=" << M << " N=" << N << " K=" << K;
        if (gemm_bf16_native()) {
          // bf16 inputs (truncated halves of A and B) are exact in f32, and the products of two
          // 8-bit mantissas are exact too: only the fp32 accumulation order differs from ref.
          std::vector<uint16_t> ah, bh;
          std::vector<float> aw, bw;
          bf16_halves(A, &ah, &aw);
          bf16_halves(B, &bh, &bw);
          std::vector<float> b1(static_cast<size_t>(M * N)), b2(static_cast<size_t>(M * N));
          ref.gemm_f32_nt(M, N, K, aw.data(), K, bw.data(), K, b1.data(), N);
          ASSERT_TRUE(gemm_bf16_nt_library(M, N, K, ah.data(), K, bh.data(), K, b2.data(), N));
          expect_close(b2, b1, 2e-5f, 1e-1f, "library bf16");
        }
      }
    }
  }
}
