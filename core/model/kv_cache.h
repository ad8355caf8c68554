//! KvCache: one sequence's keys and values for every layer, preallocated once through the backend.
//! Layout per layer: [num_kv_heads][capacity][head_dim], so one head's history is contiguous (what a
//! decode attention kernel streams). Memory: 2 * layers * kv_heads * capacity * head_dim * element size.
#pragma once

#include <cstdint>
#include <vector>

#include "core/base/model_config.h"
#include "core/base/tensor_view.h"
#include "core/model/ops.h"

namespace q4tp::model {

class KvCache {
public:
    //! num_kv_heads is per rank (all of them at TP=1).
    KvCache(Ops& ops, std::int64_t num_layers, std::int64_t num_kv_heads, std::int64_t head_dim,
            std::int64_t capacity);

    std::int64_t capacity() const noexcept { return capacity_; }
    TensorView keys(std::int64_t layer) const { return keys_.at(static_cast<std::size_t>(layer)); }
    TensorView values(std::int64_t layer) const { return values_.at(static_cast<std::size_t>(layer)); }
    std::size_t bytes() const noexcept { return bytes_; }

private:
    std::int64_t capacity_;
    std::vector<TensorView> keys_;
    std::vector<TensorView> values_;
    std::size_t bytes_ = 0;
};

}  // namespace q4tp::model
