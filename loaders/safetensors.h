//! SafetensorsFile: a read-only, mmap'd safetensors file, validated against every rule of
//! docs/formats.md §1.2 (plus duplicate names) before any tensor is handed out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "core/base/dtype.h"
#include "core/base/error.h"
#include "core/base/host_buffer.h"

namespace q4tp::loaders {

//! Header length cap of the official reader (formats.md §1.2 rule 2, MAX_HEADER_SIZE).
inline constexpr std::uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

//! Bits per element of a safetensors dtype name (R1.5), or 0 for a name safetensors does not define.
int safetensors_dtype_bits(std::string_view dtype_name) noexcept;

//! "[2, 3]"; "[]" for a scalar.
std::string shape_to_string(std::span<const std::int64_t> shape);

//! One header entry. Offsets are relative to the start of the data buffer (R1.3), 64-bit (R1.9).
struct TensorInfo {
    std::string name;
    std::string dtype_name;           //!< as spelled in the file ("F16", "F8_E4M3", ...)
    std::optional<DType> dtype;       //!< empty for valid safetensors dtypes q4tp does not handle
    std::vector<std::int64_t> shape;  //!< [] = scalar
    std::uint64_t begin = 0;
    std::uint64_t end = 0;

    std::int64_t numel() const noexcept;
    std::uint64_t nbytes() const noexcept { return end - begin; }
};

class SafetensorsFile {
public:
    //! Maps and validates the file; throws q4tp::Error naming the file, the tensor and the broken rule.
    static SafetensorsFile open(const std::filesystem::path& path);

    ~SafetensorsFile();
    SafetensorsFile(SafetensorsFile&& other) noexcept;
    SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
    SafetensorsFile(const SafetensorsFile&) = delete;
    SafetensorsFile& operator=(const SafetensorsFile&) = delete;

    const std::filesystem::path& path() const noexcept { return path_; }
    //! Every tensor, in data-offset order.
    const std::vector<TensorInfo>& tensors() const noexcept { return tensors_; }
    //! nullptr when the file has no tensor of that name.
    const TensorInfo* find(std::string_view name) const;
    //! Like find() but throws, naming the file and the tensor, when it is absent.
    const TensorInfo& require(std::string_view name) const;
    //! Raw bytes of one of this file's tensors, straight from the mapping (no alignment guarantee, R1.7).
    std::span<const std::byte> data(const TensorInfo& info) const;
    //! The string-to-string "__metadata__" object (R1.4); empty when absent.
    const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
    std::uint64_t file_size() const noexcept { return file_size_; }
    //! File offset of the data buffer: 8 + header length.
    std::uint64_t data_offset() const noexcept { return data_offset_; }

    //! Raw bytes of a tensor after checking that it exists and has this dtype and shape.
    std::span<const std::byte> checked(std::string_view name,
                                       DType dtype,
                                       const std::vector<std::int64_t>& shape) const;
    //! Same check for an entry already looked up.
    std::span<const std::byte> checked(const TensorInfo& info,
                                       DType dtype,
                                       const std::vector<std::int64_t>& shape) const;

    //! Copies a checked tensor into an aligned host buffer (safe for unaligned file offsets, R1.7).
    template <typename T>
    HostBuffer<T> read(std::string_view name, DType dtype, const std::vector<std::int64_t>& shape) const {
        return read<T>(require(name), dtype, shape);
    }
    template <typename T>
    HostBuffer<T> read(const TensorInfo& info, DType dtype, const std::vector<std::int64_t>& shape) const {
        static_assert(std::is_trivially_copyable_v<T>, "read<T> copies raw bytes into T");
        Q4TP_CHECK(sizeof(T) == dtype_size(dtype),
                   path_.string() << ": tensor '" << info.name << "': cannot read dtype " << to_string(dtype) << " ("
                                  << dtype_size(dtype) << " bytes) into a " << sizeof(T) << "-byte element type");
        const std::span<const std::byte> bytes = checked(info, dtype, shape);
        HostBuffer<T> out(bytes.size() / sizeof(T));
        // memcpy rather than a cast: older writers leave tensors at offsets not divisible by sizeof(T) (R1.7).
        if (!bytes.empty()) std::memcpy(static_cast<void*>(out.data()), bytes.data(), bytes.size());
        return out;
    }

private:
    //! Heterogeneous lookup so find(string_view) does not build a std::string.
    struct NameHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };

    SafetensorsFile() = default;
    void release() noexcept;

    std::filesystem::path path_;
    const std::byte* map_ = nullptr;
    std::uint64_t file_size_ = 0;
    std::uint64_t data_offset_ = 0;
    std::vector<TensorInfo> tensors_;
    std::unordered_map<std::string, std::size_t, NameHash, std::equal_to<>> index_;
    std::map<std::string, std::string> metadata_;
};

}  // namespace q4tp::loaders
