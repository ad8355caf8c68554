//! write_safetensors: writes a safetensors file the way modern writers do (docs/formats.md R1.7), for
//! tests, tools and the synthetic-model writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "core/base/dtype.h"
#include "core/base/error.h"

namespace q4tp::loaders {

//! One tensor to write: raw little-endian bytes, row-major, exactly prod(shape) * bits / 8 of them.
struct SafetensorsEntry {
    std::string name;
    std::string dtype_name;           //!< any safetensors dtype (R1.5), e.g. "F16" or "F8_E4M3"
    std::vector<std::int64_t> shape;  //!< [] = scalar
    std::vector<std::byte> bytes;
};

//! Builds an entry from typed values; checks that sizeof(T) matches dtype and values fill the shape.
template <typename T>
SafetensorsEntry make_safetensors_entry(std::string name,
                                        DType dtype,
                                        std::vector<std::int64_t> shape,
                                        std::span<const T> values) {
    static_assert(std::is_trivially_copyable_v<T>, "entries hold raw bytes of T");
    Q4TP_CHECK(sizeof(T) == dtype_size(dtype),
               "safetensors entry '" << name << "': " << sizeof(T) << "-byte values for dtype " << to_string(dtype));
    std::uint64_t numel = 1;
    for (std::int64_t dim : shape) {
        Q4TP_CHECK(dim >= 0 && !__builtin_mul_overflow(numel, static_cast<std::uint64_t>(dim), &numel),
                   "safetensors entry '" << name << "': shape dimension " << dim << " is negative or overflows");
    }
    Q4TP_CHECK(numel == values.size(), "safetensors entry '" << name << "': " << values.size()
                                                             << " values for a shape of " << numel << " elements");
    SafetensorsEntry entry{std::move(name), to_string(dtype), std::move(shape),
                           std::vector<std::byte>(values.size_bytes())};
    if (!values.empty()) std::memcpy(entry.bytes.data(), values.data(), values.size_bytes());
    return entry;
}

//! Writes entries sorted by descending element size then name, header space-padded to a multiple of 8
//! (so each tensor is aligned to its element size); rejects duplicate names and byte counts off the shape.
void write_safetensors(const std::filesystem::path& path,
                       std::vector<SafetensorsEntry> entries,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace q4tp::loaders
