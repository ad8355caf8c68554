//! Deterministic pseudo-random fills on the device, for synthetic real-shape models (q4tp-bench --synthetic):
//! a 70B model's 36 GB of weights are generated in place in well under a second instead of being read.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

//! words[i] = a hash of (seed, i): uniform 32-bit words, i.e. uniform 4-bit codes in any packing.
void fill_random_words(std::uint32_t* words, std::int64_t count, std::uint64_t seed, cudaStream_t stream);
//! values[i] uniform in [lo, hi), rounded to fp16.
void fill_random_half(__half* values, std::int64_t count, std::uint64_t seed, float lo, float hi,
                      cudaStream_t stream);
//! words[i] = value.
void fill_words(std::uint32_t* words, std::int64_t count, std::uint32_t value, cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
