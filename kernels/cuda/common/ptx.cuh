//! Small device helpers over PTX: streaming 16-byte loads, the fp16 tensor-core mma, and bit casts.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace q4tp::kernels::cuda {

//! 16-byte global load of data read exactly once: non-coherent path, not kept in L1 (it would only evict the
//! activations and scales that are re-read).
__device__ __forceinline__ uint4 load_streaming(const uint4* ptr) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
    return v;
}

__device__ __forceinline__ __half2 as_half2(std::uint32_t bits) {
    __half2 h;
    std::memcpy(&h, &bits, sizeof(h));
    return h;
}

__device__ __forceinline__ std::uint32_t as_u32(__half2 h) {
    std::uint32_t bits;
    std::memcpy(&bits, &h, sizeof(bits));
    return bits;
}

//! d += A . B for one mma.m16n8k16 (row.col, fp16 in, fp32 accumulate) whose A rows 8..15 are zero: only the
//! rows 0..7 registers a0 (k 2t, 2t+1) and a2 (k 2t+8, 2t+9) are passed; d[2], d[3] (rows 8..15) stay zero.
__device__ __forceinline__ void mma_m16n8k16_rows8(float (&d)[4], std::uint32_t a0, std::uint32_t a2,
                                                   std::uint32_t b0, std::uint32_t b1) {
    const std::uint32_t zero = 0;
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(zero), "r"(a2), "r"(zero), "r"(b0), "r"(b1));
}

}  // namespace q4tp::kernels::cuda
