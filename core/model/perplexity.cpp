#include "core/model/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/base/error.h"

namespace q4tp::model {

double PerplexityResult::perplexity() const {
    return scored_tokens > 0 ? std::exp(nll_sum / static_cast<double>(scored_tokens)) : 0.0;
}

namespace {
// -ln softmax(logits)[target], computed in double with the max subtracted.
double negative_log_likelihood(std::span<const float> logits, std::int32_t target) {
    const double max = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (const float l : logits) sum += std::exp(static_cast<double>(l) - max);
    return std::log(sum) + max - static_cast<double>(logits[static_cast<std::size_t>(target)]);
}
}  // namespace

PerplexityResult evaluate_perplexity(LlamaModel& model, std::span<const std::int32_t> tokens,
                                     const PerplexityConfig& config,
                                     const std::function<void(std::int64_t, std::int64_t)>& progress) {
    const std::int64_t bos = config.add_bos ? 1 : 0;
    const std::int64_t text_window = config.window - bos;
    Q4TP_CHECK(text_window >= 2, "--window " << config.window << " is too small");
    Q4TP_CHECK(config.stride >= 1 && config.stride <= text_window,
               "--stride " << config.stride << " must lie in [1, " << text_window << "]");
    Q4TP_CHECK(config.window <= model.context_capacity(),
               "--window " << config.window << " exceeds the context of " << model.context_capacity() << " tokens");
    const auto n = static_cast<std::int64_t>(tokens.size());
    Q4TP_CHECK(n >= 2, "the text has " << n << " tokens; perplexity needs at least 2");
    const auto vocab = static_cast<std::size_t>(model.config().vocab_size);

    std::int64_t windows_total = 1;
    for (std::int64_t b = 0; b + text_window < n; b += config.stride) ++windows_total;

    PerplexityResult result;
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::int32_t> input;
    std::vector<float> logits;
    std::int64_t scored_until = 1;  // tokens [0, scored_until) are scored or are the first token
    for (std::int64_t begin = 0;; begin += config.stride) {
        const std::int64_t end = std::min(begin + text_window, n);
        input.clear();
        if (config.add_bos) input.push_back(config.bos_id);
        input.insert(input.end(), tokens.begin() + begin, tokens.begin() + end);
        model.forward(input, 0, LogitsMode::All, logits);
        double window_nll = 0.0;
        for (std::int64_t t = std::max(scored_until, begin + 1); t < end; ++t) {
            // Logits at input position p predict input p + 1; text token t sits at input position t - begin + bos.
            const std::size_t row = static_cast<std::size_t>(t - begin + bos - 1);
            window_nll += negative_log_likelihood(std::span<const float>(logits.data() + row * vocab, vocab),
                                                  tokens[static_cast<std::size_t>(t)]);
            ++result.scored_tokens;
        }
        result.nll_sum += window_nll;
        result.window_nll.push_back(window_nll);
        scored_until = end;
        if (progress) progress(static_cast<std::int64_t>(result.window_nll.size()), windows_total);
        if (end == n) break;
    }
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
}

}  // namespace q4tp::model
