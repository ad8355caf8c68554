//! Host-side random GPTQ layers for SyntheticWeights on the CPU backend (and for tests): the same recipe
//! the CUDA backend runs on the device, but drawn with a host RNG.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "core/model/ops.h"
#include "loaders/gptq.h"

namespace q4tp::model {

//! A validated random layer: uniform codes 0..15, zero points 7 or 8 at random (so q - z has zero mean), group scales
//! of spec.scale +-25%, and with spec.act_order a g_idx built from a random row permutation (R2.15).
loaders::GptqLinear make_random_gptq_linear(const SyntheticLinearSpec& spec);

//! The g_idx of an act-order layer as GPTQ writes it (R2.15): rows taken in a random order, every group_size of them
//! one group, so each group holds exactly group_size rows scattered over all of K.
std::vector<std::int32_t> random_act_order_g_idx(std::int64_t k, std::int64_t group_size, std::mt19937_64& rng);

}  // namespace q4tp::model
