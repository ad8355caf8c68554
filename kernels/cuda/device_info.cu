#include "kernels/cuda/device_info.h"

#include <cuda_runtime_api.h>

#include "core/base/cuda_check.h"

namespace q4tp::kernels::cuda {

int device_count() noexcept {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();  // clear "no driver" so later calls start clean
        return 0;
    }
    return count;
}

DeviceInfo device_info(int device) {
    cudaDeviceProp prop{};
    Q4TP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    DeviceInfo info;
    info.name = prop.name;
    info.sm_count = prop.multiProcessorCount;
    info.compute_capability = prop.major * 10 + prop.minor;
    info.total_memory = prop.totalGlobalMem;
    info.l2_bytes = static_cast<std::size_t>(prop.l2CacheSize);
    return info;
}

std::size_t free_device_memory() {
    std::size_t free_bytes = 0, total_bytes = 0;
    Q4TP_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return free_bytes;
}

}  // namespace q4tp::kernels::cuda
