// libFuzzer harness: config.json text through config_from_json, and its quantization_config
// through quant_config_from_json.
//
// Accepted configs go on through everything that reads a ModelConfig without weights:
// config_validate, expected_tensors, rope_inv_freq, stop_token_ids, config_keep_layers. A valid
// config must survive config_to_json -> config_from_json with the same sizes (what shrink
// writes, it must read back), and an accepted quantization scheme must survive
// quant_config_to_json -> quant_config_from_json unchanged.
// Built as a libFuzzer target by scripts/fuzz.sh and as a corpus replay ctest in every build.
#include "core/model_config.h"
#include "core/quant.h"
#include "fuzz_util.h"

using namespace shrink;

namespace {

void check_quantization(const core::ModelConfig& c, bool valid) {
  if (!c.has_quantization()) return;
  auto q = core::quant_config_from_json(c.raw["quantization_config"]);
  if (!q.is_ok()) {
    fuzz::note_rejected("quantization_config", q.status().message());
    return;
  }
  const core::QuantScheme& s = q.value();
  auto back = core::quant_config_from_json(core::quant_config_to_json(s));
  FUZZ_CHECK(back.is_ok(), "quantization_config does not read back: %s",
             back.status().message().c_str());
  const core::QuantScheme& b = back.value();
  FUZZ_CHECK(b.bits == s.bits && b.weight_strategy == s.weight_strategy &&
                 b.group_size == s.group_size && b.symmetric == s.symmetric &&
                 b.actorder == s.actorder && b.activations == s.activations && b.ignore == s.ignore,
             "quantization scheme changed in a round trip");
  if (valid) (void)core::quant_scheme_validate(s, {c.hidden_size, c.intermediate_size});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto r = core::config_from_json(text, "config.json");
  if (!r.is_ok()) {
    fuzz::note_rejected("config.json", r.status().message());
    FUZZ_CHECK(!r.status().message().empty(), "an error without a message");
    return 0;
  }
  const core::ModelConfig& c = r.value();
  const bool valid = core::config_validate(c).is_ok();
  check_quantization(c, valid);
  (void)core::stop_token_ids("", c, -1);
  if (!valid) return 0;

  const std::vector<core::TensorSpec> specs = core::expected_tensors(c);
  FUZZ_CHECK(!specs.empty(), "a valid config expects no tensors");
  const std::vector<double> inv = core::rope_inv_freq(c);
  FUZZ_CHECK(int64_t(inv.size()) == c.head_dim / 2,
             "rope_inv_freq has %zu values for head_dim %lld", inv.size(), (long long)c.head_dim);
  (void)core::config_keep_layers(c, {0});
  (void)core::config_keep_layers(c, {0, c.num_layers - 1});

  auto back = core::config_from_json(core::config_to_json(c), "config.json (written)");
  FUZZ_CHECK(back.is_ok(), "a valid config does not read back: %s",
             back.status().message().c_str());
  const core::ModelConfig& b = back.value();
  FUZZ_CHECK(b.arch == c.arch && b.vocab_size == c.vocab_size && b.hidden_size == c.hidden_size &&
                 b.intermediate_size == c.intermediate_size && b.num_layers == c.num_layers &&
                 b.num_heads == c.num_heads && b.num_kv_heads == c.num_kv_heads &&
                 b.head_dim == c.head_dim && b.tie_word_embeddings == c.tie_word_embeddings &&
                 b.qkv_bias == c.qkv_bias && b.sliding_window == c.sliding_window,
             "config sizes changed in a round trip");
  return 0;
}
