//! GPTQ 4-bit linear layers on the host: the packed tensors of one layer, their validation
//! (docs/formats.md §2.2-2.5), act-order detection and permutation (§3 R3.1-R3.3), and THE reference
//! dequantizer (R2.10-R2.11) that every CPU and CUDA test compares against.
//!
//! Layout of one layer, K = in_features, N = out_features, G = ceil(K / group_size), y = x . W (+ bias):
//!
//!   qweight [K/8][N] uint32   word (r, n) holds codes q[8r+0 .. 8r+7][n], row 8r in bits 0-3:
//!                             bits 31..28 27..24 ... 7..4  3..0
//!                             row  8r+7   8r+6  ... 8r+1  8r+0
//!   qzeros  [G][N/8] uint32   word (g, c) holds stored zeros zs[g][8c+0 .. 8c+7], column 8c in bits 0-3
//!   scales  [G][N]   fp16
//!   g_idx   [K]      int32    group of each input row, in the original row order
//!
//!   z = zs + 1 (gptq / v1) or z = zs (gptq_v2);  W[k][n] = fp16( scales[g][n] * (q[k][n] - z[g][n]) ), g = g_idx[k]
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/base/host_buffer.h"
#include "core/base/model_config.h"

namespace q4tp::loaders {

class Checkpoint;

//! One GPTQ-quantized linear layer in host memory: y[m][n] = x[m][k] . W[k][n] (+ bias[n]).
struct GptqLinear {
    std::string name;             //!< tensor prefix, e.g. "model.layers.0.self_attn.q_proj"
    std::int64_t k = 0;           //!< K, in_features
    std::int64_t n = 0;           //!< N, out_features
    std::int64_t group_size = 0;  //!< effective: K when the config says -1
    std::int64_t num_groups = 0;  //!< G = ceil(K / group_size)
    ZeroFormat zero_format = ZeroFormat::GptqV1;
    HostBuffer<std::uint32_t> qweight;  //!< [K/8][N], row 8r in the low nibble (R2.4)
    HostBuffer<std::uint32_t> qzeros;   //!< [G][N/8], column 8c in the low nibble (R2.5)
    HostBuffer<std::uint16_t> scales;   //!< [G][N] fp16 bits
    std::vector<std::int32_t> g_idx;    //!< [K] group of each input row (original order)
    HostBuffer<std::uint16_t> bias;     //!< [N] fp16 bits; empty when absent or all zero
    bool act_order = false;             //!< g_idx differs from k / group_size (decided from content, R2.19)
    bool symmetric = false;             //!< every effective zero point == 8
};

// ---- nibble access (R2.4, R2.5) ---------------------------------------------------------------

//! Nibble i (0 = bits 0-3, 7 = bits 28-31) of a packed word.
constexpr int nibble(std::uint32_t word, int i) noexcept {
    return static_cast<int>((word >> (4 * i)) & 15u);
}

//! The 4-bit code q[k][n] of a layer (R2.4).
int code_at(const GptqLinear& layer, std::int64_t k, std::int64_t n);
//! The zero point zs[g][n] exactly as stored in qzeros (R2.5).
int stored_zero_at(const GptqLinear& layer, std::int64_t g, std::int64_t n);
//! The effective zero point z[g][n] that W subtracts: zs + 1 for v1, zs for v2 (R2.8-R2.9).
int zero_point_at(const GptqLinear& layer, std::int64_t g, std::int64_t n);
//! scales[g][n] as a float.
float scale_at(const GptqLinear& layer, std::int64_t g, std::int64_t n);

// ---- packing (for tests and tools) --------------------------------------------------------------

//! Packs codes [K][N] (each 0..15) into qweight words [K/8][N]. K % 8 == 0.
HostBuffer<std::uint32_t> pack_qweight(std::span<const std::uint8_t> codes, std::int64_t k, std::int64_t n);
//! Inverse of pack_qweight: codes [K][N].
std::vector<std::uint8_t> unpack_qweight(std::span<const std::uint32_t> qweight, std::int64_t k, std::int64_t n);
//! Packs effective zero points [G][N] into qzeros words [G][N/8] in the given convention.
//! v1 stores z - 1 and accepts z in 1..15 (z = 16 would need the ambiguous nibble 0xF, R2.12);
//! v2 stores z and accepts 0..15.
HostBuffer<std::uint32_t> pack_qzeros(std::span<const std::uint8_t> zeros,
                                      std::int64_t num_groups,
                                      std::int64_t n,
                                      ZeroFormat format);
//! Inverse of pack_qzeros: effective zero points [G][N] (v1 reads zs + 1, so a stored 0xF gives 16).
std::vector<std::uint8_t> unpack_qzeros(std::span<const std::uint32_t> qzeros,
                                        std::int64_t num_groups,
                                        std::int64_t n,
                                        ZeroFormat format);

// ---- g_idx and act-order (R2.14-R2.19, R3.1-R3.3) -----------------------------------------------

//! The effective group size: K when the config says -1, otherwise the configured value (must be > 0).
std::int64_t effective_group_size(std::int64_t k, std::int64_t group_size);
//! G = ceil(K / group_size) for an effective group size.
std::int64_t num_groups_for(std::int64_t k, std::int64_t group_size);
//! g_idx[k] = k / group_size: what desc_act=false, static_groups and a missing g_idx mean (R2.14, R2.16, R2.17).
std::vector<std::int32_t> sequential_g_idx(std::int64_t k, std::int64_t group_size);
//! True when g_idx differs from sequential_g_idx(K, group_size); decided from content, never from desc_act (R2.19).
bool is_act_order(std::span<const std::int32_t> g_idx, std::int64_t group_size);
//! Checks R2.18: 0 <= g < G, every group holds exactly group_size rows except the last, which holds the rest.
//! Throws naming `what` (e.g. "model.layers.0.mlp.up_proj.g_idx").
void validate_g_idx(std::span<const std::int32_t> g_idx,
                    std::int64_t group_size,
                    std::int64_t num_groups,
                    const std::string& what);

//! The act-order permutation of R3.2: x_map is the stable argsort of g_idx (sorted position j holds original
//! row x_map[j]); inverse[x_map[j]] == j.
struct ActOrderPermutation {
    std::vector<std::int32_t> x_map;    //!< [K] sorted position -> original input row
    std::vector<std::int32_t> inverse;  //!< [K] original input row -> sorted position
};
//! Builds the R3.2 permutation by counting sort over the groups (g_idx values must lie in [0, num_groups)).
ActOrderPermutation act_order_permutation(std::span<const std::int32_t> g_idx, std::int64_t num_groups);
//! R3.3 on the host: a copy of the layer whose input rows are reordered by x_map, so that row j of the result is
//! row x_map[j] of the input and group g covers rows [g*gs, (g+1)*gs). Its g_idx is sequential (act_order false);
//! use it with activations gathered as x'[:, j] = x[:, x_map[j]] (R3.4). The layer must be validated.
GptqLinear make_sequential(const GptqLinear& layer, const ActOrderPermutation& perm);

//! The layers side by side along N: y = x . [W_0 | W_1 | ...]. Fusing q/k/v (and gate/up) this way lets one GEMV
//! stream all three (R2.20: they share their inputs, so their g_idx must be identical; checked). Every part
//! must be validated, with the same K, group size, zero format and g_idx, and no bias. The result is marked
//! validated as its parts were (group_size, num_groups, act_order and symmetric carried over).
GptqLinear concat_columns(std::span<const GptqLinear* const> parts, const std::string& name);
//! True when concat_columns would accept the parts (same K, group size, zero format, g_idx; no bias).
bool can_concat_columns(std::span<const GptqLinear* const> parts);

// ---- validation and loading (§2.2-2.3, R2.12, R2.17) --------------------------------------------

//! dtype and shape of one stored tensor, as a checkpoint header describes it.
struct TensorMeta {
    std::string dtype;  //!< safetensors spelling: "I32", "F16", ...
    std::vector<std::int64_t> shape;
};

//! Header information for one layer's tensors; g_idx and bias may be absent.
struct GptqTensorMetas {
    TensorMeta qweight;
    TensorMeta qzeros;
    TensorMeta scales;
    std::optional<TensorMeta> g_idx;
    std::optional<TensorMeta> bias;
};

//! The geometry a layer's header implies.
struct GptqGeometry {
    std::int64_t group_size = 0;  //!< effective
    std::int64_t num_groups = 0;  //!< G
};

//! Checks dtypes and shapes of the layer `name` against K, N and the quant config before any data is read
//! (R2.1-R2.3): qweight I32 [K/8, N] (4-bit), qzeros I32 [G, N/8], scales F16 [G, N], g_idx I32 [K],
//! bias F16 [N], K % 32 == 0, N % 32 == 0, G == ceil(K / group_size). Throws naming the tensor at fault.
GptqGeometry check_gptq_tensor_metas(
    const std::string& name, std::int64_t k, std::int64_t n, const QuantConfig& quant, const GptqTensorMetas& metas);

//! check_gptq_tensor_metas on a checkpoint's headers for the layer `name` (nothing read but headers): finds
//! .qweight/.qzeros/.scales (each required; a missing one is named) and the optional .g_idx/.bias.
struct GptqHeaders {
    GptqGeometry geometry;
    bool has_g_idx = false;
    bool has_bias = false;
};
GptqHeaders check_gptq_headers(const Checkpoint& ckpt, const std::string& name, std::int64_t k, std::int64_t n,
                               const QuantConfig& quant);

//! Validates a layer whose buffers are already filled and completes its derived fields. The caller sets name, k,
//! n, group_size (-1 allowed) and zero_format and fills qweight, qzeros, scales, and optionally g_idx and bias.
//! Checks buffer sizes, K/N divisibility, g_idx (R2.18; an empty g_idx becomes k / gs, R2.17), finite scales and,
//! for v1, the absence of the ambiguous zero nibble 0xF (R2.12). Then sets group_size (effective), num_groups,
//! act_order and symmetric, and empties an all-zero bias.
void validate_gptq_linear(GptqLinear& layer);

//! Reads `<name>.qweight/.qzeros/.scales[/.g_idx][/.bias]` from a checkpoint and validates them as
//! check_gptq_tensor_metas and validate_gptq_linear do.
GptqLinear load_gptq_linear(
    const Checkpoint& ckpt, const std::string& name, std::int64_t k, std::int64_t n, const QuantConfig& quant);

// ---- the reference dequantizer (R2.10-R2.11) ----------------------------------------------------

//! Writes W [K][N] row-major: W[k][n] = half_to_float(float_to_half(scale * (q - z))) with g = g_idx[k],
//! q = code_at(k, n), z = zero_point_at(g, n), scale = scales[g][n]. The layer must be validated.
void dequantize(const GptqLinear& layer, std::span<float> w);
//! Convenience: returns W [K][N].
std::vector<float> dequantize(const GptqLinear& layer);

}  // namespace q4tp::loaders
