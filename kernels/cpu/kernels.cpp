// The per-ISA kernel tables (see kernels.h). A level without its own variant of an op reuses the
// next lower level's. Tested in tests/runtime/test_kernels.cpp.
#include "kernels/cpu/kernels.h"

namespace shrink::kernels::cpu {

namespace {

const KernelTable kRefTable = {
    Isa::kRef, rmsnorm_f32_ref, rope_f32_ref, silu_mul_f32_ref, attention_block_f32_ref,
    attention_partial_f32_ref, attention_block_f16kv_ref, attention_partial_f16kv_ref,
    convert_f32_f16_ref, attention_block_s8kv_ref, attention_partial_s8kv_ref, gemm_f32_nt_ref,
    gemm_w8a16_nt_ref, gemm_s8s8_f32_nt_ref, quantize_s8_ref, rmsnorm_quant_s8_ref,
    gemm_bf16w_f32_nt_ref, gemm_w4a16_nt_ref, gemm_w4a8_nt_ref};
#if defined(SHRINK_KERNELS_X86)
const KernelTable kAvx2Table = {
    Isa::kAvx2, rmsnorm_f32_avx2, rope_f32_avx2, silu_mul_f32_avx2, attention_block_f32_avx2,
    attention_partial_f32_avx2, attention_block_f16kv_avx2, attention_partial_f16kv_avx2,
    convert_f32_f16_avx2, attention_block_s8kv_avx2, attention_partial_s8kv_avx2,
    gemm_f32_nt_avx2, gemm_w8a16_nt_avx2, gemm_s8s8_f32_nt_avx2, quantize_s8_avx2,
    rmsnorm_quant_s8_avx2, gemm_bf16w_f32_nt_avx2, gemm_w4a16_nt_avx2, gemm_w4a8_nt_avx2};
const KernelTable kAvx512Table = {
    Isa::kAvx512, rmsnorm_f32_avx512, rope_f32_avx512, silu_mul_f32_avx512,
    attention_block_f32_avx512, attention_partial_f32_avx512, attention_block_f16kv_avx512,
    attention_partial_f16kv_avx512, convert_f32_f16_avx512, attention_block_s8kv_avx512,
    attention_partial_s8kv_avx512, gemm_f32_nt_avx512, gemm_w8a16_nt_avx512,
    gemm_s8s8_f32_nt_avx2, quantize_s8_avx512, rmsnorm_quant_s8_avx512, gemm_bf16w_f32_nt_avx512,
    gemm_w4a16_nt_avx512, gemm_w4a8_nt_avx2};
const KernelTable kAvx512VnniTable = {
    Isa::kAvx512Vnni, rmsnorm_f32_avx512, rope_f32_avx512, silu_mul_f32_avx512,
    attention_block_f32_avx512, attention_partial_f32_avx512, attention_block_f16kv_avx512,
    attention_partial_f16kv_avx512, convert_f32_f16_avx512, attention_block_s8kv_avx512,
    attention_partial_s8kv_avx512, gemm_f32_nt_avx512, gemm_w8a16_nt_avx512,
    gemm_s8s8_f32_nt_avx512vnni, quantize_s8_avx512, rmsnorm_quant_s8_avx512,
    gemm_bf16w_f32_nt_avx512, gemm_w4a16_nt_avx512, gemm_w4a8_nt_avx512vnni};
#endif

}  // namespace

const KernelTable& kernels_for(Isa isa) {
#if defined(SHRINK_KERNELS_X86)
  switch (isa) {
    case Isa::kAvx2: return kAvx2Table;
    case Isa::kAvx512: return kAvx512Table;
    case Isa::kAvx512Vnni: return kAvx512VnniTable;
    default: break;
  }
#endif
  (void)isa;
  return kRefTable;
}

}  // namespace shrink::kernels::cpu
