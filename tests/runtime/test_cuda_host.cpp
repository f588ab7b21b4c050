// The CUDA backend's host-side policy (kernels/cuda/host_policy.h), which needs no GPU, and the
// engine's handling of a backend whose allocations fail (as a device's do when its memory is
// full), on the CPU backend wrapped to fail:
//  - operand alignment, M buckets, the IMMA preconditions: hand-derived values;
//  - the plan cache remembers failures; keys differ by alignment;
//  - CUDA graphs: a key's first use runs eagerly, failures are logged and retried, then the key
//    stays eager, and enough failing keys turn graphs off;
//  - a failed allocation fails Engine::load or the forward with the backend's message (exit 1),
//    never runs an op on a null buffer, and the next forward retries and matches an unwrapped
//    engine.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/host_policy.h"
#include "runtime/backend.h"
#include "runtime/engine.h"
#include "tests/runtime/util.h"

using namespace shrink;
using cuda::GraphPolicy;
using cuda::LtKey;

namespace {

const void* at(uintptr_t a) { return reinterpret_cast<const void*>(a); }

}  // namespace

TEST(CudaHostPolicy, OperandAlignmentIsTheLowestPowerOfTwoOfAddressAndStride) {
  EXPECT_EQ(cuda::operand_alignment(at(0x10000), 4096), 256);  // capped at 256
  EXPECT_EQ(cuda::operand_alignment(at(0x10080), 4096), 128);
  EXPECT_EQ(cuda::operand_alignment(at(0x10004), 4096), 4);    // k/v written at an offset
  EXPECT_EQ(cuda::operand_alignment(at(0x10000), 9 * 4), 4);   // ldy = 9 floats
  EXPECT_EQ(cuda::operand_alignment(at(0x10000), 2 * 37), 2);  // 37 f16 values per row
  EXPECT_EQ(cuda::operand_alignment(at(0x10001), 4096), 1);
  EXPECT_EQ(cuda::operand_alignment(at(0x10010), 64), 16);
}

TEST(CudaHostPolicy, MBucketsBoundThePlans) {
  const std::vector<std::pair<int64_t, int64_t>> want = {
      {1, 16}, {16, 16}, {17, 32}, {33, 48}, {64, 64}, {65, 128}, {128, 128},
      {129, 256}, {2048, 2048}, {2049, 4096}};
  for (auto [m, b] : want) EXPECT_EQ(cuda::m_bucket(m), b) << "M=" << m;
  // Every M of a prompt up to 4096 tokens falls in one of 10 buckets (16, 32, 48, 64, 128, ...,
  // 4096), each at least M.
  std::vector<int64_t> seen;
  for (int64_t m = 1; m <= 4096; ++m) {
    const int64_t b = cuda::m_bucket(m);
    ASSERT_GE(b, m);
    if (seen.empty() || seen.back() != b) seen.push_back(b);
  }
  EXPECT_EQ(seen.size(), 10u);
}

TEST(CudaHostPolicy, ImmaPreconditions) {
  EXPECT_EQ(cuda::imma_refusal(256, 512, 256, 256, 256, 256), "");
  EXPECT_EQ(cuda::imma_refusal(256, 512, 256, 4, 4, 4), "");
  EXPECT_NE(cuda::imma_refusal(37, 64, 37, 256, 256, 256).find("N=37"), std::string::npos);
  EXPECT_NE(cuda::imma_refusal(64, 66, 64, 256, 256, 256).find("K=66"), std::string::npos);
  EXPECT_NE(cuda::imma_refusal(64, 64, 67, 256, 256, 256).find("ldc=67"), std::string::npos);
  EXPECT_NE(cuda::imma_refusal(64, 64, 64, 256, 2, 256).find("aligned to 256/2/256"),
            std::string::npos);
}

TEST(CudaHostPolicy, PlanCacheRemembersFailuresAndKeysByAlignment) {
  struct Plan {
    int id;
  };
  cuda::PlanCache<Plan> c;
  LtKey k;
  k.kind = 3;
  k.m_bucket = 64;
  k.n = 37;
  k.k = 64;
  k.ldc = 37;
  EXPECT_EQ(c.find(k), nullptr);
  c.put_failure(k, "no algorithm");
  const auto* e = c.find(k);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->plan, nullptr);
  EXPECT_EQ(e->failure, "no algorithm");
  LtKey k4 = k;
  k4.align_c = 4;  // the same shape written at an offset: a plan of its own
  EXPECT_EQ(c.find(k4), nullptr);
  Plan* p = c.put(k4, std::make_unique<Plan>(Plan{7}));
  ASSERT_NE(c.find(k4), nullptr);
  EXPECT_EQ(c.find(k4)->plan.get(), p);
  EXPECT_EQ(p->id, 7);
  EXPECT_EQ(c.size(), 2u);
  LtKey other = k;
  other.m_bucket = 128;
  EXPECT_EQ(c.find(other), nullptr);
}

TEST(CudaHostPolicy, GraphsRecordFromTheSecondUseAndRetryFailures) {
  std::vector<std::string> log;
  GraphPolicy g(true, [&](const std::string& m) { log.push_back(m); });
  EXPECT_FALSE(g.should_capture(5)) << "a key's first use runs eagerly";
  EXPECT_TRUE(g.should_capture(5));
  EXPECT_FALSE(g.should_capture(9));
  g.capture_failed(5, "cudaStreamEndCapture: operation not permitted");
  ASSERT_EQ(log.size(), 1u);
  EXPECT_NE(log[0].find("operation not permitted"), std::string::npos);
  EXPECT_NE(log[0].find("retried"), std::string::npos);
  EXPECT_TRUE(g.should_capture(5)) << "one failure is retried";
  g.capture_failed(5, "x");
  EXPECT_TRUE(g.should_capture(5));
  g.capture_failed(5, "x");
  EXPECT_EQ(g.failures(5), GraphPolicy::kMaxFailuresPerKey);
  EXPECT_NE(log.back().find("stays eager"), std::string::npos);
  EXPECT_FALSE(g.should_capture(5));
  EXPECT_TRUE(g.should_capture(9)) << "other keys still record";
  EXPECT_TRUE(g.on());
  for (uint64_t key : {9, 13}) {
    if (key == 13) g.should_capture(13);
    for (int i = 0; i < GraphPolicy::kMaxFailuresPerKey; ++i) g.capture_failed(key, "x");
  }
  EXPECT_FALSE(g.on());
  EXPECT_NE(log.back().find("CUDA graphs are off"), std::string::npos);
  EXPECT_FALSE(g.should_capture(21));
  EXPECT_FALSE(g.should_capture(21));
}

TEST(CudaHostPolicy, GraphsOffNeverRecord) {
  GraphPolicy g(false, nullptr);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(g.should_capture(1));
}

TEST(CudaHostPolicy, OutOfMemoryMessage) {
  EXPECT_EQ(cuda::out_of_memory_message(uint64_t(3) << 29, uint64_t(256) << 20, uint64_t(80) << 30),
            "out of device memory: needed 1.50 GiB, free 256.0 MiB of 80.00 GiB");
}

// ---- the engine over a backend whose allocations fail ------------------------------------------

namespace {

class NullTensor : public runtime::DeviceTensor {
 public:
  float* data() override { return nullptr; }
  int64_t numel() const override { return 0; }
};

// The CPU backend, except that while armed, tensor_zeros and tensor_from_host of more than
// `limit` floats fail as a full device's do: a null tensor, and the reason recorded for
// take_error. Every op checks
// that it is not handed a null buffer. The test owns the arming and the count (the engine
// frees the backend when a load fails, so the test must not read them from it).
struct Arming {
  int64_t limit = -1;  // < 0: not armed
  int null_ops = 0;    // ops that were handed a null buffer (must stay 0)
};

class FailingBackend : public runtime::Backend {
 public:
  FailingBackend(std::unique_ptr<runtime::Backend> b, std::shared_ptr<Arming> a)
      : b_(std::move(b)), a_(std::move(a)) {}

  std::string describe() const override { return b_->describe(); }
  std::unique_ptr<runtime::DeviceTensor> tensor_zeros(int64_t n) override {
    const int64_t limit = a_->limit;
    if (limit >= 0 && n > limit) {
      if (err_.is_ok()) {
        err_ = internal_error(cuda::out_of_memory_message(uint64_t(n) * 4, uint64_t(limit) * 4,
                                                          uint64_t(1) << 30));
      }
      return std::make_unique<NullTensor>();
    }
    return b_->tensor_zeros(n);
  }
  std::unique_ptr<runtime::DeviceTensor> tensor_from_host(std::vector<float>&& h) override {
    if (a_->limit >= 0 && int64_t(h.size()) > a_->limit) return tensor_zeros(int64_t(h.size()));
    return b_->tensor_from_host(std::move(h));
  }
  void to_host(const float* s, int64_t n, float* d) override { b_->to_host(s, n, d); }
  void bytes_to_host(const void* s, size_t n, void* d) override { b_->bytes_to_host(s, n, d); }
  void bytes_from_host(const void* s, size_t n, void* d) override { b_->bytes_from_host(s, n, d); }
  bool host_memory() const override { return b_->host_memory(); }
  Result<std::unique_ptr<runtime::Linear>> linear_create(runtime::LinearDesc&& d) override {
    return b_->linear_create(std::move(d));
  }
  bool float_weights_bf16() const override { return b_->float_weights_bf16(); }
  void embed(const float* t, int64_t dim, runtime::HostInts ids, int64_t rows, float* out) override {
    if (null(t, out)) return;
    b_->embed(t, dim, ids, rows, out);
  }
  void embed_bf16(const uint16_t* t, int64_t dim, runtime::HostInts ids, int64_t rows,
                  float* out) override {
    if (null(t, out)) return;
    b_->embed_bf16(t, dim, ids, rows, out);
  }
  void gather_rows(const float* s, int64_t dim, runtime::HostInts idx, int64_t rows,
                   float* d) override {
    if (null(s, d)) return;
    b_->gather_rows(s, dim, idx, rows, d);
  }
  void rmsnorm(const float* x, const float* w, float* y, int64_t rows, int64_t n,
               float eps) override {
    if (null(x, w, y)) return;
    b_->rmsnorm(x, w, y, rows, n, eps);
  }
  void linear(const runtime::Linear& l, const float* x, int64_t rows, float* y,
              int64_t ldy) override {
    if (null(x, y)) return;
    b_->linear(l, x, rows, y, ldy);
  }
  void add(float* x, const float* y, int64_t n) override {
    if (null(x, y)) return;
    b_->add(x, y, n);
  }
  void rope(float* x, int64_t rows, int64_t ldx, int64_t heads, int64_t hd,
            const runtime::RowPlacement& a, const float* c, const float* s) override {
    if (null(x, c, s)) return;
    b_->rope(x, rows, ldx, heads, hd, a, c, s);
  }
  void kv_write(const float* k, const float* v, int64_t ld, int64_t rows,
                const runtime::RowPlacement& a, const runtime::KvLayer& c) override {
    if (null(k, v, c.k, c.v)) return;
    b_->kv_write(k, v, ld, rows, a, c);
  }
  void attention(const float* q, int64_t ldq, int64_t rows, const runtime::RowPlacement& a,
                 const runtime::KvLayer& c, int64_t nh, int64_t nkv, int64_t hd, int64_t win,
                 float* out) override {
    if (null(q, c.k, c.v, out)) return;
    b_->attention(q, ldq, rows, a, c, nh, nkv, hd, win, out);
  }
  void silu_mul(const float* g, int64_t rows, int64_t n, float* y) override {
    if (null(g, y)) return;
    b_->silu_mul(g, rows, n, y);
  }
  void argmax_rows(const float* x, int64_t rows, int64_t n) override {
    if (null(x)) return;
    b_->argmax_rows(x, rows, n);
  }
  void sample_rows(const float* x, int64_t rows, int64_t n, const core::SampleRow* p) override {
    if (null(x)) return;
    b_->sample_rows(x, rows, n, p);
  }
  void token_ids_fetch(int32_t* h, int64_t rows) override { b_->token_ids_fetch(h, rows); }
  void step_begin(const StepRows& s) override { b_->step_begin(s); }
  void step_end() override { b_->step_end(); }
  Status take_error() override {
    Status s = err_;
    err_ = Status::ok();
    return s.is_ok() ? b_->take_error() : s;
  }

 private:
  template <typename... P>
  bool null(const P*... p) {
    const bool any = ((p == nullptr) || ...);
    if (any) ++a_->null_ops;
    return any;
  }
  std::unique_ptr<runtime::Backend> b_;
  std::shared_ptr<Arming> a_;
  Status err_;
};

runtime::EngineOptions failing_options(const std::shared_ptr<Arming>& arming) {
  runtime::EngineOptions o;
  o.max_seq_len = 64;
  o.wrap_backend = [arming](std::unique_ptr<runtime::Backend> b) {
    return std::unique_ptr<runtime::Backend>(
        std::make_unique<FailingBackend>(std::move(b), arming));
  };
  return o;
}

}  // namespace

TEST(EngineAllocation, ALoadThatCannotAllocateFailsWithTheBackendsReason) {
  // The second fixture ties its head to the embedding, which the head borrows.
  for (const char* name : {"llama_gqa_llama3rope", "qwen2_bias_tied_bf16"}) {
    SCOPED_TRACE(name);
    auto fb = std::make_shared<Arming>();
    fb->limit = 1000;
    auto r = runtime::Engine::load(test::fixture(name), failing_options(fb));
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInternal);  // exit 1
    EXPECT_NE(r.status().message().find("out of device memory: needed"), std::string::npos)
        << r.status().message();
    EXPECT_EQ(fb->null_ops, 0);
  }
}

TEST(EngineAllocation, AForwardThatCannotAllocateFailsAndTheNextRetries) {
  const std::string dir = test::fixture("llama_gqa_llama3rope");
  auto fb = std::make_shared<Arming>();
  auto e = runtime::Engine::load(dir, failing_options(fb)).take_or_throw();
  runtime::EngineOptions plain;
  plain.max_seq_len = 64;
  auto ref = runtime::Engine::load(dir, plain).take_or_throw();
  std::vector<int32_t> ids = {1, 5, 9, 14};
  std::vector<float> logits, want;
  ASSERT_TRUE(e->forward({{0, ids.data(), 4}}, false, logits).is_ok());
  // 16 rows need activation buffers of 16 x 64 floats and more: above the armed limit.
  fb->limit = 1000;
  std::vector<int32_t> more(16);
  for (int i = 0; i < 16; ++i) more[size_t(i)] = 3 + 7 * i;
  Status st = e->forward({{0, more.data(), 16}}, false, logits);
  ASSERT_FALSE(st.is_ok());
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("out of device memory: needed"), std::string::npos) << st.message();
  EXPECT_EQ(fb->null_ops, 0) << "an op ran on a buffer that was never allocated";
  // Memory again: the same forward reallocates and gives the reference engine's logits.
  fb->limit = -1;
  ASSERT_TRUE(e->truncate(0, 4).is_ok());
  ASSERT_TRUE(e->forward({{0, more.data(), 16}}, false, logits).is_ok());
  ASSERT_TRUE(ref->forward({{0, ids.data(), 4}}, false, want).is_ok());
  ASSERT_TRUE(ref->forward({{0, more.data(), 16}}, false, want).is_ok());
  ASSERT_EQ(logits.size(), want.size());
  EXPECT_EQ(logits, want);
  EXPECT_EQ(fb->null_ops, 0);
}
