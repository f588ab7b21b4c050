// Helpers for the runtime tests: temporary directories (tests/util.h), reading the HF
// fixtures' reference files, and a small quantizer that turns a float model directory into a
// compressed-tensors int8 directory (the layout of lib/runtime/quant.h), so the int8 tests do
// not depend on the quantization issue's tooling.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "runtime/quant.h"
#include "runtime/tp/gloo_comm.h"
#include "tests/export/util.h"  // act_order_test_order
#include "tests/util.h"         // temp_dir

namespace shrink::test {

inline std::string fixture(const std::string& name) {
  return std::string(SHRINK_FIXTURES_DIR) + "/hf/" + name;
}

/// Rank `rank` of a tensor-parallel group of `size` ranks run as threads of this process (the
/// rendezvous at 127.0.0.1:port; shm counts every rank as local, gloo none).
inline Result<std::shared_ptr<runtime::TpComm>> tp_join_local(int rank, int size, int port,
                                                              const std::string& transport,
                                                              double timeout_s = 30) {
  core::DistEnv env;
  env.active = true;
  env.rank = rank;
  env.world_size = size;
  env.master_port = port;
  env.local_world_size = transport == "shm" ? size : 1;
  return runtime::tp_join(env, timeout_s, transport);
}

inline std::vector<float> tensor_f32(const core::SafetensorsFile& f, const std::string& name) {
  const core::TensorInfo* t = f.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (!t) return {};
  std::vector<float> v(size_t(t->numel()));
  core::convert_to_f32(t->dtype, f.data(*t), v.data(), t->numel());
  return v;
}

/// Quantize every linear weight of the float model in `src` (except lm_head) into `dst`:
/// I8 weights + F32 weight_scale (+ a fixed input_scale for static activations). When
/// `dequant_dst` is given, also write the float model whose linear weights are exactly
/// q * scale (the fake-quant reference of W8A16).
/// With `act_order_groups` (group-wise schemes), each group holds a scattered set of input
/// columns, written as `weight_g_idx` I32 [in] as GPTQ's act-order groups are (llm-compressor's
/// `actorder: group`).
inline void quantize_dir(const std::string& src, const std::string& dst,
                         const core::QuantScheme& scheme, float input_scale = 0.05f,
                         const std::string& dequant_dst = "", bool act_order_groups = false) {
  core::ModelConfig cfg = core::config_load(src).take_or_throw();
  core::Checkpoint ck = core::Checkpoint::open(src).take_or_throw();
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<core::TensorView> views, deq_views;
  bufs.reserve(4096);
  for (const core::TensorSpec& s : core::expected_tensors(cfg)) {
    const core::TensorInfo* t = ck.find(s.name);
    ASSERT_NE(t, nullptr) << s.name;
    std::vector<float> w(size_t(t->numel()));
    core::convert_to_f32(t->dtype, ck.data(*t), w.data(), t->numel());
    const bool linear_w = core::tensor_role_is_linear(s.role) && s.shape.size() == 2 &&
                          s.role != core::TensorRole::kLmHead;
    if (!linear_w) {
      bufs.emplace_back(reinterpret_cast<uint8_t*>(w.data()),
                        reinterpret_cast<uint8_t*>(w.data()) + w.size() * 4);
      views.push_back({s.name, core::DType::kF32, s.shape, bufs.back().data(), bufs.back().size()});
      deq_views.push_back(views.back());
      continue;
    }
    const int64_t out = s.shape[0], in = s.shape[1];
    const int64_t group = scheme.weight_strategy == "group" ? scheme.group_size : in;
    const int64_t G = (in + group - 1) / group;
    std::vector<int8_t> q(size_t(out * in));
    std::vector<float> sc(size_t(out * G));
    std::vector<int8_t> zp(size_t(out * G), 0);
    const std::string m = s.name.substr(0, s.name.size() - 7);
    // perm[j]: the input column at position j of the grouped order (identity unless
    // act_order_groups); quantize the columns in that order, then store q in the input order.
    std::vector<int32_t> perm(static_cast<size_t>(in));
    for (int64_t k = 0; k < in; ++k) perm[size_t(k)] = int32_t(k);
    if (act_order_groups) {
      perm = act_order_test_order(in);
      std::vector<float> wp(w.size());
      for (int64_t o = 0; o < out; ++o)
        for (int64_t j = 0; j < in; ++j)
          wp[size_t(o * in + j)] = w[size_t(o * in + perm[size_t(j)])];
      w = std::move(wp);  // quantized below in grouped order, un-permuted after
    }
    auto input_order = [&]() {  // q as stored: column perm[j] holds grouped column j
      std::vector<int8_t> qi(q.size());
      for (int64_t o = 0; o < out; ++o)
        for (int64_t j = 0; j < in; ++j)
          qi[size_t(o * in + perm[size_t(j)])] = q[size_t(o * in + j)];
      return qi;
    };
    if (scheme.bits == 4) {  // compressed-tensors pack-quantized: weight_packed + weight_shape
      if (scheme.symmetric) {
        runtime::quant_weight_s4(w.data(), out, in, group, q.data(), sc.data());
      } else {  // + weight_zero_point packed along the outputs
        runtime::quant_weight_u4(w.data(), out, in, group, q.data(), sc.data(), zp.data());
        bufs.emplace_back(size_t(core::int4_packed_cols(out) * G * 4));
        core::int4_pack_rows(zp.data(), out, G, bufs.back().data());
        views.push_back({m + ".weight_zero_point",
                         core::DType::kI32,
                         {core::int4_packed_cols(out), G},
                         bufs.back().data(),
                         bufs.back().size()});
      }
      bufs.emplace_back(size_t(out * core::int4_packed_cols(in) * 4));
      core::int4_pack(input_order().data(), out, in, bufs.back().data());
      views.push_back({m + ".weight_packed",
                       core::DType::kI32,
                       {out, core::int4_packed_cols(in)},
                       bufs.back().data(),
                       bufs.back().size()});
      const int64_t shape[2] = {out, in};
      bufs.emplace_back(reinterpret_cast<const uint8_t*>(shape),
                        reinterpret_cast<const uint8_t*>(shape) + 16);
      views.push_back({m + ".weight_shape", core::DType::kI64, {2}, bufs.back().data(), 16});
    } else {
      runtime::quant_weight_s8(w.data(), out, in, group, q.data(), sc.data());
      const std::vector<int8_t> qi = input_order();
      bufs.emplace_back(reinterpret_cast<const uint8_t*>(qi.data()),
                        reinterpret_cast<const uint8_t*>(qi.data()) + qi.size());
      views.push_back({s.name, core::DType::kI8, s.shape, bufs.back().data(), bufs.back().size()});
    }
    bufs.emplace_back(reinterpret_cast<uint8_t*>(sc.data()),
                      reinterpret_cast<uint8_t*>(sc.data()) + sc.size() * 4);
    views.push_back({m + ".weight_scale", core::DType::kF32, {out, G}, bufs.back().data(),
                     bufs.back().size()});
    if (act_order_groups) {
      std::vector<int32_t> g_idx(static_cast<size_t>(in));
      for (int64_t j = 0; j < in; ++j) g_idx[size_t(perm[size_t(j)])] = int32_t(j / group);
      bufs.emplace_back(reinterpret_cast<uint8_t*>(g_idx.data()),
                        reinterpret_cast<uint8_t*>(g_idx.data()) + g_idx.size() * 4);
      views.push_back(
          {m + ".weight_g_idx", core::DType::kI32, {in}, bufs.back().data(), bufs.back().size()});
    }
    if (scheme.activations == "static") {
      bufs.emplace_back(reinterpret_cast<uint8_t*>(&input_scale),
                        reinterpret_cast<uint8_t*>(&input_scale) + 4);
      views.push_back({m + ".input_scale", core::DType::kF32, {1}, bufs.back().data(), 4});
    }
    std::vector<float> dq(size_t(out * in));
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < in; ++k)
        dq[size_t(o * in + perm[size_t(k)])] =
            float(q[size_t(o * in + k)] - zp[size_t(o * G + k / group)]) *
            sc[size_t(o * G + k / group)];
    bufs.emplace_back(reinterpret_cast<uint8_t*>(dq.data()),
                      reinterpret_cast<uint8_t*>(dq.data()) + dq.size() * 4);
    deq_views.push_back({s.name, core::DType::kF32, s.shape, bufs.back().data(), bufs.back().size()});
  }
  ASSERT_EQ(bufs.size() < 4096, true);  // reserve() keeps the views' pointers valid
  core::ModelConfig qc = cfg;
  core::QuantScheme s2 = scheme;
  s2.ignore = {"lm_head"};
  qc.raw["quantization_config"] = core::quant_config_to_json(s2);
  std::filesystem::create_directories(dst);
  ASSERT_TRUE(core::checkpoint_write(dst, views).is_ok());
  ASSERT_TRUE(core::write_file_atomic(dst + "/config.json", core::config_to_json(qc)).is_ok());
  if (!dequant_dst.empty()) {
    std::filesystem::create_directories(dequant_dst);
    ASSERT_TRUE(core::checkpoint_write(dequant_dst, deq_views).is_ok());
    ASSERT_TRUE(core::write_file_atomic(dequant_dst + "/config.json", core::config_to_json(cfg)).is_ok());
  }
}

}  // namespace shrink::test
