// Tests of the float32 reference ops in kernels/cpu. Each op is checked against a straightforward
// double-precision computation written here with a different structure (explicit rotate_half vectors,
// repeat_kv expansion and a mask matrix, tanh-based sigmoid, ...), on seeded random non-zero data and odd
// sizes, with outputs poisoned by NaN before the call; plus the published numbers of docs/formats.md and
// values printed by transformers' rope functions in torch 2.x.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/base/model_config.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/softmax.h"

namespace q4tp::kernels::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ---- helpers --------------------------------------------------------------------------------------------

//! Uniform values in [-scale, scale] with |v| >= scale / 100, so that no input is (nearly) zero.
std::vector<float> random_values(std::size_t count, std::mt19937& rng, float scale = 1.0f) {
    std::uniform_real_distribution<float> magnitude(0.01f * scale, scale);
    std::bernoulli_distribution negative(0.5);
    std::vector<float> values(count);
    for (float& v : values) v = negative(rng) ? -magnitude(rng) : magnitude(rng);
    return values;
}

std::vector<float> poisoned(std::size_t count) {
    return std::vector<float>(count, kNaN);
}

std::size_t as_size(std::int64_t n) {
    return static_cast<std::size_t>(n);
}

//! |got - want| <= atol + rtol |want| everywhere, got finite; prints the first few mismatches with indices.
void expect_close(
    const std::vector<float>& got, const std::vector<double>& want, double rtol, double atol, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    int reported = 0;
    int bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double err = std::abs(static_cast<double>(got[i]) - want[i]);
        if (!std::isfinite(got[i]) || !(err <= atol + rtol * std::abs(want[i]))) {
            ++bad;
            if (reported++ < 5) {
                ADD_FAILURE() << what << ": [" << i << "] got " << got[i] << ", want " << want[i] << " (error " << err
                              << ")";
            }
        }
    }
    EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << got.size() << " values out of tolerance";
}

void expect_all_finite(const std::vector<float>& values, const std::string& what) {
    const auto it = std::find_if(values.begin(), values.end(), [](float v) { return !std::isfinite(v); });
    EXPECT_EQ(it, values.end()) << what << ": non-finite value at index " << (it - values.begin());
}

//! Runs f, which must throw q4tp::Error whose message contains every needle.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& needles) {
    try {
        f();
    } catch (const Error& e) {
        for (const std::string& needle : needles) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
                << "message '" << e.what() << "' does not mention '" << needle << "'";
        }
        return;
    }
    ADD_FAILURE() << "expected q4tp::Error mentioning '" << (needles.empty() ? "" : needles.front()) << "'";
}

// ---- embedding ------------------------------------------------------------------------------------------

TEST(EmbeddingTest, CopiesTableRows_RandomIds) {
    std::mt19937 rng(11);
    const std::int64_t vocab = 37;
    const std::int64_t hidden = 19;
    const std::vector<float> table = random_values(as_size(vocab * hidden), rng);
    for (const std::int64_t m : {1, 3, 7}) {
        std::vector<std::int32_t> ids(as_size(m));
        std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(vocab - 1));
        for (auto& id : ids) id = pick(rng);
        ids.front() = static_cast<std::int32_t>(vocab - 1);  // the last row is reachable
        std::vector<float> out = poisoned(as_size(m * hidden));
        embedding(ids.data(), m, table.data(), vocab, hidden, out.data());
        for (std::int64_t t = 0; t < m; ++t) {
            for (std::int64_t j = 0; j < hidden; ++j) {
                ASSERT_EQ(out[as_size(t * hidden + j)], table[as_size(ids[as_size(t)] * hidden + j)])
                    << "row " << t << " col " << j;
            }
        }
    }
}

TEST(EmbeddingTest, Throws_IdOutOfRange) {
    std::mt19937 rng(12);
    const std::vector<float> table = random_values(5 * 4, rng);
    std::vector<float> out(2 * 4, 7.0f);
    const std::vector<std::int32_t> too_big{1, 5};
    expect_error([&] { embedding(too_big.data(), 2, table.data(), 5, 4, out.data()); }, {"token id 5", "position 1"});
    const std::vector<std::int32_t> negative{-3, 0};
    expect_error([&] { embedding(negative.data(), 2, table.data(), 5, 4, out.data()); }, {"token id -3", "[0, 5)"});
    EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float v) { return v == 7.0f; })) << "out written on error";
    expect_error([&] { embedding(too_big.data(), 0, table.data(), 5, 4, out.data()); }, {"m = 0"});
}

// ---- rms_norm -------------------------------------------------------------------------------------------

//! y = w * x / sqrt(sum(x^2) / n + eps), spelled with an explicit root-mean-square.
std::vector<double> rms_norm_reference(
    const std::vector<float>& x, const std::vector<float>& w, std::int64_t m, std::int64_t n, double eps) {
    std::vector<double> y(x.size());
    for (std::int64_t r = 0; r < m; ++r) {
        double mean_sq = 0.0;
        for (std::int64_t j = 0; j < n; ++j) mean_sq += std::pow(static_cast<double>(x[as_size(r * n + j)]), 2.0);
        mean_sq /= static_cast<double>(n);
        const double rms = std::sqrt(mean_sq + eps);
        for (std::int64_t j = 0; j < n; ++j) y[as_size(r * n + j)] = w[as_size(j)] * (x[as_size(r * n + j)] / rms);
    }
    return y;
}

TEST(RmsNormTest, MatchesReference_OddSizes) {
    std::mt19937 rng(21);
    const float eps = 1e-5f;
    for (const std::int64_t m : {1, 3, 7}) {
        for (const std::int64_t n : {1, 5, 64, 129, 4096}) {
            const std::vector<float> x = random_values(as_size(m * n), rng, 3.0f);
            const std::vector<float> w = random_values(as_size(n), rng);
            std::vector<float> y = poisoned(x.size());
            rms_norm(x.data(), w.data(), m, n, eps, y.data());
            // Two float32 roundings (normalized value, then the weight product): 2^-23 relative at most.
            expect_close(y, rms_norm_reference(x, w, m, n, eps), 1.2e-7, 1e-30,
                         "rms_norm m=" + std::to_string(m) + " n=" + std::to_string(n));
        }
    }
}

TEST(RmsNormTest, InPlace_EqualsOutOfPlace) {
    std::mt19937 rng(22);
    std::vector<float> x = random_values(3 * 33, rng);
    const std::vector<float> w = random_values(33, rng);
    std::vector<float> y = poisoned(x.size());
    rms_norm(x.data(), w.data(), 3, 33, 1e-6f, y.data());
    rms_norm(x.data(), w.data(), 3, 33, 1e-6f, x.data());
    EXPECT_EQ(x, y);
}

TEST(RmsNormTest, ZeroRow_GivesZerosThroughEps) {
    const std::vector<float> x(8, 0.0f);
    const std::vector<float> w(8, 2.0f);
    std::vector<float> y = poisoned(8);
    rms_norm(x.data(), w.data(), 1, 8, 1e-5f, y.data());
    for (float v : y) EXPECT_EQ(v, 0.0f);
}

TEST(RmsNormTest, Throws_BadArguments) {
    const std::vector<float> x(4, 1.0f);
    std::vector<float> y(4);
    expect_error([&] { rms_norm(x.data(), x.data(), 1, 0, 1e-5f, y.data()); }, {"[1, 0]"});
    expect_error([&] { rms_norm(x.data(), x.data(), 1, 4, -1.0f, y.data()); }, {"eps = -1"});
    expect_error([&] { rms_norm(nullptr, x.data(), 1, 4, 1e-5f, y.data()); }, {"null"});
}

// ---- linear ---------------------------------------------------------------------------------------------

//! y = x . w (+ b) computed column by column: for each output j, walk column j of w.
std::vector<double> matmul_reference(const std::vector<float>& x,
                                     const std::vector<float>& w,
                                     std::int64_t m,
                                     std::int64_t k,
                                     std::int64_t n,
                                     const float* bias) {
    std::vector<double> y(as_size(m * n));
    for (std::int64_t j = 0; j < n; ++j) {
        std::vector<double> column(as_size(k));
        for (std::int64_t l = 0; l < k; ++l) column[as_size(l)] = w[as_size(l * n + j)];
        for (std::int64_t i = 0; i < m; ++i) {
            double sum = bias ? bias[j] : 0.0;
            for (std::int64_t l = k - 1; l >= 0; --l) sum += x[as_size(i * k + l)] * column[as_size(l)];
            y[as_size(i * n + j)] = sum;
        }
    }
    return y;
}

TEST(LinearTest, Matmul_MatchesReference_OddSizes) {
    std::mt19937 rng(31);
    for (const std::int64_t m : {1, 3, 7}) {
        for (const std::int64_t k : {1, 33, 130}) {
            for (const std::int64_t n : {1, 17, 64}) {
                const std::vector<float> x = random_values(as_size(m * k), rng);
                const std::vector<float> w = random_values(as_size(k * n), rng);
                const std::vector<float> b = random_values(as_size(n), rng);
                for (const bool with_bias : {false, true}) {
                    const float* bias = with_bias ? b.data() : nullptr;
                    std::vector<float> y = poisoned(as_size(m * n));
                    matmul(x.data(), w.data(), m, k, n, y.data(), bias);
                    // Double accumulation leaves only the final float32 rounding.
                    expect_close(y, matmul_reference(x, w, m, k, n, bias), 6e-8, 1e-12,
                                 "matmul m=" + std::to_string(m) + " k=" + std::to_string(k) +
                                     " n=" + std::to_string(n) + (with_bias ? " +bias" : ""));
                }
            }
        }
    }
}

TEST(LinearTest, MatmulTransposedB_EqualsMatmulOfTranspose) {
    std::mt19937 rng(32);
    for (const std::int64_t m : {1, 3, 7}) {
        const std::int64_t k = 45;
        const std::int64_t n = 29;
        const std::vector<float> x = random_values(as_size(m * k), rng);
        const std::vector<float> w_nk = random_values(as_size(n * k), rng);  // lm_head layout [V][H]
        const std::vector<float> b = random_values(as_size(n), rng);
        std::vector<float> w_kn(w_nk.size());
        for (std::int64_t j = 0; j < n; ++j) {
            for (std::int64_t l = 0; l < k; ++l) w_kn[as_size(l * n + j)] = w_nk[as_size(j * k + l)];
        }
        std::vector<float> y_t = poisoned(as_size(m * n));
        matmul_transposed_b(x.data(), w_nk.data(), m, k, n, y_t.data(), b.data());
        expect_close(y_t, matmul_reference(x, w_kn, m, k, n, b.data()), 6e-8, 1e-12, "matmul_transposed_b");
        // Both sum the same products in the same order in double, so they agree bit for bit.
        std::vector<float> y = poisoned(as_size(m * n));
        matmul(x.data(), w_kn.data(), m, k, n, y.data(), b.data());
        EXPECT_EQ(y_t, y);
    }
}

TEST(LinearTest, Throws_BadSizes) {
    const std::vector<float> a(4, 1.0f);
    std::vector<float> y(4);
    expect_error([&] { matmul(a.data(), a.data(), 2, 0, 2, y.data(), nullptr); }, {"matmul", "k = 0"});
    expect_error([&] { matmul_transposed_b(a.data(), a.data(), -1, 2, 2, y.data(), nullptr); },
                 {"matmul_transposed_b", "m = -1"});
}

// ---- activation and elementwise -------------------------------------------------------------------------

TEST(SiluMulTest, MatchesTanhSigmoidReference) {
    std::mt19937 rng(41);
    for (const std::int64_t count : {1, 7, 1000}) {
        const std::vector<float> gate = random_values(as_size(count), rng, 12.0f);
        const std::vector<float> up = random_values(as_size(count), rng, 3.0f);
        std::vector<double> want(as_size(count));
        for (std::size_t i = 0; i < want.size(); ++i) {
            const double g = gate[i];
            const double sigmoid = 0.5 * (1.0 + std::tanh(0.5 * g));  // an independent route to sigmoid
            want[i] = g * sigmoid * up[i];
        }
        std::vector<float> out = poisoned(as_size(count));
        silu_mul(gate.data(), up.data(), count, out.data());
        // One rounding in the op; tanh's route differs from exp's by a few double ulps, far below 1e-9.
        expect_close(out, want, 6e-8, 1e-30, "silu_mul count=" + std::to_string(count));
    }
}

TEST(SiluMulTest, ExtremeGates_StayFinite) {
    const std::vector<float> gate{-1e30f, -100.0f, 0.0f, 100.0f, 1e30f};
    const std::vector<float> up{3.0f, 3.0f, 3.0f, 3.0f, 1.0f};
    std::vector<float> out = poisoned(gate.size());
    silu_mul(gate.data(), up.data(), 5, out.data());
    expect_all_finite(out, "silu_mul extremes");
    EXPECT_EQ(out[0], 0.0f);
    EXPECT_NEAR(out[1], 0.0f, 1e-39f);
    EXPECT_EQ(out[2], 0.0f);
    EXPECT_EQ(out[3], 300.0f);
    EXPECT_EQ(out[4], 1e30f);
}

TEST(SiluMulTest, InPlace_EqualsOutOfPlace) {
    std::mt19937 rng(42);
    std::vector<float> gate = random_values(31, rng, 5.0f);
    const std::vector<float> up = random_values(31, rng);
    std::vector<float> out = poisoned(31);
    silu_mul(gate.data(), up.data(), 31, out.data());
    silu_mul(gate.data(), up.data(), 31, gate.data());
    EXPECT_EQ(gate, out);
    expect_error([&] { silu_mul(gate.data(), up.data(), 0, out.data()); }, {"count = 0"});
}

TEST(AddInplaceTest, AddsElementwise) {
    std::mt19937 rng(43);
    for (const std::int64_t count : {1, 7, 513}) {
        std::vector<float> x = random_values(as_size(count), rng, 10.0f);
        const std::vector<float> y = random_values(as_size(count), rng, 10.0f);
        std::vector<double> want(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) want[i] = static_cast<double>(x[i]) + y[i];
        add_inplace(x.data(), y.data(), count);
        expect_close(x, want, 6e-8, 0.0, "add_inplace count=" + std::to_string(count));
    }
    std::vector<float> x{1.0f};
    expect_error([&] { add_inplace(x.data(), x.data(), -2); }, {"count = -2"});
}

// ---- softmax and argmax ---------------------------------------------------------------------------------

TEST(SoftmaxTest, MatchesLongDoubleReference) {
    std::mt19937 rng(51);
    for (const std::int64_t n : {1, 5, 1000}) {
        const std::vector<float> x = random_values(as_size(n), rng, 20.0f);
        // Without the max shift: |x| <= 20 cannot overflow, so this is a different but valid route.
        long double total = 0.0L;
        for (float v : x) total += std::exp(static_cast<long double>(v));
        std::vector<double> want(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) {
            want[i] = static_cast<double>(std::exp(static_cast<long double>(x[i])) / total);
        }
        std::vector<float> y = poisoned(x.size());
        softmax(x.data(), n, y.data());
        expect_close(y, want, 1e-7, 1e-30, "softmax n=" + std::to_string(n));
        double sum = 0.0;
        for (float p : y) sum += p;
        EXPECT_NEAR(sum, 1.0, 1e-6);
    }
}

TEST(SoftmaxTest, LargeLogits_NoOverflow) {
    std::vector<float> x{10000.0f, 9999.0f, -kInf};
    softmax(x.data(), 3, x.data());  // in place
    const double e = std::exp(-1.0);
    EXPECT_NEAR(x[0], 1.0 / (1.0 + e), 1e-7);
    EXPECT_NEAR(x[1], e / (1.0 + e), 1e-7);
    EXPECT_EQ(x[2], 0.0f);
}

TEST(SoftmaxTest, Throws_NoFiniteEntryOrNaN) {
    std::vector<float> y(3);
    const std::vector<float> masked{-kInf, -kInf, -kInf};
    expect_error([&] { softmax(masked.data(), 3, y.data()); }, {"all 3 entries are -inf"});
    const std::vector<float> nan{0.0f, kNaN, 1.0f};
    expect_error([&] { softmax(nan.data(), 3, y.data()); }, {"x[1]"});
    const std::vector<float> inf{0.0f, 1.0f, kInf};
    expect_error([&] { softmax(inf.data(), 3, y.data()); }, {"x[2] = inf"});
}

TEST(ArgmaxTest, TiesGoToLowestIndex) {
    const std::vector<float> x{1.0f, 3.0f, -2.0f, 3.0f, 2.0f};
    EXPECT_EQ(argmax(x.data(), 5), 1);
    const std::vector<float> all_equal(9, -kInf);
    EXPECT_EQ(argmax(all_equal.data(), 9), 0);
}

TEST(ArgmaxTest, MatchesFirstMaxElement_Random) {
    std::mt19937 rng(52);
    for (const std::int64_t n : {1, 7, 32000}) {
        std::vector<float> x = random_values(as_size(n), rng);
        for (std::size_t i = 0; i < x.size(); i += 3) x[i] = std::round(x[i] * 4.0f);  // plenty of ties
        const auto want = std::max_element(x.begin(), x.end()) - x.begin();            // first of the largest
        EXPECT_EQ(argmax(x.data(), n), want) << "n=" << n;
    }
}

TEST(ArgmaxTest, NaN_CountsAsLargest) {
    const std::vector<float> x{1.0f, kNaN, 5.0f, kNaN, kInf};
    EXPECT_EQ(argmax(x.data(), 5), 1);
    expect_error([&] { argmax(x.data(), 0); }, {"n = 0"});
}

// ---- rope: inverse frequencies --------------------------------------------------------------------------

ModelConfig rope_config(std::int64_t head_dim, double theta, RopeType type = RopeType::Default) {
    ModelConfig config;
    config.head_dim = head_dim;
    config.rope_theta = theta;
    config.rope_scaling.type = type;
    return config;
}

//! 1 / theta^(2i/d) in double.
double default_inv_freq_double(double theta, std::int64_t d, std::int64_t i) {
    return 1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(d));
}

double relative_error(double got, double want) {
    return std::abs(got - want) / std::abs(want);
}

TEST(RopeInvFreqTest, Default_MatchesFormatsNumbers) {
    const RopeFrequencies f = rope_inv_freq(rope_config(128, 10000.0));
    ASSERT_EQ(f.inv_freq.size(), 64u);
    EXPECT_EQ(f.inv_freq[0], 1.0f);
    EXPECT_LT(relative_error(f.inv_freq[1], 0.8659643), 1e-6);
    EXPECT_LT(relative_error(f.inv_freq[63], 1.1547820e-4), 1e-6);
    EXPECT_EQ(f.attention_scaling, 1.0f);
}

TEST(RopeInvFreqTest, Default_MatchesDoubleFormula) {
    for (const std::int64_t d : {8, 16, 64, 128, 256}) {
        for (const double theta : {10000.0, 500000.0, 1e6}) {
            const RopeFrequencies f = rope_inv_freq(rope_config(d, theta));
            ASSERT_EQ(f.inv_freq.size(), as_size(d / 2));
            std::vector<double> want(as_size(d / 2));
            for (std::int64_t i = 0; i < d / 2; ++i) want[as_size(i)] = default_inv_freq_double(theta, d, i);
            // fp32 exponent (exact here: d is a power of two), fp32 pow and reciprocal: about 2 ulps.
            expect_close(f.inv_freq, want, 3e-7, 0.0, "default d=" + std::to_string(d));
        }
    }
}

TEST(RopeInvFreqTest, Linear_DividesByFactor) {
    ModelConfig config = rope_config(128, 10000.0, RopeType::Linear);
    config.rope_scaling.factor = 4.0;
    const RopeFrequencies f = rope_inv_freq(config);
    const RopeFrequencies plain = rope_inv_freq(rope_config(128, 10000.0));
    for (std::size_t i = 0; i < 64; ++i) EXPECT_EQ(f.inv_freq[i], plain.inv_freq[i] / 4.0f) << i;
    // Printed by transformers' _compute_linear_scaling_rope_parameters in torch.
    EXPECT_LT(relative_error(f.inv_freq[1], 0.216491088), 1e-6);
    EXPECT_LT(relative_error(f.inv_freq[63], 2.88695483e-05), 1e-6);
}

ModelConfig llama3_config() {
    ModelConfig config = rope_config(128, 500000.0, RopeType::Llama3);
    config.rope_scaling.factor = 8.0;
    config.rope_scaling.low_freq_factor = 1.0;
    config.rope_scaling.high_freq_factor = 4.0;
    config.rope_scaling.original_max_position_embeddings = 8192;
    return config;
}

TEST(RopeInvFreqTest, Llama3_MatchesFormatsNumbers) {
    const RopeFrequencies f = rope_inv_freq(llama3_config());
    const RopeFrequencies plain = rope_inv_freq(rope_config(128, 500000.0));
    ASSERT_EQ(f.inv_freq.size(), 64u);
    for (std::size_t i = 0; i <= 28; ++i) EXPECT_EQ(f.inv_freq[i], plain.inv_freq[i]) << "i=" << i << " unchanged";
    EXPECT_LT(relative_error(plain.inv_freq[29], 2.6160993e-3), 1e-6);
    EXPECT_LT(relative_error(f.inv_freq[29], 2.1665708e-3), 1e-6);
    EXPECT_LT(relative_error(plain.inv_freq[63], 2.4551407e-6), 1e-6);
    EXPECT_LT(relative_error(f.inv_freq[63], 3.0689259e-7), 1e-6);
    for (std::size_t i = 35; i < 64; ++i) EXPECT_EQ(f.inv_freq[i], plain.inv_freq[i] / 8.0f) << "i=" << i;
    EXPECT_EQ(f.attention_scaling, 1.0f);
}

TEST(RopeInvFreqTest, Llama3_SmoothBandMatchesDoubleFormula) {
    const RopeFrequencies f = rope_inv_freq(llama3_config());
    const double old_len = 8192.0;
    int smoothed = 0;
    for (std::int64_t i = 0; i < 64; ++i) {
        const double inv = default_inv_freq_double(500000.0, 128, i);
        const double wavelength = 2.0 * std::numbers::pi / inv;
        double want = inv;
        if (wavelength > old_len / 1.0) {
            want = inv / 8.0;
        } else if (wavelength >= old_len / 4.0) {
            const double s = (old_len / wavelength - 1.0) / (4.0 - 1.0);
            want = (1.0 - s) * inv / 8.0 + s * inv;
            ++smoothed;
            if (i == 29) {
                EXPECT_NEAR(s, 0.803621, 1e-6);
            }
        }
        EXPECT_LT(relative_error(f.inv_freq[as_size(i)], want), 1e-6) << "i=" << i;
    }
    EXPECT_EQ(smoothed, 6);  // i = 29 .. 34 per formats.md R4.10
}

ModelConfig yarn_config() {
    ModelConfig config = rope_config(128, 10000.0, RopeType::Yarn);
    config.max_position_embeddings = 4096;
    config.rope_scaling.factor = 4.0;
    return config;
}

TEST(RopeInvFreqTest, Yarn_MatchesTransformersAndFormula) {
    const RopeFrequencies f = rope_inv_freq(yarn_config());
    ASSERT_EQ(f.inv_freq.size(), 64u);
    // Printed by transformers' _compute_yarn_parameters (@ef46806 logic) in torch for this config.
    EXPECT_LT(relative_error(f.attention_scaling, 1.138629436111989), 1e-7);
    const std::vector<std::pair<std::size_t, double>> golden{{0, 1.0},
                                                             {10, 0.237137362},
                                                             {20, 0.0562341288},
                                                             {30, 0.00948851742},
                                                             {40, 0.00133788679},
                                                             {63, 2.88695483e-05}};
    for (const auto& [i, want] : golden) EXPECT_LT(relative_error(f.inv_freq[i], want), 1e-6) << "i=" << i;

    // The R4.11 formula in double: correction range [low, high] = [20, 46] for these numbers.
    const double d = 128.0;
    const auto correction_dim = [&](double rotations) {
        return d * std::log(4096.0 / (2.0 * std::numbers::pi * rotations)) / (2.0 * std::log(10000.0));
    };
    const double low = std::max(std::floor(correction_dim(32.0)), 0.0);
    const double high = std::min(std::ceil(correction_dim(1.0)), d - 1.0);
    EXPECT_EQ(low, 20.0);
    EXPECT_EQ(high, 46.0);
    for (std::int64_t i = 0; i < 64; ++i) {
        const double extrapolation = default_inv_freq_double(10000.0, 128, i);
        const double interpolation = extrapolation / 4.0;
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double want = interpolation * ramp + extrapolation * (1.0 - ramp);
        EXPECT_LT(relative_error(f.inv_freq[as_size(i)], want), 1e-6) << "i=" << i;
    }
}

TEST(RopeInvFreqTest, Yarn_ExplicitAttentionFactorWins) {
    ModelConfig config = yarn_config();
    config.rope_scaling.attention_factor = 1.25;
    EXPECT_EQ(rope_inv_freq(config).attention_scaling, 1.25f);
}

ModelConfig dynamic_config() {
    ModelConfig config = rope_config(128, 10000.0, RopeType::Dynamic);
    config.max_position_embeddings = 4096;
    config.rope_scaling.factor = 2.0;
    return config;
}

TEST(RopeInvFreqTest, Dynamic_OriginalUpToMaxPositions) {
    const ModelConfig config = dynamic_config();
    const RopeFrequencies plain = rope_inv_freq(rope_config(128, 10000.0));
    EXPECT_EQ(rope_inv_freq(config).inv_freq, plain.inv_freq);
    EXPECT_EQ(rope_inv_freq_dynamic(config, 1).inv_freq, plain.inv_freq);
    EXPECT_EQ(rope_inv_freq_dynamic(config, 4096).inv_freq, plain.inv_freq);
    EXPECT_NE(rope_inv_freq_dynamic(config, 4097).inv_freq, plain.inv_freq);
}

TEST(RopeInvFreqTest, Dynamic_RecomputesBaseBeyondMaxPositions) {
    const ModelConfig config = dynamic_config();
    const RopeFrequencies f = rope_inv_freq_dynamic(config, 5001);
    ASSERT_EQ(f.inv_freq.size(), 64u);
    EXPECT_EQ(f.attention_scaling, 1.0f);
    // Printed by transformers v4.48's dynamic update in torch (seq_len = max(position_ids) + 1 = 5001).
    EXPECT_LT(relative_error(f.inv_freq[1], 0.860948622), 1e-6);
    EXPECT_LT(relative_error(f.inv_freq[10], 0.223754853), 1e-6);
    EXPECT_LT(relative_error(f.inv_freq[63], 8.00878261e-05), 1e-6);
    // R4.9 in double: base = theta (factor L / M - (factor - 1))^(d / (d - 2)).
    const double base = 10000.0 * std::pow(2.0 * 5001.0 / 4096.0 - 1.0, 128.0 / 126.0);
    for (std::int64_t i = 0; i < 64; ++i) {
        EXPECT_LT(relative_error(f.inv_freq[as_size(i)], default_inv_freq_double(base, 128, i)), 2e-6) << "i=" << i;
    }
}

TEST(RopeInvFreqTest, Throws_BadConfig) {
    expect_error([] { rope_inv_freq(rope_config(127, 10000.0)); }, {"head_dim = 127"});
    expect_error([] { rope_inv_freq(rope_config(128, 0.0)); }, {"rope_theta = 0"});
    ModelConfig llama3 = llama3_config();
    llama3.rope_scaling.original_max_position_embeddings = 0;
    expect_error([&] { rope_inv_freq(llama3); }, {"original_max_position_embeddings = 0"});
    llama3 = llama3_config();
    llama3.rope_scaling.high_freq_factor = 1.0;
    expect_error([&] { rope_inv_freq(llama3); }, {"high_freq_factor = 1"});
    ModelConfig linear = rope_config(128, 10000.0, RopeType::Linear);
    linear.rope_scaling.factor = 0.0;
    expect_error([&] { rope_inv_freq(linear); }, {"factor = 0"});
    expect_error([] { rope_inv_freq_dynamic(rope_config(128, 10000.0), 5000); }, {"default", "expected dynamic"});
    expect_error([] { rope_inv_freq_dynamic(dynamic_config(), 0); }, {"seq_len = 0"});
}

// ---- rope: rotation -------------------------------------------------------------------------------------

//! HF's formulation with explicit vectors: emb = cat(freqs, freqs), out = x * cos(emb) + rotate_half(x) *
//! sin(emb), rotate_half(x) = cat(-x[d/2:], x[:d/2]). The float32 angle is part of the spec (R4.4).
std::vector<double> rope_reference(const std::vector<float>& x,
                                   const std::vector<std::int32_t>& positions,
                                   std::int64_t heads,
                                   std::int64_t d,
                                   const std::vector<float>& inv_freq,
                                   double scaling) {
    std::vector<double> out(x.size());
    const std::int64_t half = d / 2;
    for (std::size_t t = 0; t < positions.size(); ++t) {
        std::vector<double> cos_emb(as_size(d));
        std::vector<double> sin_emb(as_size(d));
        for (std::int64_t c = 0; c < d; ++c) {
            const float angle = static_cast<float>(positions[t]) * inv_freq[as_size(c % half)];
            cos_emb[as_size(c)] = std::cos(static_cast<double>(angle)) * scaling;
            sin_emb[as_size(c)] = std::sin(static_cast<double>(angle)) * scaling;
        }
        for (std::int64_t h = 0; h < heads; ++h) {
            const std::size_t base = (t * as_size(heads) + as_size(h)) * as_size(d);
            std::vector<double> rotated(as_size(d));
            for (std::int64_t c = 0; c < half; ++c) {
                rotated[as_size(c)] = -static_cast<double>(x[base + as_size(c + half)]);
            }
            for (std::int64_t c = half; c < d; ++c) rotated[as_size(c)] = x[base + as_size(c - half)];
            for (std::int64_t c = 0; c < d; ++c) {
                out[base + as_size(c)] =
                    x[base + as_size(c)] * cos_emb[as_size(c)] + rotated[as_size(c)] * sin_emb[as_size(c)];
            }
        }
    }
    return out;
}

TEST(ApplyRopeTest, MatchesRotateHalfReference) {
    std::mt19937 rng(61);
    std::uniform_int_distribution<std::int32_t> pick_position(0, 4095);
    for (const std::int64_t d : {8, 16, 64, 128}) {
        const RopeFrequencies f = rope_inv_freq(rope_config(d, 10000.0));
        for (const std::int64_t m : {1, 3, 7}) {
            for (const std::int64_t heads : {1, 5}) {
                std::vector<std::int32_t> positions(as_size(m));
                for (auto& p : positions) p = pick_position(rng);
                const std::vector<float> x = random_values(as_size(m * heads * d), rng);
                std::vector<float> y = x;
                apply_rope(y.data(), positions.data(), m, heads, d, f.inv_freq.data(), 1.0f);
                // cos and sin are rounded to float32 before use: 2^-24 relative on each product.
                expect_close(
                    y, rope_reference(x, positions, heads, d, f.inv_freq, 1.0), 2e-7, 2e-7,
                    "rope d=" + std::to_string(d) + " m=" + std::to_string(m) + " heads=" + std::to_string(heads));
            }
        }
    }
}

TEST(ApplyRopeTest, AttentionScaling_ScalesCosAndSin) {
    std::mt19937 rng(62);
    ModelConfig config = yarn_config();
    config.head_dim = 16;
    const RopeFrequencies f = rope_inv_freq(config);
    ASSERT_GT(f.attention_scaling, 1.0f);
    const std::vector<std::int32_t> positions{0, 17, 4000};
    const std::vector<float> x = random_values(3 * 2 * 16, rng);
    std::vector<float> y = x;
    apply_rope(y.data(), positions.data(), 3, 2, 16, f.inv_freq.data(), f.attention_scaling);
    expect_close(y, rope_reference(x, positions, 2, 16, f.inv_freq, f.attention_scaling), 3e-7, 3e-7, "yarn rope");
}

TEST(ApplyRopeTest, PositionZero_IsIdentity) {
    std::mt19937 rng(63);
    const RopeFrequencies f = rope_inv_freq(rope_config(64, 10000.0));
    const std::vector<std::int32_t> positions{0, 0};
    const std::vector<float> x = random_values(2 * 3 * 64, rng);
    std::vector<float> y = x;
    apply_rope(y.data(), positions.data(), 2, 3, 64, f.inv_freq.data(), 1.0f);
    EXPECT_EQ(y, x);
}

TEST(ApplyRopeTest, DotProductDependsOnlyOnDistance) {
    // The property RoPE exists for: <rope(q, p1), rope(k, p2)> is a function of p1 - p2.
    std::mt19937 rng(64);
    const std::int64_t d = 128;
    const RopeFrequencies f = rope_inv_freq(rope_config(d, 10000.0));
    const std::vector<float> q = random_values(as_size(d), rng);
    const std::vector<float> k = random_values(as_size(d), rng);
    const auto rotated_dot = [&](std::int32_t pq, std::int32_t pk) {
        std::vector<float> qr = q;
        std::vector<float> kr = k;
        apply_rope(qr.data(), &pq, 1, 1, d, f.inv_freq.data(), 1.0f);
        apply_rope(kr.data(), &pk, 1, 1, d, f.inv_freq.data(), 1.0f);
        double dot = 0.0;
        for (std::int64_t c = 0; c < d; ++c) dot += static_cast<double>(qr[as_size(c)]) * kr[as_size(c)];
        return dot;
    };
    const double near_origin = rotated_dot(7, 3);
    EXPECT_NEAR(rotated_dot(107, 103), near_origin, 1e-4);
    EXPECT_NEAR(rotated_dot(4, 0), near_origin, 1e-4);
    EXPECT_GT(std::abs(rotated_dot(9, 3) - near_origin), 1e-3);  // a different distance really differs
}

TEST(ApplyRopeTest, Throws_BadArguments) {
    const RopeFrequencies f = rope_inv_freq(rope_config(8, 10000.0));
    std::vector<float> x(2 * 8, 1.0f);
    const std::vector<std::int32_t> positions{3, -1};
    expect_error([&] { apply_rope(x.data(), positions.data(), 2, 1, 8, f.inv_freq.data(), 1.0f); },
                 {"position -1", "row 1"});
    expect_error([&] { apply_rope(x.data(), positions.data(), 1, 1, 7, f.inv_freq.data(), 1.0f); }, {"head_dim = 7"});
    expect_error([&] { apply_rope(x.data(), positions.data(), 1, 0, 8, f.inv_freq.data(), 1.0f); }, {"num_heads = 0"});
}

// ---- attention and the KV cache -------------------------------------------------------------------------

struct AttentionShape {
    std::int64_t num_heads;
    std::int64_t num_kv_heads;
    std::int64_t head_dim;
};

//! Expands the cache to one K and V per query head (HF repeat_kv: kv head g serves query heads
//! g*n_rep .. g*n_rep + n_rep - 1), builds the causal mask as an explicit [m][keys] matrix of 0 / -inf, then
//! per head: P = softmax(Q K^T / sqrt(d) + mask), O = P V, all in double.
std::vector<double> attention_reference(const std::vector<float>& q,
                                        const std::vector<float>& k_cache,
                                        const std::vector<float>& v_cache,
                                        const AttentionShape& s,
                                        std::int64_t capacity,
                                        std::int64_t past_len,
                                        std::int64_t m) {
    const std::int64_t d = s.head_dim;
    const std::int64_t keys = past_len + m;
    const std::int64_t n_rep = s.num_heads / s.num_kv_heads;
    std::vector<std::vector<double>> k_full(as_size(s.num_heads), std::vector<double>(as_size(keys * d)));
    std::vector<std::vector<double>> v_full = k_full;
    for (std::int64_t g = 0; g < s.num_kv_heads; ++g) {
        for (std::int64_t r = 0; r < n_rep; ++r) {
            const std::size_t h = as_size(g * n_rep + r);
            for (std::int64_t e = 0; e < keys * d; ++e) {
                k_full[h][as_size(e)] = k_cache[as_size(g * capacity * d + e)];
                v_full[h][as_size(e)] = v_cache[as_size(g * capacity * d + e)];
            }
        }
    }
    std::vector<double> mask(as_size(m * keys));
    for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < keys; ++j) {
            mask[as_size(i * keys + j)] = j <= past_len + i ? 0.0 : -std::numeric_limits<double>::infinity();
        }
    }
    std::vector<double> out(as_size(m * s.num_heads * d));
    for (std::int64_t h = 0; h < s.num_heads; ++h) {
        for (std::int64_t i = 0; i < m; ++i) {
            std::vector<double> logits(as_size(keys));
            for (std::int64_t j = 0; j < keys; ++j) {
                double dot = 0.0;
                for (std::int64_t c = 0; c < d; ++c) {
                    dot += q[as_size((i * s.num_heads + h) * d + c)] * k_full[as_size(h)][as_size(j * d + c)];
                }
                logits[as_size(j)] = dot / std::sqrt(static_cast<double>(d)) + mask[as_size(i * keys + j)];
            }
            const double max_logit = *std::max_element(logits.begin(), logits.end());
            double total = 0.0;
            for (double& l : logits) {
                l = std::exp(l - max_logit);  // exp(-inf) = 0 for masked keys
                total += l;
            }
            for (std::int64_t c = 0; c < d; ++c) {
                double acc = 0.0;
                for (std::int64_t j = 0; j < keys; ++j) {
                    acc += logits[as_size(j)] / total * v_full[as_size(h)][as_size(j * d + c)];
                }
                out[as_size((i * s.num_heads + h) * d + c)] = acc;
            }
        }
    }
    return out;
}

//! A cache whose rows at and beyond `valid_rows` hold NaN, so that reading one shows up in the output.
std::vector<float> cache_with_nan_tail(std::mt19937& rng,
                                       std::int64_t kv_heads,
                                       std::int64_t capacity,
                                       std::int64_t d,
                                       std::int64_t valid_rows,
                                       float scale) {
    std::vector<float> cache = random_values(as_size(kv_heads * capacity * d), rng, scale);
    for (std::int64_t g = 0; g < kv_heads; ++g) {
        for (std::int64_t r = valid_rows; r < capacity; ++r) {
            std::fill_n(cache.begin() + (g * capacity + r) * d, d, kNaN);
        }
    }
    return cache;
}

TEST(AttentionTest, MatchesRepeatKvMaskReference) {
    std::mt19937 rng(71);
    const std::vector<AttentionShape> shapes{{1, 1, 8}, {4, 4, 16}, {8, 2, 64}, {8, 2, 128}, {6, 3, 16}};
    for (const AttentionShape& s : shapes) {
        for (const std::int64_t m : {1, 3, 7}) {
            for (const std::int64_t past_len : {0, 5}) {
                const std::int64_t capacity = past_len + m + 3;
                const auto k_cache = cache_with_nan_tail(rng, s.num_kv_heads, capacity, s.head_dim, past_len + m, 1.0f);
                const auto v_cache = cache_with_nan_tail(rng, s.num_kv_heads, capacity, s.head_dim, past_len + m, 2.0f);
                const std::vector<float> q = random_values(as_size(m * s.num_heads * s.head_dim), rng, 3.0f);
                std::vector<float> out = poisoned(q.size());
                AttentionParams p;
                p.q = q.data();
                p.k_cache = k_cache.data();
                p.v_cache = v_cache.data();
                p.m = m;
                p.num_heads = s.num_heads;
                p.num_kv_heads = s.num_kv_heads;
                p.head_dim = s.head_dim;
                p.capacity = capacity;
                p.past_len = past_len;
                p.out = out.data();
                attention(p);
                const std::string what = "attention nh=" + std::to_string(s.num_heads) +
                                         " nkv=" + std::to_string(s.num_kv_heads) + " d=" + std::to_string(s.head_dim) +
                                         " m=" + std::to_string(m) + " past=" + std::to_string(past_len);
                expect_all_finite(out, what);
                expect_close(out, attention_reference(q, k_cache, v_cache, s, capacity, past_len, m), 1e-6, 1e-6, what);
            }
        }
    }
}

TEST(AttentionTest, GroupedHeads_UseKvHeadHOverGroup) {
    // 8 query heads over 2 kv heads: heads 0-3 read kv head 0, heads 4-7 kv head 1 (not h % 2).
    const std::int64_t d = 8;
    const std::int64_t capacity = 4;
    std::mt19937 rng(72);
    const std::vector<float> k_cache = random_values(as_size(2 * capacity * d), rng);
    std::vector<float> v_cache(as_size(2 * capacity * d), 1.0f);
    std::fill(v_cache.begin() + capacity * d, v_cache.end(), 2.0f);
    const std::vector<float> q = random_values(as_size(8 * d), rng);
    std::vector<float> out = poisoned(q.size());
    AttentionParams p{q.data(), k_cache.data(), v_cache.data(), 1, 8, 2, d, capacity, 2, out.data()};
    attention(p);
    for (std::int64_t h = 0; h < 8; ++h) {
        for (std::int64_t c = 0; c < d; ++c) {
            EXPECT_NEAR(out[as_size(h * d + c)], h < 4 ? 1.0f : 2.0f, 1e-6) << "head " << h;
        }
    }
}

TEST(AttentionTest, SingleKey_ReturnsItsValue) {
    std::mt19937 rng(73);
    const std::vector<float> k_cache = random_values(16, rng);
    const std::vector<float> v_cache = random_values(16, rng);
    const std::vector<float> q = random_values(16, rng);
    std::vector<float> out = poisoned(16);
    AttentionParams p{q.data(), k_cache.data(), v_cache.data(), 1, 1, 1, 16, 1, 0, out.data()};
    attention(p);
    EXPECT_EQ(out, v_cache);
}

TEST(AttentionTest, DecodeAfterPrefill_EqualsOnePrefill) {
    std::mt19937 rng(74);
    const AttentionShape s{8, 2, 16};
    const std::int64_t total = 10;
    const std::int64_t prefill = 7;
    const std::int64_t capacity = 12;
    const std::int64_t q_row = s.num_heads * s.head_dim;
    const std::int64_t kv_row = s.num_kv_heads * s.head_dim;
    const std::vector<float> q = random_values(as_size(total * q_row), rng);
    const std::vector<float> k = random_values(as_size(total * kv_row), rng);
    const std::vector<float> v = random_values(as_size(total * kv_row), rng);
    const auto run = [&](std::vector<float>& k_cache, std::vector<float>& v_cache, std::int64_t past, std::int64_t m,
                         std::vector<float>& out) {
        append_kv(k.data() + past * kv_row, v.data() + past * kv_row, k_cache.data(), v_cache.data(), capacity, past, m,
                  s.num_kv_heads, s.head_dim);
        AttentionParams p{q.data() + past * q_row, k_cache.data(), v_cache.data(), m,    s.num_heads,
                          s.num_kv_heads,          s.head_dim,     capacity,       past, out.data() + past * q_row};
        attention(p);
    };
    std::vector<float> k_one = poisoned(as_size(s.num_kv_heads * capacity * s.head_dim));
    std::vector<float> v_one = k_one;
    std::vector<float> out_one = poisoned(as_size(total * q_row));
    run(k_one, v_one, 0, total, out_one);

    std::vector<float> k_steps = poisoned(k_one.size());
    std::vector<float> v_steps = k_steps;
    std::vector<float> out_steps = poisoned(out_one.size());
    run(k_steps, v_steps, 0, prefill, out_steps);
    for (std::int64_t past = prefill; past < total; ++past) run(k_steps, v_steps, past, 1, out_steps);

    expect_all_finite(out_one, "one prefill");
    // Each query row runs the same double-precision loop over the same keys either way: bit-identical.
    EXPECT_EQ(out_steps, out_one);
}

TEST(AttentionTest, Throws_BadShapes) {
    std::vector<float> buf(1024, 1.0f);
    AttentionParams p{buf.data(), buf.data(), buf.data(), 3, 6, 4, 8, 8, 0, buf.data()};
    expect_error([&] { attention(p); }, {"num_heads = 6", "num_kv_heads = 4"});
    p.num_kv_heads = 2;
    p.past_len = 6;
    expect_error([&] { attention(p); }, {"past_len 6 + m 3", "capacity 8"});
    p.past_len = -1;
    expect_error([&] { attention(p); }, {"past_len = -1"});
    p.past_len = 0;
    p.out = nullptr;
    expect_error([&] { attention(p); }, {"null"});
}

TEST(AppendKvTest, WritesRowsPastLenOnward) {
    std::mt19937 rng(81);
    const std::int64_t kv_heads = 2;
    const std::int64_t capacity = 9;
    const std::int64_t d = 5;
    const std::int64_t m = 3;
    const std::int64_t past_len = 4;
    const std::vector<float> k = random_values(as_size(m * kv_heads * d), rng);
    const std::vector<float> v = random_values(as_size(m * kv_heads * d), rng);
    std::vector<float> k_cache(as_size(kv_heads * capacity * d), -7.0f);
    std::vector<float> v_cache(k_cache.size(), -9.0f);
    append_kv(k.data(), v.data(), k_cache.data(), v_cache.data(), capacity, past_len, m, kv_heads, d);
    for (std::int64_t g = 0; g < kv_heads; ++g) {
        for (std::int64_t r = 0; r < capacity; ++r) {
            for (std::int64_t c = 0; c < d; ++c) {
                const std::size_t at = as_size((g * capacity + r) * d + c);
                if (r >= past_len && r < past_len + m) {
                    const std::size_t from = as_size(((r - past_len) * kv_heads + g) * d + c);
                    ASSERT_EQ(k_cache[at], k[from]) << "g " << g << " row " << r;
                    ASSERT_EQ(v_cache[at], v[from]) << "g " << g << " row " << r;
                } else {
                    ASSERT_EQ(k_cache[at], -7.0f) << "untouched g " << g << " row " << r;
                    ASSERT_EQ(v_cache[at], -9.0f) << "untouched g " << g << " row " << r;
                }
            }
        }
    }
}

TEST(AppendKvTest, Throws_CapacityExceeded) {
    std::vector<float> kv(3 * 2 * 4, 1.0f);
    std::vector<float> k_cache(2 * 8 * 4, 0.0f);
    std::vector<float> v_cache = k_cache;
    expect_error([&] { append_kv(kv.data(), kv.data(), k_cache.data(), v_cache.data(), 8, 6, 3, 2, 4); },
                 {"past_len 6 + m 3", "capacity 8"});
    EXPECT_TRUE(std::all_of(k_cache.begin(), k_cache.end(), [](float x) { return x == 0.0f; })) << "written on error";
    expect_error([&] { append_kv(kv.data(), kv.data(), k_cache.data(), v_cache.data(), 8, -1, 3, 2, 4); },
                 {"past_len = -1"});
}

}  // namespace
}  // namespace q4tp::kernels::cpu
