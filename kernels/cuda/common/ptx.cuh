//! Small device helpers over PTX: streaming and predicated loads, and the fp16 tensor-core mma.
#pragma once

#include <cstdint>

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

//! Predicated loads into registers that keep their value when `pred` is false. Written as one predicated PTX
//! instruction, not a branch: a load inside an `if` makes the compiler land it in a temporary and move it to its
//! destination after the merge, and that move waits for the load, so only one such load is ever in flight.
__device__ __forceinline__ void load_streaming_if(uint4& v, const uint4* ptr, bool pred) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %5, 0;\n"
        " @p ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n}\n"
        : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w)
        : "l"(ptr), "r"(static_cast<int>(pred)));
}
__device__ __forceinline__ void load_if(uint2& v, const uint2* ptr, bool pred) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n @p ld.global.nc.v2.u32 {%0, %1}, [%2];\n}\n"
                 : "+r"(v.x), "+r"(v.y)
                 : "l"(ptr), "r"(static_cast<int>(pred)));
}
__device__ __forceinline__ void load_if(std::uint32_t& v, const std::uint32_t* ptr, bool pred) {
    asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %2, 0;\n @p ld.global.nc.u32 %0, [%1];\n}\n"
                 : "+r"(v)
                 : "l"(ptr), "r"(static_cast<int>(pred)));
}

//! d += A . B for one mma.m16n8k16, row.col, fp16 inputs, fp32 accumulation. Fragments (g = lane / 4, t = lane % 4):
//! a0: A[g][2t, 2t+1], a1: A[g+8][2t, 2t+1], a2: A[g][2t+8, 2t+9], a3: A[g+8][2t+8, 2t+9];
//! b0: B[2t, 2t+1][g], b1: B[2t+8, 2t+9][g]; d0, d1: D[g][2t, 2t+1], d2, d3: D[g+8][2t, 2t+1].
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4],
                                             const std::uint32_t (&a)[4],
                                             std::uint32_t b0,
                                             std::uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace q4tp::kernels::cuda
