#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "loaders/config_json.h"
#include "loaders/quant_config.h"

namespace q4tp::loaders {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const fs::path kConfigDir = fs::path(Q4TP_TEST_DATA_DIR) / "configs";

// A fresh directory under ::testing::TempDir(), named after the running test, removed afterwards.
class TempDir {
public:
    TempDir() {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        std::random_device rd;
        path_ = fs::path(::testing::TempDir()) / ("q4tp_config_" + std::string(info->test_suite_name()) + "_" +
                                                  info->name() + "_" + std::to_string(rd()));
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    const fs::path& path() const { return path_; }

    fs::path write(const std::string& name, const std::string& text) const {
        const fs::path file = path_ / name;
        std::ofstream out(file, std::ios::binary);
        out << text;
        return file;
    }

private:
    fs::path path_;
};

// Runs fn, which must throw q4tp::Error, and returns the message (the what() minus the location suffix).
std::string error_of(const std::function<void()>& fn) {
    try {
        fn();
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_EQ(what.find('\n'), std::string::npos) << "error message must be one line: " << what;
        return e.message();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "threw a non-q4tp exception: " << e.what();
        return {};
    }
    ADD_FAILURE() << "no q4tp::Error was thrown";
    return {};
}

void expect_contains(const std::string& text, std::initializer_list<const char*> parts) {
    for (const char* part : parts) {
        EXPECT_NE(text.find(part), std::string::npos) << "'" << part << "' missing from: " << text;
    }
}

ModelConfig parse(const Json& json) {
    return parse_model_config(json.dump(), "test.json");
}

std::string model_error(const Json& json) {
    return error_of([&] { parse(json); });
}

std::string quant_error(const Json& json) {
    return error_of([&] { parse_quant_config(json.dump(), "quantize_config.json"); });
}

// ---- config.json -> ModelConfig: public configs ----------------------------------------------------------

TEST(ModelConfigTest, LoadsLlama1_7B_Defaults) {
    const ModelConfig c = load_model_config(kConfigDir / "llama-7b.json");
    EXPECT_EQ(c.model_type, "llama");
    EXPECT_EQ(c.hidden_size, 4096);
    EXPECT_EQ(c.intermediate_size, 11008);
    EXPECT_EQ(c.num_hidden_layers, 32);
    EXPECT_EQ(c.num_attention_heads, 32);
    EXPECT_EQ(c.num_key_value_heads, 32);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
    EXPECT_EQ(c.rope_scaling.type, RopeType::Default);
    EXPECT_EQ(c.max_position_embeddings, 2048);
    EXPECT_EQ(c.vocab_size, 32000);
    EXPECT_FALSE(c.tie_word_embeddings);
    EXPECT_EQ(c.bos_token_id, 1);
    EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{2});
    EXPECT_EQ(c.torch_dtype, "float16");
}

TEST(ModelConfigTest, LoadsLlama2_7B_EpsFromFile) {
    const ModelConfig c = load_model_config(kConfigDir / "llama-2-7b-hf.json");
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
    EXPECT_EQ(c.max_position_embeddings, 4096);
    EXPECT_EQ(c.num_key_value_heads, 32);
    EXPECT_EQ(c.rope_scaling.type, RopeType::Default);  // "rope_scaling": null
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_FALSE(c.attention_bias);
    EXPECT_FALSE(c.mlp_bias);
}

TEST(ModelConfigTest, LoadsLlama2_70B_Gqa) {
    const ModelConfig c = load_model_config(kConfigDir / "llama-2-70b-hf.json");
    EXPECT_EQ(c.hidden_size, 8192);
    EXPECT_EQ(c.intermediate_size, 28672);
    EXPECT_EQ(c.num_hidden_layers, 80);
    EXPECT_EQ(c.num_attention_heads, 64);
    EXPECT_EQ(c.num_key_value_heads, 8);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.q_dim(), 8192);
    EXPECT_EQ(c.kv_dim(), 1024);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
}

TEST(ModelConfigTest, LoadsLlama31_8B_Llama3RopeAndEosList) {
    const ModelConfig c = load_model_config(kConfigDir / "llama-3.1-8b-instruct.json");
    EXPECT_EQ(c.vocab_size, 128256);
    EXPECT_EQ(c.intermediate_size, 14336);
    EXPECT_EQ(c.num_key_value_heads, 8);
    EXPECT_EQ(c.max_position_embeddings, 131072);
    EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
    EXPECT_EQ(c.rope_scaling.type, RopeType::Llama3);
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
    EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
    EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
    EXPECT_EQ(c.bos_token_id, 128000);
    EXPECT_EQ(c.eos_token_ids, (std::vector<std::int64_t>{128001, 128008, 128009}));
    EXPECT_EQ(c.torch_dtype, "bfloat16");
}

// ---- config.json -> ModelConfig: in-memory variants ------------------------------------------------------

TEST(ModelConfigTest, EmptyObject_GetsLlamaConfigDefaults) {
    const ModelConfig c = parse(Json::object());
    EXPECT_EQ(c.hidden_size, 4096);
    EXPECT_EQ(c.intermediate_size, 11008);
    EXPECT_EQ(c.num_hidden_layers, 32);
    EXPECT_EQ(c.num_attention_heads, 32);
    EXPECT_EQ(c.num_key_value_heads, 32);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
    EXPECT_EQ(c.max_position_embeddings, 2048);
    EXPECT_EQ(c.vocab_size, 32000);
    EXPECT_EQ(c.bos_token_id, 1);
    EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{2});
}

TEST(ModelConfigTest, KvHeads_DefaultToAttentionHeads) {
    // Llama-2-13B's shape: 40 heads, no num_key_value_heads key.
    const ModelConfig c = parse({{"hidden_size", 5120}, {"num_attention_heads", 40}});
    EXPECT_EQ(c.num_key_value_heads, 40);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_EQ(c.kv_dim(), 5120);
}

TEST(ModelConfigTest, RandomValidConfigs_RoundTrip) {
    std::mt19937 rng(20240607);
    for (int trial = 0; trial < 200; ++trial) {
        const std::int64_t kv_heads = std::uniform_int_distribution<std::int64_t>(1, 16)(rng);
        const std::int64_t heads = kv_heads * std::uniform_int_distribution<std::int64_t>(1, 8)(rng);
        const std::int64_t head_dim = 2 * std::uniform_int_distribution<std::int64_t>(8, 96)(rng);
        const bool explicit_head_dim = rng() % 2 == 0;
        // Without head_dim, hidden must be a multiple of heads; with it, hidden is free.
        const std::int64_t hidden =
            explicit_head_dim ? std::uniform_int_distribution<std::int64_t>(64, 9000)(rng) : heads * head_dim;
        const std::int64_t vocab = std::uniform_int_distribution<std::int64_t>(300, 200000)(rng);
        const std::int64_t eos = std::uniform_int_distribution<std::int64_t>(0, vocab - 1)(rng);
        const double eps = std::uniform_real_distribution<double>(1e-7, 1e-4)(rng);
        const double theta = std::uniform_real_distribution<double>(1e3, 1e6)(rng);
        Json j = {{"hidden_size", hidden},
                  {"intermediate_size", std::uniform_int_distribution<std::int64_t>(1, 40000)(rng)},
                  {"num_hidden_layers", std::uniform_int_distribution<std::int64_t>(1, 120)(rng)},
                  {"num_attention_heads", heads},
                  {"num_key_value_heads", kv_heads},
                  {"vocab_size", vocab},
                  {"rms_norm_eps", eps},
                  {"rope_theta", theta},
                  {"max_position_embeddings", std::uniform_int_distribution<std::int64_t>(128, 1 << 20)(rng)},
                  {"bos_token_id", vocab - 1},
                  {"eos_token_id", eos}};
        if (explicit_head_dim) j["head_dim"] = head_dim;
        const ModelConfig c = parse(j);
        ASSERT_EQ(c.hidden_size, hidden) << j.dump();
        EXPECT_EQ(c.intermediate_size, j["intermediate_size"].get<std::int64_t>());
        EXPECT_EQ(c.num_hidden_layers, j["num_hidden_layers"].get<std::int64_t>());
        EXPECT_EQ(c.num_attention_heads, heads);
        EXPECT_EQ(c.num_key_value_heads, kv_heads);
        EXPECT_EQ(c.head_dim, head_dim);
        EXPECT_EQ(c.vocab_size, vocab);
        EXPECT_EQ(c.max_position_embeddings, j["max_position_embeddings"].get<std::int64_t>());
        EXPECT_DOUBLE_EQ(c.rms_norm_eps, eps);
        EXPECT_DOUBLE_EQ(c.rope_theta, theta);
        EXPECT_EQ(c.bos_token_id, vocab - 1);
        EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{eos});
    }
}

TEST(ModelConfigTest, RopeScaling_LegacyTypeKey) {
    const ModelConfig c = parse({{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}});
    EXPECT_EQ(c.rope_scaling.type, RopeType::Linear);
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.0);
}

TEST(ModelConfigTest, RopeScaling_Linear) {
    const ModelConfig c = parse({{"rope_scaling", {{"rope_type", "linear"}, {"factor", 4}}}});
    EXPECT_EQ(c.rope_scaling.type, RopeType::Linear);
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
}

TEST(ModelConfigTest, RopeScaling_Dynamic) {
    const ModelConfig c =
        parse({{"max_position_embeddings", 4096}, {"rope_scaling", {{"type", "dynamic"}, {"factor", 3.5}}}});
    EXPECT_EQ(c.rope_scaling.type, RopeType::Dynamic);
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 3.5);
    EXPECT_EQ(c.max_position_embeddings, 4096);
}

TEST(ModelConfigTest, RopeScaling_YarnWithAndWithoutOptionalKeys) {
    const ModelConfig full = parse({{"rope_scaling",
                                     {{"rope_type", "yarn"},
                                      {"factor", 4.0},
                                      {"original_max_position_embeddings", 4096},
                                      {"attention_factor", 1.25},
                                      {"beta_fast", 16.0},
                                      {"beta_slow", 2.0}}}});
    EXPECT_EQ(full.rope_scaling.type, RopeType::Yarn);
    EXPECT_DOUBLE_EQ(full.rope_scaling.factor, 4.0);
    EXPECT_EQ(full.rope_scaling.original_max_position_embeddings, 4096);
    EXPECT_DOUBLE_EQ(full.rope_scaling.attention_factor, 1.25);
    EXPECT_DOUBLE_EQ(full.rope_scaling.beta_fast, 16.0);
    EXPECT_DOUBLE_EQ(full.rope_scaling.beta_slow, 2.0);

    const ModelConfig minimal = parse({{"rope_scaling", {{"type", "yarn"}, {"factor", 2.0}}}});
    EXPECT_EQ(minimal.rope_scaling.type, RopeType::Yarn);
    EXPECT_DOUBLE_EQ(minimal.rope_scaling.attention_factor, 0.0);  // derived later from factor
    EXPECT_DOUBLE_EQ(minimal.rope_scaling.beta_fast, 32.0);
    EXPECT_DOUBLE_EQ(minimal.rope_scaling.beta_slow, 1.0);
    EXPECT_EQ(minimal.rope_scaling.original_max_position_embeddings, 0);
}

TEST(ModelConfigTest, RopeParametersV5_Llama3AndTheta) {
    const ModelConfig c = parse({{"rope_parameters",
                                  {{"rope_type", "llama3"},
                                   {"rope_theta", 500000.0},
                                   {"factor", 8.0},
                                   {"low_freq_factor", 1.0},
                                   {"high_freq_factor", 4.0},
                                   {"original_max_position_embeddings", 8192}}}});
    EXPECT_EQ(c.rope_scaling.type, RopeType::Llama3);
    EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
    EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
}

TEST(ModelConfigTest, RopeParametersV5_DefaultMeansNoScaling) {
    const ModelConfig c = parse({{"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1000000.0}}}});
    EXPECT_EQ(c.rope_scaling.type, RopeType::Default);
    EXPECT_DOUBLE_EQ(c.rope_theta, 1000000.0);
}

TEST(ModelConfigTest, HeadDim_ExplicitOverridesHiddenOverHeads) {
    const ModelConfig c = parse({{"hidden_size", 4096}, {"num_attention_heads", 32}, {"head_dim", 64}});
    EXPECT_EQ(c.head_dim, 64);
    EXPECT_EQ(c.q_dim(), 2048);
    // With head_dim given, hidden need not be a multiple of heads.
    const ModelConfig odd = parse({{"hidden_size", 3000}, {"num_attention_heads", 24}, {"head_dim", 128}});
    EXPECT_EQ(odd.head_dim, 128);
}

TEST(ModelConfigTest, TieWordEmbeddingsAndBiasFlags) {
    const ModelConfig c = parse({{"tie_word_embeddings", true}, {"attention_bias", true}, {"mlp_bias", true}});
    EXPECT_TRUE(c.tie_word_embeddings);
    EXPECT_TRUE(c.attention_bias);
    EXPECT_TRUE(c.mlp_bias);
}

TEST(ModelConfigTest, EosAsInt_StoredAsOneElementList) {
    const ModelConfig c = parse({{"eos_token_id", 31999}, {"bos_token_id", 0}});
    EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{31999});
    EXPECT_EQ(c.bos_token_id, 0);
}

TEST(ModelConfigTest, NullValues_TreatedAsAbsent) {
    const ModelConfig c = parse({{"num_key_value_heads", nullptr}, {"head_dim", nullptr}, {"rope_theta", nullptr}});
    EXPECT_EQ(c.num_key_value_heads, 32);
    EXPECT_EQ(c.head_dim, 128);
    EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
}

// ---- config.json -> ModelConfig: refusals ----------------------------------------------------------------

TEST(ModelConfigTest, Rejects_HeadsNotDivisibleByKvHeads) {
    expect_contains(model_error({{"num_attention_heads", 32}, {"num_key_value_heads", 6}}),
                    {"test.json", "num_attention_heads 32", "num_key_value_heads 6"});
}

TEST(ModelConfigTest, Rejects_NegativeOrZeroSize) {
    expect_contains(model_error({{"intermediate_size", -11008}}), {"test.json", "intermediate_size", "-11008"});
    expect_contains(model_error({{"num_hidden_layers", 0}}), {"num_hidden_layers", "positive"});
    expect_contains(model_error({{"head_dim", -128}}), {"head_dim", "-128"});
}

TEST(ModelConfigTest, Rejects_WrongType) {
    expect_contains(model_error({{"hidden_size", "big"}}), {"test.json", "hidden_size", "integer", "string", "big"});
    expect_contains(model_error({{"hidden_size", 4096.5}}), {"hidden_size", "integer", "number"});
    expect_contains(model_error({{"tie_word_embeddings", 1}}), {"tie_word_embeddings", "true or false"});
    expect_contains(model_error({{"rms_norm_eps", "1e-5"}}), {"rms_norm_eps", "number"});
    expect_contains(model_error({{"rope_scaling", "llama3"}}), {"rope_scaling", "object"});
    expect_contains(model_error({{"eos_token_id", {2, "x"}}}), {"eos_token_id[1]", "integer"});
    expect_contains(model_error({{"rope_scaling", {{"type", "linear"}, {"factor", "2"}}}}),
                    {"rope_scaling.factor", "number"});
}

TEST(ModelConfigTest, Rejects_HiddenActGelu) {
    expect_contains(model_error({{"hidden_act", "gelu"}}), {"test.json", "hidden_act", "gelu", "silu"});
}

TEST(ModelConfigTest, Rejects_ModelTypeOtherThanLlama) {
    expect_contains(model_error({{"model_type", "mistral"}}), {"test.json", "model_type", "mistral", "llama"});
}

TEST(ModelConfigTest, Rejects_Llama3MissingField) {
    for (const char* missing : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
        Json rope = {{"rope_type", "llama3"},
                     {"factor", 8.0},
                     {"low_freq_factor", 1.0},
                     {"high_freq_factor", 4.0},
                     {"original_max_position_embeddings", 8192}};
        rope.erase(missing);
        const std::string message = model_error({{"rope_scaling", rope}});
        expect_contains(message, {"test.json", missing, "required", "llama3"});
    }
}

TEST(ModelConfigTest, Rejects_Llama3HighNotAboveLow) {
    expect_contains(model_error({{"rope_scaling",
                                  {{"rope_type", "llama3"},
                                   {"factor", 8.0},
                                   {"low_freq_factor", 4.0},
                                   {"high_freq_factor", 4.0},
                                   {"original_max_position_embeddings", 8192}}}}),
                    {"high_freq_factor", "low_freq_factor"});
}

TEST(ModelConfigTest, Rejects_UnknownRopeType) {
    expect_contains(model_error({{"rope_scaling", {{"rope_type", "longrope"}, {"factor", 2.0}}}}),
                    {"test.json", "rope_scaling.rope_type", "longrope", "llama3"});
    expect_contains(model_error({{"rope_scaling", {{"factor", 2.0}}}}), {"rope_scaling", "rope_type"});
    expect_contains(model_error({{"rope_scaling", {{"type", "linear"}, {"rope_type", "dynamic"}, {"factor", 2.0}}}}),
                    {"rope_scaling.rope_type", "rope_scaling.type", "disagree"});
}

TEST(ModelConfigTest, Rejects_YarnVariantsWithOtherMath) {
    expect_contains(model_error({{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}, {"truncate", false}}}}),
                    {"truncate"});
    expect_contains(model_error({{"rope_scaling",
                                  {{"rope_type", "yarn"}, {"factor", 4.0}, {"mscale", 1.0}, {"mscale_all_dim", 1.0}}}}),
                    {"mscale"});
}

TEST(ModelConfigTest, Rejects_HiddenNotDivisibleWithoutHeadDim) {
    expect_contains(model_error({{"hidden_size", 4100}, {"num_attention_heads", 32}}),
                    {"hidden_size 4100", "num_attention_heads 32", "head_dim"});
}

TEST(ModelConfigTest, Rejects_OddHeadDim) {
    expect_contains(model_error({{"hidden_size", 32 * 65}, {"num_attention_heads", 32}}), {"head_dim 65", "odd"});
}

TEST(ModelConfigTest, Rejects_TokenIdOutsideVocab) {
    expect_contains(model_error({{"vocab_size", 32000}, {"eos_token_id", {2, 32000}}}),
                    {"eos_token_id", "32000", "vocabulary"});
    expect_contains(model_error({{"bos_token_id", -1}}), {"bos_token_id", "-1"});
    expect_contains(model_error({{"eos_token_id", Json::array()}}), {"eos_token_id", "empty"});
}

TEST(ModelConfigTest, Rejects_ConflictingRopeThetaAndScalings) {
    expect_contains(model_error({{"rope_theta", 10000.0}, {"rope_parameters", {{"rope_theta", 500000.0}}}}),
                    {"rope_theta", "disagree"});
    expect_contains(model_error({{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}},
                                 {"rope_parameters", {{"rope_type", "linear"}, {"factor", 4.0}}}}),
                    {"rope_scaling", "rope_parameters"});
}

TEST(ModelConfigTest, Rejects_NotAnObject) {
    expect_contains(model_error(Json::array({1, 2})), {"test.json", "object", "array"});
}

TEST(ModelConfigTest, Rejects_MalformedJson_NamesFile) {
    const TempDir dir;
    const fs::path file = dir.write("config.json", "{\"hidden_size\": 4096,\n\"num_attention_heads\": ");
    expect_contains(error_of([&] { load_model_config(file); }), {file.string().c_str(), "malformed JSON"});
}

TEST(ModelConfigTest, Rejects_MissingFile_NamesFile) {
    const TempDir dir;
    const fs::path file = dir.path() / "config.json";
    expect_contains(error_of([&] { load_model_config(file); }), {file.string().c_str()});
}

// ---- quantization config -> QuantConfig ------------------------------------------------------------------

Json gptq_config(std::int64_t group_size) {
    return {{"bits", 4}, {"group_size", group_size}, {"desc_act", false}, {"sym", true}};
}

TEST(QuantConfigTest, ReadsQuantizeConfigJson_TheBlokeLlama2) {
    const TempDir dir;
    fs::copy_file(kConfigDir / "llama-2-7b-gptq.quantize_config.json", dir.path() / "quantize_config.json");
    const QuantConfig q = load_quant_config(dir.path());
    EXPECT_EQ(q.bits, 4);
    EXPECT_EQ(q.group_size, 128);
    EXPECT_FALSE(q.desc_act);
    EXPECT_TRUE(q.sym);
    EXPECT_TRUE(q.sym_was_specified);
    EXPECT_EQ(q.zero_format, ZeroFormat::GptqV1);
    EXPECT_EQ(q.model_file_base_name, "model");
    EXPECT_EQ(q.source_file, (dir.path() / "quantize_config.json").string());
}

TEST(QuantConfigTest, ReadsQuantConfigJson_WhenOnlyOne) {
    const TempDir dir;
    dir.write("quant_config.json", gptq_config(32).dump());
    const QuantConfig q = load_quant_config(dir.path());
    EXPECT_EQ(q.group_size, 32);
    EXPECT_EQ(q.source_file, (dir.path() / "quant_config.json").string());
}

TEST(QuantConfigTest, ReadsConfigJsonQuantizationConfig_WhenNoSeparateFile) {
    const TempDir dir;
    Json config = {{"model_type", "llama"}, {"hidden_size", 4096}};
    config["quantization_config"] = gptq_config(64);
    config["quantization_config"]["quant_method"] = "gptq";
    config["quantization_config"]["desc_act"] = true;
    dir.write("config.json", config.dump());
    const QuantConfig q = load_quant_config(dir.path());
    EXPECT_EQ(q.group_size, 64);
    EXPECT_TRUE(q.desc_act);
    EXPECT_EQ(q.source_file, (dir.path() / "config.json").string());
}

TEST(QuantConfigTest, LookupOrder_QuantizeThenQuantThenConfigJson) {
    const TempDir dir;
    dir.write("quantize_config.json", gptq_config(32).dump());
    dir.write("quant_config.json", gptq_config(64).dump());
    dir.write("config.json", Json{{"quantization_config", gptq_config(128)}}.dump());
    EXPECT_EQ(load_quant_config(dir.path()).group_size, 32);
    fs::remove(dir.path() / "quantize_config.json");
    EXPECT_EQ(load_quant_config(dir.path()).group_size, 64);
    fs::remove(dir.path() / "quant_config.json");
    EXPECT_EQ(load_quant_config(dir.path()).group_size, 128);
}

TEST(QuantConfigTest, AwqStyleAliases_WBitAndQGroupSize) {
    const QuantConfig q =
        parse_quant_config(R"({"w_bit": 4, "q_group_size": 64, "sym": false})", "quantize_config.json");
    EXPECT_EQ(q.bits, 4);
    EXPECT_EQ(q.group_size, 64);
    EXPECT_FALSE(q.sym);
    EXPECT_EQ(q.source_file, "quantize_config.json");
}

TEST(QuantConfigTest, UpperCaseKeys_Normalized) {
    const QuantConfig q = parse_quant_config(
        R"({"BITS": 4, "Group_Size": 32, "SYM": false, "DESC_ACT": true, "Checkpoint_Format": "GPTQ_V2",
            "Model_File_Base_Name": "gptq_model-4bit-32g"})",
        "q.json");
    EXPECT_EQ(q.group_size, 32);
    EXPECT_FALSE(q.sym);
    EXPECT_TRUE(q.desc_act);
    EXPECT_EQ(q.zero_format, ZeroFormat::GptqV2);
    EXPECT_EQ(q.model_file_base_name, "gptq_model-4bit-32g");
}

TEST(QuantConfigTest, GptqV2_UnderFormatOrCheckpointFormat) {
    Json j = gptq_config(128);
    j["format"] = "gptq_v2";
    EXPECT_EQ(parse_quant_config(j.dump(), "q.json").zero_format, ZeroFormat::GptqV2);
    j.erase("format");
    j["checkpoint_format"] = "gptq_v2";
    EXPECT_EQ(parse_quant_config(j.dump(), "q.json").zero_format, ZeroFormat::GptqV2);
    j["checkpoint_format"] = "gptq";
    EXPECT_EQ(parse_quant_config(j.dump(), "q.json").zero_format, ZeroFormat::GptqV1);
}

TEST(QuantConfigTest, MissingSym_AssumedTrueWithWarning) {
    ::testing::internal::CaptureStderr();
    const QuantConfig q = parse_quant_config(R"({"bits": 4, "group_size": 128})", "nosym.json");
    const std::string log = ::testing::internal::GetCapturedStderr();
    EXPECT_TRUE(q.sym);
    EXPECT_FALSE(q.sym_was_specified);
    expect_contains(log, {"warning", "nosym.json", "sym"});

    ::testing::internal::CaptureStderr();
    const QuantConfig specified = parse_quant_config(gptq_config(128).dump(), "sym.json");
    EXPECT_EQ(::testing::internal::GetCapturedStderr().find("sym.json"), std::string::npos);
    EXPECT_TRUE(specified.sym_was_specified);
}

TEST(QuantConfigTest, GroupSizeMinusOne_Recorded) {
    EXPECT_EQ(parse_quant_config(gptq_config(-1).dump(), "q.json").group_size, -1);
}

TEST(QuantConfigTest, Rejects_Bits8AndBits3) {
    Json j = gptq_config(128);
    j["bits"] = 8;
    expect_contains(quant_error(j), {"quantize_config.json", "bits 8", "4-bit"});
    j["bits"] = 3;
    expect_contains(quant_error(j), {"bits 3", "4-bit"});
    j.erase("bits");
    j["w_bit"] = 2;
    expect_contains(quant_error(j), {"bits 2"});
}

TEST(QuantConfigTest, Rejects_Marlin) {
    Json j = gptq_config(128);
    j["checkpoint_format"] = "marlin";
    expect_contains(quant_error(j), {"quantize_config.json", "marlin", "Marlin"});
    j.erase("checkpoint_format");
    j["is_marlin_format"] = true;
    expect_contains(quant_error(j), {"is_marlin_format", "Marlin"});
    j.erase("is_marlin_format");
    j["quant_method"] = "marlin";
    expect_contains(quant_error(j), {"quant_method", "Marlin"});
    j["quant_method"] = "gptq";
    j["is_marlin_format"] = false;
    EXPECT_EQ(parse_quant_config(j.dump(), "q.json").group_size, 128);
}

TEST(QuantConfigTest, Rejects_Awq) {
    Json j = gptq_config(128);
    j["quant_method"] = "awq";
    expect_contains(quant_error(j), {"awq", "AWQ"});
    j.erase("quant_method");
    j["format"] = "gemm";
    expect_contains(quant_error(j), {"gemm", "AWQ"});
    // AutoAWQ's own quant_config.json.
    expect_contains(quant_error({{"zero_point", true}, {"q_group_size", 128}, {"w_bit", 4}, {"version", "GEMM"}}),
                    {"gemm", "AWQ"});
}

TEST(QuantConfigTest, Rejects_BadGroupSize) {
    expect_contains(quant_error(gptq_config(0)), {"quantize_config.json", "group_size 0", "-1"});
    expect_contains(quant_error(gptq_config(-2)), {"group_size -2"});
    expect_contains(quant_error({{"bits", 4}, {"sym", true}}), {"group_size"});
}

TEST(QuantConfigTest, Rejects_WrongTypesAndConflicts) {
    expect_contains(quant_error({{"bits", "4"}, {"group_size", 128}}), {"bits", "integer", "string"});
    expect_contains(quant_error({{"bits", 4}, {"group_size", 128}, {"sym", "yes"}}), {"sym", "true or false"});
    expect_contains(quant_error({{"bits", 4}, {"w_bit", 8}, {"group_size", 128}}), {"bits", "w_bit", "disagree"});
    expect_contains(
        quant_error({{"bits", 4}, {"group_size", 128}, {"format", "gptq"}, {"checkpoint_format", "gptq_v2"}}),
        {"format", "checkpoint_format", "disagree"});
    expect_contains(quant_error({{"bits", 4}, {"group_size", 128}, {"checkpoint_format", "exl2"}}), {"exl2"});
    expect_contains(quant_error({{"bits", 4}, {"group_size", 128}, {"quant_method", "bitsandbytes"}}),
                    {"bitsandbytes"});
    expect_contains(quant_error(Json::array()), {"quantize_config.json", "object"});
}

TEST(QuantConfigTest, Rejects_NoQuantConfigAnywhere) {
    const TempDir dir;
    const std::string empty_dir = error_of([&] { load_quant_config(dir.path()); });
    expect_contains(empty_dir, {"not a GPTQ checkpoint", "quantize_config.json", "quant_config.json",
                                "quantization_config", "config.json"});
    dir.write("config.json", Json{{"model_type", "llama"}}.dump());
    expect_contains(error_of([&] { load_quant_config(dir.path()); }), {"not a GPTQ checkpoint"});
    expect_contains(error_of([&] { load_quant_config(dir.path() / "missing"); }), {"not a directory"});
}

TEST(QuantConfigTest, Rejects_MalformedFile_NamesFile) {
    const TempDir dir;
    const fs::path file = dir.write("quantize_config.json", "{\"bits\": 4, \"group_size\": }");
    expect_contains(error_of([&] { load_quant_config(dir.path()); }), {file.string().c_str(), "malformed JSON"});
}

}  // namespace
}  // namespace q4tp::loaders
