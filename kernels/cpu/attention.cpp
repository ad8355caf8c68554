#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

void attention(const AttentionParams& p) {
    Q4TP_CHECK(p.m > 0 && p.head_dim > 0,
               "attention: m = " << p.m << ", head_dim = " << p.head_dim << ", expected both > 0");
    Q4TP_CHECK(
        p.num_heads > 0 && p.num_kv_heads > 0 && p.num_heads % p.num_kv_heads == 0,
        "attention: num_heads = " << p.num_heads << " is not a positive multiple of num_kv_heads = " << p.num_kv_heads);
    Q4TP_CHECK(p.past_len >= 0, "attention: past_len = " << p.past_len << ", expected >= 0");
    Q4TP_CHECK(p.capacity > 0 && p.past_len + p.m <= p.capacity,
               "attention: past_len " << p.past_len << " + m " << p.m << " exceeds the cache capacity " << p.capacity);
    Q4TP_CHECK(p.q && p.k_cache && p.v_cache && p.out, "attention: null q, k_cache, v_cache or out pointer");

    const std::int64_t d = p.head_dim;
    const std::int64_t group = p.num_heads / p.num_kv_heads;
    // d^-0.5 as HF's `head_dim ** -0.5`; scores, softmax and the weighted sum stay in double so that the
    // oracle is well below the fp16 / fp32 error of any kernel it checks.
    const double scale = std::pow(static_cast<double>(d), -0.5);
    const std::int64_t max_keys = p.past_len + p.m;
    std::vector<double> scores(static_cast<std::size_t>(max_keys));
    std::vector<double> acc(static_cast<std::size_t>(d));

    for (std::int64_t i = 0; i < p.m; ++i) {
        const std::int64_t keys = p.past_len + i + 1;  // causal: positions 0 .. past_len + i
        for (std::int64_t h = 0; h < p.num_heads; ++h) {
            const std::int64_t g = h / group;
            const float* qv = p.q + (i * p.num_heads + h) * d;
            const float* k_head = p.k_cache + g * p.capacity * d;
            const float* v_head = p.v_cache + g * p.capacity * d;

            double max_score = -std::numeric_limits<double>::infinity();
            for (std::int64_t j = 0; j < keys; ++j) {
                const float* kv = k_head + j * d;
                double dot = 0.0;
                for (std::int64_t c = 0; c < d; ++c) dot += static_cast<double>(qv[c]) * kv[c];
                scores[j] = dot * scale;
                max_score = std::max(max_score, scores[j]);
            }
            // Subtracting the maximum keeps every exponent <= 0: no overflow, and the sum is at least 1.
            double sum = 0.0;
            for (std::int64_t j = 0; j < keys; ++j) {
                scores[j] = std::exp(scores[j] - max_score);
                sum += scores[j];
            }
            std::fill(acc.begin(), acc.end(), 0.0);
            for (std::int64_t j = 0; j < keys; ++j) {
                const double weight = scores[j] / sum;
                const float* vv = v_head + j * d;
                for (std::int64_t c = 0; c < d; ++c) acc[c] += weight * vv[c];
            }
            float* ov = p.out + (i * p.num_heads + h) * d;
            for (std::int64_t c = 0; c < d; ++c) ov[c] = static_cast<float>(acc[c]);
        }
    }
}

void append_kv(const float* k,
               const float* v,
               float* k_cache,
               float* v_cache,
               std::int64_t capacity,
               std::int64_t past_len,
               std::int64_t m,
               std::int64_t num_kv_heads,
               std::int64_t head_dim) {
    Q4TP_CHECK(m > 0 && num_kv_heads > 0 && head_dim > 0, "append_kv: m = " << m << ", num_kv_heads = " << num_kv_heads
                                                                            << ", head_dim = " << head_dim
                                                                            << ", expected all > 0");
    Q4TP_CHECK(past_len >= 0, "append_kv: past_len = " << past_len << ", expected >= 0");
    Q4TP_CHECK(capacity > 0 && past_len + m <= capacity,
               "append_kv: past_len " << past_len << " + m " << m << " exceeds the cache capacity " << capacity);
    Q4TP_CHECK(k && v && k_cache && v_cache, "append_kv: null k, v, k_cache or v_cache pointer");
    for (std::int64_t t = 0; t < m; ++t) {
        for (std::int64_t g = 0; g < num_kv_heads; ++g) {
            const std::int64_t src = (t * num_kv_heads + g) * head_dim;
            const std::int64_t dst = (g * capacity + past_len + t) * head_dim;
            std::copy(k + src, k + src + head_dim, k_cache + dst);
            std::copy(v + src, v + src + head_dim, v_cache + dst);
        }
    }
}

}  // namespace q4tp::kernels::cpu
