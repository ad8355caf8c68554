//! Token embedding lookup on the GPU (docs/formats.md R4.1): a plain row gather, no scaling.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

//! out[t][:] = table[ids[t]][:] for t < m; ids is device memory [m], table [vocab][hidden], out [m][hidden].
//! The CALLER validates ids on the host (every id in [0, vocab)) before they reach the device: the kernel neither
//! clamps nor writes NaN rows for a bad id, and checks the range only with a device assert in debug builds.
void embedding(const std::int32_t* ids,
               std::int64_t m,
               const __half* table,
               std::int64_t vocab,
               std::int64_t hidden,
               __half* out,
               cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
