// Safetensors writer. Layout choices follow the official writer (docs/formats.md R1.7, S1 prepare):
// tensors sorted by descending element size then name, header padded with spaces to a multiple of 8,
// so every tensor's file offset is divisible by its element size and readers may cast in place.
#include "loaders/safetensors_writer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "loaders/safetensors.h"

namespace q4tp::loaders {
namespace {

using OrderedJson = nlohmann::ordered_json;

std::uint64_t checked_nbytes(const std::string& where, const SafetensorsEntry& entry) {
    const int bits = safetensors_dtype_bits(entry.dtype_name);
    Q4TP_CHECK(bits > 0, where << ": tensor '" << entry.name << "': unknown dtype '" << entry.dtype_name << "'");
    std::uint64_t total_bits = static_cast<std::uint64_t>(bits);
    for (std::int64_t dim : entry.shape) {
        Q4TP_CHECK(dim >= 0, where << ": tensor '" << entry.name << "': negative dimension in shape "
                                   << shape_to_string(entry.shape));
        Q4TP_CHECK(
            !__builtin_mul_overflow(total_bits, static_cast<std::uint64_t>(dim), &total_bits),
            where << ": tensor '" << entry.name << "': shape " << shape_to_string(entry.shape) << " overflows 64 bits");
    }
    Q4TP_CHECK(total_bits % 8 == 0, where << ": tensor '" << entry.name << "': dtype " << entry.dtype_name << " shape "
                                          << shape_to_string(entry.shape) << " holds " << total_bits
                                          << " bits, not a whole number of bytes (misaligned)");
    return total_bits / 8;
}

void write_all(std::ofstream& out, const void* data, std::size_t size) {
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

}  // namespace

void write_safetensors(const std::filesystem::path& path,
                       std::vector<SafetensorsEntry> entries,
                       const std::map<std::string, std::string>& metadata) {
    const std::string where = path.string();
    std::set<std::string_view> names;
    for (const SafetensorsEntry& entry : entries) {
        Q4TP_CHECK(!entry.name.empty() && entry.name != "__metadata__",
                   where << ": tensor name '" << entry.name << "' is reserved or empty");
        Q4TP_CHECK(names.insert(entry.name).second, where << ": tensor '" << entry.name << "' given twice");
        const std::uint64_t needed = checked_nbytes(where, entry);
        Q4TP_CHECK(entry.bytes.size() == needed, where << ": tensor '" << entry.name << "' has " << entry.bytes.size()
                                                       << " bytes but dtype " << entry.dtype_name << " shape "
                                                       << shape_to_string(entry.shape) << " needs " << needed);
    }
    std::sort(entries.begin(), entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
        const int bits_a = safetensors_dtype_bits(a.dtype_name);
        const int bits_b = safetensors_dtype_bits(b.dtype_name);
        return bits_a != bits_b ? bits_a > bits_b : a.name < b.name;
    });

    // Key order of the JSON mirrors the data order (as the official writer does); readers must not rely on it.
    OrderedJson header = OrderedJson::object();
    if (!metadata.empty()) {
        OrderedJson meta = OrderedJson::object();
        for (const auto& [key, value] : metadata) meta[key] = value;
        header["__metadata__"] = std::move(meta);
    }
    std::uint64_t offset = 0;
    for (const SafetensorsEntry& entry : entries) {
        const std::uint64_t end = offset + entry.bytes.size();
        header[entry.name] =
            OrderedJson{{"dtype", entry.dtype_name}, {"shape", entry.shape}, {"data_offsets", {offset, end}}};
        offset = end;
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const nlohmann::json::exception& e) {
        Q4TP_THROW(where << ": cannot encode the header (names and metadata must be UTF-8): " << e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    Q4TP_CHECK(text.size() <= kSafetensorsMaxHeaderBytes, where << ": header of " << text.size()
                                                                << " bytes exceeds the " << kSafetensorsMaxHeaderBytes
                                                                << "-byte limit");

    // Written under a temporary name and renamed, so a failed write never leaves a plausible-looking file.
    std::filesystem::path tmp = path;
    tmp += ".partial";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        Q4TP_CHECK(out.is_open(), where << ": cannot open '" << tmp.string() << "' for writing");
        std::array<unsigned char, 8> length{};
        for (std::size_t i = 0; i < length.size(); ++i) {
            length[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(text.size()) >> (8 * i));
        }
        write_all(out, length.data(), length.size());
        write_all(out, text.data(), text.size());
        for (const SafetensorsEntry& entry : entries) write_all(out, entry.bytes.data(), entry.bytes.size());
        out.close();
        if (out.fail()) {
            std::error_code ignored;
            std::filesystem::remove(tmp, ignored);
            Q4TP_THROW(where << ": writing " << 8 + text.size() + offset << " bytes failed");
        }
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    if (ec) {
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        Q4TP_THROW(where << ": cannot rename '" << tmp.string() << "' into place: " << ec.message());
    }
}

}  // namespace q4tp::loaders
