#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "core/base/error.h"

namespace q4tp::kernels::cpu {

void embedding(const std::int32_t* ids,
               std::int64_t m,
               const float* table,
               std::int64_t vocab_size,
               std::int64_t hidden,
               float* out) {
    Q4TP_CHECK(m > 0, "embedding: token count m = " << m << ", expected > 0");
    Q4TP_CHECK(vocab_size > 0 && hidden > 0,
               "embedding: table shape [" << vocab_size << ", " << hidden << "], expected both > 0");
    Q4TP_CHECK(ids && table && out, "embedding: null ids, table or out pointer");
    // Validate every id before writing so that a bad id leaves out unchanged.
    for (std::int64_t t = 0; t < m; ++t) {
        Q4TP_CHECK(ids[t] >= 0 && ids[t] < vocab_size, "embedding: token id " << ids[t] << " at position " << t
                                                                              << " is outside the vocabulary [0, "
                                                                              << vocab_size << ")");
    }
    for (std::int64_t t = 0; t < m; ++t) {
        const float* row = table + static_cast<std::int64_t>(ids[t]) * hidden;
        std::copy(row, row + hidden, out + t * hidden);
    }
}

}  // namespace q4tp::kernels::cpu
