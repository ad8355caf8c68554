//! Host-side random GPTQ layers for SyntheticWeights on the CPU backend (and for tests): the same recipe
//! the CUDA backend runs on the device, but drawn with a host RNG.
#pragma once

#include "core/model/ops.h"
#include "loaders/gptq.h"

namespace q4tp::model {

//! A validated random layer: uniform codes 0..15, zero points 7 or 8 at random (so q - z has zero mean), group scales of
//! spec.scale +-25%, and with spec.act_order a g_idx built from a random row permutation (R2.15).
loaders::GptqLinear make_random_gptq_linear(const SyntheticLinearSpec& spec);

}  // namespace q4tp::model
