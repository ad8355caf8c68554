//! How much GPU memory a model needs per rank at a tensor-parallel size, computed from the config alone
//! (before anything is allocated), following docs/design.md's sharding rules. q4tp-inspect prints it and
//! the CUDA engine checks it against free memory before loading.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/base/model_config.h"

namespace q4tp::model {

struct MemoryPlan {
    int tp_size = 1;
    bool supported = true;
    std::string reason;             //!< why this TP size cannot split the model (when !supported)
    std::size_t quantized_bytes = 0;  //!< GPTQ layers: packed weights, scales, zeros, permutations
    std::size_t dense_bytes = 0;      //!< embedding, norms, lm_head (fp16)
    std::size_t kv_cache_bytes = 0;   //!< fp16 K and V for `context` tokens
    std::size_t workspace_bytes = 0;  //!< activations, logits and the prefill dequantization scratch
    std::size_t total() const { return quantized_bytes + dense_bytes + kv_cache_bytes + workspace_bytes; }
};

//! Why a TP size cannot split this model, or an empty string when it can.
std::string tp_unsupported_reason(const ModelConfig& config, const QuantConfig& quant, int tp_size);

//! Per-rank memory at tp_size for a context of `context` tokens processed max_batch_tokens at a time.
MemoryPlan plan_memory(const ModelConfig& config, const QuantConfig& quant, int tp_size, std::int64_t context,
                       std::int64_t max_batch_tokens);

}  // namespace q4tp::model
