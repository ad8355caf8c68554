//! The fp16 lm_head: logits[m][V] (fp32) = x[m][H] . weight[V][H]^T through cuBLAS (docs/formats.md R4.1).
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace q4tp::kernels::cuda {

//! cuBLAS workspace the caller should provide: NVIDIA recommends 32 MiB on Hopper (4 MiB elsewhere).
inline constexpr std::size_t kCublasWorkspaceBytes = std::size_t{32} << 20;
//! cublasSetWorkspace refuses a workspace pointer that is not aligned to 256 bytes.
inline constexpr std::size_t kCublasWorkspaceAlignment = 256;

struct LmHeadParams {
    const __half* x = nullptr;       //!< [m][hidden] final RMSNorm output
    const __half* weight = nullptr;  //!< [vocab][hidden] lm_head.weight exactly as HF stores it (nn.Linear)
    float* logits = nullptr;         //!< [m][vocab] output, fp32 so that sampling sees unrounded logits
    std::int64_t m = 0;              //!< tokens (rows of x)
    std::int64_t hidden = 0;         //!< H
    std::int64_t vocab = 0;          //!< V, or this rank's vocabulary slice under tensor parallelism
    //! Caller-owned cuBLAS workspace (kCublasWorkspaceBytes recommended, 256-byte aligned). It must stay alive
    //! as long as any CUDA graph that captured the call. nullptr with 0 bytes runs workspace-free algorithms.
    void* workspace = nullptr;
    std::size_t workspace_bytes = 0;
};

//! Enqueues logits = x . weight^T on `stream` with cublasGemmEx (fp16 inputs, fp32 output, CUBLAS_COMPUTE_32F).
//! It sets the handle's stream, then its workspace (cublasSetStream resets the workspace to cuBLAS's own pool,
//! which allocates on first use and so cannot be captured), then host pointer mode: the call is capturable in a
//! CUDA graph. A handle must not be used from two streams at once with the same workspace.
void lm_head(cublasHandle_t handle, const LmHeadParams& params, cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
