// Checkpoint discovery and the cross-file checks of docs/formats.md R1.11-R1.13. Each shard is an
// independently validated SafetensorsFile; this file adds what only the set can tell: a tensor in
// two shards, an index pointing at the wrong or a missing shard, tensors the index forgot.
#include "loaders/checkpoint.h"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <unordered_set>

#include "core/base/logging.h"

namespace q4tp::loaders {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr std::string_view kShardSuffix = ".safetensors";
constexpr std::string_view kIndexSuffix = ".safetensors.index.json";

bool ends_with(std::string_view text, std::string_view suffix) {
    return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

bool is_file(const fs::path& path) {
    std::error_code ec;
    return fs::is_regular_file(path, ec);
}

std::string read_text_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    Q4TP_CHECK(in.is_open(), path.string() << ": cannot open checkpoint index for reading");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Q4TP_CHECK(!in.bad(), path.string() << ": read error");
    return text;
}

// Parses index.json; a tensor listed twice in weight_map (which nlohmann would collapse silently)
// is reported as the first repeated key directly inside "weight_map".
Json parse_index(const fs::path& index_path, std::optional<std::string>* duplicate) {
    const std::string text = read_text_file(index_path);
    int depth = 0;
    bool in_weight_map = false;
    std::string last_key;
    std::unordered_set<std::string> seen;
    auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
        if (event == Json::parse_event_t::object_start) {
            ++depth;
            if (depth == 2 && last_key == "weight_map") in_weight_map = true;
        } else if (event == Json::parse_event_t::object_end) {
            if (depth == 2) in_weight_map = false;
            --depth;
        } else if (event == Json::parse_event_t::key) {
            last_key = parsed.get<std::string>();
            if (in_weight_map && depth == 2 && !seen.insert(last_key).second && !duplicate->has_value()) {
                *duplicate = last_key;
            }
        }
        return true;
    };
    try {
        return Json::parse(text, callback, /*allow_exceptions=*/true);
    } catch (const Json::exception& e) {
        Q4TP_THROW(index_path.string() << ": not a valid checkpoint index (malformed JSON): " << e.what());
    }
}

// Shard names come from a file we did not write: keep them inside the model directory.
void check_shard_name(const fs::path& index_path, const std::string& tensor, const std::string& shard) {
    const fs::path relative(shard);
    bool escapes = shard.empty() || relative.is_absolute();
    for (const fs::path& part : relative) escapes = escapes || part == "..";
    Q4TP_CHECK(!escapes, index_path.string() << ": weight_map entry for tensor '" << tensor << "' names shard '"
                                             << shard << "', expected a file name inside the model directory");
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir, const std::string& model_file_base_name) {
    const std::string where = dir.string();
    std::error_code ec;
    Q4TP_CHECK(fs::exists(dir, ec), where << ": checkpoint directory does not exist");
    Q4TP_CHECK(fs::is_directory(dir, ec),
               where << ": not a directory, expected a model directory of safetensors files");

    // R1.13: a named base first (AutoGPTQ's model_basename), then the Hugging Face default.
    std::vector<std::string> bases;
    if (!model_file_base_name.empty()) bases.push_back(model_file_base_name);
    if (model_file_base_name != "model") bases.emplace_back("model");
    std::vector<std::string> looked_for;
    const auto warn_fallback = [&](const std::string& used) {
        if (model_file_base_name.empty()) return;
        Q4TP_LOG_WARN(where << ": no " << model_file_base_name << kShardSuffix << "[.index.json]; using " << used
                            << " instead");
    };
    for (const std::string& base : bases) {
        const fs::path index = dir / (base + std::string(kIndexSuffix));
        const fs::path single = dir / (base + std::string(kShardSuffix));
        if (is_file(index) || is_file(single)) {
            if (base != model_file_base_name) warn_fallback(base + std::string(kShardSuffix));
            return is_file(index) ? from_index(dir, index) : from_files(dir, single.filename().string(), {single});
        }
        looked_for.push_back(index.filename().string());
        looked_for.push_back(single.filename().string());
    }

    // No conventional name: the one index of the directory, else every shard (exllamav2-style glob).
    std::vector<fs::path> indexes;
    std::vector<fs::path> shards;
    try {
        for (const fs::directory_entry& entry : fs::directory_iterator(dir)) {
            const std::string name = entry.path().filename().string();
            if (!is_file(entry.path())) continue;
            if (ends_with(name, kIndexSuffix)) indexes.push_back(entry.path());
            if (ends_with(name, kShardSuffix)) shards.push_back(entry.path());
        }
    } catch (const fs::filesystem_error& e) {
        Q4TP_THROW(where << ": cannot list the checkpoint directory: " << e.code().message());
    }
    std::sort(indexes.begin(), indexes.end());
    std::sort(shards.begin(), shards.end());
    if (indexes.size() > 1) {
        std::ostringstream names;
        for (const fs::path& index : indexes) {
            names << (&index == &indexes.front() ? "" : ", ") << index.filename().string();
        }
        Q4TP_THROW(where << ": " << indexes.size() << " checkpoint indexes (" << names.str()
                         << "); pass the model file base name to pick one");
    }
    if (indexes.size() == 1) {
        warn_fallback(indexes.front().filename().string());
        return from_index(dir, indexes.front());
    }
    if (!shards.empty()) {
        warn_fallback("all *.safetensors files");
        return from_files(dir, "*.safetensors (" + std::to_string(shards.size()) + " files)", shards);
    }
    std::ostringstream looked;
    for (const std::string& name : looked_for) looked << name << ", ";
    Q4TP_THROW(where << ": no safetensors checkpoint found (looked for " << looked.str()
                     << "*.safetensors.index.json, *.safetensors)");
}

Checkpoint Checkpoint::from_files(const fs::path& dir, std::string source, const std::vector<fs::path>& paths) {
    Checkpoint ckpt;
    ckpt.directory_ = dir;
    ckpt.source_ = std::move(source);
    ckpt.files_.reserve(paths.size());
    for (const fs::path& path : paths) ckpt.files_.push_back(SafetensorsFile::open(path));
    for (std::size_t f = 0; f < ckpt.files_.size(); ++f) {
        const std::vector<TensorInfo>& tensors = ckpt.files_[f].tensors();
        for (std::size_t t = 0; t < tensors.size(); ++t) {
            const auto [it, inserted] = ckpt.index_.emplace(tensors[t].name, Location{f, t});
            Q4TP_CHECK(inserted, dir.string() << ": tensor '" << tensors[t].name << "' is in two shards, "
                                              << ckpt.files_[it->second.file].path().filename().string() << " and "
                                              << ckpt.files_[f].path().filename().string());
            ckpt.total_tensor_bytes_ += tensors[t].nbytes();
        }
    }
    Q4TP_LOG_DEBUG(dir.string() << ": checkpoint " << ckpt.source_ << ", " << ckpt.index_.size() << " tensors in "
                                << ckpt.files_.size() << " files");
    return ckpt;
}

Checkpoint Checkpoint::from_index(const fs::path& dir, const fs::path& index_path) {
    const std::string where = index_path.string();
    std::optional<std::string> duplicate;
    const Json root = parse_index(index_path, &duplicate);
    Q4TP_CHECK(root.is_object() && root.contains("weight_map") && root.at("weight_map").is_object(),
               where << ": checkpoint index must be a JSON object with a \"weight_map\" object (R1.11)");
    Q4TP_CHECK(!duplicate, where << ": tensor '" << *duplicate << "' is listed twice in weight_map");
    Q4TP_CHECK(!root.at("weight_map").empty(), where << ": weight_map is empty, expected tensor -> shard entries");

    // R1.11: shard list = sorted(set(weight_map.values())).
    std::map<std::string, std::string> weight_map;
    std::map<std::string, std::string> first_tensor_of_shard;
    for (const auto& [tensor, shard] : root.at("weight_map").items()) {
        Q4TP_CHECK(shard.is_string(), where << ": weight_map entry for tensor '" << tensor
                                            << "' must be a shard file name string, got " << shard.type_name());
        const std::string shard_name = shard.get<std::string>();
        check_shard_name(index_path, tensor, shard_name);
        weight_map.emplace(tensor, shard_name);
        first_tensor_of_shard.emplace(shard_name, tensor);
    }
    std::vector<fs::path> paths;
    for (const auto& [shard, tensor] : first_tensor_of_shard) {
        const fs::path path = dir / shard;
        Q4TP_CHECK(is_file(path), where << ": shard '" << shard << "' (listed for tensor '" << tensor
                                        << "') does not exist in " << dir.string());
        paths.push_back(path);
    }

    Checkpoint ckpt = from_files(dir, index_path.filename().string(), paths);

    // R1.12: every listed tensor is in the shard the index names.
    // files_ follows first_tensor_of_shard's (sorted) order, so shard names map to consecutive indices.
    std::map<std::string, std::size_t> file_of_shard;
    for (const auto& entry : first_tensor_of_shard) file_of_shard.emplace(entry.first, file_of_shard.size());
    for (const auto& [tensor, shard] : weight_map) {
        const auto it = ckpt.index_.find(tensor);
        Q4TP_CHECK(it != ckpt.index_.end(), where << ": weight_map puts tensor '" << tensor << "' in shard '" << shard
                                                  << "' but that shard's header has no such tensor");
        Q4TP_CHECK(it->second.file == file_of_shard.at(shard),
                   where << ": weight_map puts tensor '" << tensor << "' in shard '" << shard << "' but it is in '"
                         << ckpt.files_[it->second.file].path().filename().string() << "'");
    }
    // Tensors the index forgot still load (the file is the truth); tell the user the index is stale.
    if (ckpt.index_.size() > weight_map.size()) {
        std::vector<std::string> unlisted;
        for (const auto& [name, location] : ckpt.index_) {
            if (!weight_map.contains(name)) unlisted.push_back(name);
        }
        std::sort(unlisted.begin(), unlisted.end());
        Q4TP_LOG_WARN(where << ": " << unlisted.size() << " tensors in the shards are missing from weight_map (first: '"
                            << unlisted.front() << "' in "
                            << ckpt.find(unlisted.front()).file->path().filename().string()
                            << "); loading them anyway");
    }
    return ckpt;
}

TensorRef Checkpoint::find(std::string_view name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) return {};
    const SafetensorsFile& file = files_[it->second.file];
    return {&file, &file.tensors()[it->second.tensor]};
}

TensorRef Checkpoint::require(std::string_view name) const {
    const TensorRef ref = find(name);
    Q4TP_CHECK(ref, directory_.string() << ": tensor '" << name << "' not found in checkpoint " << source_ << " ("
                                        << index_.size() << " tensors in " << files_.size() << " files)");
    return ref;
}

std::vector<std::string> Checkpoint::tensor_names() const {
    std::vector<std::string> names;
    names.reserve(index_.size());
    for (const auto& [name, location] : index_) names.push_back(name);
    std::sort(names.begin(), names.end());
    return names;
}

std::span<const std::byte> Checkpoint::checked(std::string_view name,
                                               DType dtype,
                                               const std::vector<std::int64_t>& shape) const {
    const TensorRef ref = require(name);
    return ref.file->checked(*ref.info, dtype, shape);
}

}  // namespace q4tp::loaders
