//! Rotary position embedding, float32 reference: inverse frequencies for every rope_scaling type and the
//! rotation itself (docs/formats.md R4.4-R4.11).
//!
//! The frequency tables mirror transformers' float32 arithmetic operation by operation (T2 @ef46806, T1 v4.48),
//! because a 1-ulp change in inv_freq[i] moves the angle at position 8000 by up to 1e-3 rad. The one operation
//! that cannot be mirrored bit for bit is pow: we round the exact power to float32, torch's CPU kernel (Sleef,
//! 1 ulp) and CUDA powf differ from that in the last bit for roughly 1% of entries. Measured against transformers
//! in torch 2.x (CPU): the d = 128 default, llama3 and yarn tables of the tests agree bit for bit; dynamic NTK
//! differs by up to 2 ulps in a third of its entries, because its base is itself the result of a pow.
#pragma once

#include <cstdint>
#include <vector>

#include "core/base/model_config.h"

namespace q4tp::kernels::cpu {

//! What rope_init_fn returns in transformers: the table and the factor applied to cos and sin (R4.6).
struct RopeFrequencies {
    std::vector<float> inv_freq;     //!< [head_dim / 2]
    float attention_scaling = 1.0f;  //!< yarn's attention_factor; 1 for every other type
};

//! The frequencies in force at load time, for config.rope_scaling.type (d = head_dim, theta = rope_theta):
//! - Default (R4.4): inv_freq[i] = 1 / fl(theta^fl(2i / d)), exponent and quotient in float32.
//! - Linear (R4.8): the default table divided by factor (float32).
//! - Dynamic (R4.9): the default table; it changes only once the sequence outgrows max_position_embeddings,
//!   see rope_inv_freq_dynamic.
//! - Llama3 (R4.10): wl = 2 pi / inv; wl < old/high_freq_factor unchanged; wl > old/low_freq_factor divided by
//!   factor; otherwise (1 - s) inv / factor + s inv with s = (old/wl - low_freq_factor) /
//!   (high_freq_factor - low_freq_factor); old = original_max_position_embeddings.
//! - Yarn (R4.11, pinned to T2 @ef46806: M = max_position_embeddings, floor/ceil correction range, no mscale):
//!   inv = interp (1 - ef) + extrap ef with extrap = 1/pos, interp = 1/(factor pos), pos = theta^(2i/d),
//!   ef = 1 - clamp((i - low) / (high - low), 0, 1); attention_scaling = attention_factor or 0.1 ln(factor) + 1.
//! Throws when head_dim is not positive and even, or a parameter the type uses is out of range.
RopeFrequencies rope_inv_freq(const ModelConfig& config);

//! Dynamic NTK frequencies (R4.9) for a sequence of seq_len positions, with transformers v4.48 semantics:
//! when seq_len > M = max_position_embeddings, base = theta * (factor seq_len / M - (factor - 1))^(d / (d - 2))
//! and the default formula is rerun from that base; otherwise the original table. Like v4.48, whose seq_len is
//! a 0-d tensor, the base is computed in float32. v4.48 is stateful (it recomputes only when the sequence grows
//! past the largest length seen and resets when it falls below M): callers reproduce it by passing that largest
//! length. Keys already in the cache are never re-rotated. Throws unless the type is Dynamic.
RopeFrequencies rope_inv_freq_dynamic(const ModelConfig& config, std::int64_t seq_len);

//! Rotates x [m][num_heads][head_dim] in place, row t at absolute position positions[t] (R4.4, R4.5, R4.6):
//! with h = head_dim / 2, a = fl(float(pos) * inv_freq[i]), c = fl(cos a) * attention_scaling and
//! s = fl(sin a) * attention_scaling (float32 products), for i < h:
//!   out[i] = x[i] c - x[i + h] s,   out[i + h] = x[i + h] c + x[i] s     (rotate-half pairs, not interleaved),
//! each evaluated in double and rounded once. HF then casts c and s to fp16; this float32 reference does not.
//! inv_freq holds head_dim / 2 values. Throws on a negative position, naming it.
void apply_rope(float* x,
                const std::int32_t* positions,
                std::int64_t m,
                std::int64_t num_heads,
                std::int64_t head_dim,
                const float* inv_freq,
                float attention_scaling);

}  // namespace q4tp::kernels::cpu
