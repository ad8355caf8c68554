//! Quantization config reader. Normalizes the way AutoGPTQ's BaseQuantizeConfig.from_pretrained does (A4,
//! R2.23) and then refuses, with the reason, every layout that our 4-bit GPTQ kernels cannot run.
#include "loaders/quant_config.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <system_error>
#include <utility>

#include "core/base/error.h"
#include "core/base/logging.h"

namespace q4tp::loaders {
namespace {

using Json = nlohmann::json;

namespace fs = std::filesystem;

constexpr const char* kQuantizeConfigName = "quantize_config.json";
constexpr const char* kQuantConfigName = "quant_config.json";
constexpr const char* kConfigName = "config.json";

std::string describe(const Json& value) {
    std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return std::string(value.type_name()) + " " + text;
}

std::string lower(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char ch) { return std::tolower(ch); });
    return text;
}

// Maps an AutoAWQ spelling onto the GPTQ field it means (A4 QUANT_CONFIG_ARG_SYNONYMS).
std::string canonical_key(const std::string& raw_key) {
    std::string key = lower(raw_key);
    if (key == "w_bit") return "bits";
    if (key == "q_group_size") return "group_size";
    return key;
}

// The config with canonical keys. Each entry remembers the key as written, for messages. Null values count as
// absent (AutoGPTQ writes "model_name_or_path": null and the like).
class NormalizedConfig {
public:
    NormalizedConfig(const Json& raw, std::string source) : source_(std::move(source)) {
        Q4TP_CHECK(raw.is_object(), source_ << ": expected a JSON object, got " << raw.type_name());
        for (const auto& [raw_key, value] : raw.items()) {
            if (value.is_null()) continue;
            const std::string key = canonical_key(raw_key);
            const auto [it, inserted] = entries_.try_emplace(key, raw_key, value);
            Q4TP_CHECK(inserted || it->second.second == value,
                       source_ << ": keys '" << it->second.first << "' and '" << raw_key << "' both set " << key
                               << " but disagree (" << describe(it->second.second) << " vs " << describe(value) << ")");
        }
    }

    const std::string& source() const { return source_; }

    const Json* find(const std::string& key) const {
        const auto it = entries_.find(key);
        return it == entries_.end() ? nullptr : &it->second.second;
    }

    std::string spelled(const std::string& key) const {
        const auto it = entries_.find(key);
        return it == entries_.end() ? key : it->second.first;
    }

    std::optional<std::int64_t> integer(const std::string& key) const {
        const Json* value = find(key);
        if (value == nullptr) return std::nullopt;
        const bool fits =
            value->is_number_integer() &&
            (!value->is_number_unsigned() || value->get<std::uint64_t>() <= static_cast<std::uint64_t>(kMaxInt));
        Q4TP_CHECK(fits, source_ << ": key '" << spelled(key) << "' must be an integer in [" << -kMaxInt << ", "
                                 << kMaxInt << "], got " << describe(*value));
        const auto result = value->get<std::int64_t>();
        Q4TP_CHECK(result >= -kMaxInt && result <= kMaxInt, source_ << ": key '" << spelled(key)
                                                                    << "' must be an integer in [" << -kMaxInt << ", "
                                                                    << kMaxInt << "], got " << result);
        return result;
    }

    std::optional<bool> boolean(const std::string& key) const {
        const Json* value = find(key);
        if (value == nullptr) return std::nullopt;
        Q4TP_CHECK(value->is_boolean(),
                   source_ << ": key '" << spelled(key) << "' must be true or false, got " << describe(*value));
        return value->get<bool>();
    }

    std::optional<std::string> string(const std::string& key) const {
        const Json* value = find(key);
        if (value == nullptr) return std::nullopt;
        Q4TP_CHECK(value->is_string(),
                   source_ << ": key '" << spelled(key) << "' must be a string, got " << describe(*value));
        return value->get<std::string>();
    }

private:
    // group_size and bits become int-sized kernel parameters.
    static constexpr std::int64_t kMaxInt = std::numeric_limits<std::int32_t>::max();

    std::string source_;
    std::map<std::string, std::pair<std::string, Json>> entries_;  // canonical key -> (key as written, value)
};

bool is_awq_format(const std::string& format) {
    return format == "gemm" || format == "gemv" || format == "gemv_fast";
}

// The zero-point storage convention from checkpoint_format / format (R2.22: AutoGPTQ writes the first,
// GPTQModel and HF the second), refusing Marlin and AWQ layouts.
ZeroFormat zero_format_of(const NormalizedConfig& config) {
    const std::string& source = config.source();
    const std::optional<std::string> checkpoint_format = config.string("checkpoint_format");
    const std::optional<std::string> format = config.string("format");
    Q4TP_CHECK(!checkpoint_format || !format || lower(*checkpoint_format) == lower(*format),
               source << ": keys '" << config.spelled("checkpoint_format") << "' (\"" << *checkpoint_format
                      << "\") and '" << config.spelled("format") << "' (\"" << *format << "\") disagree");
    if (!checkpoint_format && !format) return ZeroFormat::GptqV1;  // A4: absent means "gptq"
    const std::string key = config.spelled(checkpoint_format ? "checkpoint_format" : "format");
    const std::string value = lower(checkpoint_format ? *checkpoint_format : *format);
    if (value == "gptq") return ZeroFormat::GptqV1;
    if (value == "gptq_v2") return ZeroFormat::GptqV2;
    Q4TP_CHECK(value != "marlin", source << ": " << key << " \"marlin\": the Marlin layout is not supported "
                                         << "(q4tp reads plain GPTQ qweight/qzeros/scales/g_idx tensors)");
    Q4TP_CHECK(!is_awq_format(value), source << ": " << key << " \"" << value << "\" is an AWQ layout, which is not "
                                             << "supported (q4tp reads GPTQ checkpoints only)");
    Q4TP_THROW(source << ": " << key << " \"" << value << "\" is not supported (expected \"gptq\" or \"gptq_v2\")");
}

// Refuses configs of other quantizers before their GPTQ-looking fields (bits, group_size) are trusted.
void refuse_other_methods(const NormalizedConfig& config) {
    const std::string& source = config.source();
    if (const auto method = config.string("quant_method")) {
        const std::string value = lower(*method);
        Q4TP_CHECK(value != "marlin", source << ": quant_method \"marlin\": the Marlin layout is not supported "
                                             << "(q4tp reads plain GPTQ qweight/qzeros/scales/g_idx tensors)");
        Q4TP_CHECK(
            value != "awq",
            source << ": quant_method \"awq\": the AWQ layout is not supported (q4tp reads GPTQ checkpoints only)");
        Q4TP_CHECK(value == "gptq",
                   source << ": quant_method \"" << *method << "\" is not GPTQ, so it is not supported");
    }
    Q4TP_CHECK(!config.boolean("is_marlin_format").value_or(false),
               source << ": is_marlin_format is true: the Marlin layout is not supported (q4tp reads plain GPTQ "
                      << "qweight/qzeros/scales/g_idx tensors)");
    // AutoAWQ's own quant_config.json says {"zero_point", "q_group_size", "w_bit", "version": "GEMM"}: the
    // aliases above would otherwise make it look like a GPTQ config.
    if (const Json* version = config.find("version"); version != nullptr && version->is_string()) {
        const std::string value = lower(version->get<std::string>());
        Q4TP_CHECK(!is_awq_format(value), source << ": version \"" << value << "\" is an AWQ layout, which is not "
                                                 << "supported (q4tp reads GPTQ checkpoints only)");
    }
    Q4TP_CHECK(config.find("zero_point") == nullptr,
               source << ": key 'zero_point' marks an AutoAWQ config; the AWQ layout is not supported");
}

QuantConfig quant_config_from_json(const Json& raw, const std::string& source, const std::string& source_file) {
    const NormalizedConfig config(raw, source);
    refuse_other_methods(config);

    QuantConfig q;
    q.zero_format = zero_format_of(config);

    const std::optional<std::int64_t> bits = config.integer("bits");
    Q4TP_CHECK(bits.has_value(), source << ": no 'bits' (or 'w_bit') key: the bit width must be stated");
    Q4TP_CHECK(*bits == 4, source << ": bits " << *bits << " is not supported: only 4-bit GPTQ kernels exist");
    q.bits = 4;

    const std::optional<std::int64_t> group_size = config.integer("group_size");
    Q4TP_CHECK(group_size.has_value(),
               source << ": no 'group_size' (or 'q_group_size') key: the quantization group size must be stated");
    Q4TP_CHECK(*group_size == -1 || *group_size > 0,
               source << ": group_size " << *group_size
                      << " is invalid (expected -1 for one group over all input rows, or a positive size)");
    q.group_size = *group_size;

    if (const std::optional<bool> sym = config.boolean("sym")) {
        q.sym = *sym;
        q.sym_was_specified = true;
    } else {
        q.sym = true;
        q.sym_was_specified = false;
        Q4TP_LOG_WARN(source << ": no 'sym' key; assuming symmetric quantization (sym=true) as AutoGPTQ does");
    }
    q.desc_act = config.boolean("desc_act").value_or(false);
    q.model_file_base_name = config.string("model_file_base_name").value_or("");

    // GPTQModel extensions that change which tensors exist or how words are packed; nothing here models them.
    Q4TP_CHECK(!config.boolean("lm_head").value_or(false),
               source << ": lm_head is true (a quantized lm_head), which is not supported (lm_head must be fp16)");
    if (const Json* dynamic = config.find("dynamic")) {
        Q4TP_CHECK(dynamic->is_object() && dynamic->empty(),
                   source << ": key 'dynamic' (per-module bits/group_size overrides) is not supported, got "
                          << describe(*dynamic));
    }
    if (const auto pack_dtype = config.string("pack_dtype")) {
        Q4TP_CHECK(lower(*pack_dtype) == "int32",
                   source << ": pack_dtype \"" << *pack_dtype << "\" is not supported (expected int32 words, R2.3)");
    }
    q.source_file = source_file;
    return q;
}

Json parse_json(std::string_view text, const std::string& source) {
    try {
        return Json::parse(text);
    } catch (const Json::exception& e) {
        Q4TP_THROW(source << ": malformed JSON: " << e.what());
    }
}

std::string read_text_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    Q4TP_CHECK(in.is_open(), path.string() << ": cannot open file for reading");
    std::ostringstream text;
    text << in.rdbuf();
    Q4TP_CHECK(!in.bad(), path.string() << ": read error");
    return text.str();
}

bool is_file(const fs::path& path) {
    std::error_code ec;
    return fs::is_regular_file(path, ec);
}

}  // namespace

QuantConfig parse_quant_config(std::string_view json_text, const std::string& source_name) {
    return quant_config_from_json(parse_json(json_text, source_name), source_name, source_name);
}

QuantConfig load_quant_config(const fs::path& model_dir) {
    std::error_code ec;
    Q4TP_CHECK(fs::is_directory(model_dir, ec),
               model_dir.string() << ": not a directory (expected a model directory holding the quantization config)");
    for (const char* name : {kQuantizeConfigName, kQuantConfigName}) {
        const fs::path path = model_dir / name;
        if (is_file(path)) return parse_quant_config(read_text_file(path), path.string());
    }
    const fs::path config_path = model_dir / kConfigName;
    if (is_file(config_path)) {
        const std::string source = config_path.string();
        const Json root = parse_json(read_text_file(config_path), source);
        Q4TP_CHECK(root.is_object(), source << ": expected a JSON object at the top level, got " << root.type_name());
        const auto it = root.find("quantization_config");
        if (it != root.end() && !it->is_null()) {
            return quant_config_from_json(*it, source + " [quantization_config]", source);
        }
    }
    Q4TP_THROW(model_dir.string() << ": no quantization config found, so this is not a GPTQ checkpoint (looked for "
                                  << kQuantizeConfigName << ", " << kQuantConfigName << " and a \"quantization_config\""
                                  << " object in " << kConfigName << ")");
}

}  // namespace q4tp::loaders
