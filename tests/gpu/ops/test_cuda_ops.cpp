// GPU tests of kernels/cuda/{embedding,rms_norm,elementwise,rope}: every kernel against the float32 oracle in
// kernels/cpu on fresh random fp16-representable inputs, over the real Llama sizes and awkward ones (scalar paths,
// unaligned pointers, tails), with NaN-poisoned outputs so an unwritten element fails, plus a CUDA-graph capture of
// the whole sequence replayed with new device-side ids and positions. The argument checks run without a GPU too.
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/model_config.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/rope.h"
#include "tests/gpu/common/cuda_graph_util.h"
#include "tests/gpu/common/gpu_test_util.h"

namespace q4tp::kernels::cuda {
namespace {

// Tolerances, |out - ref| <= atol + rtol |ref| against the float32 oracle (which is not rounded to fp16):
// - Rounding to fp16 is off by at most half an ulp, 2^-11 = 4.9e-4 relative; the GPU's fp32 math (sincosf, expf,
//   the fp32 sum of squares) adds ~1e-6 relative. rtol 1e-3 is that half ulp with a 2x margin; atol 1e-6 covers the
//   fp16 subnormal range (spacing 6e-8) where the relative bound does not hold.
constexpr double kHalfAtol = 1e-6;
constexpr double kHalfRtol = 1e-3;
// - RMSNorm rounds twice (the normalized value, then weight * it). The fp32 sum of squares can land the normalized
//   value on the other side of an fp16 rounding boundary than the double oracle: one ulp (2^-10 relative) before the
//   final half-ulp rounding, hence 2e-3.
constexpr double kNormRtol = 2e-3;

// Sizes of the task: rows m and hidden sizes of Llama-7B/13B/70B plus a tiny one; 100 and 1001 exercise the scalar
// paths (not a multiple of 8).
const std::vector<std::int64_t> kRows = {1, 3, 7, 64};
const std::vector<std::int64_t> kHiddens = {64, 4096, 5120, 8192};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

//! Random fp16 values: the bits for the device and their exact float values for the oracle.
struct HalfHost {
    std::vector<std::uint16_t> bits;
    std::vector<float> values;
};

HalfHost random_half(std::size_t n, std::mt19937_64& rng, float lo = -1.0f, float hi = 1.0f) {
    HalfHost h;
    h.bits = test::to_half_bits(test::random_floats(n, rng, lo, hi));
    h.values = test::from_half_bits(h.bits);
    return h;
}

__half* as_half(DeviceBuffer<std::uint16_t>& b, std::size_t offset = 0) {
    return reinterpret_cast<__half*>(b.data() + offset);
}

const __half* as_half(const DeviceBuffer<std::uint16_t>& b, std::size_t offset = 0) {
    return reinterpret_cast<const __half*>(b.data() + offset);
}

//! Device fp16 buffer read back as floats, elements [offset, offset + count) (count 0 = to the end).
std::vector<float> device_values(const DeviceBuffer<std::uint16_t>& b, std::size_t offset = 0, std::size_t count = 0) {
    const std::vector<std::uint16_t> bits = test::to_host(b);
    const std::size_t end = count == 0 ? bits.size() : offset + count;
    return test::from_half_bits(std::vector<std::uint16_t>(bits.begin() + static_cast<std::ptrdiff_t>(offset),
                                                           bits.begin() + static_cast<std::ptrdiff_t>(end)));
}

DeviceBuffer<std::uint16_t> poisoned(std::size_t n) {
    DeviceBuffer<std::uint16_t> b(n);
    test::poison(b);
    return b;
}

void sync() { Q4TP_CUDA_CHECK(cudaDeviceSynchronize()); }

std::vector<float> rounded_to_half(std::vector<float> v) {
    for (float& x : v) x = round_to_half(x);
    return v;
}

//! The fp16 RMSNorm semantics on top of the oracle: normalize with a unit weight (float32, from double), round to
//! fp16, multiply by the fp16 weight (exact in float) and round again.
std::vector<float> rms_norm_ref(const std::vector<float>& x, const std::vector<float>& weight, std::int64_t m,
                                std::int64_t hidden, float eps) {
    const std::vector<float> ones(static_cast<std::size_t>(hidden), 1.0f);
    std::vector<float> out(x.size());
    cpu::rms_norm(x.data(), ones.data(), m, hidden, eps, out.data());
    for (std::size_t i = 0; i < out.size(); ++i) {
        out[i] = round_to_half(weight[i % static_cast<std::size_t>(hidden)] * round_to_half(out[i]));
    }
    return out;
}

//! all_close bounds each element; this bounds how many differ at all. The reference models every fp16 rounding of
//! the kernel, so the only disagreements are values whose fp32 (kernel) and double (oracle) norms round to
//! neighbouring fp16 numbers (measured on an H200: at most 0.1%). Skipping the fp16 rounding of the normalized value
//! (R4.2) changes about a quarter of the outputs by one ulp, which the 2-ulp tolerance alone lets through.
::testing::AssertionResult mostly_exact(const std::vector<float>& out, const std::vector<float>& ref) {
    std::size_t differ = 0;
    for (std::size_t i = 0; i < out.size() && i < ref.size(); ++i) differ += out[i] != ref[i];
    if (out.size() == ref.size() && differ <= ref.size() / 20) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << differ << " of " << ref.size()
                                         << " elements differ from the fp16-rounded reference, expected at most 5%";
}

//! Expects fn to throw q4tp::Error whose message contains needle (so the right check fired).
void expect_error(const std::function<void()>& fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "expected a q4tp::Error mentioning '" << needle << "', nothing was thrown";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find(needle), std::string::npos) << "message: " << e.message();
    }
}

//! Index and values of the first difference of two bit vectors, or "" when equal.
std::string first_difference(const std::vector<std::uint16_t>& a, const std::vector<std::uint16_t>& b) {
    if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i] != b[i]) {
            return "[" + std::to_string(i) + "] " + std::to_string(half_to_float(a[i])) + " vs " +
                   std::to_string(half_to_float(b[i]));
        }
    }
    return "";
}

// Stand-ins for device pointers in the argument checks: the launchers must throw before touching them.
alignas(16) std::uint16_t g_dummy_half[64];
alignas(16) std::int32_t g_dummy_int[64];
alignas(16) float g_dummy_float[64];
__half* dummy_half() { return reinterpret_cast<__half*>(g_dummy_half); }

// ---------------------------------------------------------------------------------------------------------------
// embedding

void check_embedding(std::int64_t m, std::int64_t vocab, std::int64_t hidden, std::size_t misalign,
                     std::mt19937_64& rng) {
    SCOPED_TRACE("m = " + std::to_string(m) + ", hidden = " + std::to_string(hidden) +
                 ", misalign = " + std::to_string(misalign));
    const HalfHost table = random_half(static_cast<std::size_t>(vocab * hidden), rng);
    std::uniform_int_distribution<std::int32_t> id_dist(0, static_cast<std::int32_t>(vocab - 1));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(m));
    for (auto& id : ids) id = id_dist(rng);
    ids.front() = static_cast<std::int32_t>(vocab - 1);  // both ends of the table
    ids.back() = 0;
    std::vector<float> ref(static_cast<std::size_t>(m * hidden));
    cpu::embedding(ids.data(), m, table.values.data(), vocab, hidden, ref.data());

    std::vector<std::uint16_t> table_bits(misalign, 0);
    table_bits.insert(table_bits.end(), table.bits.begin(), table.bits.end());
    const auto d_table = test::to_device(table_bits);
    const auto d_ids = test::to_device(ids);
    auto d_out = poisoned(ref.size() + misalign);
    embedding(d_ids.data(), m, as_half(d_table, misalign), vocab, hidden, as_half(d_out, misalign), nullptr);
    sync();
    const std::vector<float> out = device_values(d_out);
    // A copy is exact; the elements before the output must still hold the poison.
    EXPECT_TRUE(test::all_close(std::vector<float>(out.begin() + static_cast<std::ptrdiff_t>(misalign), out.end()),
                                ref, 0.0, 0.0));
    for (std::size_t i = 0; i < misalign; ++i) EXPECT_TRUE(std::isnan(out[i])) << "element " << i << " overwritten";
}

TEST(EmbeddingTest, MatchesReference_LlamaSizes) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 1);
    for (const std::int64_t hidden : kHiddens) {
        for (const std::int64_t m : kRows) check_embedding(m, 257, hidden, 0, rng);
    }
}

TEST(EmbeddingTest, MatchesReference_ScalarPaths) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 2);
    for (const std::int64_t m : kRows) {
        check_embedding(m, 31, 100, 0, rng);   // hidden % 8 != 0
        check_embedding(m, 31, 4096, 1, rng);  // table and out not 16-byte aligned
        check_embedding(m, 31, 1, 0, rng);
    }
}

TEST(EmbeddingTest, Throws_BadArguments) {
    const std::int32_t* ids = g_dummy_int;
    expect_error([&] { embedding(ids, 0, dummy_half(), 10, 8, dummy_half(), nullptr); }, "m = 0");
    expect_error([&] { embedding(ids, 1, dummy_half(), 0, 8, dummy_half(), nullptr); }, "vocab = 0");
    expect_error([&] { embedding(ids, 1, dummy_half(), std::int64_t{1} << 32, 8, dummy_half(), nullptr); }, "vocab");
    expect_error([&] { embedding(ids, 1, dummy_half(), 10, -8, dummy_half(), nullptr); }, "hidden = -8");
    expect_error([&] { embedding(nullptr, 1, dummy_half(), 10, 8, dummy_half(), nullptr); }, "null");
    expect_error([&] { embedding(ids, 1, nullptr, 10, 8, dummy_half(), nullptr); }, "null");
    expect_error([&] { embedding(ids, 1, dummy_half(), 10, 8, nullptr, nullptr); }, "null");
}

// ---------------------------------------------------------------------------------------------------------------
// rms_norm and add_rms_norm

void check_rms_norm(std::int64_t m, std::int64_t hidden, float eps, float x_scale, std::size_t misalign,
                    std::mt19937_64& rng) {
    SCOPED_TRACE("m = " + std::to_string(m) + ", hidden = " + std::to_string(hidden) +
                 ", misalign = " + std::to_string(misalign) + ", x_scale = " + std::to_string(x_scale));
    const HalfHost x = random_half(static_cast<std::size_t>(m * hidden), rng, -x_scale, x_scale);
    const HalfHost w = random_half(static_cast<std::size_t>(hidden), rng, -2.0f, 2.0f);
    const std::vector<float> ref = rms_norm_ref(x.values, w.values, m, hidden, eps);

    std::vector<std::uint16_t> x_bits(misalign, 0);
    x_bits.insert(x_bits.end(), x.bits.begin(), x.bits.end());
    const auto d_x = test::to_device(x_bits);
    const auto d_w = test::to_device(w.bits);
    auto d_out = poisoned(ref.size());
    rms_norm(as_half(d_x, misalign), as_half(d_w), m, hidden, eps, as_half(d_out), nullptr);
    sync();
    const std::vector<float> out = device_values(d_out);
    EXPECT_TRUE(test::all_close(out, ref, kHalfAtol, kNormRtol));
    EXPECT_TRUE(mostly_exact(out, ref));
}

TEST(RmsNormTest, MatchesReference_LlamaSizes) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 3);
    for (const std::int64_t hidden : {64L, 4096L, 5120L, 8192L, 16384L}) {
        for (const std::int64_t m : kRows) check_rms_norm(m, hidden, 1e-6f, 1.0f, 0, rng);
    }
}

TEST(RmsNormTest, MatchesReference_ScalarPaths) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 4);
    for (const std::int64_t m : kRows) {
        check_rms_norm(m, 100, 1e-5f, 1.0f, 0, rng);   // hidden % 8 != 0
        check_rms_norm(m, 1001, 1e-5f, 1.0f, 0, rng);  // more than one element per thread
        check_rms_norm(m, 4096, 1e-5f, 1.0f, 1, rng);  // x not 16-byte aligned
        check_rms_norm(m, 1, 1e-5f, 1.0f, 0, rng);
    }
}

TEST(RmsNormTest, MatchesReference_LargeAndSmallMagnitudes) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 5);
    // |x| up to 3e4: x^2 overflows fp16 but not the fp32 accumulator. |x| ~ 1e-3: eps matters.
    check_rms_norm(7, 4096, 1e-5f, 30000.0f, 0, rng);
    check_rms_norm(7, 4096, 1e-5f, 1e-3f, 0, rng);
}

TEST(RmsNormTest, MatchesReference_OutAliasesX) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 6);
    const std::int64_t m = 7;
    for (const std::int64_t hidden : {4096L, 100L}) {
        const HalfHost x = random_half(static_cast<std::size_t>(m * hidden), rng);
        const HalfHost w = random_half(static_cast<std::size_t>(hidden), rng);
        auto d_x = test::to_device(x.bits);
        const auto d_w = test::to_device(w.bits);
        rms_norm(as_half(d_x), as_half(d_w), m, hidden, 1e-6f, as_half(d_x), nullptr);
        sync();
        EXPECT_TRUE(test::all_close(device_values(d_x), rms_norm_ref(x.values, w.values, m, hidden, 1e-6f), kHalfAtol,
                                    kNormRtol));
    }
}

TEST(RmsNormTest, Throws_BadArguments) {
    const __half* p = dummy_half();
    expect_error([&] { rms_norm(p, p, 0, 64, 1e-6f, dummy_half(), nullptr); }, "m = 0");
    expect_error([&] { rms_norm(p, p, 1, 0, 1e-6f, dummy_half(), nullptr); }, "hidden = 0");
    expect_error([&] { rms_norm(p, p, 1, 64, -1.0f, dummy_half(), nullptr); }, "eps = -1");
    expect_error([&] { rms_norm(p, p, 1, 64, NAN, dummy_half(), nullptr); }, "eps = nan");
    expect_error([&] { rms_norm(nullptr, p, 1, 64, 1e-6f, dummy_half(), nullptr); }, "null");
    expect_error([&] { rms_norm(p, nullptr, 1, 64, 1e-6f, dummy_half(), nullptr); }, "null");
    expect_error([&] { rms_norm(p, p, 1, 64, 1e-6f, nullptr, nullptr); }, "null");
}

void check_add_rms_norm(std::int64_t m, std::int64_t hidden, std::mt19937_64& rng) {
    SCOPED_TRACE("m = " + std::to_string(m) + ", hidden = " + std::to_string(hidden));
    const float eps = 1e-5f;
    const HalfHost residual = random_half(static_cast<std::size_t>(m * hidden), rng, -4.0f, 4.0f);
    const HalfHost delta = random_half(static_cast<std::size_t>(m * hidden), rng);
    const HalfHost w = random_half(static_cast<std::size_t>(hidden), rng, -2.0f, 2.0f);
    std::vector<float> sum = residual.values;
    cpu::add_inplace(sum.data(), delta.values.data(), m * hidden);
    sum = rounded_to_half(sum);  // what the kernel stores
    const std::vector<float> ref = rms_norm_ref(sum, w.values, m, hidden, eps);

    auto d_residual = test::to_device(residual.bits);
    const auto d_delta = test::to_device(delta.bits);
    const auto d_w = test::to_device(w.bits);
    auto d_out = poisoned(ref.size());
    add_rms_norm(as_half(d_residual), as_half(d_delta), as_half(d_w), m, hidden, eps, as_half(d_out), nullptr);
    sync();
    // The sum of two fp16 values is exact in float, so the stored residual must match bit for bit.
    EXPECT_TRUE(test::all_close(device_values(d_residual), sum, 0.0, 0.0));
    const std::vector<float> out = device_values(d_out);
    EXPECT_TRUE(test::all_close(out, ref, kHalfAtol, kNormRtol));
    EXPECT_TRUE(mostly_exact(out, ref));
}

TEST(AddRmsNormTest, MatchesReference_Sizes) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 7);
    for (const std::int64_t hidden : {64L, 4096L, 5120L, 8192L, 16384L, 100L}) {
        for (const std::int64_t m : kRows) check_add_rms_norm(m, hidden, rng);
    }
}

TEST(AddRmsNormTest, EqualsAddInplaceThenRmsNorm_BitForBit) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 8);
    const std::int64_t m = 3;
    for (const std::int64_t hidden : {5120L, 100L}) {
        const auto n = static_cast<std::size_t>(m * hidden);
        const HalfHost residual = random_half(n, rng, -4.0f, 4.0f);
        const HalfHost delta = random_half(n, rng);
        const HalfHost w = random_half(static_cast<std::size_t>(hidden), rng);
        auto d_fused = test::to_device(residual.bits);
        auto d_split = test::to_device(residual.bits);
        const auto d_delta = test::to_device(delta.bits);
        const auto d_w = test::to_device(w.bits);
        auto d_out_fused = poisoned(n);
        auto d_out_split = poisoned(n);
        add_rms_norm(as_half(d_fused), as_half(d_delta), as_half(d_w), m, hidden, 1e-6f, as_half(d_out_fused),
                     nullptr);
        add_inplace(as_half(d_split), as_half(d_delta), m * hidden, nullptr);
        rms_norm(as_half(d_split), as_half(d_w), m, hidden, 1e-6f, as_half(d_out_split), nullptr);
        sync();
        EXPECT_EQ(first_difference(test::to_host(d_fused), test::to_host(d_split)), "") << "hidden " << hidden;
        EXPECT_EQ(first_difference(test::to_host(d_out_fused), test::to_host(d_out_split)), "") << "hidden " << hidden;
    }
}

TEST(AddRmsNormTest, Throws_BadArguments) {
    __half* p = dummy_half();
    __half* o = dummy_half() + 8;
    expect_error([&] { add_rms_norm(p, p, p, 1, 64, 1e-6f, p, nullptr); }, "aliases residual");
    expect_error([&] { add_rms_norm(p, p, p, -1, 64, 1e-6f, o, nullptr); }, "m = -1");
    expect_error([&] { add_rms_norm(p, p, p, 1, 0, 1e-6f, o, nullptr); }, "hidden = 0");
    expect_error([&] { add_rms_norm(p, p, p, 1, 64, INFINITY, o, nullptr); }, "eps = inf");
    expect_error([&] { add_rms_norm(nullptr, p, p, 1, 64, 1e-6f, o, nullptr); }, "null");
    expect_error([&] { add_rms_norm(p, nullptr, p, 1, 64, 1e-6f, o, nullptr); }, "null");
    expect_error([&] { add_rms_norm(p, p, nullptr, 1, 64, 1e-6f, o, nullptr); }, "null");
}

// ---------------------------------------------------------------------------------------------------------------
// silu_mul and add_inplace

void check_silu_mul(std::int64_t count, std::size_t misalign, const HalfHost& gate, const HalfHost& up) {
    SCOPED_TRACE("count = " + std::to_string(count) + ", misalign = " + std::to_string(misalign));
    std::vector<float> ref(static_cast<std::size_t>(count));
    cpu::silu_mul(gate.values.data(), up.values.data(), count, ref.data());
    std::vector<std::uint16_t> gate_bits(misalign, 0);
    gate_bits.insert(gate_bits.end(), gate.bits.begin(), gate.bits.end());
    const auto d_gate = test::to_device(gate_bits);
    const auto d_up = test::to_device(up.bits);
    auto d_out = poisoned(ref.size());
    silu_mul(as_half(d_gate, misalign), as_half(d_up), count, as_half(d_out), nullptr);
    sync();
    EXPECT_TRUE(test::all_close(device_values(d_out), ref, kHalfAtol, kHalfRtol));
}

std::vector<std::int64_t> elementwise_counts() {
    std::vector<std::int64_t> counts = {1, 7, 9, 1001};  // below one vector, tails
    for (const std::int64_t m : kRows) {
        for (const std::int64_t n : {64L, 4096L, 5120L, 8192L, 11008L}) counts.push_back(m * n);
    }
    return counts;
}

TEST(SiluMulTest, MatchesReference_Sizes) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 9);
    for (const std::int64_t count : elementwise_counts()) {
        const auto n = static_cast<std::size_t>(count);
        // Gates over [-12, 12]: both saturated ends of silu; up over [-2, 2].
        check_silu_mul(count, 0, random_half(n, rng, -12.0f, 12.0f), random_half(n, rng, -2.0f, 2.0f));
    }
}

TEST(SiluMulTest, MatchesReference_UnalignedAndExtremeGates) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 10);
    check_silu_mul(4096 * 3, 1, random_half(4096 * 3, rng, -12.0f, 12.0f), random_half(4096 * 3, rng));
    // The fp16 extremes: exp(-g) overflows fp32 for g < -88, where silu must be -0, not NaN; silu(65504) * up stays
    // finite for |up| <= 0.5.
    HalfHost gate = random_half(1024, rng, -65504.0f, 65504.0f);
    const std::vector<float> fixed = {-65504.0f, 65504.0f, -100.0f, 100.0f, -88.5f, 88.5f, -1e-7f, 6e-8f};
    for (std::size_t i = 0; i < fixed.size(); ++i) {
        gate.bits[i] = float_to_half(fixed[i]);
        gate.values[i] = half_to_float(gate.bits[i]);
    }
    check_silu_mul(1024, 0, gate, random_half(1024, rng, -0.5f, 0.5f));
}

TEST(SiluMulTest, MatchesReference_OutAliasesGate) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 11);
    const std::int64_t count = 11008 + 5;
    const HalfHost gate = random_half(count, rng, -8.0f, 8.0f);
    const HalfHost up = random_half(count, rng);
    std::vector<float> ref(count);
    cpu::silu_mul(gate.values.data(), up.values.data(), count, ref.data());
    auto d_gate = test::to_device(gate.bits);
    const auto d_up = test::to_device(up.bits);
    silu_mul(as_half(d_gate), as_half(d_up), count, as_half(d_gate), nullptr);
    sync();
    EXPECT_TRUE(test::all_close(device_values(d_gate), ref, kHalfAtol, kHalfRtol));
}

TEST(SiluMulTest, Throws_BadArguments) {
    __half* p = dummy_half();
    expect_error([&] { silu_mul(p, p, 0, p, nullptr); }, "count = 0");
    expect_error([&] { silu_mul(nullptr, p, 8, p, nullptr); }, "null");
    expect_error([&] { silu_mul(p, nullptr, 8, p, nullptr); }, "null");
    expect_error([&] { silu_mul(p, p, 8, nullptr, nullptr); }, "null");
}

void check_add_inplace(std::int64_t count, std::size_t misalign, std::mt19937_64& rng) {
    SCOPED_TRACE("count = " + std::to_string(count) + ", misalign = " + std::to_string(misalign));
    const auto n = static_cast<std::size_t>(count);
    const HalfHost x = random_half(n, rng, -8.0f, 8.0f);
    const HalfHost y = random_half(n, rng);
    std::vector<float> ref = x.values;
    cpu::add_inplace(ref.data(), y.values.data(), count);
    ref = rounded_to_half(ref);
    std::vector<std::uint16_t> x_bits(misalign, 0);
    x_bits.insert(x_bits.end(), x.bits.begin(), x.bits.end());
    auto d_x = test::to_device(x_bits);
    const auto d_y = test::to_device(y.bits);
    add_inplace(as_half(d_x, misalign), as_half(d_y), count, nullptr);
    sync();
    // fp16 + fp16 is exact in float, so one rounding to fp16 must agree bit for bit.
    EXPECT_TRUE(test::all_close(device_values(d_x, misalign), ref, 0.0, 0.0));
}

TEST(AddInplaceTest, MatchesReference_Sizes) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 12);
    for (const std::int64_t count : elementwise_counts()) check_add_inplace(count, 0, rng);
    check_add_inplace(4096 * 7, 3, rng);
}

TEST(AddInplaceTest, DoublesValues_WhenYAliasesX) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 13);
    const HalfHost x = random_half(5120 + 3, rng);
    auto d_x = test::to_device(x.bits);
    add_inplace(as_half(d_x), as_half(d_x), static_cast<std::int64_t>(x.bits.size()), nullptr);
    sync();
    std::vector<float> ref = x.values;
    for (float& v : ref) v *= 2.0f;
    EXPECT_TRUE(test::all_close(device_values(d_x), ref, 0.0, 0.0));
}

TEST(AddInplaceTest, Throws_BadArguments) {
    __half* p = dummy_half();
    expect_error([&] { add_inplace(p, p, -3, nullptr); }, "count = -3");
    expect_error([&] { add_inplace(nullptr, p, 8, nullptr); }, "null");
    expect_error([&] { add_inplace(p, nullptr, 8, nullptr); }, "null");
}

// ---------------------------------------------------------------------------------------------------------------
// rope_append_kv

struct RopeCase {
    std::int64_t head_dim;
    std::int64_t num_heads;
    std::int64_t num_kv_heads;
    std::vector<std::int32_t> positions;
    std::int64_t capacity;
    RopeType type = RopeType::Default;
};

std::string describe(const RopeCase& c) {
    return "d = " + std::to_string(c.head_dim) + ", nh = " + std::to_string(c.num_heads) +
           ", nkv = " + std::to_string(c.num_kv_heads) + ", m = " + std::to_string(c.positions.size()) +
           ", first position " + std::to_string(c.positions.front()) + ", capacity = " + std::to_string(c.capacity) +
           ", rope " + to_string(c.type);
}

cpu::RopeFrequencies frequencies_for(const RopeCase& c) {
    ModelConfig config;
    config.head_dim = c.head_dim;
    config.rope_scaling.type = c.type;
    switch (c.type) {
        case RopeType::Default:
            config.rope_theta = 10000.0;
            break;
        case RopeType::Llama3:
            config.rope_theta = 500000.0;
            config.rope_scaling.factor = 8.0;
            config.rope_scaling.original_max_position_embeddings = 8192;
            break;
        case RopeType::Yarn:  // attention_scaling = 0.1 ln 4 + 1 != 1
            config.rope_scaling.factor = 4.0;
            config.max_position_embeddings = 4096;
            break;
        case RopeType::Linear:
        case RopeType::Dynamic:
            config.rope_scaling.factor = 2.0;
            break;
    }
    return cpu::rope_inv_freq(config);
}

void check_rope(const RopeCase& c, std::mt19937_64& rng) {
    SCOPED_TRACE(describe(c));
    const auto m = static_cast<std::int64_t>(c.positions.size());
    const std::int64_t d = c.head_dim;
    const std::int64_t nkv = c.num_kv_heads;
    const cpu::RopeFrequencies freqs = frequencies_for(c);
    const HalfHost q = random_half(static_cast<std::size_t>(m * c.num_heads * d), rng);
    const HalfHost k = random_half(static_cast<std::size_t>(m * nkv * d), rng);
    const HalfHost v = random_half(static_cast<std::size_t>(m * nkv * d), rng);

    // Oracle: rotate q and k, then append each token's k and v at its own position (rows never written stay NaN).
    std::vector<float> q_ref = q.values;
    cpu::apply_rope(q_ref.data(), c.positions.data(), m, c.num_heads, d, freqs.inv_freq.data(),
                    freqs.attention_scaling);
    std::vector<float> k_rot = k.values;
    cpu::apply_rope(k_rot.data(), c.positions.data(), m, nkv, d, freqs.inv_freq.data(), freqs.attention_scaling);
    const auto cache_size = static_cast<std::size_t>(nkv * c.capacity * d);
    std::vector<float> k_cache_ref(cache_size, NAN);
    std::vector<float> v_cache_ref(cache_size, NAN);
    for (std::int64_t t = 0; t < m; ++t) {
        cpu::append_kv(k_rot.data() + t * nkv * d, v.values.data() + t * nkv * d, k_cache_ref.data(),
                       v_cache_ref.data(), c.capacity, c.positions[static_cast<std::size_t>(t)], 1, nkv, d);
    }

    auto d_q = test::to_device(q.bits);
    const auto d_k = test::to_device(k.bits);
    const auto d_v = test::to_device(v.bits);
    auto d_k_cache = poisoned(cache_size);
    auto d_v_cache = poisoned(cache_size);
    const auto d_positions = test::to_device(c.positions);
    const auto d_inv_freq = test::to_device(freqs.inv_freq);
    RopeAppendKvParams p;
    p.q = as_half(d_q);
    p.k = as_half(d_k);
    p.v = as_half(d_v);
    p.k_cache = as_half(d_k_cache);
    p.v_cache = as_half(d_v_cache);
    p.positions = d_positions.data();
    p.inv_freq = d_inv_freq.data();
    p.attention_scaling = freqs.attention_scaling;
    p.m = m;
    p.num_heads = c.num_heads;
    p.num_kv_heads = nkv;
    p.head_dim = d;
    p.capacity = c.capacity;
    rope_append_kv(p, nullptr);
    sync();

    EXPECT_TRUE(test::all_close(device_values(d_q), q_ref, kHalfAtol, kHalfRtol)) << "q";
    // Written rows against the oracle (v exactly: it is a copy); every other row must still hold the poison.
    const std::vector<float> k_cache = device_values(d_k_cache);
    const std::vector<float> v_cache = device_values(d_v_cache);
    std::vector<float> k_got, k_want, v_got, v_want;
    std::size_t stray = 0;
    for (std::size_t i = 0; i < cache_size; ++i) {
        if (std::isnan(k_cache_ref[i])) {
            stray += !std::isnan(k_cache[i]) || !std::isnan(v_cache[i]);
            continue;
        }
        k_got.push_back(k_cache[i]);
        k_want.push_back(k_cache_ref[i]);
        v_got.push_back(v_cache[i]);
        v_want.push_back(v_cache_ref[i]);
    }
    EXPECT_EQ(k_want.size(), static_cast<std::size_t>(m * nkv * d));
    EXPECT_TRUE(test::all_close(k_got, k_want, kHalfAtol, kHalfRtol)) << "k_cache";
    EXPECT_TRUE(test::all_close(v_got, v_want, 0.0, 0.0)) << "v_cache";
    EXPECT_EQ(stray, 0u) << "cache elements written outside the token rows";
}

std::vector<std::int32_t> consecutive(std::int32_t first, std::int64_t m) {
    std::vector<std::int32_t> p(static_cast<std::size_t>(m));
    for (std::size_t t = 0; t < p.size(); ++t) p[t] = first + static_cast<std::int32_t>(t);
    return p;
}

TEST(RopeAppendKvTest, MatchesReference_HeadDimsAndGqa) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 14);
    std::uniform_int_distribution<std::int32_t> past_dist(1, 3000);
    for (const std::int64_t d : {64L, 128L}) {
        for (const auto& [nh, nkv] : {std::pair{32L, 8L}, std::pair{8L, 2L}}) {
            for (const std::int64_t m : {1L, 3L, 17L}) {
                const std::int32_t past = past_dist(rng);
                const RopeType type = d == 64 ? RopeType::Default : RopeType::Llama3;
                check_rope(RopeCase{d, nh, nkv, consecutive(past, m), past + m + 5, type}, rng);
            }
        }
    }
}

TEST(RopeAppendKvTest, MatchesReference_ScatteredPositionsAtCacheBounds) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 15);
    // Rows 0 and capacity - 1 included, out of order: the cache row is the position, not the token index.
    const std::int64_t capacity = 200;
    std::vector<std::int32_t> all(static_cast<std::size_t>(capacity));
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::int32_t>(i);
    std::shuffle(all.begin() + 1, all.end() - 1, rng);
    std::vector<std::int32_t> positions = {static_cast<std::int32_t>(capacity - 1)};
    positions.insert(positions.end(), all.begin() + 1, all.begin() + 16);
    positions.push_back(0);
    check_rope(RopeCase{128, 8, 2, positions, capacity, RopeType::Default}, rng);
    check_rope(RopeCase{64, 32, 8, {static_cast<std::int32_t>(capacity - 1)}, capacity, RopeType::Default}, rng);
}

TEST(RopeAppendKvTest, MatchesReference_YarnAttentionScaling) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 16);
    check_rope(RopeCase{128, 8, 2, consecutive(40, 3), 64, RopeType::Yarn}, rng);
    check_rope(RopeCase{64, 8, 8, consecutive(0, 7), 7, RopeType::Yarn}, rng);  // MHA, the cache exactly full
}

TEST(RopeAppendKvTest, MatchesReference_LongContextPositions) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 17);
    // Angles of ~1e5 rad, the far end of the range where a sincos without full range reduction goes wrong.
    check_rope(RopeCase{128, 4, 1, consecutive(100000, 3), 100008, RopeType::Default}, rng);
}

TEST(RopeAppendKvTest, Throws_BadArguments) {
    RopeAppendKvParams good;
    good.q = dummy_half();
    good.k = dummy_half();
    good.v = dummy_half();
    good.k_cache = dummy_half();
    good.v_cache = dummy_half();
    good.positions = g_dummy_int;
    good.inv_freq = g_dummy_float;
    good.m = 1;
    good.num_heads = 8;
    good.num_kv_heads = 2;
    good.head_dim = 64;
    good.capacity = 16;
    auto expect = [&](const std::function<void(RopeAppendKvParams&)>& edit, const std::string& needle) {
        RopeAppendKvParams p = good;
        edit(p);
        expect_error([&] { rope_append_kv(p, nullptr); }, needle);
    };
    expect([](RopeAppendKvParams& p) { p.m = 0; }, "m = 0");
    expect([](RopeAppendKvParams& p) { p.num_kv_heads = 3; }, "num_kv_heads = 3");
    expect([](RopeAppendKvParams& p) { p.num_heads = 0; }, "num_heads = 0");
    expect([](RopeAppendKvParams& p) { p.head_dim = 63; }, "head_dim = 63");
    expect([](RopeAppendKvParams& p) { p.capacity = 0; }, "capacity = 0");
    expect([](RopeAppendKvParams& p) { p.attention_scaling = 0.0f; }, "attention_scaling = 0");
    expect([](RopeAppendKvParams& p) { p.positions = nullptr; }, "null");
    expect([](RopeAppendKvParams& p) { p.inv_freq = nullptr; }, "null");
    expect([](RopeAppendKvParams& p) { p.k_cache = nullptr; }, "null");
    expect([](RopeAppendKvParams& p) { p.q = nullptr; }, "null");
}

// ---------------------------------------------------------------------------------------------------------------
// CUDA graph capture

TEST(OpsGraphTest, CapturedSequenceReplaysLikeEager_WithNewDeviceIdsAndPositions) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test::test_seed() + 18);
    const std::int64_t m = 3, hidden = 512, vocab = 50, nh = 8, nkv = 2, d = 64, capacity = 64;
    const auto mh = static_cast<std::size_t>(m * hidden);
    const HalfHost table = random_half(static_cast<std::size_t>(vocab * hidden), rng);
    const HalfHost delta = random_half(mh, rng);
    const HalfHost w = random_half(static_cast<std::size_t>(hidden), rng);
    const HalfHost up = random_half(mh, rng);
    const HalfHost q0 = random_half(static_cast<std::size_t>(m * nh * d), rng);
    const HalfHost k = random_half(static_cast<std::size_t>(m * nkv * d), rng);
    const HalfHost v = random_half(static_cast<std::size_t>(m * nkv * d), rng);
    ModelConfig config;
    config.head_dim = d;
    const std::vector<float> inv_freq = cpu::rope_inv_freq(config).inv_freq;
    const std::vector<std::vector<std::int32_t>> step_ids = {{1, 49, 7}, {22, 0, 22}};
    const std::vector<std::vector<std::int32_t>> step_positions = {{10, 11, 12}, {40, 63, 0}};

    const auto d_table = test::to_device(table.bits);
    const auto d_delta = test::to_device(delta.bits);
    const auto d_w = test::to_device(w.bits);
    const auto d_up = test::to_device(up.bits);
    const auto d_q0 = test::to_device(q0.bits);
    const auto d_k = test::to_device(k.bits);
    const auto d_v = test::to_device(v.bits);
    const auto d_inv_freq = test::to_device(inv_freq);
    DeviceBuffer<std::int32_t> d_ids(static_cast<std::size_t>(m));
    DeviceBuffer<std::int32_t> d_positions(static_cast<std::size_t>(m));
    DeviceBuffer<std::uint16_t> d_residual(mh), d_normed(mh), d_act(mh), d_q(q0.bits.size());
    DeviceBuffer<std::uint16_t> d_k_cache(static_cast<std::size_t>(nkv * capacity * d));
    DeviceBuffer<std::uint16_t> d_v_cache(d_k_cache.size());
    CudaStream stream;

    RopeAppendKvParams rope;
    rope.q = as_half(d_q);
    rope.k = as_half(d_k);
    rope.v = as_half(d_v);
    rope.k_cache = as_half(d_k_cache);
    rope.v_cache = as_half(d_v_cache);
    rope.positions = d_positions.data();
    rope.inv_freq = d_inv_freq.data();
    rope.m = m;
    rope.num_heads = nh;
    rope.num_kv_heads = nkv;
    rope.head_dim = d;
    rope.capacity = capacity;
    // One decoder-layer-shaped sequence; every buffer it reads is restored or rewritten inside it, so a replay
    // depends only on the device-side ids and positions.
    auto sequence = [&] {
        const cudaStream_t s = stream.get();
        embedding(d_ids.data(), m, as_half(d_table), vocab, hidden, as_half(d_residual), s);
        add_rms_norm(as_half(d_residual), as_half(d_delta), as_half(d_w), m, hidden, 1e-6f, as_half(d_normed), s);
        Q4TP_CUDA_CHECK(cudaMemcpyAsync(d_q.data(), d_q0.data(), d_q0.bytes(), cudaMemcpyDeviceToDevice, s));
        rope_append_kv(rope, s);
        silu_mul(as_half(d_normed), as_half(d_up), m * hidden, as_half(d_act), s);
        add_inplace(as_half(d_residual), as_half(d_act), m * hidden, s);
    };
    auto prepare_step = [&](std::size_t step) {
        Q4TP_CUDA_CHECK(cudaMemcpyAsync(d_ids.data(), step_ids[step].data(), d_ids.bytes(), cudaMemcpyHostToDevice,
                                        stream.get()));
        Q4TP_CUDA_CHECK(cudaMemcpyAsync(d_positions.data(), step_positions[step].data(), d_positions.bytes(),
                                        cudaMemcpyHostToDevice, stream.get()));
        Q4TP_CUDA_CHECK(cudaMemsetAsync(d_k_cache.data(), 0xFF, d_k_cache.bytes(), stream.get()));
        Q4TP_CUDA_CHECK(cudaMemsetAsync(d_v_cache.data(), 0xFF, d_v_cache.bytes(), stream.get()));
        for (auto* b : {&d_residual, &d_normed, &d_act, &d_q}) {
            Q4TP_CUDA_CHECK(cudaMemsetAsync(b->data(), 0xFF, b->bytes(), stream.get()));
        }
    };
    auto outputs = [&] {
        stream.synchronize();
        std::vector<std::vector<std::uint16_t>> out;
        for (const auto* b : {&d_residual, &d_normed, &d_act, &d_q, &d_k_cache, &d_v_cache}) {
            out.push_back(test::to_host(*b));
        }
        return out;
    };
    const char* names[] = {"residual", "normed", "act", "q", "k_cache", "v_cache"};

    std::vector<std::vector<std::vector<std::uint16_t>>> eager;
    for (std::size_t step = 0; step < 2; ++step) {
        prepare_step(step);
        sequence();
        eager.push_back(outputs());
    }
    // The steps differ, so equality below cannot come from a graph that ignores its device inputs.
    ASSERT_NE(first_difference(eager[0][0], eager[1][0]), "");
    ASSERT_NE(first_difference(eager[0][4], eager[1][4]), "");

    test::CudaGraph graph;
    graph.capture(stream.get(), sequence);
    for (std::size_t step = 0; step < 2; ++step) {
        prepare_step(step);
        graph.launch(stream.get());
        const auto replay = outputs();
        for (std::size_t i = 0; i < replay.size(); ++i) {
            EXPECT_EQ(first_difference(replay[i], eager[step][i]), "") << names[i] << ", step " << step;
        }
    }
}

}  // namespace
}  // namespace q4tp::kernels::cuda
