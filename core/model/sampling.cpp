#include "core/model/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "core/base/error.h"

namespace q4tp::model {

// ---------------------------------------------------------------------------------------------------------
// SamplingConfig
// ---------------------------------------------------------------------------------------------------------

void SamplingConfig::validate() const {
    // Every condition is phrased so that a NaN option fails it.
    Q4TP_CHECK(std::isfinite(temperature) && temperature >= 0.0,
               "sampling option temperature = " << temperature << " is invalid: expected a finite value >= 0 "
                                                << "(0 = greedy)");
    Q4TP_CHECK(top_k >= 0, "sampling option top_k = " << top_k << " is invalid: expected >= 0 (0 = off)");
    Q4TP_CHECK(top_p > 0.0 && top_p <= 1.0,
               "sampling option top_p = " << top_p << " is invalid: expected 0 < top_p <= 1 (1 = off)");
    Q4TP_CHECK(min_p >= 0.0 && min_p < 1.0,
               "sampling option min_p = " << min_p << " is invalid: expected 0 <= min_p < 1 (0 = off)");
    Q4TP_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0.0,
               "sampling option repetition_penalty = " << repetition_penalty
                                                       << " is invalid: expected a finite value > 0 (1 = off)");
    Q4TP_CHECK(repetition_last_n >= 0, "sampling option repetition_last_n = "
                                           << repetition_last_n << " is invalid: expected >= 0 (0 = whole history)");
}

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

namespace {

//! Refuses rows that cannot define a distribution. +inf is refused with NaN because exp(+inf - +inf) is NaN:
//! both mean the forward pass overflowed or broke, and sampling garbage would hide it.
void check_logits(std::span<const float> logits) {
    Q4TP_CHECK(!logits.empty(), "sampler: the logits row is empty; expected one logit per vocabulary token");
    Q4TP_CHECK(logits.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
               "sampler: the logits row has " << logits.size() << " entries; token ids must fit in int32");
    bool any_finite = false;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        const float x = logits[i];
        Q4TP_CHECK(!std::isnan(x),
                   "sampler: the model produced a NaN logit (token id " << i << " of " << logits.size() << ")");
        Q4TP_CHECK(x != std::numeric_limits<float>::infinity(),
                   "sampler: the model produced a +inf logit (token id " << i << " of " << logits.size() << ")");
        any_finite = any_finite || x != -std::numeric_limits<float>::infinity();
    }
    Q4TP_CHECK(any_finite, "sampler: all " << logits.size() << " logits are -inf; no token can be sampled");
}

}  // namespace

std::int32_t argmax(std::span<const float> logits) {
    Q4TP_CHECK(!logits.empty(), "argmax: the logits row is empty");
    std::size_t best = 0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        Q4TP_CHECK(!std::isnan(logits[i]),
                   "argmax: the model produced a NaN logit (token id " << i << " of " << logits.size() << ")");
        // Strict > keeps the first of equal maxima.
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return static_cast<std::int32_t>(best);
}

void check_history(std::span<const std::int32_t> history, std::int64_t vocab) {
    for (std::size_t i = 0; i < history.size(); ++i) {
        Q4TP_CHECK(history[i] >= 0 && history[i] < vocab, "sampler: history token id "
                                                              << history[i] << " at position " << i
                                                              << " is outside the vocabulary [0, " << vocab << ")");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Sampler
// ---------------------------------------------------------------------------------------------------------

Sampler::Sampler(const SamplingConfig& config) : config_(config), rng_(config.seed) {
    config_.validate();
}

double Sampler::next_uniform() {
    // 53 random bits fill a double's mantissa exactly: the result is k * 2^-53 for k in [0, 2^53).
    return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

void Sampler::apply_repetition_penalty(std::span<float> logits, std::span<const std::int32_t> history) {
    const std::size_t vocab = logits.size();
    const auto last_n = static_cast<std::size_t>(config_.repetition_last_n);
    const std::size_t first = (last_n > 0 && history.size() > last_n) ? history.size() - last_n : 0;
    const std::span<const std::int32_t> window = history.subspan(first);

    // Validate before marking anything, so that a throw leaves seen_ all zero.
    for (std::size_t i = 0; i < window.size(); ++i) {
        const std::int32_t id = window[i];
        Q4TP_CHECK(id >= 0 && static_cast<std::size_t>(id) < vocab,
                   "sampler: history token id " << id << " at position " << first + i
                                                << " is outside the vocabulary [0, " << vocab << ")");
    }
    if (seen_.size() < vocab) {
        seen_.resize(vocab, 0);
    }
    const double penalty = config_.repetition_penalty;
    // HF RepetitionPenaltyLogitsProcessor: each distinct id is penalized once, however often it occurs.
    for (const std::int32_t id : window) {
        auto& mark = seen_[static_cast<std::size_t>(id)];
        if (mark == 0) {
            mark = 1;
            float& logit = logits[static_cast<std::size_t>(id)];
            const double x = logit;
            logit = static_cast<float>(x > 0.0 ? x / penalty : x * penalty);
        }
    }
    for (const std::int32_t id : window) {
        seen_[static_cast<std::size_t>(id)] = 0;
    }
}

std::int32_t Sampler::sample(std::span<float> logits, std::span<const std::int32_t> history) {
    check_logits(logits);
    if (config_.repetition_penalty != 1.0) {
        apply_repetition_penalty(logits, history);
    }
    if (config_.greedy()) {
        return argmax(logits);
    }

    const std::size_t vocab = logits.size();
    if (weights_.size() < vocab) {
        weights_.resize(vocab);
        candidates_.reserve(vocab);
    }
    // "Higher" is a strict total order: larger logit first, then lower id. Every cut below uses it, so ties
    // always resolve the same way whatever the sort algorithm.
    const auto higher = [&logits](std::int32_t a, std::int32_t b) {
        const float la = logits[static_cast<std::size_t>(a)];
        const float lb = logits[static_cast<std::size_t>(b)];
        return la > lb || (la == lb && a < b);
    };
    constexpr float kMasked = -std::numeric_limits<float>::infinity();

    // Top-k. Temperature > 0 is monotonic, so cutting on raw logits equals HF's cut on scaled ones. A heap of
    // the k best seen so far rejects most of a 128k vocabulary with one comparison against its worst entry.
    const auto top_k = static_cast<std::size_t>(config_.top_k);
    const bool top_k_cut = top_k > 0 && top_k < vocab;
    candidates_.clear();
    for (std::size_t i = 0; i < vocab; ++i) {
        if (logits[i] == kMasked) {
            continue;
        }
        const auto id = static_cast<std::int32_t>(i);
        if (!top_k_cut) {
            candidates_.push_back(id);
        } else if (candidates_.size() < top_k) {
            candidates_.push_back(id);
            std::push_heap(candidates_.begin(), candidates_.end(), higher);
        } else if (higher(id, candidates_.front())) {
            // With "higher" as the heap's less-than, front() is the worst of the k kept.
            std::pop_heap(candidates_.begin(), candidates_.end(), higher);
            candidates_.back() = id;
            std::push_heap(candidates_.begin(), candidates_.end(), higher);
        }
    }

    // Temperature and softmax numerators relative to the max, so the best candidate has weight exactly 1.
    float max_logit = kMasked;
    for (const std::int32_t id : candidates_) {
        max_logit = std::max(max_logit, logits[static_cast<std::size_t>(id)]);
    }
    const double inv_temperature = 1.0 / config_.temperature;
    double total = 0.0;
    for (const std::int32_t id : candidates_) {
        const double w =
            std::exp((static_cast<double>(logits[static_cast<std::size_t>(id)]) - max_logit) * inv_temperature);
        weights_[static_cast<std::size_t>(id)] = w;
        total += w;
    }

    // Top-p and min-p both keep a prefix of the candidates sorted by "higher", so applying them in HF's order
    // (top-p, then min-p) keeps the shorter of the two prefixes. Min-p runs first here only to shrink the list
    // before the sort; top-p still measures cumulative mass against the post-top-k total, as HF does.
    // p / p_max == weight, because the best weight is 1.
    if (config_.min_p > 0.0) {
        const double min_p = config_.min_p;
        const auto dropped = std::remove_if(candidates_.begin(), candidates_.end(), [&](std::int32_t id) {
            return weights_[static_cast<std::size_t>(id)] < min_p;
        });
        candidates_.erase(dropped, candidates_.end());
    }
    if (config_.top_p < 1.0) {
        // Sorted in growing chunks: each chunk is the best of the rest (nth_element), then sorted, until the
        // nucleus is complete. A peaked distribution never sorts more than the first chunk of a 128k row.
        const std::size_t count = candidates_.size();
        std::size_t sorted = 0;
        std::size_t chunk = 64;
        double cumulative = 0.0;
        bool complete = false;
        while (!complete && sorted < count) {
            const auto first = candidates_.begin() + static_cast<std::ptrdiff_t>(sorted);
            const std::size_t end = std::min(count, sorted + chunk);
            const auto last = candidates_.begin() + static_cast<std::ptrdiff_t>(end);
            if (end < count) {
                std::nth_element(first, last, candidates_.end(), higher);
            }
            std::sort(first, last, higher);
            for (std::size_t i = sorted; i < end; ++i) {
                cumulative += weights_[static_cast<std::size_t>(candidates_[i])];
                if (cumulative / total >= config_.top_p) {
                    candidates_.resize(i + 1);
                    complete = true;
                    break;
                }
            }
            sorted = end;
            chunk *= 2;
        }
    } else if (top_k_cut) {
        // The heap's order depends on the standard library; fix one so the draw maps u to the same token
        // everywhere.
        std::sort(candidates_.begin(), candidates_.end());
    }

    // Renormalize over the survivors and draw by inverse CDF.
    double kept_total = 0.0;
    for (const std::int32_t id : candidates_) {
        kept_total += weights_[static_cast<std::size_t>(id)];
    }
    const double u = next_uniform() * kept_total;
    double cumulative = 0.0;
    std::int32_t last_positive = candidates_.front();
    for (const std::int32_t id : candidates_) {
        const double w = weights_[static_cast<std::size_t>(id)];
        cumulative += w;
        if (w > 0.0) {
            last_positive = id;
            if (u < cumulative) {
                return id;
            }
        }
    }
    // Only reached when rounding puts u at the very top of the range.
    return last_positive;
}

}  // namespace q4tp::model
