#include "core/model/kv_cache.h"

#include "core/base/error.h"

namespace q4tp::model {

KvCache::KvCache(Ops& ops, std::int64_t num_layers, std::int64_t num_kv_heads, std::int64_t head_dim,
                 std::int64_t capacity)
    : capacity_(capacity) {
    Q4TP_CHECK(capacity > 0, "KV cache capacity must be positive, got " << capacity);
    const Shape shape{num_kv_heads, capacity, head_dim};
    for (std::int64_t layer = 0; layer < num_layers; ++layer) {
        keys_.push_back(ops.allocate(ops.activation_dtype(), shape));
        values_.push_back(ops.allocate(ops.activation_dtype(), shape));
        bytes_ += keys_.back().bytes() + values_.back().bytes();
    }
}

}  // namespace q4tp::model
