//! config.json reader. Absent keys take transformers' LlamaConfig defaults (T3), as HF does; unlike HF, wrong
//! types and inconsistent sizes are refused here with the key named, instead of failing later in model setup.
#include "loaders/config_json.h"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <system_error>
#include <utility>

#include "core/base/error.h"

namespace q4tp::loaders {
namespace {

using Json = nlohmann::json;

// Sizes end up as int32 kernel indices and in products such as heads * head_dim; larger is not a Llama.
constexpr std::int64_t kMaxSize = std::numeric_limits<std::int32_t>::max();

// A short rendering of a JSON value for messages, so that a huge bogus value cannot flood the log line.
std::string describe(const Json& value) {
    std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
    if (text.size() > 40) text = text.substr(0, 37) + "...";
    return std::string(value.type_name()) + " " + text;
}

// Typed access to the keys of one JSON object. A null value counts as absent, because HF's config classes
// replace None with the default. Errors name the file, the dotted key path and the expected type.
class Fields {
public:
    Fields(const Json& object, const std::string& source, std::string prefix)
        : object_(object), source_(source), prefix_(std::move(prefix)) {}

    const std::string& source() const { return source_; }
    std::string path(const std::string& key) const { return prefix_ + key; }

    const Json* find(const std::string& key) const {
        const auto it = object_.find(key);
        return it == object_.end() || it->is_null() ? nullptr : &*it;
    }

    std::int64_t as_integer(const Json& value, const std::string& where) const {
        if (value.is_number_unsigned()) {
            const auto u = value.get<std::uint64_t>();
            Q4TP_CHECK(u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                       source_ << ": key '" << where << "' value " << u << " does not fit a 64-bit integer");
            return static_cast<std::int64_t>(u);
        }
        Q4TP_CHECK(value.is_number_integer(),
                   source_ << ": key '" << where << "' must be an integer, got " << describe(value));
        return value.get<std::int64_t>();
    }

    std::optional<std::int64_t> integer(const std::string& key) const {
        const Json* value = find(key);
        if (value == nullptr) return std::nullopt;
        return as_integer(*value, path(key));
    }

    std::optional<double> number(const std::string& key) const {
        const Json* value = find(key);
        if (value == nullptr) return std::nullopt;
        Q4TP_CHECK(value->is_number(),
                   source_ << ": key '" << path(key) << "' must be a number, got " << describe(*value));
        const double result = value->get<double>();
        Q4TP_CHECK(std::isfinite(result), source_ << ": key '" << path(key) << "' must be finite, got " << result);
        return result;
    }

    std::optional<bool> boolean(const std::string& key) const {
        const Json* value = find(key);
        if (value == nullptr) return std::nullopt;
        Q4TP_CHECK(value->is_boolean(),
                   source_ << ": key '" << path(key) << "' must be true or false, got " << describe(*value));
        return value->get<bool>();
    }

    std::optional<std::string> string(const std::string& key) const {
        const Json* value = find(key);
        if (value == nullptr) return std::nullopt;
        Q4TP_CHECK(value->is_string(),
                   source_ << ": key '" << path(key) << "' must be a string, got " << describe(*value));
        return value->get<std::string>();
    }

    const Json* object(const std::string& key) const {
        const Json* value = find(key);
        Q4TP_CHECK(value == nullptr || value->is_object(),
                   source_ << ": key '" << path(key) << "' must be an object, got " << describe(*value));
        return value;
    }

    //! A size key: absent -> fallback; present -> an integer in [1, kMaxSize].
    std::int64_t size(const std::string& key, std::int64_t fallback) const {
        const std::int64_t value = integer(key).value_or(fallback);
        Q4TP_CHECK(value >= 1 && value <= kMaxSize, source_ << ": key '" << path(key)
                                                            << "' must be a positive size in [1, " << kMaxSize
                                                            << "], got " << value);
        return value;
    }

    //! A number that must be > 0: absent -> fallback when optional, an error when required.
    double positive(const std::string& key, bool required, double fallback, const char* why) const {
        const std::optional<double> value = number(key);
        Q4TP_CHECK(value.has_value() || !required, source_ << ": key '" << path(key) << "' is required " << why);
        const double result = value.value_or(fallback);
        Q4TP_CHECK(result > 0.0, source_ << ": key '" << path(key) << "' must be > 0, got " << result);
        return result;
    }

private:
    const Json& object_;
    const std::string& source_;
    std::string prefix_;
};

RopeType parse_rope_type(const std::string& name, const Fields& fields, const std::string& key) {
    if (name == "default") return RopeType::Default;
    if (name == "linear") return RopeType::Linear;
    if (name == "dynamic") return RopeType::Dynamic;
    if (name == "llama3") return RopeType::Llama3;
    if (name == "yarn") return RopeType::Yarn;
    Q4TP_THROW(fields.source() << ": key '" << fields.path(key) << "' names rope type '" << name
                               << "', which is not supported (expected default, linear, dynamic, llama3 or yarn)");
}

struct RopeSection {
    RopeScaling scaling;
    std::optional<double> theta;  // only rope_parameters (transformers v5) carries rope_theta
};

// Parses rope_scaling (v4: type under "rope_type" or the legacy "type", R4.7) or rope_parameters (v5: also
// rope_theta, and rope_type "default" means no scaling).
RopeSection parse_rope(const Json& object, const std::string& source, const std::string& key, bool is_v5) {
    const Fields fields(object, source, key + ".");
    const std::optional<std::string> rope_type = fields.string("rope_type");
    const std::optional<std::string> legacy_type = fields.string("type");
    Q4TP_CHECK(!rope_type || !legacy_type || *rope_type == *legacy_type,
               source << ": keys '" << key << ".rope_type' (\"" << *rope_type << "\") and '" << key << ".type' (\""
                      << *legacy_type << "\") disagree");
    std::string type_name = rope_type ? *rope_type : legacy_type.value_or("");
    if (type_name.empty()) {
        // v5 fills a missing rope_type with "default"; a v4 rope_scaling object without a type is unusable.
        Q4TP_CHECK(is_v5, source << ": key '" << key << "' has neither 'rope_type' nor 'type'");
        type_name = "default";
    }

    RopeSection section;
    if (is_v5) section.theta = fields.number("rope_theta");
    RopeScaling& s = section.scaling;
    s.type = parse_rope_type(type_name, fields, rope_type ? "rope_type" : "type");
    const std::string why = "for rope type " + type_name;
    const std::optional<std::int64_t> original = fields.integer("original_max_position_embeddings");
    if (original) {
        s.original_max_position_embeddings = fields.size("original_max_position_embeddings", 0);
    }
    switch (s.type) {
        case RopeType::Default:
            break;
        case RopeType::Linear:
        case RopeType::Dynamic:
            s.factor = fields.positive("factor", true, 1.0, why.c_str());
            break;
        case RopeType::Llama3:
            s.factor = fields.positive("factor", true, 1.0, why.c_str());
            s.low_freq_factor = fields.positive("low_freq_factor", true, 1.0, why.c_str());
            s.high_freq_factor = fields.positive("high_freq_factor", true, 4.0, why.c_str());
            Q4TP_CHECK(original.has_value(),
                       source << ": key '" << key << ".original_max_position_embeddings' is required " << why);
            // The smoothing ramp divides by (high - low), R4.10.
            Q4TP_CHECK(s.high_freq_factor > s.low_freq_factor,
                       source << ": key '" << key << ".high_freq_factor' (" << s.high_freq_factor
                              << ") must be greater than low_freq_factor (" << s.low_freq_factor << ")");
            break;
        case RopeType::Yarn: {
            s.factor = fields.positive("factor", true, 1.0, why.c_str());
            s.beta_fast = fields.positive("beta_fast", false, 32.0, why.c_str());
            s.beta_slow = fields.positive("beta_slow", false, 1.0, why.c_str());
            const bool explicit_attention = fields.find("attention_factor") != nullptr;
            if (explicit_attention) s.attention_factor = fields.positive("attention_factor", false, 0.0, why.c_str());
            // Newer transformers variants (R4.11 DISAGREE) change the math through these keys; refuse rather than
            // silently compute different frequencies.
            Q4TP_CHECK(fields.boolean("truncate").value_or(true),
                       source << ": key '" << key << ".truncate' false is not supported (only the floor/ceil "
                              << "correction range of transformers' default yarn is implemented)");
            const double mscale = fields.number("mscale").value_or(0.0);
            const double mscale_all_dim = fields.number("mscale_all_dim").value_or(0.0);
            Q4TP_CHECK(explicit_attention || mscale == 0.0 || mscale_all_dim == 0.0,
                       source << ": key '" << key << "' sets mscale and mscale_all_dim, which is not supported "
                              << "(give attention_factor explicitly instead)");
            break;
        }
    }
    return section;
}

bool same_scaling(const RopeScaling& a, const RopeScaling& b) {
    return a.type == b.type && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
           a.high_freq_factor == b.high_freq_factor &&
           a.original_max_position_embeddings == b.original_max_position_embeddings &&
           a.attention_factor == b.attention_factor && a.beta_fast == b.beta_fast && a.beta_slow == b.beta_slow;
}

void check_token_id(const std::string& source, const std::string& key, std::int64_t id, std::int64_t vocab_size) {
    Q4TP_CHECK(id >= 0 && id < vocab_size,
               source << ": key '" << key << "' is " << id << ", outside the vocabulary [0, " << vocab_size << ")");
}

ModelConfig model_config_from_json(const Json& root, const std::string& source) {
    Q4TP_CHECK(root.is_object(), source << ": expected a JSON object at the top level, got " << root.type_name());
    const Fields fields(root, source, "");
    ModelConfig c;

    c.model_type = fields.string("model_type").value_or("llama");
    Q4TP_CHECK(c.model_type == "llama",
               source << ": model_type '" << c.model_type << "' is not supported (only 'llama' checkpoints load)");
    c.hidden_act = fields.string("hidden_act").value_or("silu");
    Q4TP_CHECK(c.hidden_act == "silu", source
                                           << ": hidden_act '" << c.hidden_act
                                           << "' is not supported (the Llama MLP here is SiLU-gated: expected 'silu')");

    c.hidden_size = fields.size("hidden_size", c.hidden_size);
    c.intermediate_size = fields.size("intermediate_size", c.intermediate_size);
    c.num_hidden_layers = fields.size("num_hidden_layers", c.num_hidden_layers);
    c.num_attention_heads = fields.size("num_attention_heads", c.num_attention_heads);
    c.num_key_value_heads = fields.size("num_key_value_heads", c.num_attention_heads);
    Q4TP_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
               source << ": num_attention_heads " << c.num_attention_heads
                      << " is not a multiple of num_key_value_heads " << c.num_key_value_heads
                      << " (each kv head must serve a whole number of query heads)");
    if (fields.find("head_dim") != nullptr) {
        c.head_dim = fields.size("head_dim", 0);
    } else {
        Q4TP_CHECK(c.hidden_size % c.num_attention_heads == 0,
                   source << ": hidden_size " << c.hidden_size << " is not divisible by num_attention_heads "
                          << c.num_attention_heads << " and no head_dim is given");
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    Q4TP_CHECK(c.head_dim % 2 == 0,
               source << ": head_dim " << c.head_dim << " is odd, but RoPE rotates pairs (i, i + head_dim/2)");
    c.max_position_embeddings = fields.size("max_position_embeddings", c.max_position_embeddings);
    c.vocab_size = fields.size("vocab_size", c.vocab_size);

    c.rms_norm_eps = fields.positive("rms_norm_eps", false, 1e-6, "");

    std::optional<RopeSection> v4_rope;
    std::optional<RopeSection> v5_rope;
    if (const Json* rope_scaling = fields.object("rope_scaling")) {
        v4_rope = parse_rope(*rope_scaling, source, "rope_scaling", false);
    }
    if (const Json* rope_parameters = fields.object("rope_parameters")) {
        v5_rope = parse_rope(*rope_parameters, source, "rope_parameters", true);
    }
    Q4TP_CHECK(!v4_rope || !v5_rope || same_scaling(v4_rope->scaling, v5_rope->scaling),
               source << ": rope_scaling (" << to_string(v4_rope->scaling.type) << ") and rope_parameters ("
                      << to_string(v5_rope->scaling.type) << ") describe different rope scalings");
    if (v5_rope) {
        c.rope_scaling = v5_rope->scaling;
    } else if (v4_rope) {
        c.rope_scaling = v4_rope->scaling;
    }
    const std::optional<double> top_theta = fields.number("rope_theta");
    if (v5_rope && v5_rope->theta) {
        Q4TP_CHECK(!top_theta || *top_theta == *v5_rope->theta, source << ": rope_theta " << *top_theta
                                                                       << " and rope_parameters.rope_theta "
                                                                       << *v5_rope->theta << " disagree");
        c.rope_theta = *v5_rope->theta;
    } else {
        c.rope_theta = top_theta.value_or(c.rope_theta);
    }
    Q4TP_CHECK(c.rope_theta > 0.0, source << ": key 'rope_theta' must be > 0, got " << c.rope_theta);

    c.tie_word_embeddings = fields.boolean("tie_word_embeddings").value_or(false);
    c.attention_bias = fields.boolean("attention_bias").value_or(false);
    c.mlp_bias = fields.boolean("mlp_bias").value_or(false);

    c.bos_token_id = fields.integer("bos_token_id").value_or(c.bos_token_id);
    check_token_id(source, "bos_token_id", c.bos_token_id, c.vocab_size);
    if (const Json* eos = fields.find("eos_token_id")) {
        c.eos_token_ids.clear();
        if (eos->is_array()) {
            Q4TP_CHECK(!eos->empty(), source << ": key 'eos_token_id' is an empty list (expected an integer or a "
                                             << "non-empty list of integers)");
            for (std::size_t i = 0; i < eos->size(); ++i) {
                c.eos_token_ids.push_back(fields.as_integer((*eos)[i], "eos_token_id[" + std::to_string(i) + "]"));
            }
        } else {
            c.eos_token_ids.push_back(fields.as_integer(*eos, "eos_token_id"));
        }
    }
    for (std::int64_t id : c.eos_token_ids) check_token_id(source, "eos_token_id", id, c.vocab_size);

    // transformers >= 4.56 writes "dtype" where older versions wrote "torch_dtype".
    if (auto dtype = fields.string("torch_dtype")) {
        c.torch_dtype = *dtype;
    } else if (auto new_dtype = fields.string("dtype")) {
        c.torch_dtype = *new_dtype;
    }
    return c;
}

std::string read_text_file(const std::filesystem::path& path) {
    std::error_code ec;
    Q4TP_CHECK(std::filesystem::is_regular_file(path, ec), path.string()
                                                               << ": cannot read config: not an existing regular file");
    std::ifstream in(path, std::ios::binary);
    Q4TP_CHECK(in.is_open(), path.string() << ": cannot open config file for reading");
    std::ostringstream text;
    text << in.rdbuf();
    Q4TP_CHECK(!in.bad(), path.string() << ": read error");
    return text.str();
}

}  // namespace

ModelConfig parse_model_config(std::string_view json_text, const std::string& source_name) {
    Json root;
    try {
        root = Json::parse(json_text);
    } catch (const Json::exception& e) {
        Q4TP_THROW(source_name << ": malformed JSON: " << e.what());
    }
    return model_config_from_json(root, source_name);
}

ModelConfig load_model_config(const std::filesystem::path& config_json_path) {
    return parse_model_config(read_text_file(config_json_path), config_json_path.string());
}

}  // namespace q4tp::loaders
