//! Hdf5File: a small RAII reader/writer over the HDF5 C API for golden reference data (read) and logit dumps
//! (--logits-out, write). Paths are "a/b/c" (a leading "/" is allowed); writing creates missing groups.
//! HDF5's own error-stack printing is switched off: every failure is a q4tp::Error naming the file and the object.
//! Not thread-safe (serial HDF5): use one Hdf5File from one thread at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace q4tp::loaders {

//! A dataset read into memory: data in C (row-major) order, shape outermost first; a scalar has an empty shape.
template <typename T>
struct Hdf5Array {
    std::vector<T> data;  // [product of shape]
    std::vector<std::int64_t> shape;
};

class Hdf5File {
   public:
    //! Opens an existing file read-only; a missing file or a file that is not HDF5 throws naming it.
    static Hdf5File open_read(const std::filesystem::path& path);
    //! Creates a file for writing, truncating any existing one.
    static Hdf5File create(const std::filesystem::path& path);

    //! Closes the file; a failure here (e.g. a full disk on the final flush) is logged, not thrown: call close()
    //! first to see it as an error.
    ~Hdf5File();
    Hdf5File(Hdf5File&& other) noexcept;
    Hdf5File& operator=(Hdf5File&& other) noexcept;
    Hdf5File(const Hdf5File&) = delete;
    Hdf5File& operator=(const Hdf5File&) = delete;

    //! Reads a floating-point dataset of any width (16, 32 or 64 bit; HDF5 converts, rounding to nearest).
    //! Integer or other datasets are rejected with an error naming their type: no silent int -> float conversion.
    Hdf5Array<float> read_float(std::string_view dataset_path) const;
    //! Reads an integer dataset of any width and signedness as int64. Unsigned 64-bit values above INT64_MAX and
    //! non-integer datasets are errors.
    Hdf5Array<std::int64_t> read_int(std::string_view dataset_path) const;
    //! Reads a string attribute (fixed or variable length, scalar or one element) of a group or dataset;
    //! object_path "/" is the root group.
    std::string read_string_attribute(std::string_view object_path, std::string_view name) const;
    //! True when a group or dataset exists at path (every intermediate group included).
    bool has(std::string_view path) const;

    //! Writes a little-endian float32 dataset; data.size() must equal the product of shape (an empty shape is a
    //! scalar). The dataset must not exist yet; missing parent groups are created.
    void write_float(std::string_view dataset_path, std::span<const float> data, std::span<const std::int64_t> shape);
    //! As write_float, for a little-endian int32 dataset.
    void write_int32(std::string_view dataset_path,
                     std::span<const std::int32_t> data,
                     std::span<const std::int64_t> shape);
    //! Writes (or replaces) a variable-length UTF-8 string attribute on an existing group or dataset.
    void write_string_attribute(std::string_view object_path, std::string_view name, std::string_view value);

    //! Flushes and closes the file, throwing if that fails; later calls on this object throw.
    void close();
    const std::filesystem::path& path() const noexcept;

   private:
    struct Impl;
    explicit Hdf5File(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace q4tp::loaders
