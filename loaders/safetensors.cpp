// Safetensors reader. The checks follow the official reader's order (docs/formats.md §1.2, S1
// read_metadata + Metadata::validate) so that a file we accept is one it accepts, with two
// additions: duplicate names are rejected (S2 forbids them, S1 keeps the last one silently) and
// dims must fit int64 (our shape type; S1 uses usize). Everything 64-bit: one 70B file is ~35 GB.
#include "loaders/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <system_error>
#include <unordered_set>
#include <utility>

#include "core/base/logging.h"

namespace q4tp::loaders {
namespace {

using Json = nlohmann::json;

// -------------------------------------------------------------------------------------------------
// dtypes and small helpers

struct DtypeBits {
    std::string_view name;
    int bits;
};

// R1.5 (S1 Dtype::bitsize). Sub-byte dtypes make the byte size of a tensor depend on its element count.
constexpr std::array<DtypeBits, 22> kDtypeBits{{
    {"BOOL", 8},        {"U8", 8},          {"I8", 8},      {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8},
    {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"I16", 16},    {"U16", 16},    {"F16", 16},    {"BF16", 16},
    {"I32", 32},        {"U32", 32},        {"F32", 32},    {"I64", 64},    {"U64", 64},    {"F64", 64},
    {"C64", 64},        {"F4", 4},          {"F6_E2M3", 6}, {"F6_E3M2", 6},
}};

bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
    return !__builtin_mul_overflow(a, b, out);
}

// Quotes a value of a hostile header in an error message: bounded in length and never recursive
// (Json::dump recurses, so a shape of a million nested arrays would overflow the stack).
std::string brief(const Json& value) {
    constexpr std::size_t kMaxChars = 60;
    constexpr std::size_t kMaxItems = 8;
    const auto scalar = [&](const Json& v) -> std::string {
        if (v.is_array()) return v.empty() ? "[]" : "[...]";
        if (v.is_object()) return v.empty() ? "{}" : "{...}";
        std::string text = v.dump(-1, ' ', true, Json::error_handler_t::replace);
        return text.size() > kMaxChars ? text.substr(0, kMaxChars) + "..." : text;
    };
    if (!value.is_array()) return scalar(value);
    std::string text = "[";
    std::size_t count = 0;
    for (const Json& item : value) {
        if (count == kMaxItems) {
            text += ", ...";
            break;
        }
        if (count++ > 0) text += ',';
        text += scalar(item);
    }
    return text + "]";
}

// Position of the first byte that does not start a well-formed UTF-8 sequence (overlong forms,
// surrogates and code points above U+10FFFF included, as Rust's from_utf8 does), or npos.
std::size_t first_invalid_utf8(std::string_view text) {
    constexpr std::array<std::uint32_t, 5> kMinCodePoint{0, 0, 0x80, 0x800, 0x10000};
    std::size_t i = 0;
    while (i < text.size()) {
        const auto lead = static_cast<unsigned char>(text[i]);
        if (lead < 0x80) {
            ++i;
            continue;
        }
        std::size_t len = 0;
        std::uint32_t code_point = 0;
        if ((lead & 0xE0) == 0xC0) {
            len = 2;
            code_point = lead & 0x1Fu;
        } else if ((lead & 0xF0) == 0xE0) {
            len = 3;
            code_point = lead & 0x0Fu;
        } else if ((lead & 0xF8) == 0xF0) {
            len = 4;
            code_point = lead & 0x07u;
        } else {
            return i;
        }
        if (text.size() - i < len) return i;
        for (std::size_t k = 1; k < len; ++k) {
            const auto cont = static_cast<unsigned char>(text[i + k]);
            if ((cont & 0xC0) != 0x80) return i;
            code_point = (code_point << 6) | (cont & 0x3Fu);
        }
        if (code_point < kMinCodePoint[len] || code_point > 0x10FFFF ||
            (code_point >= 0xD800 && code_point <= 0xDFFF)) {
            return i;
        }
        i += len;
    }
    return std::string_view::npos;
}

// nlohmann keeps the last of two equal keys without a word; a duplicate tensor name would silently
// drop a tensor, so the parse callback records the first repeated key of any object.
struct DuplicateKey {
    std::string key;
    std::string parent;  // key of the enclosing object
    bool top_level = false;
};

Json parse_rejecting_duplicates(std::string_view text, std::optional<DuplicateKey>* duplicate) {
    std::vector<std::pair<std::string, std::unordered_set<std::string>>> open_objects;
    std::string last_key;
    auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
        if (event == Json::parse_event_t::object_start) {
            open_objects.emplace_back(last_key, std::unordered_set<std::string>{});
        } else if (event == Json::parse_event_t::object_end) {
            open_objects.pop_back();
        } else if (event == Json::parse_event_t::key) {
            last_key = parsed.get<std::string>();
            if (!open_objects.back().second.insert(last_key).second && !duplicate->has_value()) {
                *duplicate = DuplicateKey{last_key, open_objects.back().first, open_objects.size() == 1};
            }
        }
        return true;
    };
    return Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true);
}

std::uint64_t read_u64_le(const std::byte* p) {
    std::uint64_t value = 0;
    for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<std::uint64_t>(p[i]);
    return value;
}

bool is_non_negative_integer(const Json& value) {
    return value.is_number_unsigned() || (value.is_number_integer() && value.get<std::int64_t>() >= 0);
}

// Closes a descriptor on every exit path of open().
class FdGuard {
public:
    explicit FdGuard(int fd) : fd_(fd) {}
    ~FdGuard() {
        if (fd_ >= 0) ::close(fd_);
    }
    FdGuard(const FdGuard&) = delete;
    FdGuard& operator=(const FdGuard&) = delete;

private:
    int fd_;
};

// -------------------------------------------------------------------------------------------------
// header parsing (rule 4: types) and layout validation (rules 5-7)

TensorInfo parse_entry(const std::string& where, const std::string& name, const Json& entry) {
    const std::string prefix = where + ": tensor '" + name + "': ";
    Q4TP_CHECK(entry.is_object(), prefix << "entry is a JSON " << entry.type_name()
                                         << ", expected an object with dtype, shape and data_offsets");
    // Unknown fields are ignored, as S1's serde struct does; the schema (S3) forbids them but real
    // readers never enforced it.
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
        Q4TP_CHECK(entry.contains(field), prefix << "missing '" << field << "'");
    }
    TensorInfo info;
    info.name = name;

    const Json& dtype = entry.at("dtype");
    Q4TP_CHECK(dtype.is_string(), prefix << "dtype must be a string, got " << brief(dtype));
    info.dtype_name = dtype.get<std::string>();
    Q4TP_CHECK(safetensors_dtype_bits(info.dtype_name) > 0,
               prefix << "unknown dtype '" << info.dtype_name << "' (not a safetensors dtype)");
    DType parsed{};
    if (parse_dtype(info.dtype_name, &parsed)) info.dtype = parsed;

    const Json& shape = entry.at("shape");
    const bool shape_ok = shape.is_array() && std::all_of(shape.begin(), shape.end(), is_non_negative_integer);
    Q4TP_CHECK(shape_ok, prefix << "shape must be an array of non-negative integers, got " << brief(shape));
    for (const Json& dim : shape) {
        const auto value = dim.get<std::uint64_t>();
        Q4TP_CHECK(value <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                   prefix << "shape dimension " << value << " does not fit int64 (overflow)");
        info.shape.push_back(static_cast<std::int64_t>(value));
    }

    const Json& offsets = entry.at("data_offsets");
    const bool offsets_ok = offsets.is_array() && offsets.size() == 2 &&
                            std::all_of(offsets.begin(), offsets.end(), is_non_negative_integer);
    Q4TP_CHECK(offsets_ok,
               prefix << "data_offsets must be exactly 2 non-negative integers [BEGIN, END], got " << brief(offsets));
    info.begin = offsets[0].get<std::uint64_t>();
    info.end = offsets[1].get<std::uint64_t>();
    return info;
}

std::map<std::string, std::string> parse_metadata(const std::string& where, const Json& metadata) {
    Q4TP_CHECK(metadata.is_object(),
               where << ": __metadata__ is a JSON " << metadata.type_name() << ", expected an object of strings");
    std::map<std::string, std::string> out;
    for (const auto& [key, value] : metadata.items()) {
        Q4TP_CHECK(value.is_string(),
                   where << ": __metadata__ value for key '" << key << "' must be a string, got " << brief(value));
        out.emplace(key, value.get<std::string>());
    }
    return out;
}

// Bytes a tensor must span: prod(shape) * bits / 8, overflow-checked (rule 6).
std::uint64_t required_bytes(const std::string& where, const TensorInfo& info) {
    const int bits = safetensors_dtype_bits(info.dtype_name);
    std::uint64_t total_bits = static_cast<std::uint64_t>(bits);
    for (std::int64_t dim : info.shape) {
        Q4TP_CHECK(checked_mul(total_bits, static_cast<std::uint64_t>(dim), &total_bits),
                   where << ": tensor '" << info.name << "': dtype " << info.dtype_name << " shape "
                         << shape_to_string(info.shape) << " has a size that overflows 64 bits (validation overflow)");
    }
    Q4TP_CHECK(total_bits % 8 == 0, where << ": tensor '" << info.name << "': dtype " << info.dtype_name << " shape "
                                          << shape_to_string(info.shape) << " holds " << total_bits
                                          << " bits, not a whole number of bytes (misaligned slice)");
    return total_bits / 8;
}

// Rules 5-7: sorted by offsets the tensors tile [0, data_size) exactly, each with the size its
// dtype and shape imply. JSON key order is irrelevant.
void validate_layout(const std::string& where, std::vector<TensorInfo>& tensors, std::uint64_t data_size) {
    std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
        return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    std::uint64_t expected_begin = 0;
    const TensorInfo* previous = nullptr;
    for (const TensorInfo& info : tensors) {
        std::ostringstream offsets;
        offsets << "[" << info.begin << ", " << info.end << "]";
        const std::string prefix = where + ": tensor '" + info.name + "': data_offsets " + offsets.str();
        if (info.begin != expected_begin) {
            Q4TP_CHECK(previous != nullptr,
                       prefix << ": the first tensor in offset order must begin at 0 (invalid offset)");
            if (info.begin > expected_begin) {
                Q4TP_THROW(prefix << " leave a gap of " << info.begin - expected_begin << " bytes after tensor '"
                                  << previous->name << "', which ends at " << expected_begin
                                  << " (invalid offset; tensors must be contiguous)");
            }
            Q4TP_THROW(prefix << " overlap tensor '" << previous->name << "', which ends at " << expected_begin
                              << " (invalid offset)");
        }
        Q4TP_CHECK(info.end >= info.begin, prefix << ": end before begin (invalid offset)");
        const std::uint64_t needed = required_bytes(where, info);
        Q4TP_CHECK(info.nbytes() == needed, prefix << " hold " << info.nbytes() << " bytes but dtype "
                                                   << info.dtype_name << " shape " << shape_to_string(info.shape)
                                                   << " needs " << needed << " (invalid tensor info)");
        expected_begin = info.end;
        previous = &info;
    }
    if (expected_begin > data_size) {
        Q4TP_THROW(where << ": tensor '" << previous->name << "' ends at data byte " << expected_begin
                         << " but the file holds only " << data_size << " data bytes (incomplete buffer)");
    }
    if (expected_begin < data_size) {
        Q4TP_THROW(where << ": " << data_size - expected_begin << " trailing bytes after the last tensor"
                         << (previous ? " '" + previous->name + "'" : std::string()) << ": tensors end at data byte "
                         << expected_begin << " of " << data_size << " (incomplete buffer rule)");
    }
}

}  // namespace

// -------------------------------------------------------------------------------------------------
// free functions and TensorInfo

int safetensors_dtype_bits(std::string_view dtype_name) noexcept {
    for (const DtypeBits& entry : kDtypeBits) {
        if (entry.name == dtype_name) return entry.bits;
    }
    return 0;
}

std::string shape_to_string(std::span<const std::int64_t> shape) {
    std::ostringstream oss;
    oss << "[";
    for (std::size_t i = 0; i < shape.size(); ++i) oss << (i ? ", " : "") << shape[i];
    oss << "]";
    return oss.str();
}

std::int64_t TensorInfo::numel() const noexcept {
    // Validation bounded prod(shape) * bits by 2^64, so the product fits int64 for every dtype.
    return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

// -------------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
    const std::string where = path.string();
    SafetensorsFile file;
    file.path_ = path;
    {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            const int err = errno;
            Q4TP_THROW(where << ": cannot open safetensors file: " << std::generic_category().message(err));
        }
        FdGuard guard(fd);
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            Q4TP_THROW(where << ": cannot stat safetensors file: " << std::generic_category().message(err));
        }
        Q4TP_CHECK(S_ISREG(st.st_mode), where << ": not a regular file, expected a safetensors file");
        file.file_size_ = static_cast<std::uint64_t>(st.st_size);
        // Rule 1, before mmap: a zero-length mapping is an error of its own.
        Q4TP_CHECK(file.file_size_ >= 8, where << ": file is " << file.file_size_
                                               << " bytes, shorter than the 8-byte header length (header too small)");
        void* map = ::mmap(nullptr, file.file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            const int err = errno;
            Q4TP_THROW(where << ": mmap of " << file.file_size_
                             << " bytes failed: " << std::generic_category().message(err));
        }
        file.map_ = static_cast<const std::byte*>(map);
    }

    // Rules 2-3.
    const std::uint64_t header_size = read_u64_le(file.map_);
    Q4TP_CHECK(header_size <= kSafetensorsMaxHeaderBytes, where << ": header length " << header_size << " exceeds the "
                                                                << kSafetensorsMaxHeaderBytes
                                                                << "-byte limit (header too large)");
    Q4TP_CHECK(8 + header_size <= file.file_size_,
               where << ": header length " << header_size << " runs past the end of the file: 8 + " << header_size
                     << " > file size " << file.file_size_ << " (invalid header length)");
    file.data_offset_ = 8 + header_size;

    // Rule 4: UTF-8, then JSON, then value types.
    const std::string_view header(reinterpret_cast<const char*>(file.map_ + 8), header_size);
    const std::size_t bad_byte = first_invalid_utf8(header);
    Q4TP_CHECK(bad_byte == std::string_view::npos, where
                                                       << ": header is not valid UTF-8 (bad byte 0x" << std::hex
                                                       << static_cast<int>(static_cast<unsigned char>(header[bad_byte]))
                                                       << std::dec << " at header offset " << bad_byte << ")");
    Json root;
    std::optional<DuplicateKey> duplicate;
    try {
        root = parse_rejecting_duplicates(header, &duplicate);
    } catch (const Json::exception& e) {
        Q4TP_THROW(where << ": header is not valid JSON: " << e.what());
    }
    Q4TP_CHECK(root.is_object(), where << ": header is a JSON " << root.type_name() << ", expected an object");
    if (duplicate) {
        if (duplicate->top_level) {
            Q4TP_THROW(where << ": tensor '" << duplicate->key << "' appears twice in the header (duplicate name)");
        }
        Q4TP_THROW(where << ": key '" << duplicate->key << "' appears twice in the entry of '" << duplicate->parent
                         << "' (duplicate key)");
    }

    for (const auto& [key, value] : root.items()) {
        if (key == "__metadata__") {
            file.metadata_ = parse_metadata(where, value);
        } else {
            file.tensors_.push_back(parse_entry(where, key, value));
        }
    }

    // Rules 5-7.
    validate_layout(where, file.tensors_, file.file_size_ - file.data_offset_);

    file.index_.reserve(file.tensors_.size());
    for (std::size_t i = 0; i < file.tensors_.size(); ++i) file.index_.emplace(file.tensors_[i].name, i);
    Q4TP_LOG_DEBUG(where << ": " << file.tensors_.size() << " tensors, header " << header_size << " bytes");
    return file;
}

SafetensorsFile::~SafetensorsFile() {
    release();
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      map_(std::exchange(other.map_, nullptr)),
      file_size_(std::exchange(other.file_size_, 0)),
      data_offset_(std::exchange(other.data_offset_, 0)),
      tensors_(std::move(other.tensors_)),
      index_(std::move(other.index_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
    if (this != &other) {
        release();
        path_ = std::move(other.path_);
        map_ = std::exchange(other.map_, nullptr);
        file_size_ = std::exchange(other.file_size_, 0);
        data_offset_ = std::exchange(other.data_offset_, 0);
        tensors_ = std::move(other.tensors_);
        index_ = std::move(other.index_);
        metadata_ = std::move(other.metadata_);
    }
    return *this;
}

void SafetensorsFile::release() noexcept {
    if (map_ != nullptr) {
        // Failure here would mean a bad address, which this class never creates; nothing to recover.
        ::munmap(const_cast<void*>(static_cast<const void*>(map_)), file_size_);
        map_ = nullptr;
    }
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::require(std::string_view name) const {
    const TensorInfo* info = find(name);
    Q4TP_CHECK(info != nullptr,
               path_.string() << ": tensor '" << name << "' not found (file has " << tensors_.size() << " tensors)");
    return *info;
}

std::span<const std::byte> SafetensorsFile::data(const TensorInfo& info) const {
    // Offsets are only known to be in range for entries of this file's own validated header.
    const std::less<const TensorInfo*> before;  // total order even for pointers into other objects
    const bool ours = !before(&info, tensors_.data()) && before(&info, tensors_.data() + tensors_.size());
    Q4TP_CHECK(ours, path_.string() << ": tensor '" << info.name << "' is not an entry of this file");
    return {map_ + data_offset_ + info.begin, static_cast<std::size_t>(info.nbytes())};
}

std::span<const std::byte> SafetensorsFile::checked(std::string_view name,
                                                    DType dtype,
                                                    const std::vector<std::int64_t>& shape) const {
    return checked(require(name), dtype, shape);
}

std::span<const std::byte> SafetensorsFile::checked(const TensorInfo& info,
                                                    DType dtype,
                                                    const std::vector<std::int64_t>& shape) const {
    const std::string where = path_.string() + ": tensor '" + info.name + "'";
    Q4TP_CHECK(info.dtype.has_value(), where << " has dtype " << info.dtype_name
                                             << ", which q4tp does not support; expected " << to_string(dtype));
    Q4TP_CHECK(*info.dtype == dtype, where << " has dtype " << info.dtype_name << ", expected " << to_string(dtype));
    Q4TP_CHECK(info.shape == shape,
               where << " has shape " << shape_to_string(info.shape) << ", expected " << shape_to_string(shape));
    return data(info);
}

}  // namespace q4tp::loaders
