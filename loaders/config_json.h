//! Hugging Face Llama config.json -> q4tp::ModelConfig, with every default and check of docs/formats.md §4.1
//! and the rope_scaling / rope_parameters rules of §4.3.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "core/base/model_config.h"

namespace q4tp::loaders {

//! Reads and validates a Llama config.json; throws q4tp::Error naming the file, the key and what was expected.
ModelConfig load_model_config(const std::filesystem::path& config_json_path);

//! Parses config.json text already in memory; source_name (usually the path) starts every error message.
ModelConfig parse_model_config(std::string_view json_text, const std::string& source_name);

}  // namespace q4tp::loaders
