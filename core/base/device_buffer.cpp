#include "core/base/device_buffer.h"

#include <atomic>

#include "core/base/cuda_check.h"
#include "core/base/logging.h"

namespace q4tp {
namespace {
std::atomic<std::uint64_t> g_allocations{0};
}

std::uint64_t device_allocation_count() noexcept { return g_allocations.load(); }

namespace detail {
void* device_alloc(std::size_t bytes) {
    void* ptr = nullptr;
    const cudaError_t status = cudaMalloc(&ptr, bytes);
    if (status != cudaSuccess) {
        std::size_t free_bytes = 0, total_bytes = 0;
        (void)cudaGetLastError();  // clear the sticky-free error before asking for memory info
        (void)cudaMemGetInfo(&free_bytes, &total_bytes);
        Q4TP_THROW("cudaMalloc of " << bytes << " bytes failed (" << cudaGetErrorString(status) << "); "
                                    << free_bytes << " of " << total_bytes << " bytes free on the device");
    }
    g_allocations.fetch_add(1);
    return ptr;
}

void device_free(void* ptr) noexcept {
    if (!ptr) return;
    const cudaError_t status = cudaFree(ptr);
    // Destructors never throw (docs/style.md rule 21): log and carry on.
    if (status != cudaSuccess) Q4TP_LOG_ERROR("cudaFree failed: " << cudaGetErrorString(status));
}
}  // namespace detail

}  // namespace q4tp
