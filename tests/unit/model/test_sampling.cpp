#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <new>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/model/sampling.h"

// ---------------------------------------------------------------------------------------------------------
// Allocation counter: replaces the global operator new of this test binary so that a test can prove that
// Sampler::sample does not allocate after its first call. Left out under AddressSanitizer, which supplies
// its own operator new.
// ---------------------------------------------------------------------------------------------------------

#if defined(__SANITIZE_ADDRESS__)
#define Q4TP_COUNT_ALLOCATIONS 0
#else
#define Q4TP_COUNT_ALLOCATIONS 1
#endif

namespace {
std::atomic<std::size_t> g_allocations{0};
}  // namespace

#if Q4TP_COUNT_ALLOCATIONS
// GCC inlines these into callers and then reports free() of operator new's result as mismatched, not seeing
// that this operator new is malloc.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
    g_allocations.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(size == 0 ? 1 : size)) {
        return p;
    }
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}
#pragma GCC diagnostic pop
#endif

namespace q4tp::model {
namespace {

constexpr int kDraws = 20000;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

//! Sampling with every filter off: the draw must follow softmax(logits / temperature) exactly.
SamplingConfig plain_config(std::uint64_t seed, double temperature = 1.0) {
    SamplingConfig config;
    config.temperature = temperature;
    config.top_k = 0;
    config.top_p = 1.0;
    config.min_p = 0.0;
    config.repetition_penalty = 1.0;
    config.seed = seed;
    return config;
}

std::vector<float> random_logits(std::size_t vocab, std::uint32_t seed, float low = -3.0f, float high = 3.0f) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(low, high);
    std::vector<float> logits(vocab);
    for (float& x : logits) {
        x = dist(rng);
    }
    return logits;
}

std::vector<double> softmax(const std::vector<float>& logits, double temperature = 1.0) {
    double max_logit = -std::numeric_limits<double>::infinity();
    for (const float x : logits) {
        max_logit = std::max(max_logit, static_cast<double>(x));
    }
    std::vector<double> p(logits.size());
    double sum = 0.0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        p[i] = std::exp((logits[i] - max_logit) / temperature);
        sum += p[i];
    }
    for (double& x : p) {
        x /= sum;
    }
    return p;
}

//! p restricted to the ids in keep and renormalized; every other id gets 0.
std::vector<double> restrict_to(const std::vector<double>& p, const std::set<std::size_t>& keep) {
    std::vector<double> out(p.size(), 0.0);
    double sum = 0.0;
    for (const std::size_t i : keep) {
        sum += p[i];
    }
    for (const std::size_t i : keep) {
        out[i] = p[i] / sum;
    }
    return out;
}

std::vector<int> draw_counts(Sampler& sampler, const std::vector<float>& logits, int draws) {
    std::vector<int> counts(logits.size(), 0);
    std::vector<float> row = logits;
    for (int i = 0; i < draws; ++i) {
        const std::int32_t id = sampler.sample(row, {});
        EXPECT_GE(id, 0);
        EXPECT_LT(static_cast<std::size_t>(id), logits.size());
        if (id >= 0 && static_cast<std::size_t>(id) < logits.size()) {
            ++counts[static_cast<std::size_t>(id)];
        }
    }
    return counts;
}

//! Every count within 4 binomial sigmas of draws * p; ids with p == 0 must never appear.
void expect_frequencies(const std::vector<int>& counts, const std::vector<double>& expected, int draws) {
    ASSERT_EQ(counts.size(), expected.size());
    for (std::size_t i = 0; i < counts.size(); ++i) {
        const double mean = draws * expected[i];
        const double sigma = std::sqrt(draws * expected[i] * (1.0 - expected[i]));
        if (expected[i] == 0.0) {
            EXPECT_EQ(counts[i], 0) << "token " << i << " should have been filtered out";
        } else {
            EXPECT_LE(std::abs(counts[i] - mean), 4.0 * sigma + 1e-9)
                << "token " << i << ": " << counts[i] << " draws, expected " << mean << " +- " << sigma;
        }
    }
}

std::vector<std::int32_t> draw_sequence(const SamplingConfig& config, const std::vector<float>& logits, int n) {
    Sampler sampler(config);
    std::vector<std::int32_t> out;
    std::vector<float> row = logits;
    for (int i = 0; i < n; ++i) {
        out.push_back(sampler.sample(row, {}));
    }
    return out;
}

std::string error_message(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.message();
    }
    return "<no q4tp::Error thrown>";
}

// ---------------------------------------------------------------------------------------------------------
// SamplingConfig
// ---------------------------------------------------------------------------------------------------------

TEST(SamplingConfigTest, Defaults_MatchLlamaCppCli) {
    const SamplingConfig config;
    EXPECT_DOUBLE_EQ(config.temperature, 0.8);
    EXPECT_EQ(config.top_k, 40);
    EXPECT_DOUBLE_EQ(config.top_p, 0.95);
    EXPECT_DOUBLE_EQ(config.min_p, 0.05);
    EXPECT_DOUBLE_EQ(config.repetition_penalty, 1.0);
    EXPECT_EQ(config.repetition_last_n, 64);
    EXPECT_FALSE(config.greedy());
    EXPECT_NO_THROW(config.validate());
}

TEST(SamplingConfigTest, Greedy_OnlyAtZeroTemperature) {
    SamplingConfig config;
    config.temperature = 0.0;
    EXPECT_TRUE(config.greedy());
    config.temperature = 1e-6;
    EXPECT_FALSE(config.greedy());
}

TEST(SamplingConfigTest, Validate_AcceptsRangeEdges) {
    SamplingConfig config;
    config.temperature = 0.0;
    config.top_k = 0;
    config.top_p = 1.0;
    config.min_p = 0.0;
    config.repetition_last_n = 0;
    config.repetition_penalty = 1e-3;
    EXPECT_NO_THROW(config.validate());
}

TEST(SamplingConfigTest, Validate_RejectsOutOfRange_NamingOptionAndValue) {
    struct Case {
        std::function<void(SamplingConfig&)> set;
        std::string expected;
    };
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const std::vector<Case> cases = {
        {[](SamplingConfig& c) { c.temperature = -0.5; }, "temperature = -0.5"},
        {[nan](SamplingConfig& c) { c.temperature = nan; }, "temperature = nan"},
        {[](SamplingConfig& c) { c.top_k = -1; }, "top_k = -1"},
        {[](SamplingConfig& c) { c.top_p = 0.0; }, "top_p = 0"},
        {[](SamplingConfig& c) { c.top_p = 1.5; }, "top_p = 1.5"},
        {[nan](SamplingConfig& c) { c.top_p = nan; }, "top_p = nan"},
        {[](SamplingConfig& c) { c.min_p = 1.0; }, "min_p = 1"},
        {[](SamplingConfig& c) { c.min_p = -0.25; }, "min_p = -0.25"},
        {[](SamplingConfig& c) { c.repetition_penalty = 0.0; }, "repetition_penalty = 0"},
        {[](SamplingConfig& c) { c.repetition_penalty = -1.1; }, "repetition_penalty = -1.1"},
        {[](SamplingConfig& c) { c.repetition_last_n = -1; }, "repetition_last_n = -1"},
    };
    for (const Case& c : cases) {
        SamplingConfig config;
        c.set(config);
        const std::string message = error_message([&] { config.validate(); });
        EXPECT_NE(message.find(c.expected), std::string::npos) << "got: " << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << "message must be one line: " << message;
        EXPECT_NE(error_message([&] { Sampler sampler(config); }).find(c.expected), std::string::npos);
    }
}

// ---------------------------------------------------------------------------------------------------------
// argmax
// ---------------------------------------------------------------------------------------------------------

TEST(ArgmaxTest, ReturnsLargest_TiesToLowestIndex) {
    EXPECT_EQ(argmax(std::vector<float>{0.5f, -1.0f, 2.25f, 0.0f}), 2);
    EXPECT_EQ(argmax(std::vector<float>{1.0f, 3.0f, 3.0f, 3.0f}), 1);
    EXPECT_EQ(argmax(std::vector<float>{kNegInf, kNegInf, -7.0f}), 2);
    const std::vector<float> logits = random_logits(1000, 7);
    std::size_t expected = 0;
    for (std::size_t i = 1; i < logits.size(); ++i) {
        if (logits[i] > logits[expected]) {
            expected = i;
        }
    }
    EXPECT_EQ(argmax(logits), static_cast<std::int32_t>(expected));
}

TEST(ArgmaxTest, NaNOrEmpty_Throws) {
    const std::vector<float> with_nan = {1.0f, std::numeric_limits<float>::quiet_NaN(), 0.0f};
    EXPECT_NE(error_message([&] { argmax(with_nan); }).find("NaN"), std::string::npos);
    EXPECT_THROW(argmax(std::span<const float>{}), Error);
}

// ---------------------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------------------

TEST(SamplerTest, SameSeed_SameSequence) {
    const std::vector<float> logits = random_logits(5000, 11, -2.0f, 2.0f);
    const auto a = draw_sequence(plain_config(1234), logits, 300);
    const auto b = draw_sequence(plain_config(1234), logits, 300);
    EXPECT_EQ(a, b);

    // The default filters (top-k, top-p, min-p) are deterministic too.
    SamplingConfig defaults;
    defaults.seed = 99;
    EXPECT_EQ(draw_sequence(defaults, logits, 300), draw_sequence(defaults, logits, 300));
}

TEST(SamplerTest, DifferentSeed_DifferentSequence) {
    const std::vector<float> logits = random_logits(5000, 11, -2.0f, 2.0f);
    const auto a = draw_sequence(plain_config(1234), logits, 300);
    const auto b = draw_sequence(plain_config(1235), logits, 300);
    int same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        same += a[i] == b[i] ? 1 : 0;
    }
    // Nearly uniform over 5000 tokens: two independent streams agree at a handful of positions at most.
    EXPECT_LT(same, 10);
}

// ---------------------------------------------------------------------------------------------------------
// Distribution
// ---------------------------------------------------------------------------------------------------------

TEST(SamplerTest, Frequencies_MatchSoftmax_Temperature1) {
    const std::vector<float> logits = {1.3f, -0.7f, 0.4f, 2.1f, -1.9f, 0.9f};
    Sampler sampler(plain_config(2024));
    expect_frequencies(draw_counts(sampler, logits, kDraws), softmax(logits), kDraws);
}

TEST(SamplerTest, Frequencies_MatchSharpenedSoftmax_Temperature05) {
    const std::vector<float> logits = {1.3f, -0.7f, 0.4f, 2.1f, -1.9f, 0.9f};
    Sampler sampler(plain_config(77, 0.5));
    const std::vector<int> counts = draw_counts(sampler, logits, kDraws);
    const std::vector<double> sharp = softmax(logits, 0.5);
    expect_frequencies(counts, sharp, kDraws);

    // The sharpened distribution is told apart from the T = 1 one: the top token's count is far outside the
    // T = 1 prediction.
    const std::vector<double> flat = softmax(logits, 1.0);
    ASSERT_GT(sharp[3], flat[3]);
    const double flat_sigma = std::sqrt(kDraws * flat[3] * (1.0 - flat[3]));
    EXPECT_GT(counts[3] - kDraws * flat[3], 8.0 * flat_sigma);
}

TEST(SamplerTest, MaskedLogits_NeverDrawn) {
    const std::vector<float> logits = {0.2f, kNegInf, -0.4f, kNegInf, 0.1f};
    Sampler sampler(plain_config(5));
    expect_frequencies(draw_counts(sampler, logits, kDraws), softmax(logits), kDraws);
}

// ---------------------------------------------------------------------------------------------------------
// Greedy and top-k
// ---------------------------------------------------------------------------------------------------------

TEST(SamplerTest, Greedy_IgnoresRngAndFilters) {
    SamplingConfig a = plain_config(1, 0.0);
    SamplingConfig b;  // default filters, other seed
    b.temperature = 0.0;
    b.seed = 987654321;
    Sampler sampler_a(a);
    Sampler sampler_b(b);
    for (std::uint32_t row = 0; row < 50; ++row) {
        std::vector<float> logits = random_logits(3000, 100 + row);
        const std::int32_t expected = argmax(logits);
        EXPECT_EQ(sampler_a.sample(logits, {}), expected);
        EXPECT_EQ(sampler_b.sample(logits, {}), expected);
    }
    std::vector<float> tied = {0.5f, 4.0f, -2.0f, 4.0f};
    EXPECT_EQ(sampler_a.sample(tied, {}), 1);
}

TEST(SamplerTest, TopK1_EqualsArgmax) {
    SamplingConfig config = plain_config(31, 1.5);
    config.top_k = 1;
    Sampler sampler(config);
    for (std::uint32_t row = 0; row < 100; ++row) {
        std::vector<float> logits = random_logits(500, 300 + row);
        if (row % 10 == 0) {
            // A tie for the maximum: top-1 must pick the lower id, like argmax.
            const std::size_t best = static_cast<std::size_t>(argmax(logits));
            logits[(best + 250) % logits.size()] = logits[best];
        }
        const std::int32_t expected = argmax(logits);
        EXPECT_EQ(sampler.sample(logits, {}), expected) << "row " << row;
    }
}

TEST(SamplerTest, TopK_KeepsExactlyK) {
    const std::vector<float> logits = {0.3f, 1.7f, -0.2f, 1.1f, 0.9f, -1.4f, 2.6f, 0.0f};
    SamplingConfig config = plain_config(8);
    config.top_k = 3;
    Sampler sampler(config);
    // The three largest are ids 6 (2.6), 1 (1.7) and 3 (1.1).
    const auto expected = restrict_to(softmax(logits), {6, 1, 3});
    expect_frequencies(draw_counts(sampler, logits, kDraws), expected, kDraws);
}

TEST(SamplerTest, TopK_TieAtCut_KeepsLowestIds) {
    const std::vector<float> logits = {1.0f, 2.0f, 2.0f, 2.0f, 0.0f};
    SamplingConfig config = plain_config(9);
    config.top_k = 2;
    Sampler sampler(config);
    expect_frequencies(draw_counts(sampler, logits, kDraws), restrict_to(softmax(logits), {1, 2}), kDraws);
}

TEST(SamplerTest, TopK_LargerThanVocab_KeepsAll) {
    const std::vector<float> logits = {0.5f, -0.5f, 0.25f};
    SamplingConfig config = plain_config(10);
    config.top_k = 1000;
    Sampler sampler(config);
    expect_frequencies(draw_counts(sampler, logits, kDraws), softmax(logits), kDraws);
}

// ---------------------------------------------------------------------------------------------------------
// Top-p
// ---------------------------------------------------------------------------------------------------------

TEST(SamplerTest, TopP_One_KeepsAll) {
    // Token 4 has p ~ 0.01: any nucleus below 1 would drop it.
    const std::vector<float> logits = {1.0f, 0.8f, 0.6f, 0.4f, -3.0f};
    SamplingConfig config = plain_config(12);
    config.top_p = 1.0;
    Sampler sampler(config);
    const std::vector<int> counts = draw_counts(sampler, logits, kDraws);
    expect_frequencies(counts, softmax(logits), kDraws);
    EXPECT_GT(counts[4], 0);
}

TEST(SamplerTest, TopP_Tiny_KeepsOnlyMax) {
    const std::vector<float> logits = random_logits(2000, 13);
    SamplingConfig config = plain_config(13);
    config.top_p = 1e-9;
    Sampler sampler(config);
    const std::int32_t best = argmax(logits);
    std::vector<float> row = logits;
    for (int i = 0; i < 500; ++i) {
        ASSERT_EQ(sampler.sample(row, {}), best);
    }
}

TEST(SamplerTest, TopP_ThresholdExactlyHit_StopsThere) {
    // Eight equal logits: p = 1/8 each, exact in binary, so the cumulative mass hits 3/8 exactly at the third.
    const std::vector<float> logits(8, 0.0f);
    SamplingConfig config = plain_config(14);
    config.top_p = 0.375;
    Sampler exact(config);
    expect_frequencies(draw_counts(exact, logits, kDraws), restrict_to(softmax(logits), {0, 1, 2}), kDraws);

    config.top_p = 0.376;
    Sampler above(config);
    expect_frequencies(draw_counts(above, logits, kDraws), restrict_to(softmax(logits), {0, 1, 2, 3}), kDraws);
}

TEST(SamplerTest, TopP_TieAtBoundary_KeepsLowestIds) {
    // p ~ {0.447, 0.164, 0.164, 0.164, 0.060}: id 0 alone is below 0.5, id 0 plus one of the tied ids is above.
    const std::vector<float> logits = {1.0f, 0.0f, 0.0f, 0.0f, -1.0f};
    SamplingConfig config = plain_config(15);
    config.top_p = 0.5;
    Sampler sampler(config);
    expect_frequencies(draw_counts(sampler, logits, kDraws), restrict_to(softmax(logits), {0, 1}), kDraws);
}

TEST(SamplerTest, TopP_MeasuredAfterTopK) {
    // After top-k = 2 the survivors have p = 1/2 each, so top_p = 0.5 keeps one; measured on the full row
    // (p = 1/4 each) it would keep two.
    const std::vector<float> logits(4, 0.0f);
    SamplingConfig config = plain_config(16);
    config.top_k = 2;
    config.top_p = 0.5;
    Sampler sampler(config);
    expect_frequencies(draw_counts(sampler, logits, kDraws), restrict_to(softmax(logits), {0}), kDraws);
}

//! Ids sorted best first: larger logit, then lower id (the sampler's tie rule), by a plain full sort.
std::vector<std::size_t> ranked_ids(const std::vector<float>& logits) {
    std::vector<std::size_t> ids(logits.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
        ids[i] = i;
    }
    std::sort(ids.begin(), ids.end(),
              [&](std::size_t a, std::size_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    return ids;
}

//! Draws and checks that only ids in keep appear, that nearly all of them do, and that the draws per
//! probability-rank decile match the restricted softmax within 4 sigma.
void expect_support_and_deciles(Sampler& sampler,
                                const std::vector<float>& logits,
                                const std::vector<std::size_t>& keep_ranked,
                                double temperature) {
    const std::vector<int> counts = draw_counts(sampler, logits, kDraws);
    const std::set<std::size_t> keep(keep_ranked.begin(), keep_ranked.end());
    const std::vector<double> expected = restrict_to(softmax(logits, temperature), keep);
    std::size_t distinct = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
        if (keep.count(i) == 0) {
            ASSERT_EQ(counts[i], 0) << "token " << i << " is outside the kept set";
        }
        distinct += counts[i] > 0 ? 1 : 0;
    }
    EXPECT_GE(distinct, keep.size() * 9 / 10);
    constexpr std::size_t kBins = 10;
    for (std::size_t bin = 0; bin < kBins; ++bin) {
        double p = 0.0;
        int count = 0;
        for (std::size_t r = bin * keep_ranked.size() / kBins; r < (bin + 1) * keep_ranked.size() / kBins; ++r) {
            p += expected[keep_ranked[r]];
            count += counts[keep_ranked[r]];
        }
        const double sigma = std::sqrt(kDraws * p * (1.0 - p));
        EXPECT_LE(std::abs(count - kDraws * p), 4.0 * sigma + 1e-9) << "rank decile " << bin;
    }
}

TEST(SamplerTest, TopP_LargeNucleus_MatchesFullSortReference) {
    // A flat row: the nucleus spans hundreds of tokens, past the sampler's first sorted chunks. Some logits
    // are duplicated so that ties fall inside and around the boundary.
    std::vector<float> logits = random_logits(3000, 40, -0.5f, 0.5f);
    for (std::size_t i = 0; i + 1 < logits.size(); i += 7) {
        logits[i + 1] = logits[i];
    }
    const double top_p = 0.3;
    const std::vector<double> p = softmax(logits);
    const std::vector<std::size_t> ranked = ranked_ids(logits);
    std::vector<std::size_t> nucleus;
    double cumulative = 0.0;
    for (const std::size_t id : ranked) {
        nucleus.push_back(id);
        cumulative += p[id];
        if (cumulative >= top_p) {
            break;
        }
    }
    ASSERT_GT(nucleus.size(), 500U);
    SamplingConfig config = plain_config(41);
    config.top_p = top_p;
    Sampler sampler(config);
    expect_support_and_deciles(sampler, logits, nucleus, 1.0);
}

TEST(SamplerTest, TopK_LargeK_MatchesFullSortReference) {
    std::vector<float> logits = random_logits(3000, 42, -1.0f, 1.0f);
    for (std::size_t i = 0; i + 1 < logits.size(); i += 5) {
        logits[i + 1] = logits[i];
    }
    const std::vector<std::size_t> ranked = ranked_ids(logits);
    SamplingConfig config = plain_config(43);
    config.top_k = 400;
    Sampler sampler(config);
    expect_support_and_deciles(sampler, logits, std::vector<std::size_t>(ranked.begin(), ranked.begin() + 400), 1.0);
}

// ---------------------------------------------------------------------------------------------------------
// Min-p
// ---------------------------------------------------------------------------------------------------------

TEST(SamplerTest, MinP_Zero_KeepsAll) {
    // p_1 / p_0 = e^-4 ~ 0.018, below the default min_p of 0.05.
    const std::vector<float> logits = {0.0f, -4.0f};
    Sampler sampler(plain_config(17));
    const std::vector<int> counts = draw_counts(sampler, logits, kDraws);
    expect_frequencies(counts, softmax(logits), kDraws);
    EXPECT_GT(counts[1], 0);
}

TEST(SamplerTest, MinP_DropsBelowRatioOfMax) {
    // p_i / p_max = {1, 0.368, 0.135, 0.050}.
    const std::vector<float> logits = {0.0f, -1.0f, -2.0f, -3.0f};
    const std::vector<std::pair<double, std::set<std::size_t>>> cases = {
        {0.04, {0, 1, 2, 3}}, {0.1, {0, 1, 2}}, {0.3, {0, 1}}, {0.4, {0}}};
    std::uint64_t seed = 18;
    for (const auto& [min_p, keep] : cases) {
        SamplingConfig config = plain_config(seed++);
        config.min_p = min_p;
        Sampler sampler(config);
        SCOPED_TRACE("min_p = " + std::to_string(min_p));
        expect_frequencies(draw_counts(sampler, logits, kDraws), restrict_to(softmax(logits), keep), kDraws);
    }
}

TEST(SamplerTest, MinP_NearOne_KeepsMaxAndItsTies) {
    const std::vector<float> logits = {2.0f, 1.99f, 2.0f, -1.0f};
    SamplingConfig config = plain_config(22);
    config.min_p = 0.999;
    Sampler sampler(config);
    expect_frequencies(draw_counts(sampler, logits, kDraws), restrict_to(softmax(logits), {0, 2}), kDraws);
}

TEST(SamplerTest, MinP_UsesTemperatureScaledProbabilities) {
    // Ratio of id 1 to the max: e^-1 = 0.37 at T = 1 (kept by min_p 0.2), e^-2 = 0.135 at T = 0.5 (dropped).
    const std::vector<float> logits = {1.0f, 0.0f, -5.0f};
    SamplingConfig config = plain_config(23, 0.5);
    config.min_p = 0.2;
    Sampler sampler(config);
    expect_frequencies(draw_counts(sampler, logits, kDraws), restrict_to(softmax(logits, 0.5), {0}), kDraws);
}

// ---------------------------------------------------------------------------------------------------------
// Repetition penalty
// ---------------------------------------------------------------------------------------------------------

SamplingConfig penalty_config(double penalty, std::int32_t last_n) {
    SamplingConfig config = plain_config(24, 0.0);
    config.repetition_penalty = penalty;
    config.repetition_last_n = last_n;
    return config;
}

TEST(SamplerTest, RepetitionPenalty_DividesPositiveMultipliesNegative) {
    Sampler sampler(penalty_config(2.0, 0));
    std::vector<float> logits = {3.0f, -1.5f, 0.0f, 2.5f, -0.25f};
    const std::vector<std::int32_t> history = {0, 1, 2};
    sampler.sample(logits, history);
    EXPECT_FLOAT_EQ(logits[0], 1.5f);   // 3 / 2
    EXPECT_FLOAT_EQ(logits[1], -3.0f);  // -1.5 * 2: made less likely, not more
    EXPECT_FLOAT_EQ(logits[2], 0.0f);
    EXPECT_FLOAT_EQ(logits[3], 2.5f);  // not in the history
    EXPECT_FLOAT_EQ(logits[4], -0.25f);
}

TEST(SamplerTest, RepetitionPenalty_ChangesGreedyChoice) {
    Sampler sampler(penalty_config(1.5, 0));
    // Positive: 2.0 / 1.5 = 1.33 < 1.5.
    std::vector<float> positive = {2.0f, 1.5f, 0.3f};
    EXPECT_EQ(sampler.sample(positive, std::vector<std::int32_t>{0}), 1);
    // Negative: -1.0 * 1.5 = -1.5 < -1.2; dividing instead (-0.67) would have kept id 0 on top.
    std::vector<float> negative = {-1.0f, -1.2f, -5.0f};
    EXPECT_EQ(sampler.sample(negative, std::vector<std::int32_t>{0}), 1);
}

TEST(SamplerTest, RepetitionPenalty_OncePerDistinctToken) {
    Sampler sampler(penalty_config(2.0, 0));
    std::vector<float> logits = {4.0f, 1.5f, -1.0f};
    const std::vector<std::int32_t> history = {0, 2, 0, 0, 2};
    EXPECT_EQ(sampler.sample(logits, history), 0);  // 4 / 2 = 2 > 1.5; applied three times it would be 0.5
    EXPECT_FLOAT_EQ(logits[0], 2.0f);
    EXPECT_FLOAT_EQ(logits[2], -2.0f);
    // The marks are cleared between calls: the same history penalizes again.
    std::vector<float> again = {4.0f, 1.5f, -1.0f};
    sampler.sample(again, history);
    EXPECT_FLOAT_EQ(again[0], 2.0f);
}

TEST(SamplerTest, RepetitionPenalty_RespectsWindow) {
    const std::vector<std::int32_t> history = {0, 1, 2, 2};
    const std::vector<float> original = {2.0f, 2.0f, 2.0f, 2.0f};
    {
        Sampler sampler(penalty_config(2.0, 2));  // window {2, 2}
        std::vector<float> logits = original;
        sampler.sample(logits, history);
        EXPECT_EQ(logits, (std::vector<float>{2.0f, 2.0f, 1.0f, 2.0f}));
    }
    {
        Sampler sampler(penalty_config(2.0, 3));  // window {1, 2, 2}
        std::vector<float> logits = original;
        sampler.sample(logits, history);
        EXPECT_EQ(logits, (std::vector<float>{2.0f, 1.0f, 1.0f, 2.0f}));
    }
    for (const std::int32_t last_n : {0, 4, 64}) {  // whole history
        Sampler sampler(penalty_config(2.0, last_n));
        std::vector<float> logits = original;
        sampler.sample(logits, history);
        EXPECT_EQ(logits, (std::vector<float>{1.0f, 1.0f, 1.0f, 2.0f})) << "last_n " << last_n;
    }
}

TEST(SamplerTest, RepetitionPenalty_OffLeavesLogits) {
    Sampler sampler(penalty_config(1.0, 0));
    std::vector<float> logits = {2.0f, -2.0f};
    sampler.sample(logits, std::vector<std::int32_t>{0, 1});
    EXPECT_EQ(logits, (std::vector<float>{2.0f, -2.0f}));
}

TEST(SamplerTest, RepetitionPenalty_HistoryIdOutOfRange_Throws) {
    Sampler sampler(penalty_config(2.0, 0));
    std::vector<float> logits = {1.0f, 2.0f, 3.0f};
    const std::string message = error_message([&] { sampler.sample(logits, std::vector<std::int32_t>{0, 3}); });
    EXPECT_NE(message.find("history token id 3 at position 1"), std::string::npos) << message;
    EXPECT_NE(message.find("[0, 3)"), std::string::npos) << message;
    EXPECT_THROW(sampler.sample(logits, std::vector<std::int32_t>{-1}), Error);
    // Nothing was penalized by the failed calls, and a good call still works.
    EXPECT_EQ(logits, (std::vector<float>{1.0f, 2.0f, 3.0f}));
    EXPECT_EQ(sampler.sample(logits, std::vector<std::int32_t>{2}), 1);  // 3 / 2 < 2
}

// ---------------------------------------------------------------------------------------------------------
// Bad logits, allocation
// ---------------------------------------------------------------------------------------------------------

TEST(SamplerTest, NaNLogit_Throws) {
    std::vector<float> logits = random_logits(100, 25);
    logits[37] = std::numeric_limits<float>::quiet_NaN();
    for (const double temperature : {0.0, 0.8}) {
        SamplingConfig config;
        config.temperature = temperature;
        Sampler sampler(config);
        const std::string message = error_message([&] { sampler.sample(logits, {}); });
        EXPECT_NE(message.find("model produced a NaN logit"), std::string::npos) << message;
        EXPECT_NE(message.find("token id 37"), std::string::npos) << message;
    }
}

TEST(SamplerTest, UnusableRows_Throw) {
    Sampler sampler{SamplingConfig{}};
    std::vector<float> pos_inf = {0.0f, std::numeric_limits<float>::infinity()};
    EXPECT_NE(error_message([&] { sampler.sample(pos_inf, {}); }).find("+inf"), std::string::npos);
    std::vector<float> all_masked(4, kNegInf);
    EXPECT_NE(error_message([&] { sampler.sample(all_masked, {}); }).find("all 4 logits are -inf"), std::string::npos);
    EXPECT_THROW(sampler.sample(std::span<float>{}, {}), Error);
}

TEST(SamplerTest, NoAllocation_AfterFirstCall) {
    if (!Q4TP_COUNT_ALLOCATIONS) {
        GTEST_SKIP() << "operator new is not counted under AddressSanitizer";
    }
    const std::vector<float> base = random_logits(32000, 26, -4.0f, 4.0f);
    std::vector<std::int32_t> history;
    for (std::int32_t i = 0; i < 200; ++i) {
        history.push_back((i * 7919) % 32000);
    }
    SamplingConfig filtered;  // top-k, top-p, min-p on; penalty on with a window
    filtered.repetition_penalty = 1.1;
    SamplingConfig unfiltered = plain_config(27);  // full-vocabulary path
    unfiltered.repetition_penalty = 1.1;
    unfiltered.repetition_last_n = 0;
    unfiltered.top_p = 0.9;
    for (const SamplingConfig& config : {filtered, unfiltered}) {
        Sampler sampler(config);
        std::vector<float> logits = base;
        sampler.sample(logits, history);
        const std::size_t before = g_allocations.load();
        for (int step = 0; step < 20; ++step) {
            std::copy(base.begin(), base.end(), logits.begin());
            sampler.sample(logits, history);
        }
        EXPECT_EQ(g_allocations.load() - before, 0U);
    }
}

}  // namespace
}  // namespace q4tp::model
