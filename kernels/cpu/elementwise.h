//! Elementwise ops, float32 reference: the residual additions of docs/formats.md R4.1.
#pragma once

#include <cstdint>

namespace q4tp::kernels::cpu {

//! x[i] = x[i] + y[i] for i < count (one float32 addition, correctly rounded). y may alias x.
void add_inplace(float* x, const float* y, std::int64_t count);

}  // namespace q4tp::kernels::cpu
