#include "core/model/memory_plan.h"

#include <algorithm>
#include <sstream>
#include <utility>

#include "core/base/error.h"
#include "core/model/cuda_ops.h"
#include "loaders/shard.h"

namespace q4tp::model {
namespace {

std::size_t to_size(std::int64_t v) { return static_cast<std::size_t>(std::max<std::int64_t>(v, 0)); }

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Bytes of one GPTQ layer of k rows and n columns holding num_groups groups of scales and zeros:
// 4-bit codes, fp16 scales, packed 4-bit zeros, and an int32 row permutation for act-order.
std::size_t gptq_bytes(std::int64_t k, std::int64_t n, std::int64_t num_groups) {
    return to_size(k * n / 2 + num_groups * n * 2 + num_groups * n / 2 + k * 4);
}

// Layer 0's projections stand for every layer (all layers have one shape).
const std::pair<loaders::LinearRole, const char*> kLayerRoles[] = {
    {loaders::LinearRole::QueryProj, "model.layers.0.self_attn.q_proj"},
    {loaders::LinearRole::KeyProj, "model.layers.0.self_attn.k_proj"},
    {loaders::LinearRole::ValueProj, "model.layers.0.self_attn.v_proj"},
    {loaders::LinearRole::OutputProj, "model.layers.0.self_attn.o_proj"},
    {loaders::LinearRole::GateProj, "model.layers.0.mlp.gate_proj"},
    {loaders::LinearRole::UpProj, "model.layers.0.mlp.up_proj"},
    {loaders::LinearRole::DownProj, "model.layers.0.mlp.down_proj"},
};

std::int64_t groups_of(const QuantConfig& quant, std::int64_t k) {
    return quant.group_size <= 0 ? 1 : ceil_div(k, quant.group_size);
}

}  // namespace

std::string tp_unsupported_reason(const ModelConfig& c, const QuantConfig& quant, int tp) {
    if (tp < 1) return "the tensor-parallel size must be >= 1, got " + std::to_string(tp);
    // The split plans are the one authority on what a TP size can cut (loaders/shard.h): ask them.
    try {
        for (int rank = 0; rank < tp; ++rank) {
            for (const auto& [role, name] : kLayerRoles) loaders::plan_split(name, role, c, quant, rank, tp);
            (void)loaders::vocab_range("lm_head.weight", c.vocab_size, rank, tp);
        }
    } catch (const Error& e) {
        return e.message();
    }
    return "";
}

MemoryPlan plan_memory(const ModelConfig& c, const QuantConfig& quant, int tp, std::int64_t context,
                       std::int64_t max_batch_tokens) {
    MemoryPlan plan;
    plan.tp_size = tp;
    plan.reason = tp_unsupported_reason(c, quant, tp);
    plan.supported = plan.reason.empty();
    if (!plan.supported) return plan;

    // The largest rank's share of each layer, from the same plans the loader cuts by. An act-order o_proj row shard
    // keeps every group's scales and zeros (docs/design.md), so o_proj counts all groups; down_proj holds whole
    // groups of its own, in order even for an act-order checkpoint (the MLP's intermediate order, loaders/shard.h).
    std::size_t per_layer = 0;
    std::int64_t largest_k = 0, local_q = 0, local_kv = 0, local_ffn = 0;
    for (const auto& [role, name] : kLayerRoles) {
        std::size_t worst = 0;
        for (int rank = 0; rank < tp; ++rank) {
            const loaders::SplitPlan p = loaders::plan_split(name, role, c, quant, rank, tp);
            const bool column = loaders::is_column_parallel(role);
            const std::int64_t k = column ? p.k : p.range.size();
            const std::int64_t n = column ? p.range.size() : p.n;
            // The CUDA layout pads each group of an act-order o_proj row shard to whole 32-row blocks
            // (kernels/cuda/gptq_prepare.h): at most 31 filler rows per group. desc_act is only a hint (act-order
            // is decided from g_idx), so this is the bound when the config says act-order.
            const bool output = role == loaders::LinearRole::OutputProj;
            const bool padded = quant.desc_act && output && k < p.k && quant.group_size > 0;
            const std::int64_t k_rows = padded ? k + 31 * std::min(groups_of(quant, p.k), k) : k;
            const std::int64_t groups = column || output ? groups_of(quant, p.k) : groups_of(quant, k);
            worst = std::max(worst, gptq_bytes(k_rows, n, groups));
            largest_k = std::max(largest_k, k);
            if (role == loaders::LinearRole::QueryProj) local_q = std::max(local_q, n);
            if (role == loaders::LinearRole::KeyProj) local_kv = std::max(local_kv, n);
            if (role == loaders::LinearRole::GateProj) local_ffn = std::max(local_ffn, n);
        }
        per_layer += worst;
    }
    plan.quantized_bytes = per_layer * to_size(c.num_hidden_layers);

    const std::int64_t h = c.hidden_size, d = c.head_dim;
    const std::int64_t vocab_local = ceil_div(c.vocab_size, tp);
    plan.dense_bytes = to_size(c.vocab_size * h * 2 + (c.tie_word_embeddings && tp == 1 ? 0 : vocab_local * h * 2) +
                               (2 * c.num_hidden_layers + 1) * h * 2);
    plan.kv_cache_bytes = to_size(2 * c.num_hidden_layers * local_kv * context * 2);

    // Activations (fp16) for max_batch_tokens rows as LlamaModel plans them: x and h, one region shared by
    // q/k/v/attention and gate/up, the fused q|k|v and gate|up outputs, a partial-sum buffer under TP; one row
    // of fp32 logits per rank and its all-gather; the fp16 scratch prefill dequantizes slices of a layer into.
    const std::int64_t m = max_batch_tokens;
    const std::int64_t shared = std::max(2 * local_q + 2 * local_kv, 2 * local_ffn);
    const std::int64_t activations =
        m * ((tp > 1 ? 3 : 2) * h + shared + (local_q + 2 * local_kv) + 2 * local_ffn) * 2;
    const std::int64_t logits = (tp + 1) * vocab_local * 4;
    // Prefill dequantizes in column slices (CudaOps::kPrefillDequantColumns) of the widest fused layer.
    const std::int64_t widest = std::max({2 * local_ffn, local_q + 2 * local_kv, h});
    const std::int64_t scratch = largest_k * std::min(widest, CudaOps::kPrefillDequantColumns) * 2;
    plan.workspace_bytes = to_size(activations + logits + scratch);
    (void)d;
    return plan;
}

std::string memory_shortfall(const MemoryPlan& plan, std::size_t free_bytes, std::int64_t context,
                             const std::string& device) {
    const std::size_t need = plan.total() + kMemoryReserveBytes;
    if (need <= free_bytes) return "";
    const auto gb = [](std::size_t bytes) { return static_cast<double>(bytes) / 1e9; };
    std::ostringstream os;
    os.setf(std::ios::fixed);
    os.precision(2);
    os << "the model needs " << gb(need) << " GB per GPU at TP=" << plan.tp_size << " (weights "
       << gb(plan.quantized_bytes + plan.dense_bytes) << " GB, KV cache " << gb(plan.kv_cache_bytes) << " GB for "
       << context << " tokens, workspace " << gb(plan.workspace_bytes) << " GB, reserve " << gb(kMemoryReserveBytes)
       << " GB) but " << device << " has " << gb(free_bytes) << " GB free: lower --context"
       << " or split the model over more GPUs (mpirun -np N)";
    return os.str();
}

}  // namespace q4tp::model
