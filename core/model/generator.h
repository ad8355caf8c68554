//! The generation loop: prefill the prompt, then sample one token at a time until an EOS id, a stop
//! string, max_new_tokens or the end of the context. Text is streamed as it becomes final.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/model/llama_model.h"
#include "core/model/sampling.h"

namespace q4tp::loaders {
class Tokenizer;
}

namespace q4tp::model {

enum class StopReason { Eos, StopString, MaxNewTokens, ContextFull };
const char* to_string(StopReason reason);

struct GenerationConfig {
    std::int64_t max_new_tokens = 256;
    std::vector<std::string> stop_strings;
    bool ignore_eos = false;  //!< keep going past EOS ids (benchmarks, golden continuations)
    SamplingConfig sampling;
    //! Pick each token where the logits are (LlamaModel::forward_select: on the GPU only the id is downloaded).
    //! false, or a logits callback, downloads every row and samples on the host instead. The CPU backend gives
    //! the same tokens either way; the CUDA backend's sampled tokens come from its own Philox stream (greedy
    //! tokens are the same on both paths).
    bool select_on_backend = true;
};

struct GenerationResult {
    std::vector<std::int32_t> tokens;  //!< generated ids; an EOS that ended generation is included (as HF does)
    std::string text;                  //!< everything streamed to the callback
    StopReason stop_reason = StopReason::MaxNewTokens;
    std::int64_t prompt_tokens = 0;
    double prompt_seconds = 0.0;    //!< prefill
    double generate_seconds = 0.0;  //!< every step after the prefill
};

using TextCallback = std::function<void(std::string_view)>;
//! Receives logits rows [V]: first the prompt's last position, then the row after each generated token
//! (when the context has room for it), so rows = 1 + generated tokens.
using LogitsCallback = std::function<void(std::span<const float>)>;

//! Runs one generation from an empty cache. prompt_ids must be non-empty and fit the context. Under tensor
//! parallelism every rank calls it with the same arguments (seed included) and produces the same tokens.
GenerationResult generate(LlamaModel& model, const loaders::Tokenizer& tokenizer,
                          std::span<const std::int32_t> prompt_ids, const GenerationConfig& config,
                          const TextCallback& on_text, const LogitsCallback* on_logits = nullptr);

}  // namespace q4tp::model
