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

std::unique_ptr<LinearWeights> CheckpointWeights::linear(const std::string& name, std::int64_t k, std::int64_t n,
                                                         Ops& ops) {
    return ops.make_linear(loaders::load_gptq_linear(checkpoint_, name, k, n, quant_));
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

std::unique_ptr<LinearWeights> SyntheticWeights::linear(const std::string& name, std::int64_t k, std::int64_t n,
                                                        Ops& ops) {
    SyntheticLinearSpec spec;
    spec.k = k;
    spec.n = n;
    spec.group_size = quant_.group_size;
    spec.act_order = act_order_ && quant_.group_size > 0;
    spec.seed = seed_for(name);
    // Symmetric codes q - 8 in [-8, 7] have RMS ~4.6; scales of 1 / (4.6 sqrt(k)) keep y = x W at unit RMS.
    spec.scale = static_cast<float>(1.0 / (4.6 * std::sqrt(static_cast<double>(k))));
    return ops.make_synthetic_linear(spec);
}

}  // namespace q4tp::model
