#include "core/model/generator.h"

#include <algorithm>
#include <chrono>

#include "core/base/error.h"
#include "core/model/stop_strings.h"
#include "loaders/tokenizer.h"

namespace q4tp::model {

const char* to_string(StopReason reason) {
    switch (reason) {
        case StopReason::Eos: return "eos";
        case StopReason::StopString: return "stop string";
        case StopReason::MaxNewTokens: return "max new tokens";
        case StopReason::ContextFull: return "context full";
    }
    return "?";
}

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

GenerationResult generate(LlamaModel& model, const loaders::Tokenizer& tokenizer,
                          std::span<const std::int32_t> prompt_ids, const GenerationConfig& config,
                          const TextCallback& on_text, const LogitsCallback* on_logits) {
    config.sampling.validate();
    Q4TP_CHECK(config.max_new_tokens >= 0, "max_new_tokens must be >= 0, got " << config.max_new_tokens);
    Q4TP_CHECK(!prompt_ids.empty(), "the prompt is empty (no tokens)");
    const auto prompt_len = static_cast<std::int64_t>(prompt_ids.size());
    const std::int64_t capacity = model.context_capacity();
    Q4TP_CHECK(prompt_len <= capacity, "the prompt has " << prompt_len << " tokens but the context holds only "
                                                         << capacity << " (raise --ctx-size or shorten the prompt)");
    const auto& eos_ids = model.config().eos_token_ids;

    GenerationResult result;
    result.prompt_tokens = prompt_len;
    Sampler sampler(config.sampling);
    loaders::StreamingDecoder decoder(tokenizer);
    // The decoder sees the prompt first (its text is not emitted) so that the continuation decodes as a
    // continuation: sentencepiece strips the leading space only from the first piece of a text.
    for (const std::int32_t id : prompt_ids) (void)decoder.push(id);
    StopStringMatcher matcher(config.stop_strings);
    std::vector<std::int32_t> history(prompt_ids.begin(), prompt_ids.end());
    std::vector<float> logits;

    auto emit = [&](const std::string& text) {
        if (text.empty()) return;
        result.text += text;
        if (on_text) on_text(text);
    };

    bool finished = config.max_new_tokens == 0;
    if (finished) result.stop_reason = StopReason::MaxNewTokens;
    if (!finished && prompt_len >= capacity) {
        finished = true;
        result.stop_reason = StopReason::ContextFull;
    }
    // Backend selection: each forward pass ends in the chosen id (`selected`), and the logits stay where they are.
    const bool on_backend = config.select_on_backend && !on_logits && !finished;
    std::int32_t selected = -1;

    auto start = std::chrono::steady_clock::now();
    if (on_backend) {
        model.begin_selection(config.sampling, prompt_ids);
        selected = model.forward_select(prompt_ids, 0);
    } else {
        model.forward(prompt_ids, 0, LogitsMode::LastOnly, logits);
    }
    result.prompt_seconds = seconds_since(start);
    start = std::chrono::steady_clock::now();
    std::int64_t position = prompt_len;  // tokens in the cache

    if (on_logits) (*on_logits)(logits);
    while (!finished) {
        const std::int32_t token = on_backend ? selected : sampler.sample(logits, history);
        if (!on_backend) history.push_back(token);
        result.tokens.push_back(token);
        const bool is_eos = std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end();

        const StopStringMatcher::Result piece = matcher.push(decoder.push(token));
        emit(piece.emit);
        if (piece.stopped) {
            finished = true;
            result.stop_reason = StopReason::StopString;
        } else if (is_eos && !config.ignore_eos) {
            finished = true;
            result.stop_reason = StopReason::Eos;
        } else if (static_cast<std::int64_t>(result.tokens.size()) >= config.max_new_tokens) {
            finished = true;
            result.stop_reason = StopReason::MaxNewTokens;
        } else if (position + 1 > capacity) {
            finished = true;
            result.stop_reason = StopReason::ContextFull;
        }
        // The last token is also run when logits are recorded, so each generated token gets its row.
        if (finished && !(on_logits && position < capacity)) break;
        const std::span<const std::int32_t> input(&token, 1);
        if (on_backend) {
            selected = model.forward_select(input, position);
        } else {
            model.forward(input, position, LogitsMode::LastOnly, logits);
        }
        ++position;
        if (on_logits) (*on_logits)(logits);
    }
    if (result.stop_reason != StopReason::StopString) {
        emit(matcher.push(decoder.flush()).emit);
        emit(matcher.flush());
    }
    model.ops().synchronize();
    result.generate_seconds = seconds_since(start);
    return result;
}

}  // namespace q4tp::model
