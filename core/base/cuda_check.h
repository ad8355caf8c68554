//! Q4TP_CUDA_CHECK and Q4TP_CUBLAS_CHECK (NCCL and MPI variants live in parallel/, the only layer that
//! includes those headers). Q4TP_DEBUG_SYNC() synchronizes after a launch in debug builds only.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "core/base/error.h"

namespace q4tp {
inline const char* cuda_status_string(cudaError_t status) { return cudaGetErrorString(status); }
inline const char* cublas_status_string(cublasStatus_t status) { return cublasGetStatusString(status); }
}  // namespace q4tp

#define Q4TP_CUDA_CHECK(expr) Q4TP_CHECK_GEN(expr, cudaSuccess, ::q4tp::cuda_status_string)
#define Q4TP_CUBLAS_CHECK(expr) Q4TP_CHECK_GEN(expr, CUBLAS_STATUS_SUCCESS, ::q4tp::cublas_status_string)

//! After every kernel launch: catches bad launch configurations at the launch site.
#define Q4TP_CUDA_CHECK_LAUNCH() Q4TP_CUDA_CHECK(cudaGetLastError())

#ifdef NDEBUG
#define Q4TP_DEBUG_SYNC() ((void)0)
#else
#define Q4TP_DEBUG_SYNC() Q4TP_CUDA_CHECK(cudaDeviceSynchronize())
#endif
