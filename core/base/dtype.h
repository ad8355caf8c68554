//! Element types q4tp stores or computes with.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace q4tp {

//! Element types the engine handles. Safetensors knows more (F8, F4, C64...); the loader validates
//! those by bit width but refuses to hand them out as tensors.
enum class DType { F32, F16, BF16, F64, I8, U8, I16, U16, I32, U32, I64, U64, Bool };

//! Size of one element in bytes.
std::size_t dtype_size(DType dtype);
//! The safetensors spelling ("F16", "I32", ...).
const char* to_string(DType dtype);
//! Parses the safetensors spelling; returns false for names q4tp does not handle.
bool parse_dtype(std::string_view name, DType* out);

}  // namespace q4tp
