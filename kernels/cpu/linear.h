//! Dense matrix products, float32 reference (docs/formats.md R2.1 orientation; R4.1 lm_head).
//! A GPTQ layer on the CPU backend is "dequantize with the loaders' reference dequantizer (R2.10), then
//! matmul": nothing here knows about int4.
#pragma once

#include <cstdint>

namespace q4tp::kernels::cpu {

//! y[i][j] = sum_{l<k} x[i][l] * w[l][j] (+ bias[j]) with x [m][k], w [k][n], y [m][n], bias [n] or null.
//! This is the GPTQ orientation y = x . W (R2.1: W is [K][N], the transpose of nn.Linear.weight).
//! Sums are accumulated in double and rounded once. y must not alias x or w.
void matmul(
    const float* x, const float* w, std::int64_t m, std::int64_t k, std::int64_t n, float* y, const float* bias);

//! y[i][j] = sum_{l<k} x[i][l] * w[j][l] (+ bias[j]) with x [m][k], w [n][k], y [m][n], bias [n] or null.
//! The nn.Linear orientation, used for lm_head (HF stores lm_head.weight as [V][H], §2.1).
//! Sums are accumulated in double and rounded once. y must not alias x or w.
void matmul_transposed_b(
    const float* x, const float* w, std::int64_t m, std::int64_t k, std::int64_t n, float* y, const float* bias);

}  // namespace q4tp::kernels::cpu
