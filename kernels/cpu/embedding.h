//! Token embedding lookup, float32 reference (docs/formats.md R4.1).
#pragma once

#include <cstdint>

namespace q4tp::kernels::cpu {

//! out[t][:] = table[ids[t]][:] for t < m (R4.1: a plain row copy, no scaling).
//! table is [vocab_size][hidden], out is [m][hidden]. Throws if an id lies outside [0, vocab_size),
//! naming the id and its position; out is left untouched in that case.
void embedding(const std::int32_t* ids,
               std::int64_t m,
               const float* table,
               std::int64_t vocab_size,
               std::int64_t hidden,
               float* out);

}  // namespace q4tp::kernels::cpu
