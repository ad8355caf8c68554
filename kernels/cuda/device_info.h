//! What the CUDA runtime can see: used to pick the default backend and to name the card in benchmarks.
#pragma once

#include <cstddef>
#include <string>

namespace q4tp::kernels::cuda {

//! Number of usable CUDA devices; 0 when there is no driver or no GPU (never throws).
int device_count() noexcept;

struct DeviceInfo {
    std::string name;              //!< e.g. "NVIDIA H100 80GB HBM3"
    int sm_count = 0;
    int compute_capability = 0;    //!< 90 for Hopper
    std::size_t total_memory = 0;  //!< bytes
    std::size_t l2_bytes = 0;
};

//! Properties of a device; throws q4tp::Error if it does not exist.
DeviceInfo device_info(int device);

//! Bytes free on the current device now (cudaMemGetInfo: what other processes and this one's context left).
std::size_t free_device_memory();

}  // namespace q4tp::kernels::cuda
