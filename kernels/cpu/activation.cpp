#include "kernels/cpu/activation.h"

#include <cmath>

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

void silu_mul(const float* gate, const float* up, std::int64_t count, float* out) {
    Q4TP_CHECK(count > 0, "silu_mul: count = " << count << ", expected > 0");
    Q4TP_CHECK(gate && up && out, "silu_mul: null gate, up or out pointer");
    for (std::int64_t i = 0; i < count; ++i) {
        const double g = gate[i];
        // The quotient form the CUDA kernels use too; it stays finite for every finite g (for very negative g,
        // exp(-g) overflows to +inf and the quotient is -0, never inf * 0).
        const double silu = g / (1.0 + std::exp(-g));
        out[i] = static_cast<float>(silu * static_cast<double>(up[i]));
    }
}

}  // namespace q4tp::kernels::cpu
