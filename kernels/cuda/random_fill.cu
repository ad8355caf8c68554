// Counter-based random fills: element i gets splitmix64(seed + i), so the result does not depend on the
// launch configuration and any element can be recomputed on the host for a test.

#include "kernels/cuda/random_fill.h"

#include "core/base/cuda_check.h"

namespace q4tp::kernels::cuda {
namespace {

__device__ __forceinline__ std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

__global__ void fill_words_random_kernel(std::uint32_t* words, std::int64_t count, std::uint64_t seed) {
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        words[i] = static_cast<std::uint32_t>(splitmix64(seed + static_cast<std::uint64_t>(i)) >> 32);
    }
}

__global__ void fill_half_random_kernel(__half* values, std::int64_t count, std::uint64_t seed, float lo, float hi) {
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        // 24 random bits -> [0, 1) exactly representable in float.
        const float u = static_cast<float>(splitmix64(seed + static_cast<std::uint64_t>(i)) >> 40) * 0x1p-24f;
        values[i] = __float2half_rn(lo + (hi - lo) * u);
    }
}

__global__ void fill_words_kernel(std::uint32_t* words, std::int64_t count, std::uint32_t value) {
    for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
        words[i] = value;
    }
}

constexpr int kThreads = 256;

unsigned blocks_for(std::int64_t count) {
    const std::int64_t blocks = (count + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

}  // namespace

void fill_random_words(std::uint32_t* words, std::int64_t count, std::uint64_t seed, cudaStream_t stream) {
    Q4TP_CHECK(count >= 0, "fill_random_words: negative count " << count);
    if (count == 0) return;
    fill_words_random_kernel<<<blocks_for(count), kThreads, 0, stream>>>(words, count, seed);
    Q4TP_CUDA_CHECK_LAUNCH();
}

void fill_random_half(__half* values, std::int64_t count, std::uint64_t seed, float lo, float hi,
                      cudaStream_t stream) {
    Q4TP_CHECK(count >= 0 && lo <= hi, "fill_random_half: bad arguments (count " << count << ", [" << lo << ", "
                                                                                  << hi << "))");
    if (count == 0) return;
    fill_half_random_kernel<<<blocks_for(count), kThreads, 0, stream>>>(values, count, seed, lo, hi);
    Q4TP_CUDA_CHECK_LAUNCH();
}

void fill_words(std::uint32_t* words, std::int64_t count, std::uint32_t value, cudaStream_t stream) {
    Q4TP_CHECK(count >= 0, "fill_words: negative count " << count);
    if (count == 0) return;
    fill_words_kernel<<<blocks_for(count), kThreads, 0, stream>>>(words, count, value);
    Q4TP_CUDA_CHECK_LAUNCH();
}

}  // namespace q4tp::kernels::cuda
