//! Elementwise fp16 kernels of the Llama MLP and residual path (docs/formats.md R4.1): SwiGLU and in-place add.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

//! out[i] = fp16(silu(gate[i]) * up[i]) for i < count, silu(g) = g / (1 + exp(-g)) evaluated in fp32.
//! out may alias gate or up exactly (same index, same thread); partial overlaps are not allowed.
void silu_mul(const __half* gate, const __half* up, std::int64_t count, __half* out, cudaStream_t stream);

//! x[i] = fp16(x[i] + y[i]) for i < count (the sum in fp32, rounded once). y may alias x exactly.
void add_inplace(__half* x, const __half* y, std::int64_t count, cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
