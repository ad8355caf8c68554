#include "core/model/memory_plan.h"

#include <algorithm>
#include <sstream>

namespace q4tp::model {
namespace {

std::size_t to_size(std::int64_t v) { return static_cast<std::size_t>(std::max<std::int64_t>(v, 0)); }

std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Bytes of one GPTQ layer of k rows and n columns holding num_groups groups of scales and zeros:
// 4-bit codes, fp16 scales, packed 4-bit zeros, and an int32 row permutation for act-order.
std::size_t gptq_bytes(std::int64_t k, std::int64_t n, std::int64_t num_groups) {
    return to_size(k * n / 2 + num_groups * n * 2 + num_groups * n / 2 + k * 4);
}

std::int64_t groups_of(const QuantConfig& quant, std::int64_t k) {
    return quant.group_size <= 0 ? 1 : ceil_div(k, quant.group_size);
}

// Rows of K the largest rank holds in a row-parallel split: whole groups, uneven when the group count
// does not divide. With one group over all of K (group_size -1) the scales are per column only, so rows
// split freely in packed words of 8.
std::int64_t row_shard_rows(const QuantConfig& quant, std::int64_t k, int tp) {
    if (quant.group_size <= 0) return ceil_div(k / 8, tp) * 8;
    return std::min(k, ceil_div(groups_of(quant, k), tp) * quant.group_size);
}

}  // namespace

std::string tp_unsupported_reason(const ModelConfig& c, const QuantConfig& quant, int tp) {
    std::ostringstream why;
    if (tp < 1) {
        why << "the tensor-parallel size must be >= 1, got " << tp;
    } else if (c.num_attention_heads % tp != 0) {
        why << c.num_attention_heads << " attention heads cannot be split evenly over " << tp << " GPUs";
    } else if (c.num_key_value_heads % tp != 0 && tp % c.num_key_value_heads != 0) {
        why << c.num_key_value_heads << " KV heads can be neither split over nor replicated across " << tp << " GPUs";
    } else if (c.intermediate_size % (8 * tp) != 0) {
        why << "intermediate_size " << c.intermediate_size << " does not split over " << tp
            << " GPUs in columns of 8 (one packed word)";
    } else if (quant.group_size > 0 && groups_of(quant, c.intermediate_size) < tp) {
        why << "down_proj has " << groups_of(quant, c.intermediate_size) << " groups, fewer than " << tp
            << " GPUs (row-parallel layers split whole groups)";
    } else if (quant.group_size > 0 && groups_of(quant, c.q_dim()) < tp) {
        why << "o_proj has " << groups_of(quant, c.q_dim()) << " groups, fewer than " << tp
            << " GPUs (row-parallel layers split whole groups)";
    }
    return why.str();
}

MemoryPlan plan_memory(const ModelConfig& c, const QuantConfig& quant, int tp, std::int64_t context,
                       std::int64_t max_batch_tokens) {
    MemoryPlan plan;
    plan.tp_size = tp;
    plan.reason = tp_unsupported_reason(c, quant, tp);
    plan.supported = plan.reason.empty();
    if (!plan.supported) return plan;

    const std::int64_t h = c.hidden_size, d = c.head_dim, ffn = c.intermediate_size;
    const std::int64_t heads = c.num_attention_heads / tp;
    // KV heads are split when there are at least as many as ranks, otherwise each rank keeps one copy.
    const std::int64_t kv_heads = std::max<std::int64_t>(c.num_key_value_heads / tp, 1);
    const std::int64_t ffn_local = ffn / tp;

    // Column-parallel layers keep every row and all groups for their columns.
    const std::int64_t g_h = groups_of(quant, h);
    std::size_t per_layer = gptq_bytes(h, heads * d, g_h) + 2 * gptq_bytes(h, kv_heads * d, g_h) +
                            2 * gptq_bytes(h, ffn_local, g_h);
    // Row-parallel layers split K in whole groups (the largest share is ceil) and, for act-order,
    // keep every group's scales and zeros (docs/design.md): count the full set to be safe.
    per_layer += gptq_bytes(row_shard_rows(quant, c.q_dim(), tp), h, groups_of(quant, c.q_dim())) +
                 gptq_bytes(row_shard_rows(quant, ffn, tp), h, groups_of(quant, ffn));
    plan.quantized_bytes = per_layer * to_size(c.num_hidden_layers);

    const std::int64_t vocab_local = ceil_div(c.vocab_size, tp);
    plan.dense_bytes = to_size(c.vocab_size * h * 2 + (c.tie_word_embeddings ? 0 : vocab_local * h * 2) +
                               (2 * c.num_hidden_layers + 1) * h * 2);
    plan.kv_cache_bytes = to_size(2 * c.num_hidden_layers * kv_heads * context * d * 2);

    // Activations (fp16) for max_batch_tokens rows, fp32 logits, and the fp16 scratch the prefill path
    // dequantizes the largest local layer into.
    const std::int64_t m = max_batch_tokens;
    const std::int64_t activations = m * (4 * h + 2 * heads * d + 2 * kv_heads * d + 3 * ffn_local) * 2;
    const std::int64_t logits = m * c.vocab_size * 4;
    const std::int64_t largest_layer = std::max({h * ffn_local, ffn * h / tp, h * heads * d});
    plan.workspace_bytes = to_size(activations + logits + largest_layer * 2);
    return plan;
}

}  // namespace q4tp::model
