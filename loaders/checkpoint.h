//! Checkpoint: the safetensors files of one model directory (single file, index.json + shards, or a
//! plain directory of shards; docs/formats.md R1.11-R1.13) seen as one name -> tensor map.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/base/dtype.h"
#include "core/base/error.h"
#include "core/base/host_buffer.h"
#include "loaders/safetensors.h"

namespace q4tp::loaders {

//! A tensor and the file it lives in; both null when the name is absent.
struct TensorRef {
    const SafetensorsFile* file = nullptr;
    const TensorInfo* info = nullptr;
    explicit operator bool() const noexcept { return info != nullptr; }
};

class Checkpoint {
public:
    //! Tries <base>.safetensors.index.json, <base>.safetensors (base = the given name, then "model"),
    //! the directory's one *.safetensors.index.json, then all *.safetensors as shards.
    static Checkpoint open(const std::filesystem::path& dir, const std::string& model_file_base_name = "");

    Checkpoint(Checkpoint&&) noexcept = default;
    Checkpoint& operator=(Checkpoint&&) noexcept = default;
    Checkpoint(const Checkpoint&) = delete;
    Checkpoint& operator=(const Checkpoint&) = delete;

    const std::filesystem::path& directory() const noexcept { return directory_; }
    //! What was found: "model.safetensors.index.json", "model.safetensors" or "*.safetensors (3 files)".
    const std::string& source() const noexcept { return source_; }
    //! The shard files, sorted by file name.
    const std::vector<SafetensorsFile>& files() const noexcept { return files_; }

    TensorRef find(std::string_view name) const;
    //! Like find() but throws, naming the checkpoint and the tensor, when it is absent.
    TensorRef require(std::string_view name) const;
    //! Every tensor name, sorted.
    std::vector<std::string> tensor_names() const;
    std::size_t tensor_count() const noexcept { return index_.size(); }
    //! Sum of all tensors' byte sizes.
    std::uint64_t total_tensor_bytes() const noexcept { return total_tensor_bytes_; }

    //! Raw bytes of a tensor after checking dtype and shape; errors name the shard file.
    std::span<const std::byte> checked(std::string_view name,
                                       DType dtype,
                                       const std::vector<std::int64_t>& shape) const;

    //! Copies a checked tensor into an aligned host buffer; errors name the shard file.
    template <typename T>
    HostBuffer<T> read(std::string_view name, DType dtype, const std::vector<std::int64_t>& shape) const {
        const TensorRef ref = require(name);
        return ref.file->read<T>(*ref.info, dtype, shape);
    }

private:
    struct NameHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };
    struct Location {
        std::size_t file;
        std::size_t tensor;
    };

    Checkpoint() = default;
    static Checkpoint from_files(const std::filesystem::path& dir,
                                 std::string source,
                                 const std::vector<std::filesystem::path>& paths);
    static Checkpoint from_index(const std::filesystem::path& dir, const std::filesystem::path& index_path);

    std::filesystem::path directory_;
    std::string source_;
    std::vector<SafetensorsFile> files_;
    std::unordered_map<std::string, Location, NameHash, std::equal_to<>> index_;
    std::uint64_t total_tensor_bytes_ = 0;
};

}  // namespace q4tp::loaders
