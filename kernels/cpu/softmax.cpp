#include "kernels/cpu/softmax.h"

#include <cmath>
#include <limits>

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

void softmax(const float* x, std::int64_t n, float* y) {
    Q4TP_CHECK(n > 0, "softmax: row length n = " << n << ", expected > 0");
    Q4TP_CHECK(x && y, "softmax: null x or y pointer");
    double max_value = -std::numeric_limits<double>::infinity();
    for (std::int64_t i = 0; i < n; ++i) {
        Q4TP_CHECK(!std::isnan(x[i]) && x[i] != std::numeric_limits<float>::infinity(),
                   "softmax: x[" << i << "] = " << x[i] << ", expected a finite value or -inf");
        if (x[i] > max_value) max_value = x[i];
    }
    Q4TP_CHECK(std::isfinite(max_value), "softmax: all " << n << " entries are -inf, expected at least one finite");
    // Subtracting the maximum keeps every exponent <= 0, so nothing overflows and the largest term is 1.
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max_value);
    // max and sum are complete before the first write and each write reads only its own x[i]: y may alias x.
    for (std::int64_t i = 0; i < n; ++i) {
        y[i] = static_cast<float>(std::exp(static_cast<double>(x[i]) - max_value) / sum);
    }
}

std::int64_t argmax(const float* x, std::int64_t n) {
    Q4TP_CHECK(n > 0, "argmax: row length n = " << n << ", expected > 0");
    Q4TP_CHECK(x, "argmax: null x pointer");
    std::int64_t best = 0;
    for (std::int64_t i = 1; i < n; ++i) {
        if (std::isnan(x[best])) break;
        // Strictly greater keeps the lowest index on ties.
        if (std::isnan(x[i]) || x[i] > x[best]) best = i;
    }
    return best;
}

}  // namespace q4tp::kernels::cpu
