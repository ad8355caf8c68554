#include "core/model/synthetic.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "core/base/half.h"

namespace q4tp::model {

std::vector<std::int32_t> random_act_order_g_idx(std::int64_t k, std::int64_t group_size, std::mt19937_64& rng) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(k));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<std::int32_t> g_idx(static_cast<std::size_t>(k));
    for (std::int64_t j = 0; j < k; ++j) {
        g_idx[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] = static_cast<std::int32_t>(j / group_size);
    }
    return g_idx;
}

loaders::GptqLinear make_random_gptq_linear(const SyntheticLinearSpec& spec) {
    std::mt19937_64 rng(spec.seed);
    loaders::GptqLinear layer;
    layer.name = "synthetic";
    layer.k = spec.k;
    layer.n = spec.n;
    layer.group_size = spec.group_size;
    layer.zero_format = ZeroFormat::GptqV1;
    const std::int64_t gs = loaders::effective_group_size(spec.k, spec.group_size);
    const std::int64_t groups = loaders::num_groups_for(spec.k, gs);

    std::vector<std::uint8_t> codes(static_cast<std::size_t>(spec.k * spec.n));
    std::uniform_int_distribution<int> code(0, 15);
    for (auto& c : codes) c = static_cast<std::uint8_t>(code(rng));
    layer.qweight = loaders::pack_qweight(codes, spec.k, spec.n);
    // Zero points 7 or 8 at random: codes are uniform in 0..15 (mean 7.5), so q - z has zero mean as trained
    // weights do. With z = 8 everywhere every weight would carry a -s/2 bias that 80 layers amplify to overflow.
    std::vector<std::uint8_t> zeros(static_cast<std::size_t>(groups * spec.n));
    std::bernoulli_distribution coin(0.5);
    for (auto& z : zeros) z = coin(rng) ? 8 : 7;
    layer.qzeros = loaders::pack_qzeros(zeros, groups, spec.n, ZeroFormat::GptqV1);
    layer.scales = HostBuffer<std::uint16_t>(static_cast<std::size_t>(groups * spec.n));
    std::uniform_real_distribution<float> jitter(0.75f, 1.25f);
    for (auto& s : layer.scales) s = float_to_half(spec.scale * jitter(rng));

    layer.g_idx = spec.act_order ? random_act_order_g_idx(spec.k, gs, rng) : loaders::sequential_g_idx(spec.k, gs);
    loaders::validate_gptq_linear(layer);
    return layer;
}

}  // namespace q4tp::model
