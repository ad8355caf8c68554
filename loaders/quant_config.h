//! The GPTQ quantization config -> q4tp::QuantConfig: lookup order R2.21 and normalization R2.23 of
//! docs/formats.md §2.6. Anything that is not a 4-bit GPTQ (v1 or v2) layout is refused with the reason.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "core/base/model_config.h"

namespace q4tp::loaders {

//! Finds and normalizes the quantization config of a model directory, trying in order quantize_config.json,
//! quant_config.json and config.json's "quantization_config"; the first one present wins.
QuantConfig load_quant_config(const std::filesystem::path& model_dir);

//! Normalizes one quantization config given as JSON text; source_name starts every error message and
//! becomes QuantConfig::source_file.
QuantConfig parse_quant_config(std::string_view json_text, const std::string& source_name);

}  // namespace q4tp::loaders
