#include "core/base/half.h"

#include <cstring>

namespace q4tp {
namespace {
std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
float float_of(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
}  // namespace

float half_to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exponent = (h >> 10) & 0x1Fu;
    std::uint32_t mantissa = h & 0x3FFu;
    if (exponent == 0x1F) return float_of(sign | 0x7F800000u | (mantissa << 13));  // inf / NaN
    if (exponent == 0) {
        if (mantissa == 0) return float_of(sign);  // signed zero
        // Subnormal half: value = mantissa * 2^-24, exactly representable in float.
        float value = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
        return sign ? -value : value;
    }
    return float_of(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

std::uint16_t float_to_half(float f) noexcept {
    const std::uint32_t u = bits_of(f);
    const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t abs = u & 0x7FFFFFFFu;
    if (abs >= 0x7F800000u) {  // inf or NaN (keep NaN quiet and non-zero)
        return static_cast<std::uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u | ((abs >> 13) & 0x3FFu) : 0u));
    }
    if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // rounds to >= 65520: inf
    if (abs < 0x38800000u) {
        // Result is subnormal (or zero): value / 2^-24 rounded to nearest even, done in float, which
        // is exact here because the scaled value has < 24 significant bits before rounding.
        if (abs < 0x33000000u) return sign;  // below half the smallest subnormal: +-0
        const std::uint32_t exponent = abs >> 23;
        const std::uint32_t mantissa = (abs & 0x7FFFFFu) | 0x800000u;
        const std::uint32_t shift = 126u - exponent;  // 14..24 for this range
        std::uint32_t result = mantissa >> shift;
        const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
        const std::uint32_t halfway = 1u << (shift - 1u);
        if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
        return static_cast<std::uint16_t>(sign | result);
    }
    // Normal: rebias the exponent and round the mantissa to 10 bits, nearest even; a carry out of the
    // mantissa correctly bumps the exponent.
    std::uint32_t result = ((abs >> 13) - (112u << 10));
    const std::uint32_t remainder = abs & 0x1FFFu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ++result;
    return static_cast<std::uint16_t>(sign | result);
}

float bf16_to_float(std::uint16_t h) noexcept { return float_of(static_cast<std::uint32_t>(h) << 16); }

}  // namespace q4tp
