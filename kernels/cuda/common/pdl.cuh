//! Programmatic dependent launch (PDL, sm_90+): the two device-side halves and the host launch helper.
//
// A kernel launched through launch_kernel() while pdl_enabled() carries the attribute
// cudaLaunchAttributeProgrammaticStreamSerialization, which stream capture turns into a programmatic graph edge: it
// may start as soon as every CTA of the kernel before it in the stream has called pdl_launch_dependents() (or
// exited), while that kernel is still draining. The contract every such kernel keeps:
//   - Before pdl_wait() it reads only data no kernel writes: weights, norm gains, RoPE tables (host uploads count:
//     a copy is never overlapped, every later kernel starts after it completed). Anything a kernel of this step
//     produced, activations, KV cache, device-side positions, lengths, step counters, workspace, is read AFTER
//     pdl_wait(), which returns once the preceding kernel has completed and its writes are visible.
//   - Nothing is written before pdl_wait() either: the preceding kernel may still be reading that buffer.
//   - Every thread that can exit passes through pdl_wait() first (no early return above it), so the kernel never
//     completes before its predecessor; the next kernel's wait then covers the whole chain before it.
//   - pdl_launch_dependents() comes after pdl_wait(), so at most one kernel runs ahead of the chain and a
//     dependent's CTAs take SM slots only once this kernel's CTAs are all resident.
// Without the attribute (PDL off or unsupported, or a non-kernel predecessor such as a memcpy) griddepcontrol.wait
// returns at once and launch_dependents does nothing: behaviour is exactly that of a plain <<<>>> launch.
// The gain is the launch latency of each boundary (~0.3 us) plus whatever weight loads a kernel issues before its
// wait (docs/kernels.md section 5).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/pdl.h"

namespace q4tp::kernels::cuda {

// ---------------------------------------------------------------------------------------------------------------
// Device side

//! Blocks until the preceding kernel in the stream has completed and its memory is visible (no-op below sm_90 or
//! when this kernel was launched without the PDL attribute).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

//! Lets the next kernel in the stream launch once every CTA of this grid has called it or exited.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// Host side

//! Launches kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-stream-serialization attribute
//! when pdl_enabled(), and checks the launch like Q4TP_CUDA_CHECK_LAUNCH().
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t stream,
                   Args&&... args) {
    if (!pdl_enabled()) {
        kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
        Q4TP_CUDA_CHECK_LAUNCH();
        return;
    }
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = &attribute;
    config.numAttrs = 1;
    const cudaError_t launched = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
    // Read (and clear) the last error either way, as after a <<<>>> launch, so no stale error reaches a later check.
    const cudaError_t last = cudaGetLastError();
    const cudaError_t status = launched != cudaSuccess ? launched : last;
    Q4TP_CHECK(status == cudaSuccess, "cudaLaunchKernelEx with programmatic stream serialization failed: "
                                          << cudaGetErrorString(status) << " (grid " << grid.x << "x" << grid.y
                                          << "x" << grid.z << ", block " << block.x << "x" << block.y << "x"
                                          << block.z << ", " << smem << " bytes of dynamic shared memory)");
}

}  // namespace q4tp::kernels::cuda
