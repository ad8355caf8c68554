#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

// Every float32 expression below is one torch op on a float32 tensor, in transformers' order; a Python scalar
// meeting a float32 tensor is first rounded to float32, which is why scalars are cast before they are used.
// Comments quote the Python they mirror.

namespace {

// ---- shared pieces ----------------------------------------------------------------------------------------

//! torch's float32 pow, as the correctly rounded result (see rope.h for the 1-ulp caveat).
float pow_f32(float base, float exponent) {
    return static_cast<float>(std::pow(static_cast<double>(base), static_cast<double>(exponent)));
}

//! pos[i] = base ** (torch.arange(0, dim, 2).float() / dim), i < dim/2; base already a float32 value.
std::vector<float> position_frequencies(float base, std::int64_t dim) {
    std::vector<float> pos(static_cast<std::size_t>(dim / 2));
    for (std::int64_t i = 0; i < dim / 2; ++i) {
        const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
        pos[i] = pow_f32(base, exponent);
    }
    return pos;
}

//! inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim)); torch evaluates 1.0 / t as reciprocal(t).
std::vector<float> default_inv_freq(float base, std::int64_t dim) {
    std::vector<float> inv = position_frequencies(base, dim);
    for (float& v : inv) v = 1.0f / v;
    return inv;
}

void check_common(const ModelConfig& config) {
    Q4TP_CHECK(config.head_dim > 0 && config.head_dim % 2 == 0,
               "rope: head_dim = " << config.head_dim << ", expected a positive even number");
    Q4TP_CHECK(std::isfinite(config.rope_theta) && config.rope_theta > 1.0,
               "rope: rope_theta = " << config.rope_theta << ", expected a finite value > 1");
}

void check_factor(const ModelConfig& config) {
    const double factor = config.rope_scaling.factor;
    Q4TP_CHECK(std::isfinite(factor) && factor > 0.0,
               "rope: rope_scaling.factor = " << factor << " for type " << to_string(config.rope_scaling.type)
                                              << ", expected a finite value > 0");
}

// ---- one function per rope_type (T2 ROPE_INIT_FUNCTIONS) --------------------------------------------------

//! T2 _compute_linear_scaling_rope_parameters: inv_freq /= factor.
std::vector<float> linear_inv_freq(const ModelConfig& config) {
    check_factor(config);
    std::vector<float> inv = default_inv_freq(static_cast<float>(config.rope_theta), config.head_dim);
    const auto factor = static_cast<float>(config.rope_scaling.factor);
    for (float& v : inv) v /= factor;
    return inv;
}

//! T2 _compute_llama3_parameters.
std::vector<float> llama3_inv_freq(const ModelConfig& config) {
    const RopeScaling& rs = config.rope_scaling;
    check_factor(config);
    Q4TP_CHECK(rs.original_max_position_embeddings > 0, "rope: llama3 rope_scaling.original_max_position_embeddings = "
                                                            << rs.original_max_position_embeddings << ", expected > 0");
    Q4TP_CHECK(std::isfinite(rs.low_freq_factor) && std::isfinite(rs.high_freq_factor) && rs.low_freq_factor > 0.0 &&
                   rs.high_freq_factor > rs.low_freq_factor,
               "rope: llama3 low_freq_factor = " << rs.low_freq_factor << ", high_freq_factor = " << rs.high_freq_factor
                                                 << ", expected 0 < low < high");
    const auto old_context_len = static_cast<double>(rs.original_max_position_embeddings);
    // low_freq_wavelen = old_context_len / low_freq_factor (Python double), compared as float32.
    const auto low_freq_wavelen = static_cast<float>(old_context_len / rs.low_freq_factor);
    const auto high_freq_wavelen = static_cast<float>(old_context_len / rs.high_freq_factor);
    const auto factor = static_cast<float>(rs.factor);
    const auto old_f = static_cast<float>(old_context_len);
    const auto low_f = static_cast<float>(rs.low_freq_factor);
    const auto band = static_cast<float>(rs.high_freq_factor - rs.low_freq_factor);
    const auto two_pi = static_cast<float>(2.0 * std::numbers::pi);

    std::vector<float> inv = default_inv_freq(static_cast<float>(config.rope_theta), config.head_dim);
    for (float& v : inv) {
        const float wavelen = (1.0f / v) * two_pi;                         // 2 * math.pi / inv_freq
        const float scaled = wavelen > low_freq_wavelen ? v / factor : v;  // torch.where(wl > low_wl, ...)
        const float smooth = ((1.0f / wavelen) * old_f - low_f) / band;    // (old / wl - low) / (high - low)
        const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
        const bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        v = is_medium ? smoothed : scaled;
    }
    return inv;
}

//! T2 @ef46806 _compute_yarn_parameters (see rope.h for the version pinned).
RopeFrequencies yarn_frequencies(const ModelConfig& config) {
    const RopeScaling& rs = config.rope_scaling;
    check_factor(config);
    Q4TP_CHECK(config.max_position_embeddings > 0,
               "rope: yarn needs max_position_embeddings > 0, got " << config.max_position_embeddings);
    Q4TP_CHECK(std::isfinite(rs.beta_fast) && std::isfinite(rs.beta_slow) && rs.beta_fast > 0.0 && rs.beta_slow > 0.0,
               "rope: yarn beta_fast = " << rs.beta_fast << ", beta_slow = " << rs.beta_slow << ", expected both > 0");
    Q4TP_CHECK(std::isfinite(rs.attention_factor) && rs.attention_factor >= 0.0,
               "rope: yarn attention_factor = " << rs.attention_factor << ", expected >= 0 (0 = derive from factor)");
    const std::int64_t dim = config.head_dim;
    const double base = config.rope_theta;
    const auto max_positions = static_cast<double>(config.max_position_embeddings);

    // find_correction_dim: (dim * log(M / (num_rotations * 2 * pi))) / (2 * log(base)), in double.
    const auto correction_dim = [&](double num_rotations) {
        return (static_cast<double>(dim) * std::log(max_positions / (num_rotations * 2.0 * std::numbers::pi))) /
               (2.0 * std::log(base));
    };
    const double low = std::max(std::floor(correction_dim(rs.beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(rs.beta_slow)), static_cast<double>(dim - 1));
    if (low == high) high += 0.001;  // linear_ramp_factor: "Prevent singularity"
    const auto low_f = static_cast<float>(low);
    const auto span_f = static_cast<float>(high - low);

    const auto factor = static_cast<float>(rs.factor);
    const std::vector<float> pos = position_frequencies(static_cast<float>(base), dim);
    RopeFrequencies result;
    result.inv_freq.resize(pos.size());
    for (std::size_t i = 0; i < pos.size(); ++i) {
        const float extrapolation = 1.0f / pos[i];
        const float interpolation = 1.0f / (factor * pos[i]);
        const float ramp = std::clamp((static_cast<float>(i) - low_f) / span_f, 0.0f, 1.0f);
        const float extrapolation_factor = 1.0f - ramp;
        result.inv_freq[i] = interpolation * (1.0f - extrapolation_factor) + extrapolation * extrapolation_factor;
    }
    const double attention_factor = rs.attention_factor != 0.0 ? rs.attention_factor : 0.1 * std::log(rs.factor) + 1.0;
    result.attention_scaling = static_cast<float>(attention_factor);
    return result;
}

}  // namespace

// ---- public entry points ----------------------------------------------------------------------------------

RopeFrequencies rope_inv_freq(const ModelConfig& config) {
    check_common(config);
    RopeFrequencies result;
    switch (config.rope_scaling.type) {
        case RopeType::Default:
            result.inv_freq = default_inv_freq(static_cast<float>(config.rope_theta), config.head_dim);
            return result;
        case RopeType::Linear:
            result.inv_freq = linear_inv_freq(config);
            return result;
        case RopeType::Dynamic:
            // transformers initialises with seq_len = max_position_embeddings, where the base is unchanged.
            check_factor(config);
            result.inv_freq = default_inv_freq(static_cast<float>(config.rope_theta), config.head_dim);
            return result;
        case RopeType::Llama3:
            result.inv_freq = llama3_inv_freq(config);
            return result;
        case RopeType::Yarn:
            return yarn_frequencies(config);
    }
    Q4TP_THROW("rope: unknown rope_scaling type " << static_cast<int>(config.rope_scaling.type));
}

RopeFrequencies rope_inv_freq_dynamic(const ModelConfig& config, std::int64_t seq_len) {
    check_common(config);
    Q4TP_CHECK(config.rope_scaling.type == RopeType::Dynamic,
               "rope: rope_inv_freq_dynamic called for rope_scaling type " << to_string(config.rope_scaling.type)
                                                                           << ", expected dynamic");
    check_factor(config);
    Q4TP_CHECK(config.max_position_embeddings > 0,
               "rope: dynamic needs max_position_embeddings > 0, got " << config.max_position_embeddings);
    Q4TP_CHECK(seq_len > 0, "rope: dynamic seq_len = " << seq_len << ", expected > 0");
    RopeFrequencies result;
    if (seq_len <= config.max_position_embeddings) {
        result.inv_freq = default_inv_freq(static_cast<float>(config.rope_theta), config.head_dim);
        return result;
    }
    // base = base * ((factor * seq_len / M) - (factor - 1)) ** (dim / (dim - 2)) with seq_len a 0-d int64
    // tensor, so every step is a float32 op.
    const std::int64_t dim = config.head_dim;
    const double factor = config.rope_scaling.factor;
    const float growth =
        static_cast<float>(factor) * static_cast<float>(seq_len) / static_cast<float>(config.max_position_embeddings) -
        static_cast<float>(factor - 1.0);
    const auto exponent = static_cast<float>(static_cast<double>(dim) / static_cast<double>(dim - 2));
    const float base = static_cast<float>(config.rope_theta) * pow_f32(growth, exponent);
    Q4TP_CHECK(std::isfinite(base) && base > 1.0f,
               "rope: dynamic base for seq_len " << seq_len << " is " << base << ", expected a finite value > 1");
    result.inv_freq = default_inv_freq(base, dim);
    return result;
}

void apply_rope(float* x,
                const std::int32_t* positions,
                std::int64_t m,
                std::int64_t num_heads,
                std::int64_t head_dim,
                const float* inv_freq,
                float attention_scaling) {
    Q4TP_CHECK(m > 0 && num_heads > 0, "apply_rope: m = " << m << ", num_heads = " << num_heads << ", expected > 0");
    Q4TP_CHECK(head_dim > 0 && head_dim % 2 == 0,
               "apply_rope: head_dim = " << head_dim << ", expected a positive even number");
    Q4TP_CHECK(std::isfinite(attention_scaling) && attention_scaling > 0.0f,
               "apply_rope: attention_scaling = " << attention_scaling << ", expected a finite value > 0");
    Q4TP_CHECK(x && positions && inv_freq, "apply_rope: null x, positions or inv_freq pointer");
    for (std::int64_t t = 0; t < m; ++t) {
        Q4TP_CHECK(positions[t] >= 0, "apply_rope: position " << positions[t] << " of row " << t << ", expected >= 0");
    }
    const std::int64_t half = head_dim / 2;
    std::vector<float> cos_table(static_cast<std::size_t>(half));
    std::vector<float> sin_table(static_cast<std::size_t>(half));
    for (std::int64_t t = 0; t < m; ++t) {
        const auto pos = static_cast<float>(positions[t]);
        for (std::int64_t i = 0; i < half; ++i) {
            // freqs = inv_freq @ position_ids in float32: a single product, so one rounding.
            const float angle = pos * inv_freq[i];
            cos_table[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * attention_scaling;
            sin_table[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * attention_scaling;
        }
        for (std::int64_t h = 0; h < num_heads; ++h) {
            float* v = x + (t * num_heads + h) * head_dim;
            for (std::int64_t i = 0; i < half; ++i) {
                const double lo = v[i];
                const double hi = v[i + half];
                const double c = cos_table[i];
                const double s = sin_table[i];
                v[i] = static_cast<float>(lo * c - hi * s);
                v[i + half] = static_cast<float>(hi * c + lo * s);
            }
        }
    }
}

}  // namespace q4tp::kernels::cpu
