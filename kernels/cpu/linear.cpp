#include "kernels/cpu/linear.h"

#include <vector>

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

// An oracle must be more accurate than the kernels it checks: GPU GEMVs accumulate k up to 28672
// products in float32 (or fp16 halves), so the reference accumulates in double and rounds once.

namespace {

void check_matmul_args(
    const char* op, const float* x, const float* w, std::int64_t m, std::int64_t k, std::int64_t n, const float* y) {
    Q4TP_CHECK(m > 0 && k > 0 && n > 0,
               op << ": sizes m = " << m << ", k = " << k << ", n = " << n << ", expected all > 0");
    Q4TP_CHECK(x && w && y, op << ": null x, w or y pointer");
}

}  // namespace

void matmul(
    const float* x, const float* w, std::int64_t m, std::int64_t k, std::int64_t n, float* y, const float* bias) {
    check_matmul_args("matmul", x, w, m, k, n, y);
    // Row i of y is built as a sum of rows of w scaled by x[i][l], so that w is read contiguously; each
    // output still sums its k products in ascending l, exactly the textbook formula.
    std::vector<double> acc(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < m; ++i) {
        for (std::int64_t j = 0; j < n; ++j) acc[j] = 0.0;
        for (std::int64_t l = 0; l < k; ++l) {
            const double xv = x[i * k + l];
            const float* wr = w + l * n;
            for (std::int64_t j = 0; j < n; ++j) acc[j] += xv * wr[j];
        }
        for (std::int64_t j = 0; j < n; ++j) {
            y[i * n + j] = static_cast<float>(bias ? acc[j] + bias[j] : acc[j]);
        }
    }
}

void matmul_transposed_b(
    const float* x, const float* w, std::int64_t m, std::int64_t k, std::int64_t n, float* y, const float* bias) {
    check_matmul_args("matmul_transposed_b", x, w, m, k, n, y);
    for (std::int64_t i = 0; i < m; ++i) {
        const float* xr = x + i * k;
        for (std::int64_t j = 0; j < n; ++j) {
            const float* wr = w + j * k;
            double acc = 0.0;
            for (std::int64_t l = 0; l < k; ++l) acc += static_cast<double>(xr[l]) * wr[l];
            y[i * n + j] = static_cast<float>(bias ? acc + bias[j] : acc);
        }
    }
}

}  // namespace q4tp::kernels::cpu
