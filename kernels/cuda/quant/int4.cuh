//! int4 -> fp16 for the prepared GPTQ words (layout: kernels/cuda/gptq_prepare.h).
//!
//! GEMV path: codes as exact subnormal fp16. An fp16 bit pattern with a zero exponent field is the number
//! mantissa * 2^-24, so AND-ing a word with a mask that keeps one nibble per 16-bit half is already a half2 of
//! exact values, one LOP3 per two weights and no float op at all:
//!
//!        word bits   31..28 27..24 23..20 19..16 | 15..12 11..8 7..4 3..0
//!        nibble         7      6      5      4   |    3     2    1    0
//!   w      & 0x000F000F  ->  half2(q0 2^-24,      q4 2^-24)        A rows g   (mma register 0)
//!   w      & 0x00F000F0  ->  half2(16 q1 2^-24,   16 q5 2^-24)     A rows g+8 (register 1)
//!   w >> 8 & 0x000F000F  ->  half2(q2 2^-24,      q6 2^-24)        A rows g   (register 2)
//!   w >> 8 & 0x00F000F0  ->  half2(16 q3 2^-24,   16 q7 2^-24)     A rows g+8 (register 3)
//!
//! The tensor cores multiply fp16 subnormals exactly and accumulate in fp32, so an mma over these registers gives
//! sum_k q x * 2^-24 (rows g) or * 2^-20 (rows g+8) with no rounding beyond fp32 accumulation. The power of two is
//! folded into the scale, and the zero point is applied once per group in fp32: s (sum q x - z sum x).
//! The weights are therefore used as the exact products s (q - z), one fp16 rounding finer than the reference's
//! fp16(s (q - z)) (docs/formats.md R2.11): the two differ by at most 2^-11 sum_k |x_k W_kn|.
//!
//! Dequantize-to-fp16 path: fp16(s (q - z)) computed as an exact fp32 product rounded once, bit-equal to R2.11.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

//! The four A-fragment registers of one prepared word (see the file comment).
__device__ __forceinline__ void int4_codes_word(std::uint32_t w, std::uint32_t (&a)[4]) {
    const std::uint32_t w8 = w >> 8;
    a[0] = w & 0x000F000Fu;
    a[1] = w & 0x00F000F0u;
    a[2] = w8 & 0x000F000Fu;
    a[3] = w8 & 0x00F000F0u;
}

//! Row (k) and column offsets of nibble i of a prepared word for mma thread-in-group t: the word of n16 tile p and
//! k16 step s holds column 16 p + g + column_offset and k = 16 s + k_offset.
__host__ __device__ constexpr int int4_nibble_k(int nibble, int t) {
    return 2 * t + 8 * ((nibble % 4) / 2) + nibble / 4;
}
__host__ __device__ constexpr int int4_nibble_column(int nibble) {
    return 8 * (nibble % 2);
}

//! Exact reference dequantization of one weight: fp16(s (q - z)), the product being exact in fp32.
__device__ __forceinline__ __half int4_dequant(int q, int z, float scale) {
    return __float2half_rn(scale * static_cast<float>(q - z));
}

}  // namespace q4tp::kernels::cuda
