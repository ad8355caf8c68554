// Sliding-window perplexity: every token after the first is scored exactly once, each with the context its
// window gives it, and a single window equals a direct computation from one forward pass.

#include <gtest/gtest.h>

#include <cmath>

#include "core/base/error.h"
#include "core/model/perplexity.h"
#include "golden_util.h"

namespace q4tp::test {
namespace {

std::vector<std::int32_t> sample_tokens(const loaders::Tokenizer& tokenizer) {
    return tokenizer.encode(
        "Perplexity measures how surprised a model is by a text: the exponential of the mean negative log "
        "likelihood of each token given the ones before it.",
        false);
}

// -ln p(tokens[t] | tokens[first..t)) from one forward pass over tokens[first..end).
double direct_nll(model::LlamaModel& llama, const std::vector<std::int32_t>& tokens, std::size_t first,
                  std::size_t end, std::size_t score_from) {
    std::vector<std::int32_t> window(tokens.begin() + static_cast<std::ptrdiff_t>(first),
                                     tokens.begin() + static_cast<std::ptrdiff_t>(end));
    std::vector<float> logits;
    llama.forward(window, 0, model::LogitsMode::All, logits);
    const auto vocab = static_cast<std::size_t>(llama.config().vocab_size);
    double nll = 0.0;
    for (std::size_t t = std::max(score_from, first + 1); t < end; ++t) {
        const float* row = logits.data() + (t - first - 1) * vocab;
        double sum = 0.0;
        for (std::size_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]));
        nll += std::log(sum) - row[tokens[t]];
    }
    return nll;
}

TEST(PerplexityTest, SingleWindowEqualsDirectComputation) {
    CpuFixture fx(fixtures_dir() / "tiny-g128-sym", 256, 256);
    const auto tokens = sample_tokens(*fx.tokenizer);
    model::PerplexityConfig config;
    config.window = 256;
    config.stride = 128;
    const auto result = model::evaluate_perplexity(*fx.model, tokens, config);
    EXPECT_EQ(result.scored_tokens, static_cast<std::int64_t>(tokens.size()) - 1);
    EXPECT_NEAR(result.nll_sum, direct_nll(*fx.model, tokens, 0, tokens.size(), 0), 1e-6 * result.nll_sum);
    EXPECT_NEAR(result.perplexity(), std::exp(result.nll_sum / static_cast<double>(tokens.size() - 1)), 1e-9);
}

TEST(PerplexityTest, StridedWindowsScoreEachTokenOnceWithTheirContext) {
    CpuFixture fx(fixtures_dir() / "tiny-g128-sym", 64, 64);
    const auto tokens = sample_tokens(*fx.tokenizer);
    ASSERT_GT(tokens.size(), 60u);
    model::PerplexityConfig config;
    config.window = 24;
    config.stride = 10;
    const auto result = model::evaluate_perplexity(*fx.model, tokens, config);
    EXPECT_EQ(result.scored_tokens, static_cast<std::int64_t>(tokens.size()) - 1);
    // The same windows by hand: window w covers [10w, 10w + 24) and scores what the previous one did not.
    double expected = 0.0;
    std::size_t scored_until = 1;
    for (std::size_t begin = 0;; begin += 10) {
        const std::size_t end = std::min(begin + 24, tokens.size());
        expected += direct_nll(*fx.model, tokens, begin, end, scored_until);
        scored_until = end;
        if (end == tokens.size()) break;
    }
    EXPECT_NEAR(result.nll_sum, expected, 1e-6 * expected);
}

TEST(PerplexityTest, BosIsContextOnly) {
    CpuFixture fx(fixtures_dir() / "tiny-g128-sym", 64, 64);
    const auto tokens = sample_tokens(*fx.tokenizer);
    model::PerplexityConfig config;
    config.window = 32;
    config.stride = 16;
    config.add_bos = true;
    const auto result = model::evaluate_perplexity(*fx.model, tokens, config);
    EXPECT_EQ(result.scored_tokens, static_cast<std::int64_t>(tokens.size()) - 1);
    std::vector<std::int32_t> with_bos{1};
    with_bos.insert(with_bos.end(), tokens.begin(), tokens.begin() + 31);
    // The first window: BOS + 31 text tokens, scoring text tokens 1..30.
    EXPECT_NEAR(result.window_nll[0], direct_nll(*fx.model, with_bos, 0, with_bos.size(), 2),
                1e-6 * result.window_nll[0]);
}

TEST(PerplexityTest, BadWindowsAreRefused) {
    CpuFixture fx(fixtures_dir() / "tiny-g128-sym", 64, 64);
    const auto tokens = sample_tokens(*fx.tokenizer);
    model::PerplexityConfig config;
    config.window = 128;  // larger than the context of 64
    EXPECT_THROW(model::evaluate_perplexity(*fx.model, tokens, config), Error);
    config.window = 32;
    config.stride = 40;  // would skip tokens
    EXPECT_THROW(model::evaluate_perplexity(*fx.model, tokens, config), Error);
}

}  // namespace
}  // namespace q4tp::test
