//! SwiGLU activation of the Llama MLP, float32 reference (docs/formats.md R4.1).
#pragma once

#include <cstdint>

namespace q4tp::kernels::cpu {

//! out[i] = silu(gate[i]) * up[i] with silu(g) = g / (1 + exp(-g)) (= g * sigmoid(g), R4.1), for i < count.
//! Evaluated in double and rounded once. out may alias gate or up.
void silu_mul(const float* gate, const float* up, std::int64_t count, float* out);

}  // namespace q4tp::kernels::cpu
