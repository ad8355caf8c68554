// The generation loop on a real (tiny) model: stop conditions, streaming, seeds, recorded logits, and token
// selection on the backend (LlamaModel::forward_select) against sampling downloaded rows on the host.

#include <gtest/gtest.h>

#include <algorithm>
#include <utility>

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

// A flat distribution with every processor active, so that the draw, the cuts and the penalty window all matter.
model::GenerationConfig sampled(std::uint64_t seed, double penalty, std::int32_t last_n) {
    model::GenerationConfig config;
    config.max_new_tokens = 40;
    config.ignore_eos = true;
    config.sampling.temperature = 1.3;
    config.sampling.top_k = 50;
    config.sampling.top_p = 0.9;
    config.sampling.min_p = 0.02;
    config.sampling.repetition_penalty = penalty;
    config.sampling.repetition_last_n = last_n;
    config.sampling.seed = seed;
    return config;
}

TEST_F(GenerationTest, BackendSelectionEqualsHostSampling_Greedy) {
    auto config = greedy(30);
    const auto on_backend = run(config);
    config.select_on_backend = false;
    const auto on_host = run(config);
    ASSERT_EQ(on_backend.tokens.size(), 30u);
    EXPECT_EQ(on_backend.tokens, on_host.tokens);
    EXPECT_EQ(on_backend.text, on_host.text);
}

TEST_F(GenerationTest, BackendSelectionEqualsHostSampling_Sampled) {
    // The CPU backend selects with the host Sampler itself: the same seeded stream, penalty window and cuts.
    for (const auto& [penalty, last_n] : {std::pair{1.0, 64}, std::pair{1.5, 6}, std::pair{2.0, 0}}) {
        auto config = sampled(20240611, penalty, last_n);
        const auto on_backend = run(config);
        config.select_on_backend = false;
        const auto on_host = run(config);
        EXPECT_EQ(on_backend.tokens, on_host.tokens) << "penalty " << penalty << " last_n " << last_n;
    }
}

TEST_F(GenerationTest, BackendSelectionFollowsThePenaltyAndTheSeed) {
    // Guards against the two paths agreeing by both ignoring an option: the penalty and the seed change tokens.
    const auto plain = run(sampled(7, 1.0, 0));
    EXPECT_NE(run(sampled(8, 1.0, 0)).tokens, plain.tokens);
    auto strong = greedy(30);
    strong.sampling.repetition_penalty = 50.0;
    strong.sampling.repetition_last_n = 0;
    const auto penalized = run(strong);
    EXPECT_NE(penalized.tokens, run(greedy(30)).tokens);
    // A penalty of 50 over the whole history leaves no id room to repeat while fresh ones remain.
    std::vector<std::int32_t> seen = prompt();
    for (const std::int32_t token : penalized.tokens) {
        EXPECT_EQ(std::find(seen.begin(), seen.end(), token), seen.end()) << "token " << token << " repeated";
        seen.push_back(token);
    }
}

// Chunked prefill (2 tokens per pass) selects from the last chunk; each decode step's id, left in the backend's
// input buffer, is used as the next input, and a different id passed instead is not overridden by it.
TEST(GenerationSelectTest, ForwardSelectEqualsArgmaxOfForward_ChunkedPrompt) {
    CpuFixture chunked(fixtures_dir() / "tiny-g128-sym", 2, 64), whole(fixtures_dir() / "tiny-g128-sym", 16, 64);
    const std::vector<std::int32_t> prompt = whole.tokenizer->encode("Once upon a time there", true);
    ASSERT_GT(prompt.size(), 4u);
    model::SamplingConfig greedy;
    greedy.temperature = 0.0;
    chunked.model->begin_selection(greedy, prompt);
    std::vector<float> logits;
    whole.model->forward(prompt, 0, model::LogitsMode::LastOnly, logits);
    std::int32_t token = chunked.model->forward_select(prompt, 0);
    EXPECT_EQ(token, model::argmax(logits));
    auto position = static_cast<std::int64_t>(prompt.size());
    for (int step = 0; step < 8; ++step, ++position) {
        // Every other step feeds an id other than the selected one.
        const auto vocab = static_cast<std::int32_t>(whole.config.vocab_size);
        const std::int32_t input = step % 2 == 0 ? token : (token + 1) % vocab;
        whole.model->forward(std::span<const std::int32_t>(&input, 1), position, model::LogitsMode::LastOnly, logits);
        token = chunked.model->forward_select(std::span<const std::int32_t>(&input, 1), position);
        ASSERT_EQ(token, model::argmax(logits)) << "step " << step;
    }
}

TEST(GenerationSelectTest, RefusesSelectionWithoutOptionsAndBadHistoryIds) {
    CpuFixture fx(fixtures_dir() / "tiny-g128-sym", 16, 64);
    const std::vector<std::int32_t> prompt = fx.tokenizer->encode("Once upon a time", true);
    try {
        (void)fx.model->forward_select(prompt, 0);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("begin_selection"), std::string::npos) << e.message();
    }
    std::vector<std::int32_t> history = prompt;
    history.push_back(static_cast<std::int32_t>(fx.config.vocab_size));
    try {
        fx.model->begin_selection(model::SamplingConfig{}, history);
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("history token id " + std::to_string(fx.config.vocab_size)), std::string::npos)
            << e.message();
    }
}

}  // namespace
}  // namespace q4tp::test
