// Random models written tensor by tensor (pipeline/random_model.h): a valid checkpoint of the
// config, values independent of threads and shard size, the stated distribution.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/fs.h"
#include "core/safetensors.h"
#include "pipeline/random_model.h"
#include "tests/util.h"

namespace shrink::pipeline {
namespace {

namespace fs = std::filesystem;

std::vector<float> values(const core::Checkpoint& ck, const std::string& name) {
  const core::TensorInfo* t = ck.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<float> out(size_t(t->numel()));
  core::convert_to_f32(t->dtype, ck.data(*t), out.data(), t->numel());
  return out;
}

TEST(RandomModel, ValidCheckpointSameValuesForAnyThreadsAndShardsAndHfStatistics) {
  const std::string root = test::temp_dir("random_model");
  core::ModelConfig c = core::config_preset("tiny", 300).take_or_throw();
  RandomModelOptions one;
  one.seed = 7;
  RandomModelOptions three = one;
  three.threads = 3;
  three.max_shard_bytes = 200000;  // several shards
  ASSERT_TRUE(random_model_write(c, root + "/a", one).is_ok());
  ASSERT_TRUE(random_model_write(c, root + "/b", three).is_ok());
  auto a = core::Checkpoint::open(root + "/a").take_or_throw();
  auto b = core::Checkpoint::open(root + "/b").take_or_throw();
  EXPECT_EQ(a.num_files(), 1u);
  EXPECT_GT(b.num_files(), 1u);
  const core::ModelConfig ca = core::config_load(root + "/a").take_or_throw();
  EXPECT_EQ(ca.dtype, "bfloat16");
  EXPECT_TRUE(core::checkpoint_check(ca, a).is_ok());
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    const core::TensorInfo* ta = a.find(n);
    EXPECT_EQ(ta->dtype, core::DType::kBF16) << n;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(a.data(*ta)), ta->nbytes),
              std::string(reinterpret_cast<const char*>(b.data(*b.find(n))), ta->nbytes))
        << n;
  }
  for (float v : values(a, "model.layers.0.input_layernorm.weight")) ASSERT_EQ(v, 1.0f);
  const std::vector<float> e = values(a, "model.embed_tokens.weight");  // 300 x 128
  double sum = 0, sq = 0;
  for (float v : e) sum += v, sq += double(v) * v;
  const double mean = sum / double(e.size()), sd = std::sqrt(sq / double(e.size()) - mean * mean);
  EXPECT_NEAR(mean, 0.0, 5e-4);  // standard error 0.02 / sqrt(38400) = 1e-4
  EXPECT_NEAR(sd, 0.02, 5e-4);   // standard error about 7e-5, plus bf16 rounding
  RandomModelOptions other = one;
  other.seed = 8;
  ASSERT_TRUE(random_model_write(c, root + "/c", other).is_ok());
  EXPECT_NE(values(core::Checkpoint::open(root + "/c").take_or_throw(), "model.embed_tokens.weight"), e);
  fs::remove_all(root);
}

TEST(RandomModel, BadDtypeWritesNothing) {
  const std::string root = test::temp_dir("random_model_bad");
  RandomModelOptions o;
  o.dtype = "int8";
  const Status st = random_model_write(core::config_preset("tiny", 300).take_or_throw(), root + "/m", o);
  EXPECT_EQ(st.code(), StatusCode::kInvalidInput);
  EXPECT_NE(st.message().find("expected float32, float16 or bfloat16"), std::string::npos) << st.message();
  EXPECT_FALSE(fs::exists(root + "/m"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace shrink::pipeline
