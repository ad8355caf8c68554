// The generation loop on a real (tiny) model: stop conditions, streaming, seeds, recorded logits.

#include <gtest/gtest.h>

#include "core/base/error.h"
#include "core/model/generator.h"
#include "golden_util.h"

namespace q4tp::test {
namespace {

class GenerationTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() { fx_ = new CpuFixture(fixtures_dir() / "tiny-g128-sym", 16, 64); }
    static void TearDownTestSuite() {
        delete fx_;
        fx_ = nullptr;
    }
    std::vector<std::int32_t> prompt() const { return fx_->tokenizer->encode("Once upon a time", true); }
    model::GenerationResult run(const model::GenerationConfig& config, const model::TextCallback& on_text = nullptr,
                                const model::LogitsCallback* on_logits = nullptr) {
        return model::generate(*fx_->model, *fx_->tokenizer, prompt(), config, on_text, on_logits);
    }
    static model::GenerationConfig greedy(std::int64_t max_new_tokens) {
        model::GenerationConfig config;
        config.max_new_tokens = max_new_tokens;
        config.sampling.temperature = 0.0;
        config.ignore_eos = true;
        return config;
    }
    static CpuFixture* fx_;
};
CpuFixture* GenerationTest::fx_ = nullptr;

TEST_F(GenerationTest, StopsAtMaxNewTokens) {
    const auto result = run(greedy(7));
    EXPECT_EQ(result.tokens.size(), 7u);
    EXPECT_EQ(result.stop_reason, model::StopReason::MaxNewTokens);
    EXPECT_EQ(run(greedy(0)).tokens.size(), 0u);
}

TEST_F(GenerationTest, StreamedTextEqualsDecodeOfTheContinuation) {
    std::string streamed;
    const auto result = run(greedy(24), [&](std::string_view text) { streamed += text; });
    EXPECT_EQ(streamed, result.text);
    std::vector<std::int32_t> all = prompt();
    all.insert(all.end(), result.tokens.begin(), result.tokens.end());
    EXPECT_EQ(fx_->tokenizer->decode(prompt()) + result.text, fx_->tokenizer->decode(all));
}

TEST_F(GenerationTest, StopsOnEosIdsFromConfig) {
    const auto free_run = run(greedy(5));
    // Pretend the third greedy token is an end-of-sequence id (config eos may be a list: all count).
    const auto saved = fx_->model->config().eos_token_ids;
    auto& eos = const_cast<std::vector<std::int64_t>&>(fx_->model->config().eos_token_ids);
    eos = {12345, free_run.tokens[2]};
    auto config = greedy(5);
    config.ignore_eos = false;
    const auto result = run(config);
    eos = saved;
    EXPECT_EQ(result.stop_reason, model::StopReason::Eos);
    ASSERT_EQ(result.tokens.size(), 3u);  // the EOS id is part of the output, as in Hugging Face
    EXPECT_EQ(result.tokens[2], free_run.tokens[2]);
}

TEST_F(GenerationTest, StopsOnStopStringWithoutPrintingIt) {
    const auto free_run = run(greedy(24));
    // A stop string of two ASCII characters from inside the free-running text (random weights also emit
    // multi-byte characters, which a byte-offset cut could split).
    std::size_t at = 2;
    auto ascii = [&](std::size_t i) { return static_cast<unsigned char>(free_run.text[i]) < 0x80; };
    while (at + 1 < free_run.text.size() && !(ascii(at) && ascii(at + 1))) ++at;
    ASSERT_LT(at + 1, free_run.text.size()) << "no ASCII pair in '" << free_run.text << "'";
    const std::string stop = free_run.text.substr(at, 2);
    auto config = greedy(24);
    config.stop_strings = {stop};
    std::string streamed;
    const auto result = run(config, [&](std::string_view text) { streamed += text; });
    EXPECT_EQ(result.stop_reason, model::StopReason::StopString);
    EXPECT_EQ(streamed, free_run.text.substr(0, free_run.text.find(stop)));
}

TEST_F(GenerationTest, StopsWhenTheContextIsFull) {
    const auto prompt_len = static_cast<std::int64_t>(prompt().size());
    const auto result = run(greedy(1000));
    EXPECT_EQ(result.stop_reason, model::StopReason::ContextFull);
    // The cache holds 64 tokens; the token sampled from the last cached position is still returned.
    EXPECT_EQ(static_cast<std::int64_t>(result.tokens.size()), 64 - prompt_len + 1);
}

TEST_F(GenerationTest, PromptLongerThanTheContextIsRefused) {
    std::vector<std::int32_t> long_prompt(65, 7);
    try {
        model::generate(*fx_->model, *fx_->tokenizer, long_prompt, greedy(4), nullptr);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("65 tokens"), std::string::npos) << e.message();
        EXPECT_NE(e.message().find("64"), std::string::npos) << e.message();
    }
}

TEST_F(GenerationTest, SeedMakesSamplingReproducible) {
    model::GenerationConfig config;
    config.max_new_tokens = 24;
    config.ignore_eos = true;
    config.sampling.temperature = 1.5;  // flat enough that different seeds diverge
    config.sampling.top_k = 0;
    config.sampling.top_p = 1.0;
    config.sampling.min_p = 0.0;
    config.sampling.seed = 1234;
    const auto a = run(config);
    const auto b = run(config);
    config.sampling.seed = 98765;
    const auto c = run(config);
    EXPECT_EQ(a.tokens, b.tokens);
    EXPECT_NE(a.tokens, c.tokens);
}

TEST_F(GenerationTest, RecordsOneLogitsRowPerStepPlusThePrompt) {
    std::vector<std::vector<float>> rows;
    model::LogitsCallback record = [&](std::span<const float> row) { rows.emplace_back(row.begin(), row.end()); };
    const auto result = run(greedy(6), nullptr, &record);
    ASSERT_EQ(rows.size(), result.tokens.size() + 1);
    // Greedy: each token is the argmax of the row before it.
    for (std::size_t i = 0; i < result.tokens.size(); ++i) {
        EXPECT_EQ(model::argmax(rows[i]), result.tokens[i]);
    }
}

}  // namespace
}  // namespace q4tp::test
