// Host oracle for kernels/cuda/sampling: the distribution sample_rows must draw from, in double, built from the
// rules of core/model's Sampler (HF order: repetition penalty, temperature, top-k, top-p, min-p; ties to the
// lowest id), plus a frequency check for many draws.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "kernels/cuda/sampling.h"

namespace q4tp::test {

//! HF RepetitionPenaltyLogitsProcessor as sample_rows applies it (float arithmetic): every distinct id of the
//! window in [0, V) once, logit / penalty when positive, logit * penalty otherwise.
inline void apply_repetition_penalty(std::vector<float>& logits, std::span<const std::int32_t> window, float penalty) {
    std::vector<bool> seen(logits.size(), false);
    for (const std::int32_t id : window) {
        if (id < 0 || static_cast<std::size_t>(id) >= logits.size() || seen[static_cast<std::size_t>(id)]) continue;
        seen[static_cast<std::size_t>(id)] = true;
        float& l = logits[static_cast<std::size_t>(id)];
        l = l > 0.0f ? l / penalty : l * penalty;
    }
}

//! Probability of each token under the options (0 outside the kept set); logits already penalized. Unmasked
//! means neither -inf nor NaN. Options are assumed valid with temperature > 0.
inline std::vector<double> reference_distribution(std::span<const float> logits,
                                                  const kernels::cuda::SamplingOptions& o) {
    std::vector<std::int32_t> order;
    for (std::size_t i = 0; i < logits.size(); ++i) {
        if (logits[i] > -std::numeric_limits<float>::infinity()) order.push_back(static_cast<std::int32_t>(i));
    }
    // The host Sampler's total order: larger logit first, then lower id.
    std::sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
        const float la = logits[static_cast<std::size_t>(a)];
        const float lb = logits[static_cast<std::size_t>(b)];
        return la > lb || (la == lb && a < b);
    });
    if (o.top_k > 0 && static_cast<std::size_t>(o.top_k) < order.size()) order.resize(static_cast<std::size_t>(o.top_k));
    std::vector<double> prob(logits.size(), 0.0);
    if (order.empty()) return prob;
    const double max_logit = logits[static_cast<std::size_t>(order.front())];
    std::vector<double> w(order.size());
    for (std::size_t j = 0; j < order.size(); ++j) {
        w[j] = std::exp((logits[static_cast<std::size_t>(order[j])] - max_logit) / static_cast<double>(o.temperature));
    }
    const double total = std::accumulate(w.begin(), w.end(), 0.0);
    std::size_t keep = order.size();
    if (o.top_p < 1.0f) {
        double cumulative = 0.0;
        for (std::size_t j = 0; j < order.size(); ++j) {
            cumulative += w[j];
            if (cumulative / total >= static_cast<double>(o.top_p)) {
                keep = j + 1;
                break;
            }
        }
    }
    std::size_t keep_min_p = 0;
    while (keep_min_p < order.size() && w[keep_min_p] >= static_cast<double>(o.min_p)) ++keep_min_p;
    keep = std::min(keep, keep_min_p);
    const double kept = std::accumulate(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
    for (std::size_t j = 0; j < keep; ++j) prob[static_cast<std::size_t>(order[j])] = w[j] / kept;
    return prob;
}

//! Number of tokens with non-zero probability.
inline std::size_t kept_count(const std::vector<double>& prob) {
    return static_cast<std::size_t>(std::count_if(prob.begin(), prob.end(), [](double p) { return p > 0.0; }));
}

//! Every count within 4 binomial standard deviations of draws * p; tokens with p == 0 never drawn.
inline ::testing::AssertionResult frequencies_match(const std::vector<std::int64_t>& counts,
                                                    const std::vector<double>& prob, std::int64_t draws) {
    std::string report;
    for (std::size_t i = 0; i < prob.size(); ++i) {
        const double expected = static_cast<double>(draws) * prob[i];
        const double sigma = std::sqrt(expected * (1.0 - prob[i]));
        const double off = std::fabs(static_cast<double>(counts[i]) - expected);
        if ((prob[i] == 0.0 && counts[i] != 0) || off > 4.0 * sigma + 1e-9) {
            report += "\n  token " + std::to_string(i) + ": drawn " + std::to_string(counts[i]) + " times, expected " +
                      std::to_string(expected) + " +- " + std::to_string(sigma);
        }
    }
    if (report.empty()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "frequencies off over " << draws << " draws:" << report;
}

}  // namespace q4tp::test
