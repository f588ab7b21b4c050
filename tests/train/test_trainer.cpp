// Trainer tests: the learning-rate schedule, that training lowers the loss, and that a run
// stopped at a checkpoint and resumed ends with bitwise the same weights (1 thread).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "core/fs.h"
#include "train/api.h"
#include "train/trainer.h"
#include "tests/train/util.h"

namespace fs = std::filesystem;
using namespace shrink;

namespace {

using test::make_inputs;

train::TrainOptions base(const std::string& dir, const std::string& out) {
  train::TrainOptions o =
      test::short_run(dir, out, /*steps=*/12, /*warmup=*/3, /*every=*/4, /*seed=*/9);
  o.config = dir + "/config.json";
  o.grad_accum = 2;
  o.log_every = 2;
  return o;
}

}  // namespace

TEST(Trainer, LearningRateSchedule) {
  train::TrainOptions o;
  o.lr = 1.0;
  o.min_lr_ratio = 0.1;
  o.warmup = 4;
  o.steps = 14;
  EXPECT_DOUBLE_EQ(train::lr_at(o, 0), 0.25);
  EXPECT_DOUBLE_EQ(train::lr_at(o, 3), 1.0);
  EXPECT_DOUBLE_EQ(train::lr_at(o, 4), 1.0);        // decay starts at the peak
  EXPECT_NEAR(train::lr_at(o, 13), 0.1, 1e-12);     // ends at lr * min_lr_ratio
  EXPECT_NEAR(train::lr_at(o, 8), 0.1 + 0.45 * (1 + std::cos(M_PI * 4.0 / 9.0)), 1e-12);
  o.schedule = "linear";
  EXPECT_NEAR(train::lr_at(o, 13), 0.1, 1e-12);
  EXPECT_NEAR(train::lr_at(o, 8), 1.0 - 0.9 * 4.0 / 9.0, 1e-12);
  o.schedule = "constant";
  EXPECT_DOUBLE_EQ(train::lr_at(o, 10), 1.0);
}

TEST(Trainer, LowersTheLossAndWritesOutputs) {
  train::env_init(1);
  std::string dir = test::temp_dir("loss");
  make_inputs(dir);
  train::TrainOptions o = base(dir, dir + "/run");
  o.steps = 60;
  o.eval_every = 30;
  train::TrainResult r = train::train_run(o);
  // Uniform over 64 tokens is ln 64 = 4.16; the pattern is mostly predictable.
  EXPECT_LT(r.val_loss, 2.5);
  EXPECT_LT(r.final_loss, 2.5);
  EXPECT_TRUE(fs::exists(dir + "/run/model/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/run/best/model.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/run/checkpoint/optimizer.pt"));
  std::string metrics = core::read_file(dir + "/run/metrics.jsonl").take_or_throw();
  EXPECT_NE(metrics.find("\"loss\""), std::string::npos);
  EXPECT_NE(metrics.find("\"val_loss\""), std::string::npos);
  fs::remove_all(dir);
}

TEST(Trainer, StoppedAndResumedRunIsBitwiseIdentical) {
  train::env_init(1);
  std::string dir = test::temp_dir("resume");
  make_inputs(dir);
  train::train_run(base(dir, dir + "/a"));
  train::TrainOptions b = base(dir, dir + "/b");
  b.stop_after = 6;  // checkpoint at step 6, then "die"
  train::train_run(b);
  EXPECT_FALSE(fs::exists(dir + "/b/model"));
  b.stop_after = 0;
  b.resume = true;
  train::train_run(b);
  test::expect_same_weights(dir + "/a/model", dir + "/b/model");
  // The losses logged by the resumed run equal the uninterrupted run's, step by step.
  auto losses = [](const std::string& path) {
    return test::metric_series(path, {"loss", "val_loss"});
  };
  EXPECT_EQ(losses(dir + "/a/metrics.jsonl"), losses(dir + "/b/metrics.jsonl"));
  fs::remove_all(dir);
}

TEST(Trainer, BadOptionsAreRejected) {
  train::TrainOptions o;
  o.out = "/tmp/x";
  o.data = "/tmp/y";
  o.config = "c.json";
  o.batch = 3;
  o.grad_accum = 2;
  try {
    train::train_run(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), StatusCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("--batch 3 must be a positive multiple"), std::string::npos);
  }
}
