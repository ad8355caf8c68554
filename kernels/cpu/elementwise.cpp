#include "kernels/cpu/elementwise.h"

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

void add_inplace(float* x, const float* y, std::int64_t count) {
    Q4TP_CHECK(count > 0, "add_inplace: count = " << count << ", expected > 0");
    Q4TP_CHECK(x && y, "add_inplace: null x or y pointer");
    for (std::int64_t i = 0; i < count; ++i) x[i] += y[i];
}

}  // namespace q4tp::kernels::cpu
