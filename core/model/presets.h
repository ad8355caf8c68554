//! The real shapes of public Llama-2 checkpoints, for synthetic benchmarks (q4tp-bench --synthetic).
#pragma once

#include <string>
#include <vector>

#include "core/base/model_config.h"

namespace q4tp::model {

//! "llama2-7b", "llama2-13b" or "llama2-70b" (values of meta-llama/Llama-2-*-hf config.json); throws
//! q4tp::Error naming the choices for anything else.
ModelConfig llama2_preset(const std::string& name);
std::vector<std::string> llama2_preset_names();

}  // namespace q4tp::model
