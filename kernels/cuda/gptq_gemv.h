//! int4 GPTQ matrix-vector products for decode (m = 1..8 rows): y[m][n] = sum_k x[m][k] W[k][n] (+ residual[m][n]),
//! fp16 activations, fp32 accumulation, and the dequantize-to-fp16 kernel for the prefill path.
//! Weights are the buffers of gptq_prepare (kernels/cuda/gptq_prepare.h) uploaded unchanged.
//!
//! Usage: size the workspace once with gptq_gemv_workspace_bytes() (any layer) or gptq_gemv_workspace_bytes(max m,
//! K, N) (one shape), allocate it, clear it once with gptq_gemv_workspace_init, then call gptq_gemv per step. The
//! launch allocates nothing, never synchronizes with the host and leaves the workspace as it found it, so it can be
//! captured in a CUDA graph and replayed. One workspace serves any number of layers launched one after the other on one
//! stream, not concurrent launches.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace q4tp::kernels::cuda {

//! Columns per warp tile of the prepared layout (4 mma n8-tiles); N is padded to a multiple of it.
inline constexpr std::int64_t kGptqTileN = 32;
//! Input rows per k-block of the prepared layout: one 16-byte load per lane covers 32 rows x 32 columns.
inline constexpr std::int64_t kGptqBlockK = 32;

//! Bit 31 of a GptqWeights::block_groups entry: the block is the last of its group (the rest is the group).
inline constexpr std::int32_t kGptqLastBlockOfGroup = -2147483647 - 1;

//! Largest number of activation rows one gptq_gemv handles (decode batch); larger m belongs to the GEMM path.
inline constexpr int kGptqGemvMaxM = 8;

//! Device copies of one prepared layer (GptqPrepared's vectors, uploaded as they are).
struct GptqWeights {
    const std::uint32_t* qweight = nullptr;  //!< [N_pad/32][K/32][32][4] words, 16-byte aligned
    const __half* scales = nullptr;          //!< [G][N_pad], tile-permuted, 8-byte aligned
    const std::uint32_t* zeros = nullptr;    //!< [G][N_pad/8] effective zero points, tile-permuted
    const std::int32_t* perm = nullptr;      //!< [K_rows] sorted row -> original row (-1: filler row, x read as 0);
                                             //!< nullptr when rows are in order
    //! [K_rows/32] GptqPrepared::block_groups; nullptr when block b belongs to group b * 32 / group_size
    const std::int32_t* block_groups = nullptr;
    std::int64_t k = 0;                      //!< K, input features (length of x), multiple of 32
    std::int64_t k_rows = 0;                 //!< prepared rows (GptqPrepared::k_rows); 0 means K
    std::int64_t n = 0;                      //!< N, multiple of 8 (N_pad = roundup(N, 32))
    std::int64_t group_size = 0;             //!< effective group size (K for -1), multiple of 32
};

//! Arguments of one GEMV launch. Row strides are in elements.
struct GptqGemvParams {
    GptqWeights weights;
    int m = 0;                         //!< activation rows, 1..8
    const __half* x = nullptr;         //!< [m][ldx], original input-row order; must not overlap y
    std::int64_t ldx = 0;              //!< >= K; 0 means K (dense)
    __half* y = nullptr;               //!< [m][ldy]
    std::int64_t ldy = 0;              //!< >= N; 0 means N (dense)
    const __half* residual = nullptr;  //!< [m][ldr] added in fp32 before rounding; nullptr = none.
                                       //!< May be y itself (in-place residual add) with ldr == ldy.
    std::int64_t ldr = 0;              //!< >= N; 0 means N (dense)
    void* workspace = nullptr;         //!< gptq_gemv_workspace_bytes() (or the shape's) bytes, 16-byte
                                       //!< aligned, cleared once by gptq_gemv_workspace_init
    std::size_t workspace_bytes = 0;
};

//! How a launch splits the work: n_tiles column tiles of 256 x splits K-slices of iters x 256 rows.
//! A pure function of (m, K, N), so the caller's workspace size and the launch always agree.
struct GptqGemvPlan {
    int n_tiles = 0;           //!< ceil(N_pad / 256): CTAs along N
    int splits = 0;            //!< CTAs along K; > 1 means fp32 partials in the workspace
    int blocks_per_split = 0;  //!< 32-row k-blocks per CTA
    int smem_bytes = 0;        //!< dynamic shared memory per CTA (the staged activations)
};

//! k is the prepared row count (GptqWeights::k_rows, or K).
GptqGemvPlan gptq_gemv_plan(int m, std::int64_t k, std::int64_t n);

//! Workspace bytes that serve every layer and every m (16 MB of fp32 partials plus the tile counters).
std::size_t gptq_gemv_workspace_bytes();
//! Workspace bytes that serve every m' <= max_m for this (K_rows, N) alone (smaller); never 0.
std::size_t gptq_gemv_workspace_bytes(int max_m, std::int64_t k, std::int64_t n);

//! Clears a workspace once after allocation (stream-ordered memset). The kernels leave it clear again.
void gptq_gemv_workspace_init(void* workspace, std::size_t bytes, cudaStream_t stream);

//! y = x . W (+ residual) on the stream. Checks every precondition and throws q4tp::Error naming the bad value.
//! Deterministic: the split-K sum runs in a fixed order, so equal inputs give bitwise-equal outputs.
void gptq_gemv(const GptqGemvParams& params, cudaStream_t stream);

//! Arguments of the dequantizer.
struct GptqDequantParams {
    GptqWeights weights;
    __half* w = nullptr;   //!< [K][ldw] output, ORIGINAL row order (perm undone), so x is used as it is
    std::int64_t ldw = 0;  //!< >= the columns written
    //! Columns [column_begin, column_begin + columns) of W land in w's columns 0.. (prefill dequantizes a wide layer
    //! in slices so that its scratch stays small). column_begin: a multiple of kGptqDequantColumnStep; columns 0
    //! means to the end (N - column_begin).
    std::int64_t column_begin = 0;
    std::int64_t columns = 0;
};

//! Column slices of gptq_dequantize start at multiples of this (one CTA's columns).
inline constexpr std::int64_t kGptqDequantColumnStep = 256;

//! W[k][n] = fp16(s (q - z)) for the prefill path (dequantize, then a cuBLAS GEMM with unpermuted x), for the
//! requested columns of each row. Bit-exact with the host reference dequantizer.
void gptq_dequantize(const GptqDequantParams& params, cudaStream_t stream);

//! Shorthand for a dense scratch of row stride N_pad = roundup(N, 32): W [K][N_pad], padding columns unwritten.
inline void gptq_dequantize(const GptqWeights& weights, __half* w, cudaStream_t stream) {
    GptqDequantParams p;
    p.weights = weights;
    p.w = w;
    p.ldw = (weights.n + kGptqTileN - 1) / kGptqTileN * kGptqTileN;
    gptq_dequantize(p, stream);
}

}  // namespace q4tp::kernels::cuda
