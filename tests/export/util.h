// Helpers shared by test_export and the ONNX Runtime peer-check driver (export_peer): make
// variants of a model directory without LibTorch. quantize_model() writes the compressed-tensors
// int8 layout that `shrink quantize` writes (I8 weights [out, in], F32 weight_scale [out, 1] or
// [out, in/group], F32 input_scale [1] for static activations, lm_head left in float), using the
// scheme's own rounding (core::quantize_value); copy_model() rewrites config.json (e.g. to add a
// Mistral sliding window to a fixture). No GoogleTest here: failures throw shrink::Error.
// Used by tests/export/test_export.cpp and tests/export/export_peer.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "core/fs.h"
#include "core/model_config.h"
#include "core/quant.h"
#include "core/safetensors.h"
#include "core/status.h"

namespace shrink::test {

struct QuantSpec {
  std::string activations = "none";  // none (W8A16) | static | dynamic
  int64_t group_size = 0;            // 0: per output channel
  float input_scale = 0.02f;         // static only: small enough that some inputs clip
  int bits = 8;                      // 4: W4A16 in the pack-quantized layout (activations none)
  bool asym = false;                 // 4 bits with zero points (W4A16 asymmetric)
  bool act_order_groups = false;     // groups of scattered columns, stored as weight_g_idx
};

/// A fixed scattering of `in` input columns for act-order group tests: position j of the
/// grouped order holds input column order[j] (a deterministic shuffle).
inline std::vector<int32_t> act_order_test_order(int64_t in) {
  std::vector<int32_t> order(static_cast<size_t>(in));
  for (int64_t k = 0; k < in; ++k) order[size_t(k)] = int32_t(k);
  std::stable_sort(order.begin(), order.end(), [](int32_t a, int32_t b) {
    return (uint32_t(a) * 2654435761u) % 1009u < (uint32_t(b) * 2654435761u) % 1009u;
  });
  return order;
}

/// Quantize every linear weight of the float model in `src` except lm_head into `dst`.
inline void quantize_model(const std::string& src, const std::string& dst, const QuantSpec& q) {
  core::ModelConfig cfg = core::config_load(src).take_or_throw();
  core::Checkpoint ck = core::Checkpoint::open(src).take_or_throw();
  std::vector<std::vector<uint8_t>> bufs;
  bufs.reserve(8192);  // views point into these buffers: no reallocation
  std::vector<core::TensorView> views;
  auto keep = [&](std::vector<uint8_t> b, const std::string& name, core::DType dt,
                  std::vector<int64_t> shape) {
    bufs.push_back(std::move(b));
    views.push_back({name, dt, std::move(shape), bufs.back().data(), bufs.back().size()});
  };
  auto bytes = [](const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    return std::vector<uint8_t>(b, b + n);
  };
  for (const core::TensorSpec& s : core::expected_tensors(cfg)) {
    const core::TensorInfo* t = ck.find(s.name);
    if (!t) throw Error(StatusCode::kInvalidInput, src + ": missing " + s.name);
    std::vector<float> w(size_t(t->numel()));
    core::convert_to_f32(t->dtype, ck.data(*t), w.data(), t->numel());
    const bool linear = core::tensor_role_is_linear(s.role) && s.shape.size() == 2 &&
                        s.role != core::TensorRole::kLmHead;
    if (!linear) {
      keep(bytes(w.data(), w.size() * 4), s.name, core::DType::kF32, s.shape);
      continue;
    }
    const int64_t out = s.shape[0], in = s.shape[1];
    const int64_t group = q.group_size > 0 ? q.group_size : in;
    const int64_t G = in / group;
    std::vector<int8_t> qw(size_t(out * in));
    std::vector<float> sc(size_t(out * G));
    std::vector<int8_t> zp(size_t(out * G), 0);
    // Act-order groups: group g holds columns perm[g * group, (g + 1) * group); quantize the
    // columns in that order, then store q in the input order with g_idx.
    std::vector<int32_t> perm(static_cast<size_t>(in));
    for (int64_t k = 0; k < in; ++k) perm[size_t(k)] = int32_t(k);
    if (q.act_order_groups) {
      perm = act_order_test_order(in);
      std::vector<float> wp(w.size());
      for (int64_t o = 0; o < out; ++o)
        for (int64_t j = 0; j < in; ++j)
          wp[size_t(o * in + j)] = w[size_t(o * in + perm[size_t(j)])];
      w = std::move(wp);
    }
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t g = 0; g < G; ++g) {
        if (q.asym) {  // core/quant.h: [min(w, 0), max(w, 0)] onto [-8, 7] with a zero point
          float lo = 0, hi = 0;
          for (int64_t k = g * group; k < (g + 1) * group; ++k) {
            lo = std::min(lo, w[size_t(o * in + k)]);
            hi = std::max(hi, w[size_t(o * in + k)]);
          }
          const float scale = hi > lo ? (hi - lo) / 15.0f : 1.0f;
          const float z = std::min(7.0f, std::max(-8.0f, std::nearbyint(-8.0f - lo / scale)));
          sc[size_t(o * G + g)] = scale;
          zp[size_t(o * G + g)] = int8_t(z);
          for (int64_t k = g * group; k < (g + 1) * group; ++k) {
            const float r = std::nearbyint(w[size_t(o * in + k)] * (1.0f / scale) + z);
            qw[size_t(o * in + k)] = int8_t(std::min(7.0f, std::max(-8.0f, r)));
          }
          continue;
        }
        float amax = 0;
        for (int64_t k = g * group; k < (g + 1) * group; ++k)
          amax = std::max(amax, std::fabs(w[size_t(o * in + k)]));
        const float scale = amax > 0 ? amax / (q.bits == 4 ? 7.0f : 127.0f) : 1.0f;
        sc[size_t(o * G + g)] = scale;
        for (int64_t k = g * group; k < (g + 1) * group; ++k) {
          if (q.bits == 4) {
            const float r = std::nearbyint(w[size_t(o * in + k)] * (1.0f / scale));
            qw[size_t(o * in + k)] = int8_t(std::min(7.0f, std::max(-8.0f, r)));
          } else {
            qw[size_t(o * in + k)] = core::quantize_value(w[size_t(o * in + k)], 1.0f / scale);
          }
        }
      }
    }
    const std::string m = s.name.substr(0, s.name.size() - std::string(".weight").size());
    if (q.act_order_groups) {
      std::vector<int8_t> qi(qw.size());
      std::vector<int32_t> g_idx(static_cast<size_t>(in));
      for (int64_t j = 0; j < in; ++j) {
        g_idx[size_t(perm[size_t(j)])] = int32_t(j / group);
        for (int64_t o = 0; o < out; ++o)
          qi[size_t(o * in + perm[size_t(j)])] = qw[size_t(o * in + j)];
      }
      qw = std::move(qi);
      keep(bytes(g_idx.data(), g_idx.size() * 4), m + ".weight_g_idx", core::DType::kI32, {in});
    }
    if (q.bits == 4) {
      std::vector<uint8_t> packed(size_t(out * core::int4_packed_cols(in) * 4));
      core::int4_pack(qw.data(), out, in, packed.data());
      keep(std::move(packed), m + ".weight_packed", core::DType::kI32,
           {out, core::int4_packed_cols(in)});
      const int64_t shape[2] = {out, in};
      keep(bytes(shape, 16), m + ".weight_shape", core::DType::kI64, {2});
      if (q.asym) {  // packed along the outputs: I32 [ceil(out / 8), G]
        std::vector<uint8_t> pz(size_t(core::int4_packed_cols(out) * G * 4));
        core::int4_pack_rows(zp.data(), out, G, pz.data());
        keep(std::move(pz), m + ".weight_zero_point", core::DType::kI32,
             {core::int4_packed_cols(out), G});
      }
    } else {
      keep(bytes(qw.data(), qw.size()), s.name, core::DType::kI8, s.shape);
    }
    keep(bytes(sc.data(), sc.size() * 4), m + ".weight_scale", core::DType::kF32, {out, G});
    if (q.activations == "static") {
      keep(bytes(&q.input_scale, 4), m + ".input_scale", core::DType::kF32, {1});
    }
  }
  core::QuantScheme scheme;
  scheme.bits = q.bits;
  scheme.symmetric = !q.asym;
  scheme.weight_strategy = q.group_size > 0 ? "group" : "channel";
  scheme.group_size = q.group_size;
  scheme.activations = q.activations;
  scheme.ignore = {"lm_head"};
  core::ModelConfig qc = cfg;
  qc.raw["quantization_config"] = core::quant_config_to_json(scheme);
  std::filesystem::create_directories(dst);
  throw_if_error(core::checkpoint_write(dst, views, {{"format", "pt"}}));
  throw_if_error(core::write_file_atomic(dst + "/config.json", core::config_to_json(qc)));
}

/// Copy a model directory's weights (as float32) and config, with `sliding_window` set when > 0.
inline void copy_model(const std::string& src, const std::string& dst, int64_t sliding_window) {
  core::ModelConfig cfg = core::config_load(src).take_or_throw();
  core::Checkpoint ck = core::Checkpoint::open(src).take_or_throw();
  std::vector<std::vector<float>> bufs;
  bufs.reserve(8192);
  std::vector<core::TensorView> views;
  for (const std::string& name : ck.names()) {
    const core::TensorInfo* t = ck.find(name);
    bufs.emplace_back(size_t(t->numel()));
    core::convert_to_f32(t->dtype, ck.data(*t), bufs.back().data(), t->numel());
    views.push_back({name, core::DType::kF32, t->shape, bufs.back().data(),
                     uint64_t(t->numel()) * 4});
  }
  if (sliding_window > 0) cfg.sliding_window = sliding_window;
  cfg.dtype = "float32";
  std::filesystem::create_directories(dst);
  throw_if_error(core::checkpoint_write(dst, views, {{"format", "pt"}}));
  throw_if_error(core::write_file_atomic(dst + "/config.json", core::config_to_json(cfg)));
}

}  // namespace shrink::test
