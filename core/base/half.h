//! Host-side IEEE binary16 <-> binary32 conversion, bit-exact with CUDA's __float2half_rn and
//! __half2float (round to nearest even, subnormals, inf and NaN preserved). The loaders' dequantizer
//! and the CPU reference backend use these so that both sides round exactly as the GPU does.
#pragma once

#include <cstdint>

namespace q4tp {

float half_to_float(std::uint16_t h) noexcept;
std::uint16_t float_to_half(float f) noexcept;
//! Rounds a float through fp16 and back (what storing an activation in fp16 does to it).
inline float round_to_half(float f) noexcept { return half_to_float(float_to_half(f)); }

float bf16_to_float(std::uint16_t h) noexcept;

}  // namespace q4tp
