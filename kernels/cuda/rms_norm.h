//! RMSNorm on fp16 activations (docs/formats.md R4.2), plain and fused with the residual add.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

//! Per row r of x [m][hidden], in HF order (R4.2 with fp16 activations):
//!   out[r][j] = fp16(weight[j] * fp16(x[r][j] * rsqrt(mean_j(x[r][j]^2) + eps))),
//! the sum of squares, mean and rsqrt in fp32. out may alias x exactly.
void rms_norm(const __half* x,
              const __half* weight,
              std::int64_t m,
              std::int64_t hidden,
              float eps,
              __half* out,
              cudaStream_t stream);

//! The residual add fused with the next norm: residual[r][j] = fp16(residual[r][j] + delta[r][j]) (stored), then
//! out = rms_norm(residual) over the stored fp16 values, exactly as add_inplace followed by rms_norm would give.
//! residual and delta are [m][hidden]; out may alias delta exactly, never residual (whose sum the caller keeps).
void add_rms_norm(__half* residual,
                  const __half* delta,
                  const __half* weight,
                  std::int64_t m,
                  std::int64_t hidden,
                  float eps,
                  __half* out,
                  cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
