// Bad model directories are refused with one clear line naming the file, tensor or value at fault.

#include <gtest/gtest.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "core/base/error.h"
#include "golden_util.h"

namespace q4tp::test {
namespace {

namespace fs = std::filesystem;

// A private copy of a fixture that a test may break.
class FixtureCopy {
public:
    explicit FixtureCopy(const std::string& name) {
        dir_ = fs::temp_directory_path() /
               ("q4tp_fixture_" + name + "_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::copy(fixtures_dir() / name, dir_, fs::copy_options::recursive);
    }
    ~FixtureCopy() { fs::remove_all(dir_); }
    const fs::path& dir() const { return dir_; }

    // Replaces the first match of pattern in config.json.
    void edit_config(const std::string& pattern, const std::string& replacement) {
        std::ifstream in(dir_ / "config.json");
        std::stringstream text;
        text << in.rdbuf();
        const std::string edited = std::regex_replace(text.str(), std::regex(pattern), replacement,
                                                      std::regex_constants::format_first_only);
        ASSERT_NE(edited, text.str()) << "pattern " << pattern << " not found";
        std::ofstream(dir_ / "config.json") << edited;
    }

private:
    fs::path dir_;
};

// Runs body, expecting a q4tp::Error whose one-line message contains every needle.
template <typename Body>
void expect_error(Body body, std::initializer_list<std::string> needles) {
    try {
        body();
        FAIL() << "no error raised";
    } catch (const Error& e) {
        const std::string message = e.message();
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        for (const std::string& needle : needles) EXPECT_NE(message.find(needle), std::string::npos) << message;
    }
}

TEST(ModelErrorsTest, MissingDirectoryNamesConfig) {
    expect_error([] { CpuFixture fx("/nonexistent/q4tp-model"); }, {"config.json"});
}

TEST(ModelErrorsTest, IntermediateSizeDisagreeingWithWeightsNamesTensor) {
    FixtureCopy copy("tiny-g128-sym");
    copy.edit_config(R"("intermediate_size": *320)", R"("intermediate_size": 352)");
    expect_error([&] { CpuFixture fx(copy.dir()); }, {"model.layers.0.mlp.gate_proj"});
}

TEST(ModelErrorsTest, HiddenSizeDisagreeingWithEmbeddingNamesTensor) {
    FixtureCopy copy("tiny-g128-sym");
    copy.edit_config(R"("hidden_size": *128)", R"("hidden_size": 96)");
    expect_error([&] { CpuFixture fx(copy.dir()); }, {"model.embed_tokens.weight"});
}

TEST(ModelErrorsTest, UntiedConfigWithoutLmHeadIsRefused) {
    FixtureCopy copy("tiny-llama2-vocab");
    copy.edit_config(R"("tie_word_embeddings": *true)", R"("tie_word_embeddings": false)");
    expect_error([&] { CpuFixture fx(copy.dir()); }, {"lm_head.weight"});
}

TEST(ModelErrorsTest, MissingShardNamesIt) {
    FixtureCopy copy("tiny-g64-gqa-v2");
    fs::remove(copy.dir() / "model-00002-of-00002.safetensors");
    expect_error([&] { CpuFixture fx(copy.dir()); }, {"model-00002-of-00002.safetensors"});
}

TEST(ModelErrorsTest, MissingQuantizationConfigIsRefused) {
    FixtureCopy copy("tiny-g128-sym");
    copy.edit_config(R"("quantization_config")", R"("not_quantization_config")");
    expect_error([&] { CpuFixture fx(copy.dir()); }, {"quantiz"});
}

TEST(ModelErrorsTest, ForwardPastTheContextIsRefused) {
    CpuFixture fx(fixtures_dir() / "tiny-g128-sym", 8, 16);
    std::vector<std::int32_t> tokens(17, 5);
    std::vector<float> logits;
    expect_error([&] { fx.model->forward(tokens, 0, model::LogitsMode::LastOnly, logits); }, {"17", "16"});
}

}  // namespace
}  // namespace q4tp::test
