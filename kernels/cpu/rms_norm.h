//! RMSNorm, float32 reference (docs/formats.md R4.2).
#pragma once

#include <cstdint>

namespace q4tp::kernels::cpu {

//! Per row r of x [m][hidden]: y[r][j] = weight[j] * float(x[r][j] * 1/sqrt(mean_j(x[r][j]^2) + eps)).
//! R4.2 (HF LlamaRMSNorm): the normalized value is rounded to the activation dtype (float32 here) before
//! the product with the weight; the mean, rsqrt and x * rsqrt are evaluated in double. y may alias x.
void rms_norm(const float* x, const float* weight, std::int64_t m, std::int64_t hidden, float eps, float* y);

}  // namespace q4tp::kernels::cpu
