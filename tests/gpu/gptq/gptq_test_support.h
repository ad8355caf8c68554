// GPTQ test support shared by the prepare (CPU) and GEMV (GPU) suites: random layers in the checkpoint format,
// an independent fp32 reference dequantizer written from docs/formats.md R2.4-R2.11, a double-precision reference
// GEMV, and device copies of prepared layers.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/base/device_buffer.h"
#include "core/base/model_config.h"
#include "kernels/cuda/gptq_gemv.h"
#include "kernels/cuda/gptq_prepare.h"

namespace q4tp::gptq_test {

//! What kind of random layer to build.
struct LayerSpec {
    std::int64_t k = 0;
    std::int64_t n = 0;
    std::int64_t group_size = 128;  //!< as configured; -1 = K
    ZeroFormat format = ZeroFormat::GptqV1;
    bool act_order = false;  //!< g_idx from a random permutation (R2.15) instead of k / group_size
    bool symmetric = true;   //!< every z = 8; otherwise random z (v1: 1..15, v2: 0..15)

    std::string str() const;
};

//! A layer as a checkpoint stores it (docs/formats.md §2.2).
struct GptqLayer {
    LayerSpec spec;
    std::int64_t group_size = 0;  //!< effective
    std::int64_t num_groups = 0;
    std::vector<std::uint32_t> qweight;  //!< [K/8][N]
    std::vector<std::uint32_t> qzeros;   //!< [G][N/8] stored zeros in spec.format
    std::vector<std::uint16_t> scales;   //!< [G][N] fp16 bits
    std::vector<std::int32_t> g_idx;     //!< [K]
};

//! Uniform random codes (any 32-bit word is 8 valid codes), scales in [0.001, 0.03), zeros per spec.
GptqLayer make_random_layer(const LayerSpec& spec, std::mt19937_64& rng);

//! Rows [begin, end) of a layer as a tensor-parallel rank loads them (loaders/shard.h): K = end - begin, codes of
//! those rows, g_idx values of the whole layer, ALL groups' scales and zeros (num_groups stays the whole G). An
//! act-order layer's shard then holds scattered parts of most groups. begin and end: multiples of 32.
GptqLayer row_shard(const GptqLayer& layer, std::int64_t begin, std::int64_t end);

//! The reference: W[k][n] = scale[g][n] * (q[k][n] - z[g][n]), g = g_idx[k], read from the packed tensors, rounded
//! to fp16 as R2.11 says (round_to_fp16, what the dequantizer must reproduce bit for bit) or left as the exact fp32
//! product (what the GEMV multiplies with: an fp16 scale times a 5-bit integer is exact in fp32).
std::vector<float> reference_dequantize(const GptqLayer& layer, bool round_to_fp16);
//! One row k of the reference, all N columns.
std::vector<float> reference_dequantize_row(const GptqLayer& layer, std::int64_t k, bool round_to_fp16);

//! One exact reference weight s (q - z) (not rounded to fp16).
float reference_weight(const GptqLayer& layer, std::int64_t k, std::int64_t n);

//! gptq_prepare's input for a layer: views of its buffers (the layer must outlive it), under `name`.
kernels::cuda::GptqSource source_of(const GptqLayer& layer, std::string name);

//! Prepared buffers (gptq_prepare's output, copied out).
struct PreparedHost {
    std::int64_t k = 0;
    std::int64_t k_rows = 0;
    std::int64_t n = 0;
    std::int64_t n_padded = 0;
    std::int64_t group_size = 0;
    std::vector<std::uint32_t> qweight;
    std::vector<std::uint16_t> scales;
    std::vector<std::uint32_t> zeros;
    std::vector<std::int32_t> perm;
    std::vector<std::int32_t> block_groups;
};
PreparedHost prepare(const GptqLayer& layer);

//! A prepared layer on the device.
struct DeviceLayer {
    std::int64_t k = 0;
    std::int64_t k_rows = 0;
    std::int64_t n = 0;
    std::int64_t group_size = 0;
    DeviceBuffer<std::uint32_t> qweight;
    DeviceBuffer<std::uint16_t> scales;
    DeviceBuffer<std::uint32_t> zeros;
    DeviceBuffer<std::int32_t> perm;
    DeviceBuffer<std::int32_t> block_groups;

    kernels::cuda::GptqWeights view() const;
};
DeviceLayer upload(const PreparedHost& prepared);

//! y[m][n] = sum_k x[m][k] w[k][n] in double, and abs[m][n] = sum_k |x[m][k] w[k][n]| (the scale of the rounding
//! error any fp32 summation order makes). x is [m][k] dense, w is [K][N] dense.
void reference_gemv(const std::vector<float>& w,
                    std::int64_t k,
                    std::int64_t n,
                    const std::vector<float>& x,
                    int m,
                    std::vector<double>& y,
                    std::vector<double>& abs);

}  // namespace q4tp::gptq_test
