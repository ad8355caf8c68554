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

//! Room the plan leaves out: cuBLAS and GEMV workspaces, attention split scratch, the IPC all-reduce buffers.
inline constexpr std::size_t kMemoryReserveBytes = std::size_t{256} << 20;

//! Empty when `plan` (plus kMemoryReserveBytes) fits in `free_bytes`; otherwise the one-line reason, naming what the
//! model needs per GPU and of what, what `device` has free, and what to change (context, more GPUs).
std::string memory_shortfall(const MemoryPlan& plan, std::size_t free_bytes, std::int64_t context,
                             const std::string& device);

}  // namespace q4tp::model
