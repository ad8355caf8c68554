//! Softmax and argmax over one row, float32 reference (the sampler's building blocks; docs/formats.md R4.3
//! uses the same softmax inside attention).
#pragma once

#include <cstdint>

namespace q4tp::kernels::cpu {

//! y[i] = exp(x[i] - max_j x[j]) / sum_j exp(x[j] - max_j x[j]) for i < n, evaluated in double and rounded
//! once. -inf entries (masked) get probability 0. Throws when an entry is NaN or +inf, or when every entry is
//! -inf (no distribution exists). y may alias x.
void softmax(const float* x, std::int64_t n, float* y);

//! The index of the largest x[i], i < n; ties go to the lowest index and a NaN counts as larger than any
//! number (both as torch.argmax does), so the first NaN wins.
std::int64_t argmax(const float* x, std::int64_t n);

}  // namespace q4tp::kernels::cpu
