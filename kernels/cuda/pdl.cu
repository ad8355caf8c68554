// The PDL switch. Whether PDL can be used is decided once, on the first query: the device must be sm_90 or newer
// AND the library's kernels must run code compiled for a virtual architecture >= 90, because below that
// pdl_wait() compiles to nothing (common/pdl.cuh) and a kernel launched early would read its predecessor's output
// unsynchronized (a build for compute_80 JIT-compiled on an H100 is the case this catches). The Q4TP_PDL default is
// read at the same time, so the launch path reads one atomic and never calls getenv or the runtime again.
#include "kernels/cuda/pdl.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace q4tp::kernels::cuda {

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Constants

//! Compute capability 9.0 introduced griddepcontrol and the programmatic launch attribute.
constexpr int kPdlMinMajor = 9;
constexpr int kPdlMinPtxVersion = 90;

// ---------------------------------------------------------------------------------------------------------------
// Kernels

//! Empty, compiled with the same architectures as every other kernel of the library: the code the runtime picks
//! for it on this device tells which virtual architecture the library's kernels were compiled for.
__global__ void pdl_probe_kernel() {}

// ---------------------------------------------------------------------------------------------------------------
// Host side

//! Whether the current device and the code it runs support PDL; false (never throws) without a driver or a device.
bool pdl_supported() noexcept {
    int device = 0;
    int major = 0;
    cudaFuncAttributes probe{};
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaFuncGetAttributes(&probe, pdl_probe_kernel) != cudaSuccess) {
        (void)cudaGetLastError();  // the failed query must not surface as the next launch's error
        return false;
    }
    return major >= kPdlMinMajor && probe.ptxVersion >= kPdlMinPtxVersion;
}

//! Q4TP_PDL=0 turns PDL off by default (to compare timings, or to rule PDL out when chasing a race); anything else
//! or unset leaves it on.
bool requested_by_environment() noexcept {
    const char* value = std::getenv("Q4TP_PDL");
    return value == nullptr || std::strcmp(value, "0") != 0;
}

class PdlSwitch {
public:
    PdlSwitch() : supported_(pdl_supported()), requested_(requested_by_environment()) {}

    bool enabled() const noexcept { return supported_ && requested_.load(std::memory_order_relaxed); }
    void request(bool on) noexcept { requested_.store(on, std::memory_order_relaxed); }

private:
    const bool supported_;
    std::atomic<bool> requested_;
};

PdlSwitch& pdl_switch() {
    static PdlSwitch instance;  // thread-safe one-time initialization
    return instance;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Switch

bool pdl_enabled() { return pdl_switch().enabled(); }

void set_pdl_enabled(bool enabled) { pdl_switch().request(enabled); }

}  // namespace q4tp::kernels::cuda
