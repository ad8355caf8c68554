#include "core/model/weight_source.h"

#include <cmath>
#include <functional>

#include "core/base/error.h"
#include "loaders/checkpoint.h"
#include "loaders/gptq.h"

namespace q4tp::model {

TensorView CheckpointWeights::dense(const std::string& name, const Shape& shape, Ops& ops) {
    std::vector<std::int64_t> dims;
    for (int i = 0; i < shape.rank(); ++i) dims.push_back(shape[i]);
    // Non-quantized tensors are F16 in GPTQ checkpoints (formats.md §2.1); the backend converts.
    const HostBuffer<std::uint16_t> host = checkpoint_.read<std::uint16_t>(name, DType::F16, dims);
    TensorView view = ops.allocate(ops.activation_dtype(), shape);
    ops.upload(host.data(), DType::F16, view);
    return view;
}

TensorView CheckpointWeights::dense_rows(const std::string& name, std::int64_t total_rows, std::int64_t cols,
                                        loaders::IndexRange rows, Ops& ops) {
    const loaders::DenseShard shard = loaders::dense_rows_shard(checkpoint_, name, total_rows, cols, rows);
    TensorView view = ops.allocate(ops.activation_dtype(), Shape{rows.size(), cols});
    ops.upload(shard.data.data(), DType::F16, view);
    return view;
}

std::span<const std::int32_t> CheckpointWeights::mlp_order(const std::string& name, const loaders::SplitPlan& plan) {
    using loaders::LinearRole;
    if (plan.role != LinearRole::GateProj && plan.role != LinearRole::UpProj && plan.role != LinearRole::DownProj) {
        return {};
    }
    // gate, up and down of one MLP must agree on the order, so each finds its down_proj by name.
    const std::string role = loaders::to_string(plan.role);
    Q4TP_CHECK(name.size() > role.size() && name.ends_with(role),
               name << ": expected a " << role << " layer name ending in '" << role
                    << "' (its MLP's down_proj is found by that name)");
    const std::string down = name.substr(0, name.size() - role.size()) + "down_proj";
    if (down != order_down_) {
        const bool is_down = plan.role == LinearRole::DownProj;
        // A layer's own tensors are checked before its down_proj's, so an error names the layer being loaded.
        if (!is_down) (void)loaders::check_gptq_headers(checkpoint_, name, plan.k, plan.n, quant_);
        const std::int64_t ffn = is_down ? plan.k : plan.n;
        const std::int64_t hidden = is_down ? plan.n : plan.k;
        order_ = loaders::load_ffn_order(checkpoint_, down, quant_, ffn, hidden);
        order_down_ = down;
    }
    return order_;
}

loaders::GptqLinear CheckpointWeights::host_layer(const std::string& name, const loaders::SplitPlan& plan) {
    const std::span<const std::int32_t> order = mlp_order(name, plan);
    if (plan.size == 1 && order.empty()) return loaders::load_gptq_linear(checkpoint_, name, plan.k, plan.n, quant_);
    if (loaders::is_column_parallel(plan.role))
        return loaders::load_column_shard(checkpoint_, name, quant_, plan, order).layer;
    return loaders::load_row_shard(checkpoint_, name, quant_, plan, order).layer;
}

std::unique_ptr<LinearWeights> CheckpointWeights::linear(const std::string& name, const loaders::SplitPlan& plan,
                                                         Ops& ops) {
    return ops.make_linear(host_layer(name, plan));
}

std::unique_ptr<LinearWeights> CheckpointWeights::fused_linear(const std::vector<std::string>& names,
                                                               const std::vector<loaders::SplitPlan>& plans,
                                                               Ops& ops) {
    std::vector<loaders::GptqLinear> parts;
    std::vector<const loaders::GptqLinear*> pointers;
    for (std::size_t i = 0; i < names.size(); ++i) parts.push_back(host_layer(names[i], plans[i]));
    for (const auto& part : parts) pointers.push_back(&part);
    if (!loaders::can_concat_columns(pointers)) return nullptr;
    return ops.make_linear(loaders::concat_columns(pointers, names.front() + "+fused"));
}

bool CheckpointWeights::has(const std::string& name) const { return static_cast<bool>(checkpoint_.find(name)); }

std::uint64_t SyntheticWeights::seed_for(const std::string& name) const {
    return seed_ ^ (std::hash<std::string>{}(name) * 0x9E3779B97F4A7C15ull);
}

TensorView SyntheticWeights::dense(const std::string& name, const Shape& shape, Ops& ops) {
    TensorView view = ops.allocate(ops.activation_dtype(), shape);
    // Norm gains near 1, embedding rows of unit RMS: the scale of a real model's first activations.
    const bool is_norm = shape.rank() == 1;
    ops.fill_random(view, seed_for(name), is_norm ? 1.0f : 0.0f, is_norm ? 0.1f : 1.0f);
    return view;
}

TensorView SyntheticWeights::dense_rows(const std::string& name, std::int64_t total_rows, std::int64_t cols,
                                       loaders::IndexRange rows, Ops& ops) {
    (void)total_rows;
    return dense(name + "#" + std::to_string(rows.begin), Shape{rows.size(), cols}, ops);
}

std::unique_ptr<LinearWeights> SyntheticWeights::fused_linear(const std::vector<std::string>& names,
                                                              const std::vector<loaders::SplitPlan>& plans, Ops& ops) {
    // Random weights of the fused shape: the parts' local columns side by side.
    loaders::SplitPlan fused = plans.front();
    fused.n = 0;
    fused.range = {0, 0};
    for (const auto& plan : plans) {
        fused.n += plan.n;
        fused.range.end += plan.range.size();
    }
    return linear(names.front() + "+fused", fused, ops);
}

std::unique_ptr<LinearWeights> SyntheticWeights::linear(const std::string& name, const loaders::SplitPlan& plan,
                                                        Ops& ops) {
    // This rank's local shape: its columns of a column-parallel layer, its rows of a row-parallel one.
    const bool column = loaders::is_column_parallel(plan.role);
    const std::int64_t k = column ? plan.k : plan.range.size();
    const std::int64_t n = column ? plan.range.size() : plan.n;
    SyntheticLinearSpec spec;
    spec.k = k;
    spec.n = n;
    spec.group_size = quant_.group_size;
    // A real act-order down_proj loads in order (the MLP's intermediate order, loaders/shard.h); only o_proj's row
    // shards keep the original row order with every group, and so the padded layout.
    spec.act_order = act_order_ && quant_.group_size > 0 && plan.role != loaders::LinearRole::DownProj;
    spec.seed = seed_for(name) + static_cast<std::uint64_t>(plan.range.begin);
    if (plan.role == loaders::LinearRole::OutputProj && k < plan.k) {
        spec.full_k = plan.k;
        spec.row_begin = plan.range.begin;
        spec.layout_seed = seed_for(name);
    }
    // Symmetric codes q - 8 in [-8, 7] have RMS ~4.6; scales of 1 / (4.6 sqrt(k)) keep y = x W at unit RMS.
    spec.scale = static_cast<float>(1.0 / (4.6 * std::sqrt(static_cast<double>(plan.k))));
    return ops.make_synthetic_linear(spec);
}

}  // namespace q4tp::model
