//! Hdf5File over the HDF5 C API (serial 1.10). Every hid_t lives in a scoped Handle; every failing call becomes a
//! q4tp::Error carrying the file, the object and the innermost message of HDF5's error stack.
#include "loaders/hdf5_file.h"

#include <hdf5.h>

#include <cstring>
#include <limits>
#include <system_error>
#include <utility>

#include "core/base/error.h"
#include "core/base/logging.h"

namespace q4tp::loaders {

// ---------------------------------------------------------------------------------------------------------------
// HDF5 plumbing: handles, error text, paths
// ---------------------------------------------------------------------------------------------------------------

namespace {

//! Owns one HDF5 identifier and releases it with the matching H5?close. Move-only.
class Handle {
   public:
    using Closer = herr_t (*)(hid_t);

    Handle() = default;
    Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
    ~Handle() {
        // A failing close of a read-side handle loses nothing; the file close that matters is checked in close().
        if (id_ >= 0) (void)closer_(id_);
    }
    Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
    Handle& operator=(Handle&& other) noexcept {
        if (this != &other) {
            if (id_ >= 0) (void)closer_(id_);
            id_ = std::exchange(other.id_, H5I_INVALID_HID);
            closer_ = other.closer_;
        }
        return *this;
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;

    hid_t get() const noexcept { return id_; }

   private:
    hid_t id_ = H5I_INVALID_HID;
    Closer closer_ = nullptr;
};

//! The most specific description on HDF5's error stack (e.g. "file signature not found"), then clears the stack.
std::string hdf5_error_detail() {
    std::string detail;
    auto keep_last = [](unsigned /*n*/, const H5E_error2_t* err, void* out) -> herr_t {
        if (err != nullptr && err->desc != nullptr && err->desc[0] != '\0') *static_cast<std::string*>(out) = err->desc;
        return 0;
    };
    // Walking downward visits the API call first and the function that detected the error last.
    (void)H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, keep_last, &detail);
    (void)H5Eclear2(H5E_DEFAULT);
    return detail.empty() ? std::string("no detail from HDF5") : detail;
}

//! HDF5 prints its error stack to stderr by default; the library reports errors as exceptions instead. With a
//! thread-safe HDF5 this setting is per thread, so it is applied on every open rather than once.
void silence_hdf5_error_printing() {
    (void)H5open();
    (void)H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

//! "a/b/c" or "/a/b/c" -> {"a", "b", "c"}; "/" or "" -> {} (the root group).
std::vector<std::string> split_path(const std::filesystem::path& file, std::string_view path) {
    std::vector<std::string> parts;
    std::string_view rest = path;
    if (!rest.empty() && rest.front() == '/') rest.remove_prefix(1);
    if (rest.empty()) return parts;
    while (true) {
        const std::size_t slash = rest.find('/');
        const std::string_view part = rest.substr(0, slash);
        Q4TP_CHECK(!part.empty() && part != "." && part != "..",
                   file.string() << ": HDF5 path '" << path << "' has an empty, '.' or '..' component");
        parts.emplace_back(part);
        if (slash == std::string_view::npos) break;
        rest.remove_prefix(slash + 1);
    }
    return parts;
}

std::string join_path(const std::vector<std::string>& parts, std::size_t count) {
    if (count == 0) return "/";
    std::string joined;
    for (std::size_t i = 0; i < count; ++i) joined += "/" + parts[i];
    return joined;
}

//! "32-bit signed integer", "64-bit float", "string", ...: the words an error message uses for a dataset's type.
std::string describe_type(hid_t type) {
    const std::size_t bits = H5Tget_size(type) * 8;
    switch (H5Tget_class(type)) {
        case H5T_INTEGER:
            return std::to_string(bits) + "-bit " + (H5Tget_sign(type) == H5T_SGN_NONE ? "unsigned" : "signed") +
                   " integer";
        case H5T_FLOAT:
            return std::to_string(bits) + "-bit float";
        case H5T_STRING:
            return "string";
        case H5T_COMPOUND:
            return "compound";
        case H5T_ENUM:
            return "enum";
        case H5T_BITFIELD:
            return "bitfield";
        case H5T_OPAQUE:
            return "opaque";
        case H5T_REFERENCE:
            return "reference";
        case H5T_ARRAY:
            return "array";
        case H5T_VLEN:
            return "variable-length sequence";
        case H5T_TIME:
            return "time";
        case H5T_NO_CLASS:
        case H5T_NCLASSES:
            break;
    }
    return "unknown type";
}

//! Product of a shape, rejecting negative extents and overflow of size_t.
std::size_t element_count(const std::filesystem::path& file,
                          std::string_view what,
                          std::span<const std::int64_t> shape) {
    std::size_t count = 1;
    for (const std::int64_t d : shape) {
        Q4TP_CHECK(d >= 0, file.string() << ": " << what << " has negative extent " << d);
        const auto ud = static_cast<std::size_t>(d);
        Q4TP_CHECK(ud == 0 || count <= std::numeric_limits<std::size_t>::max() / ud,
                   file.string() << ": " << what << " has more elements than memory can address");
        count *= ud;
    }
    return count;
}

std::string shape_string(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Hdf5File
// ---------------------------------------------------------------------------------------------------------------

struct Hdf5File::Impl {
    std::filesystem::path path;
    hid_t file = H5I_INVALID_HID;
    bool writable = false;

    std::string name() const { return path.string(); }

    hid_t file_id() const {
        Q4TP_CHECK(file >= 0, name() << ": HDF5 file is already closed");
        return file;
    }

    //! The type of the object at absolute path abs (H5I_GROUP, H5I_DATASET, ...), or H5I_BADID if none.
    H5I_type_t object_type(const std::string& abs) const {
        Handle object(H5Oopen(file_id(), abs.c_str(), H5P_DEFAULT), H5Oclose);
        if (object.get() < 0) {
            (void)H5Eclear2(H5E_DEFAULT);
            return H5I_BADID;
        }
        return H5Iget_type(object.get());
    }

    bool has(const std::vector<std::string>& parts) const {
        const hid_t f = file_id();
        // H5Lexists fails outright (rather than saying no) when an intermediate group is missing, so each prefix is
        // checked in turn, and each intermediate must be a group for the path to continue through it.
        for (std::size_t i = 1; i <= parts.size(); ++i) {
            const std::string prefix = join_path(parts, i);
            const htri_t link = H5Lexists(f, prefix.c_str(), H5P_DEFAULT);
            Q4TP_CHECK(link >= 0,
                       name() << ": cannot look up HDF5 path '" << prefix << "' (" << hdf5_error_detail() << ")");
            if (link == 0) return false;
            const H5I_type_t type = object_type(prefix);
            if (type == H5I_BADID) return false;  // a dangling soft or external link
            if (i < parts.size() && type != H5I_GROUP) return false;
        }
        return true;
    }

    //! Opens the dataset at dataset_path, with errors that say whether it is missing or not a dataset.
    Handle open_dataset(std::string_view dataset_path) const {
        const auto parts = split_path(path, dataset_path);
        const std::string abs = join_path(parts, parts.size());
        Q4TP_CHECK(!parts.empty() && has(parts), name() << ": no dataset '" << dataset_path << "'");
        Q4TP_CHECK(object_type(abs) == H5I_DATASET, name()
                                                        << ": '" << dataset_path << "' is a group, expected a dataset");
        Handle dataset(H5Dopen2(file_id(), abs.c_str(), H5P_DEFAULT), H5Dclose);
        Q4TP_CHECK(dataset.get() >= 0,
                   name() << ": cannot open dataset '" << dataset_path << "' (" << hdf5_error_detail() << ")");
        return dataset;
    }

    //! Shape of a dataset's dataspace; a scalar has shape {}; a null dataspace (no data at all) is an error.
    std::vector<std::int64_t> dataset_shape(hid_t dataset, std::string_view dataset_path) const {
        Handle space(H5Dget_space(dataset), H5Sclose);
        Q4TP_CHECK(space.get() >= 0, name() << ": cannot read the dataspace of dataset '" << dataset_path << "' ("
                                            << hdf5_error_detail() << ")");
        const H5S_class_t kind = H5Sget_simple_extent_type(space.get());
        if (kind == H5S_SCALAR) return {};
        Q4TP_CHECK(kind == H5S_SIMPLE, name() << ": dataset '" << dataset_path << "' has an empty (null) dataspace");
        const int rank = H5Sget_simple_extent_ndims(space.get());
        Q4TP_CHECK(rank >= 0, name() << ": cannot read the rank of dataset '" << dataset_path << "' ("
                                     << hdf5_error_detail() << ")");
        std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
        Q4TP_CHECK(
            H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) == rank,
            name() << ": cannot read the extents of dataset '" << dataset_path << "' (" << hdf5_error_detail() << ")");
        std::vector<std::int64_t> shape;
        for (const hsize_t d : dims) {
            Q4TP_CHECK(d <= static_cast<hsize_t>(std::numeric_limits<std::int64_t>::max()),
                       name() << ": dataset '" << dataset_path << "' has extent " << d << " beyond int64");
            shape.push_back(static_cast<std::int64_t>(d));
        }
        return shape;
    }

    template <typename T>
    std::vector<T> read_all(hid_t dataset, hid_t memory_type, std::size_t count, std::string_view dataset_path) const {
        Q4TP_CHECK(count <= std::vector<T>().max_size(),
                   name() << ": dataset '" << dataset_path << "' has " << count << " elements, too many to read");
        std::vector<T> data(count);
        if (count == 0) return data;
        const herr_t status = H5Dread(dataset, memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data());
        Q4TP_CHECK(status >= 0,
                   name() << ": reading dataset '" << dataset_path << "' failed (" << hdf5_error_detail() << ")");
        return data;
    }

    void write_dataset(std::string_view dataset_path,
                       hid_t memory_type,
                       hid_t file_type,
                       const void* data,
                       std::size_t data_count,
                       std::span<const std::int64_t> shape) {
        const hid_t f = file_id();
        Q4TP_CHECK(writable,
                   name() << ": cannot write dataset '" << dataset_path << "': the file was opened read-only");
        const auto parts = split_path(path, dataset_path);
        Q4TP_CHECK(!parts.empty(), name() << ": dataset path '" << dataset_path << "' names the root group");
        const std::string abs = join_path(parts, parts.size());
        const std::string what = "dataset '" + std::string(dataset_path) + "' shape " + shape_string(shape);
        Q4TP_CHECK(shape.size() <= H5S_MAX_RANK,
                   name() << ": " << what << " has rank " << shape.size() << ", HDF5 allows at most " << H5S_MAX_RANK);
        const std::size_t count = element_count(path, what, shape);
        Q4TP_CHECK(count == data_count,
                   name() << ": " << what << " needs " << count << " elements but " << data_count << " were given");
        Q4TP_CHECK(!has(parts), name() << ": dataset '" << dataset_path << "' already exists");
        for (std::size_t i = 1; i < parts.size(); ++i) {
            const std::string prefix = join_path(parts, i);
            if (!has({parts.begin(), parts.begin() + static_cast<std::ptrdiff_t>(i)})) break;
            Q4TP_CHECK(object_type(prefix) == H5I_GROUP,
                       name() << ": cannot create dataset '" << dataset_path << "': '" << prefix << "' is not a group");
        }

        std::vector<hsize_t> dims(shape.begin(), shape.end());
        Handle space(shape.empty() ? H5Screate(H5S_SCALAR)
                                   : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
                     H5Sclose);
        Q4TP_CHECK(space.get() >= 0,
                   name() << ": cannot make the dataspace of " << what << " (" << hdf5_error_detail() << ")");
        Handle link_props(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
        Q4TP_CHECK(link_props.get() >= 0 && H5Pset_create_intermediate_group(link_props.get(), 1) >= 0,
                   name() << ": cannot set up group creation for " << what << " (" << hdf5_error_detail() << ")");
        Handle dataset(H5Dcreate2(f, abs.c_str(), file_type, space.get(), link_props.get(), H5P_DEFAULT, H5P_DEFAULT),
                       H5Dclose);
        Q4TP_CHECK(dataset.get() >= 0, name() << ": cannot create " << what << " (" << hdf5_error_detail() << ")");
        if (count == 0) return;
        Q4TP_CHECK(H5Dwrite(dataset.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0,
                   name() << ": writing " << what << " failed (" << hdf5_error_detail() << ")");
    }

    //! Absolute path of an existing group or dataset that carries attributes.
    std::string attribute_owner(std::string_view object_path) const {
        const auto parts = split_path(path, object_path);
        Q4TP_CHECK(parts.empty() || has(parts), name() << ": no group or dataset '" << object_path << "'");
        return join_path(parts, parts.size());
    }
};

Hdf5File::Hdf5File(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Hdf5File::~Hdf5File() {
    if (!impl_ || impl_->file < 0) return;
    if (H5Fclose(impl_->file) < 0) {
        Q4TP_LOG_ERROR(impl_->name() << ": closing the HDF5 file failed (" << hdf5_error_detail()
                                     << "); data written to it may be lost");
    }
}

Hdf5File::Hdf5File(Hdf5File&& other) noexcept = default;

Hdf5File& Hdf5File::operator=(Hdf5File&& other) noexcept {
    if (this != &other) {
        Hdf5File old(std::move(*this));  // closes the file this object held, through the destructor
        impl_ = std::move(other.impl_);
    }
    return *this;
}

Hdf5File Hdf5File::open_read(const std::filesystem::path& path) {
    silence_hdf5_error_printing();
    std::error_code ec;
    Q4TP_CHECK(std::filesystem::is_regular_file(path, ec), path.string() << ": no such HDF5 file");
    const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
    Q4TP_CHECK(is_hdf5 > 0, path.string()
                                << ": not an HDF5 file ("
                                << (is_hdf5 == 0 ? std::string("no HDF5 signature") : hdf5_error_detail()) << ")");
    Handle access(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    Q4TP_CHECK(access.get() >= 0, path.string()
                                      << ": cannot create HDF5 file-access properties (" << hdf5_error_detail() << ")");
#if H5_VERSION_GE(1, 10, 7)
    // Keep file locking, but do not fail on file systems that have it switched off (some NFS and Lustre mounts).
    (void)H5Pset_file_locking(access.get(), true, true);
#endif
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    impl->file = H5Fopen(path.c_str(), H5F_ACC_RDONLY, access.get());
    Q4TP_CHECK(impl->file >= 0, path.string() << ": cannot open HDF5 file for reading (" << hdf5_error_detail() << ")");
    return Hdf5File(std::move(impl));
}

Hdf5File Hdf5File::create(const std::filesystem::path& path) {
    silence_hdf5_error_printing();
    Handle access(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
    Q4TP_CHECK(access.get() >= 0, path.string()
                                      << ": cannot create HDF5 file-access properties (" << hdf5_error_detail() << ")");
#if H5_VERSION_GE(1, 10, 7)
    (void)H5Pset_file_locking(access.get(), true, true);
#endif
    auto impl = std::make_unique<Impl>();
    impl->path = path;
    impl->writable = true;
    impl->file = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, access.get());
    Q4TP_CHECK(impl->file >= 0, path.string() << ": cannot create HDF5 file (" << hdf5_error_detail() << ")");
    return Hdf5File(std::move(impl));
}

Hdf5Array<float> Hdf5File::read_float(std::string_view dataset_path) const {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    const Handle dataset = impl_->open_dataset(dataset_path);
    const Handle type(H5Dget_type(dataset.get()), H5Tclose);
    Q4TP_CHECK(type.get() >= 0, impl_->name() << ": cannot read the type of dataset '" << dataset_path << "' ("
                                              << hdf5_error_detail() << ")");
    Q4TP_CHECK(H5Tget_class(type.get()) == H5T_FLOAT,
               impl_->name() << ": dataset '" << dataset_path << "' holds " << describe_type(type.get())
                             << " data, read_float needs a floating-point dataset (use read_int for integers)");
    Hdf5Array<float> out;
    out.shape = impl_->dataset_shape(dataset.get(), dataset_path);
    const std::size_t count = element_count(impl_->path, "dataset '" + std::string(dataset_path) + "'", out.shape);
    out.data = impl_->read_all<float>(dataset.get(), H5T_NATIVE_FLOAT, count, dataset_path);
    return out;
}

Hdf5Array<std::int64_t> Hdf5File::read_int(std::string_view dataset_path) const {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    const Handle dataset = impl_->open_dataset(dataset_path);
    const Handle type(H5Dget_type(dataset.get()), H5Tclose);
    Q4TP_CHECK(type.get() >= 0, impl_->name() << ": cannot read the type of dataset '" << dataset_path << "' ("
                                              << hdf5_error_detail() << ")");
    Q4TP_CHECK(H5Tget_class(type.get()) == H5T_INTEGER,
               impl_->name() << ": dataset '" << dataset_path << "' holds " << describe_type(type.get())
                             << " data, read_int needs an integer dataset (use read_float for floats)");
    Hdf5Array<std::int64_t> out;
    out.shape = impl_->dataset_shape(dataset.get(), dataset_path);
    const std::size_t count = element_count(impl_->path, "dataset '" + std::string(dataset_path) + "'", out.shape);
    const bool unsigned64 = H5Tget_sign(type.get()) == H5T_SGN_NONE && H5Tget_size(type.get()) >= 8;
    if (!unsigned64) {
        // Every other integer type fits int64 exactly, so HDF5's conversion cannot clip.
        out.data = impl_->read_all<std::int64_t>(dataset.get(), H5T_NATIVE_INT64, count, dataset_path);
        return out;
    }
    // HDF5 would silently clip values above INT64_MAX: read them as they are and check.
    const auto raw = impl_->read_all<std::uint64_t>(dataset.get(), H5T_NATIVE_UINT64, count, dataset_path);
    out.data.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
        Q4TP_CHECK(raw[i] <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                   impl_->name() << ": dataset '" << dataset_path << "' element " << i << " = " << raw[i]
                                 << " does not fit int64");
        out.data.push_back(static_cast<std::int64_t>(raw[i]));
    }
    return out;
}

std::string Hdf5File::read_string_attribute(std::string_view object_path, std::string_view name) const {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    const std::string owner = impl_->attribute_owner(object_path);
    const std::string attr_name(name);
    const std::string what = "attribute '" + attr_name + "' of '" + std::string(object_path) + "'";
    const htri_t exists = H5Aexists_by_name(impl_->file_id(), owner.c_str(), attr_name.c_str(), H5P_DEFAULT);
    Q4TP_CHECK(exists >= 0, impl_->name() << ": cannot look up " << what << " (" << hdf5_error_detail() << ")");
    Q4TP_CHECK(exists > 0, impl_->name() << ": no " << what);

    const Handle attr(H5Aopen_by_name(impl_->file_id(), owner.c_str(), attr_name.c_str(), H5P_DEFAULT, H5P_DEFAULT),
                      H5Aclose);
    Q4TP_CHECK(attr.get() >= 0, impl_->name() << ": cannot open " << what << " (" << hdf5_error_detail() << ")");
    const Handle type(H5Aget_type(attr.get()), H5Tclose);
    Q4TP_CHECK(type.get() >= 0 && H5Tget_class(type.get()) == H5T_STRING,
               impl_->name() << ": " << what << " holds " << describe_type(type.get()) << " data, expected a string");
    const Handle space(H5Aget_space(attr.get()), H5Sclose);
    const hssize_t elements = H5Sget_simple_extent_npoints(space.get());
    Q4TP_CHECK(elements == 1, impl_->name() << ": " << what << " holds " << elements << " strings, expected one");

    if (H5Tis_variable_str(type.get()) > 0) {
        const Handle memory_type(H5Tcopy(H5T_C_S1), H5Tclose);
        Q4TP_CHECK(
            memory_type.get() >= 0 && H5Tset_size(memory_type.get(), H5T_VARIABLE) >= 0 &&
                H5Tset_cset(memory_type.get(), H5Tget_cset(type.get())) >= 0,
            impl_->name() << ": cannot set up a string type to read " << what << " (" << hdf5_error_detail() << ")");
        char* value = nullptr;
        Q4TP_CHECK(H5Aread(attr.get(), memory_type.get(), &value) >= 0,
                   impl_->name() << ": reading " << what << " failed (" << hdf5_error_detail() << ")");
        std::string out = value != nullptr ? std::string(value) : std::string();
        (void)H5free_memory(value);
        return out;
    }

    // Fixed-length: read the raw bytes with the file's own layout, then undo its padding.
    const std::size_t size = H5Tget_size(type.get());
    std::string out(size, '\0');
    if (size > 0) {
        Q4TP_CHECK(H5Aread(attr.get(), type.get(), out.data()) >= 0,
                   impl_->name() << ": reading " << what << " failed (" << hdf5_error_detail() << ")");
    }
    if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) {
        out.erase(out.find_last_not_of(' ') + 1);
    } else {
        out.resize(std::strlen(out.c_str()));  // NULLTERM and NULLPAD both end at the first NUL
    }
    return out;
}

bool Hdf5File::has(std::string_view path) const {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    return impl_->has(split_path(impl_->path, path));
}

void Hdf5File::write_float(std::string_view dataset_path,
                           std::span<const float> data,
                           std::span<const std::int64_t> shape) {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    impl_->write_dataset(dataset_path, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, data.data(), data.size(), shape);
}

void Hdf5File::write_int32(std::string_view dataset_path,
                           std::span<const std::int32_t> data,
                           std::span<const std::int64_t> shape) {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    impl_->write_dataset(dataset_path, H5T_NATIVE_INT32, H5T_STD_I32LE, data.data(), data.size(), shape);
}

void Hdf5File::write_string_attribute(std::string_view object_path, std::string_view name, std::string_view value) {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    const hid_t f = impl_->file_id();
    const std::string attr_name(name);
    const std::string what = "attribute '" + attr_name + "' of '" + std::string(object_path) + "'";
    Q4TP_CHECK(impl_->writable, impl_->name() << ": cannot write " << what << ": the file was opened read-only");
    Q4TP_CHECK(!attr_name.empty(), impl_->name() << ": attribute name on '" << object_path << "' is empty");
    // Variable-length strings are NUL-terminated in HDF5, so an embedded NUL would silently cut the value.
    Q4TP_CHECK(value.find('\0') == std::string_view::npos,
               impl_->name() << ": value of " << what << " contains a NUL byte, which HDF5 strings cannot hold");
    const std::string owner = impl_->attribute_owner(object_path);

    const htri_t exists = H5Aexists_by_name(f, owner.c_str(), attr_name.c_str(), H5P_DEFAULT);
    Q4TP_CHECK(exists >= 0, impl_->name() << ": cannot look up " << what << " (" << hdf5_error_detail() << ")");
    if (exists > 0) {
        Q4TP_CHECK(H5Adelete_by_name(f, owner.c_str(), attr_name.c_str(), H5P_DEFAULT) >= 0,
                   impl_->name() << ": cannot replace " << what << " (" << hdf5_error_detail() << ")");
    }
    // Variable-length UTF-8 is what h5py writes for str and reads back as str.
    const Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    Q4TP_CHECK(
        type.get() >= 0 && H5Tset_size(type.get(), H5T_VARIABLE) >= 0 && H5Tset_cset(type.get(), H5T_CSET_UTF8) >= 0,
        impl_->name() << ": cannot set up a string type for " << what << " (" << hdf5_error_detail() << ")");
    const Handle space(H5Screate(H5S_SCALAR), H5Sclose);
    const Handle attr(H5Acreate_by_name(f, owner.c_str(), attr_name.c_str(), type.get(), space.get(), H5P_DEFAULT,
                                        H5P_DEFAULT, H5P_DEFAULT),
                      H5Aclose);
    Q4TP_CHECK(attr.get() >= 0, impl_->name() << ": cannot create " << what << " (" << hdf5_error_detail() << ")");
    const std::string terminated(value);
    const char* text = terminated.c_str();
    Q4TP_CHECK(H5Awrite(attr.get(), type.get(), &text) >= 0,
               impl_->name() << ": writing " << what << " failed (" << hdf5_error_detail() << ")");
}

void Hdf5File::close() {
    Q4TP_CHECK(impl_, "Hdf5File used after being moved from");
    const hid_t f = impl_->file_id();
    impl_->file = H5I_INVALID_HID;  // closed or not, the identifier must not be used again
    Q4TP_CHECK(H5Fclose(f) >= 0, impl_->name() << ": closing the HDF5 file failed (" << hdf5_error_detail()
                                               << "); data written to it may be lost");
}

const std::filesystem::path& Hdf5File::path() const noexcept {
    static const std::filesystem::path moved_from;
    return impl_ ? impl_->path : moved_from;
}

}  // namespace q4tp::loaders
