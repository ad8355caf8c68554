#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "core/base/half.h"

namespace q4tp {
namespace {

TEST(HalfTest, RoundTripsEveryFiniteHalf) {
    // Every one of the 63488 finite half values converts to float and back unchanged.
    for (std::uint32_t h = 0; h < 0x10000u; ++h) {
        const auto bits = static_cast<std::uint16_t>(h);
        if ((bits & 0x7C00u) == 0x7C00u) continue;  // inf / NaN handled below
        ASSERT_EQ(float_to_half(half_to_float(bits)), bits) << std::hex << h;
    }
}

TEST(HalfTest, KnownValues) {
    EXPECT_EQ(float_to_half(1.0f), 0x3C00);
    EXPECT_EQ(float_to_half(-2.0f), 0xC000);
    EXPECT_EQ(float_to_half(65504.0f), 0x7BFF);
    EXPECT_EQ(float_to_half(65520.0f), 0x7C00);  // rounds up to infinity
    EXPECT_EQ(float_to_half(65519.0f), 0x7BFF);
    EXPECT_EQ(float_to_half(5.9604644775390625e-8f), 0x0001);  // smallest subnormal
    EXPECT_EQ(float_to_half(2.98023223876953125e-8f), 0x0000);  // exactly half of it: ties to even (0)
    EXPECT_EQ(float_to_half(std::numeric_limits<float>::infinity()), 0x7C00);
    EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
    EXPECT_FLOAT_EQ(half_to_float(0x3555), 0.333251953125f);
}

TEST(HalfTest, RoundsToNearestEven) {
    // 1 + 2^-11 lies exactly between 1 and 1 + 2^-10: ties go to the even mantissa (1.0).
    EXPECT_EQ(float_to_half(1.0f + 0x1p-11f), 0x3C00);
    // 1 + 3 * 2^-11 lies between 1+2^-10 (odd) and 1+2^-9 (even): goes up.
    EXPECT_EQ(float_to_half(1.0f + 3 * 0x1p-11f), 0x3C02);
    EXPECT_EQ(float_to_half(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
}

TEST(HalfTest, Bf16) { EXPECT_FLOAT_EQ(bf16_to_float(0x3F80), 1.0f); }

}  // namespace
}  // namespace q4tp
