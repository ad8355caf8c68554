// Token embedding: out[t] = table[ids[t]], one block per token row.
//
// Layout: table is [vocab][hidden] fp16 row-major, out is [m][hidden]. The copy is pure bandwidth, so when hidden
// is a multiple of 8 and both table and out are 16-byte aligned every thread moves 16 bytes (8 halves) per
// iteration; otherwise a 2-byte path copies element by element. The id is read from device memory, so the launch is
// CUDA-graph capturable with ids that change every decode step.
//
// Out-of-range ids: the caller validates ids on the host (the tokenizer and the sampler only produce ids below
// vocab, and the model checks prompt ids). Clamping would silently embed the wrong token and NaN rows would only
// move the failure downstream, so the kernel does neither; a device assert catches a violated contract in debug
// builds (NDEBUG removes it in release, where the row read would be out of bounds).
//
// PDL (common/pdl.cuh): the table is a weight, but which row to read depends on ids (written by the sampler or a
// copy), so the kernel waits before reading anything and before writing out.
#include "kernels/cuda/embedding.h"

#include <cassert>
#include <cstdint>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/common/pdl.cuh"

namespace q4tp::kernels::cuda {

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Constants

constexpr int kMaxThreads = 256;
constexpr int kVecWidth = 8;  // 8 halves = one 16-byte load/store

// ---------------------------------------------------------------------------------------------------------------
// Device helpers

//! N consecutive halves, aligned so that N = 8 compiles to one 128-bit access.
template <int N>
struct alignas(sizeof(__half) * N) HalfVec {
    __half h[N];
};

// ---------------------------------------------------------------------------------------------------------------
// Kernels

//! Block t copies row ids[t]; `hidden` counts halves, the loop runs over hidden / N vectors.
template <int N>
__global__ void embedding_kernel(const std::int32_t* ids, const __half* table, std::int64_t vocab,
                                 std::int64_t hidden, __half* out) {
    pdl_wait();
    pdl_launch_dependents();
    const std::int64_t t = blockIdx.x;
    const std::int32_t id = ids[t];
    assert(id >= 0 && id < vocab);
    (void)vocab;  // only the debug assert reads it
    const auto* src = reinterpret_cast<const HalfVec<N>*>(table + static_cast<std::int64_t>(id) * hidden);
    auto* dst = reinterpret_cast<HalfVec<N>*>(out + t * hidden);
    const std::int64_t vec_count = hidden / N;
    for (std::int64_t v = threadIdx.x; v < vec_count; v += blockDim.x) dst[v] = src[v];
}

// ---------------------------------------------------------------------------------------------------------------
// Launch configuration

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

//! A warp multiple covering `items` copies per row when it can, at most kMaxThreads (the loop does the rest).
unsigned int threads_for(std::int64_t items) {
    const std::int64_t warps = (items + 31) / 32;
    const std::int64_t threads = warps * 32;
    return static_cast<unsigned int>(threads > kMaxThreads ? kMaxThreads : threads);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Launcher

void embedding(const std::int32_t* ids,
               std::int64_t m,
               const __half* table,
               std::int64_t vocab,
               std::int64_t hidden,
               __half* out,
               cudaStream_t stream) {
    Q4TP_CHECK(m > 0 && m <= INT32_MAX, "embedding: m = " << m << ", expected in [1, " << INT32_MAX << "]");
    Q4TP_CHECK(vocab > 0 && vocab <= INT32_MAX,
               "embedding: vocab = " << vocab << ", expected in [1, " << INT32_MAX << "] (ids are int32)");
    Q4TP_CHECK(hidden > 0, "embedding: hidden = " << hidden << ", expected > 0");
    Q4TP_CHECK(ids && table && out, "embedding: null ids, table or out pointer");
    const dim3 grid(static_cast<unsigned int>(m));
    if (hidden % kVecWidth == 0 && aligned16(table) && aligned16(out)) {
        launch_kernel(embedding_kernel<kVecWidth>, grid, threads_for(hidden / kVecWidth), 0, stream, ids, table, vocab,
                      hidden, out);
    } else {
        launch_kernel(embedding_kernel<1>, grid, threads_for(hidden), 0, stream, ids, table, vocab, hidden, out);
    }
}

}  // namespace q4tp::kernels::cuda
