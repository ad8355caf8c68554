//! Load-time preparation of one GPTQ 4-bit linear layer for the CUDA GEMV and dequantizer (gptq_gemv.h).
//! Pure host code, run once per layer, unit-tested on the CPU.
//!
//! What it does, once, so that the decode kernel does no per-token host work and never branches on the format:
//!  1. act-order: rows sorted by g_idx (stable argsort, docs/formats.md R3.2) so that sorted row j belongs to
//!     group j / group_size; perm[j] = original row of sorted row j (the kernel reads x through it, R3.4);
//!  2. zero points normalized to the effective z (v1: stored + 1, v2: stored, R2.8-R2.9);
//!  3. codes re-arranged so that one 16-byte load of lane L gives exactly the A fragments of mma.m16n8k16 (row.col,
//!     the weights as A = W^T) that lane needs for 2 n16 tiles x 2 k16 steps (a 32-row x 32-column block);
//!  4. columns padded to a multiple of 32 with zero codes, zero points and scales (W = 0 there);
//!  5. when the sorted rows of some group do not fill whole 32-row k-blocks (a row shard of an act-order layer under
//!     tensor parallelism holds an arbitrary subset of each group's rows), every group present is padded to a multiple
//!     of 32 rows with filler rows (perm -1: the kernels read x = 0 there, so their codes never count) and a per-block
//!     group table replaces j / group_size. Whole GPTQ layers always have exact group populations and need no
//!     padding; a 70B o_proj or down_proj row shard at TP=2 grows by about a quarter (the expected ~16 filler rows
//!     per group of ~64 rows).
//!
//! Prepared layout (N_pad = roundup(N, 32), KB = K / 32 k-blocks, T = column tile of 32, L = lane, g = L / 4,
//! t = L % 4; word j of a lane = n16 tile p = j / 2, k16 step s = j % 2):
//!
//!   qweight [N_pad/32][KB][32 lanes][4 words]   nibble i of word j holds the code of
//!       column 32 T + 16 p + g + 8 (i % 2)   at sorted row 32 b + 16 s + 2t + 8 ((i % 4) / 2) + i / 4:
//!       nibble i :  7           6         5           4         3           2         1          0
//!       column   :  g+8         g         g+8         g         g+8         g         g+8        g      (+16 p)
//!       row      :  2t+9        2t+9      2t+1        2t+1      2t+8        2t+8      2t         2t     (+16 s)
//!     so w & 0x000F000F is the a0 register pair (column g, rows 2t, 2t+1), w & 0x00F000F0 a1 (column g+8), and the
//!     same masks on w >> 8 give a2 and a3 (rows 2t+8, 2t+9); see kernels/cuda/quant/int4.cuh.
//!   scales  [G][N_pad] fp16, inside each 32-column tile position 4 g + 2 p + h holds column 16 p + 8 h + g, so
//!           lane group g reads its 4 columns' scales with one 8-byte load;
//!   zeros   [G][N_pad/8] uint32, effective z (0..15) as nibbles in the same position order as scales
//!           (position q in word q / 8, nibble q % 8): lane group g's 4 zero points are 16 bits of one word.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/base/model_config.h"
#include "kernels/cuda/gptq_gemv.h"

namespace q4tp::kernels::cuda {

//! The GPTQ tensors of one layer exactly as stored in the checkpoint (docs/formats.md §2.2-2.5).
struct GptqSource {
    std::string name;              //!< tensor prefix, for messages
    std::int64_t k = 0;            //!< in_features K, multiple of 32
    std::int64_t n = 0;            //!< out_features N, multiple of 8
    std::int64_t group_size = -1;  //!< as configured: -1 means K; otherwise a multiple of 32
    //!< G, the rows of scales and qzeros; 0 means ceil(K / group_size). A row shard of an act-order layer keeps
    //!< the full layer's groups, so its G exceeds ceil(K_local / group_size).
    std::int64_t num_groups = 0;
    ZeroFormat zero_format = ZeroFormat::GptqV1;
    std::span<const std::uint32_t> qweight;  //!< [K/8][N], row 8r in the low nibble (R2.4)
    std::span<const std::uint32_t> qzeros;   //!< [G][N/8], stored zeros, column 8c in the low nibble (R2.5)
    std::span<const std::uint16_t> scales;   //!< [G][N] fp16 bits
    std::span<const std::int32_t> g_idx;     //!< [K] group of each original row; empty means k / group_size
};

//! A layer in the kernel's layout (see the file comment); upload the vectors unchanged.
struct GptqPrepared {
    std::int64_t k = 0;                  //!< input features (length of x)
    std::int64_t k_rows = 0;             //!< prepared rows: K, or more when groups are padded (step 5)
    std::int64_t n = 0;
    std::int64_t n_padded = 0;           //!< roundup(N, 32)
    std::int64_t group_size = 0;         //!< effective: K when configured as -1
    std::int64_t num_groups = 0;         //!< G
    std::vector<std::uint32_t> qweight;  //!< [N_pad/32][K_rows/32][32][4]
    std::vector<std::uint16_t> scales;   //!< [G][N_pad] fp16 bits, tile-permuted
    std::vector<std::uint32_t> zeros;    //!< [G][N_pad/8] effective zero points, tile-permuted
    //! [K_rows] prepared row -> original row, -1 for a filler row; empty when rows are in order and unpadded
    std::vector<std::int32_t> perm;
    //! [K_rows/32] group of each k-block, bit 31 set on the last block of its group; empty when block b belongs to
    //! group b * 32 / group_size (every unpadded layout)
    std::vector<std::int32_t> block_groups;
};

//! Row order of a layer whose g_idx may leave groups partly populated: perm, block_groups and k_rows of
//! GptqPrepared (step 5 above, or the unpadded sort when every group is exactly populated). g_idx values must lie
//! in [0, num_groups); rows of one group keep their order (R3.2).
struct GptqRowLayout {
    std::int64_t k_rows = 0;
    std::vector<std::int32_t> perm;
    std::vector<std::int32_t> block_groups;
};
GptqRowLayout gptq_row_layout(std::span<const std::int32_t> g_idx, std::int64_t num_groups, std::int64_t group_size);

//! Validates a layer (sizes, K % 32, N % 8, group size, g_idx range, R2.12 v1 nibble 0xF)
//! and builds its prepared form. Throws q4tp::Error naming the tensor and the value at fault.
GptqPrepared gptq_prepare(const GptqSource& source);

//! The act-order permutation of R3.2: stable argsort of g_idx (sorted row j holds original row result[j]).
std::vector<std::int32_t> gptq_sort_rows(std::span<const std::int32_t> g_idx, std::int64_t num_groups);

//! Host inverse of the layout: W [K][N] in ORIGINAL row order, W = fp16(scale * (q - z)) as a float (R2.10-R2.11).
//! What the CUDA dequantizer writes; used by tests to check the prepared buffers.
std::vector<float> gptq_prepared_dequantize(const GptqPrepared& prepared);

}  // namespace q4tp::kernels::cuda
