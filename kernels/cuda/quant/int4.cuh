//! Exact int4 -> fp16 dequantization of the prepared GPTQ words (layout: kernels/cuda/gptq_prepare.h).
//!
//! The exponent trick: fp16 0x6400 is 1024.0 and its mantissa step is exactly 1, so OR-ing a 4-bit code q into
//! the low mantissa bits yields 1024 + q, and a code sitting in bits 4..7 yields 1024 + 16 q. One AND+OR (a
//! single LOP3) therefore turns two nibbles of a 32-bit word into a half2:
//!
//!        word bits   31..28 27..24 23..20 19..16 | 15..12 11..8 7..4 3..0
//!        nibble         7      6      5      4   |    3     2    1    0
//!   (w & 0x000F000F) | 0x64006400  ->  half2(1024 + q0, 1024 + q4)          lo path
//!   (w & 0x00F000F0) | 0x64006400  ->  half2(1024 + 16 q1, 1024 + 16 q5)    hi path
//!   the same on w >> 8 gives (q2, q6) and (q3, q7).
//!
//! Then (1024 + q) - (1024 + z) and (1024 + 16 q) / 16 - (64 + z) are the exact small integer q - z (all values
//! are integers far below 2048), and one fp16 multiply by the scale rounds s (q - z) once, exactly as the
//! reference dequantizer does (docs/formats.md R2.10-R2.11). The scale is never folded into the magic constant:
//! fp16((1024 + z) s) would carry up to half a quantization step of error.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/common/ptx.cuh"

namespace q4tp::kernels::cuda {

//! One column's per-group constants, each duplicated into both halves of a half2.
struct Int4Column {
    __half2 minus_1024_z;  //!< -(1024 + z)
    __half2 minus_64_z;    //!< -(64 + z)
    __half2 scale;         //!< (s, s)
};

//! Builds the constants from the effective zero point z (0..15) and a half2 word whose low or high half
//! (high_half) holds the fp16 scale.
__device__ __forceinline__ Int4Column int4_column(std::uint32_t z, std::uint32_t scale_pair, bool high_half) {
    Int4Column c;
    // 0xE400 is -1024.0 with mantissa step 1: OR-ing z gives -(1024 + z) exactly.
    c.minus_1024_z = as_half2((0xE400u | z) * 0x10001u);
    c.minus_64_z = __hadd2(c.minus_1024_z, as_half2(0x63806380u));  // + 960.0, exact
    c.scale = as_half2(__byte_perm(scale_pair, 0, high_half ? 0x3232u : 0x1010u));
    return c;
}

//! Dequantizes one prepared word into four half2 (as raw bits): out[i] = fp16(s * (q - z)) for the nibble pairs
//! (0,4), (1,5), (2,6), (3,7), i.e. the mma B-fragment pairs (2t, 2t+1), (2t+8, 2t+9), (2t+16, 2t+17),
//! (2t+24, 2t+25) of the prepared layout.
__device__ __forceinline__ void int4_dequant_word(std::uint32_t w, const Int4Column& c, std::uint32_t (&out)[4]) {
    constexpr std::uint32_t kMagic = 0x64006400u;      // half2(1024, 1024)
    constexpr std::uint32_t kLo = 0x000F000Fu;
    constexpr std::uint32_t kHi = 0x00F000F0u;
    const __half2 one_sixteenth = as_half2(0x2C002C00u);
    const std::uint32_t w8 = w >> 8;
    const __half2 p0 = as_half2((w & kLo) | kMagic);
    const __half2 p1 = as_half2((w & kHi) | kMagic);
    const __half2 p2 = as_half2((w8 & kLo) | kMagic);
    const __half2 p3 = as_half2((w8 & kHi) | kMagic);
    out[0] = as_u32(__hmul2(__hadd2(p0, c.minus_1024_z), c.scale));
    out[1] = as_u32(__hmul2(__hfma2(p1, one_sixteenth, c.minus_64_z), c.scale));
    out[2] = as_u32(__hmul2(__hadd2(p2, c.minus_1024_z), c.scale));
    out[3] = as_u32(__hmul2(__hfma2(p3, one_sixteenth, c.minus_64_z), c.scale));
}

}  // namespace q4tp::kernels::cuda
