//! Perplexity over a token sequence with a sliding window, the way Hugging Face's perplexity guide and
//! exllama's tool do it: windows of `window` tokens start every `stride` tokens; each window scores only the
//! tokens the previous window did not (the first window scores all but its first token), so every token
//! after the first is scored exactly once, with up to window - stride tokens of context.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "core/model/llama_model.h"

namespace q4tp::model {

struct PerplexityConfig {
    std::int64_t window = 512;
    std::int64_t stride = 256;
    //! Prepend BOS to every window (it is context only, never scored); the window then holds window - 1 text
    //! tokens so the model sees at most `window` positions.
    bool add_bos = false;
    std::int32_t bos_id = 1;
};

struct PerplexityResult {
    double nll_sum = 0.0;              //!< sum of -ln p(token | context) over scored tokens
    std::int64_t scored_tokens = 0;
    std::vector<double> window_nll;    //!< nll_sum of each window
    double seconds = 0.0;
    double perplexity() const;         //!< exp(nll_sum / scored_tokens)
};

//! Scores `tokens` (the text, without BOS) with the model. progress(done, total) is called after each window.
PerplexityResult evaluate_perplexity(LlamaModel& model, std::span<const std::int32_t> tokens,
                                     const PerplexityConfig& config,
                                     const std::function<void(std::int64_t, std::int64_t)>& progress = nullptr);

}  // namespace q4tp::model
