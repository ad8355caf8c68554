#include "kernels/cpu/rms_norm.h"

#include <cmath>

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

void rms_norm(const float* x, const float* weight, std::int64_t m, std::int64_t hidden, float eps, float* y) {
    Q4TP_CHECK(m > 0 && hidden > 0, "rms_norm: shape [" << m << ", " << hidden << "], expected both > 0");
    Q4TP_CHECK(eps >= 0.0f && std::isfinite(eps), "rms_norm: eps = " << eps << ", expected a finite value >= 0");
    Q4TP_CHECK(x && weight && y, "rms_norm: null x, weight or y pointer");
    for (std::int64_t r = 0; r < m; ++r) {
        const float* xr = x + r * hidden;
        float* yr = y + r * hidden;
        // The sum of squares over thousands of elements is where float32 loses digits; the oracle must be
        // more accurate than the kernels it checks, so it accumulates in double.
        double sum_sq = 0.0;
        for (std::int64_t j = 0; j < hidden; ++j) sum_sq += static_cast<double>(xr[j]) * xr[j];
        const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(hidden) + static_cast<double>(eps));
        for (std::int64_t j = 0; j < hidden; ++j) {
            const auto normalized = static_cast<float>(xr[j] * inv_rms);
            yr[j] = weight[j] * normalized;
        }
    }
}

}  // namespace q4tp::kernels::cpu
