//! Host-side token sampling: repetition penalty, greedy, temperature, top-k, top-p, min-p, seeded draw.
//!
//! The processors run in Hugging Face's order (RepetitionPenaltyLogitsProcessor first, then the
//! Temperature, TopK, TopP and MinP warpers). Defaults follow llama.cpp's CLI. Two deliberate choices:
//! - Every tie is broken towards the lowest token id (argmax, the top-k cut, the top-p boundary), so that
//!   the result never depends on a sort's stability. Top-k therefore keeps exactly k tokens, like llama.cpp
//!   (HF keeps every token tied with the k-th).
//! - The RNG is a std::mt19937_64 turned into doubles by hand, not through std::*_distribution, whose
//!   algorithms differ between standard libraries: the same seed gives the same tokens on every rank and
//!   every build.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace q4tp::model {

//! Per-request sampling options. temperature == 0 means greedy; every other option is then ignored
//! except the repetition penalty, which changes the logits greedy picks from.
struct SamplingConfig {
    double temperature = 0.8;             //!< logits / temperature; 0 = greedy (argmax)
    std::int32_t top_k = 40;              //!< keep the k most likely tokens; 0 = off
    double top_p = 0.95;                  //!< nucleus mass in (0, 1]; 1 = off
    double min_p = 0.05;                  //!< drop tokens with p < min_p * p_max; 0 = off
    double repetition_penalty = 1.0;      //!< HF semantics on the history window; 1 = off
    std::int32_t repetition_last_n = 64;  //!< history window for the penalty; 0 = the whole history
    //! Fixed by default rather than random: every tensor-parallel rank samples on its own and must draw the
    //! same token without exchanging it. launch/ overrides it from the user's --seed.
    std::uint64_t seed = 42;

    //! Throws q4tp::Error naming the first option that is out of range and its value.
    void validate() const;
    //! True when sampling reduces to argmax (temperature 0, like llama.cpp and HF's do_sample=False).
    bool greedy() const { return temperature == 0.0; }
};

//! Index of the largest logit, ties to the lowest index. Throws on an empty span or a NaN logit.
std::int32_t argmax(std::span<const float> logits);

//! Throws q4tp::Error naming the first history id outside [0, vocab) and its position (the check the Sampler
//! makes on its penalty window, for selectors that cannot report a bad id from the device).
void check_history(std::span<const std::int32_t> history, std::int64_t vocab);

//! Draws one token per call from a logits row. Not thread-safe; one Sampler per sequence.
class Sampler {
   public:
    //! Validates the config and seeds the RNG with config.seed.
    explicit Sampler(const SamplingConfig& config);

    //! logits: [V] for one sequence; the repetition penalty is applied to it in place.
    //! history: the token ids seen so far (prompt and generated), each in [0, V).
    //! Throws q4tp::Error when a logit is NaN or +inf, when every logit is -inf, or when a history id is out of
    //! range. Allocates only when V grows past what an earlier call saw.
    std::int32_t sample(std::span<float> logits, std::span<const std::int32_t> history);

    const SamplingConfig& config() const { return config_; }

   private:
    void apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history);
    //! A double in [0, 1) from the top 53 bits of one RNG output.
    double next_uniform();

    SamplingConfig config_;
    std::mt19937_64 rng_;
    std::vector<std::int32_t> candidates_;  //!< [<= V] token ids still in play
    std::vector<double> weights_;           //!< [V] exp((logit - max) / T), valid for candidates only
    std::vector<std::uint8_t> seen_;        //!< [V] repetition-penalty marks, all 0 between calls
};

}  // namespace q4tp::model
