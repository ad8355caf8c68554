// q4tp-inspect on real fixtures and on a model directory whose safetensors file is malformed in each way
// docs/formats.md §1.2 (plus our own rules) forbids: every case must end with exactly one error line that
// names the file, and a non-zero exit, never a crash or a hang.

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "cli_runner.h"
#include "tests/unit/loaders/st_test_util.h"

namespace q4tp::test {
namespace {

namespace fs = std::filesystem;
using st_test::safetensors_bytes;
using st_test::u64_le;
using st_test::write_file;

const fs::path kFixtures = fs::path(Q4TP_TEST_DATA_DIR) / "fixtures";

TEST(InspectCliTest, DescribesEveryFixture) {
    for (const auto& entry : fs::directory_iterator(kFixtures)) {
        if (!fs::exists(entry.path() / "config.json")) continue;
        const ToolRun run = run_tool(Q4TP_INSPECT_BIN, {entry.path().string(), "--context", "1024"});
        EXPECT_EQ(run.exit_code, 0) << entry.path() << "\n" << run.err;
        EXPECT_NE(run.out.find("memory per GPU"), std::string::npos) << run.out;
        EXPECT_NE(run.out.find("quantization: 4-bit GPTQ"), std::string::npos) << run.out;
    }
}

TEST(InspectCliTest, ReportsActOrderAndGqa) {
    const ToolRun run = run_tool(Q4TP_INSPECT_BIN, {(kFixtures / "tiny-g64-gqa-v2").string()});
    ASSERT_EQ(run.exit_code, 0) << run.err;
    EXPECT_NE(run.out.find("GQA 4:1"), std::string::npos) << run.out;
    EXPECT_NE(run.out.find("g64+act"), std::string::npos) << run.out;
    EXPECT_NE(run.out.find("zeros gptq_v2"), std::string::npos) << run.out;
}

TEST(InspectCliTest, HelpAndUsageErrors) {
    EXPECT_EQ(run_tool(Q4TP_INSPECT_BIN, {"--help"}).exit_code, 0);
    const ToolRun missing = run_tool(Q4TP_INSPECT_BIN, {});
    EXPECT_EQ(missing.exit_code, 2);
    EXPECT_NE(missing.err.find("MODEL_DIR"), std::string::npos) << missing.err;
    EXPECT_EQ(run_tool(Q4TP_INSPECT_BIN, {"--bogus"}).exit_code, 2);
    EXPECT_EQ(run_tool(Q4TP_INSPECT_BIN, {(kFixtures / "tiny-g128-sym").string(), "--context", "x"}).exit_code, 2);
}

struct Malformed {
    const char* name;
    std::string bytes;
    const char* keyword;  //!< must appear in the error line (case-sensitive)
};

std::vector<Malformed> malformed_cases() {
    const std::string ok = R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
    return {
        {"empty_file", "", "header too small"},
        {"shorter_than_8_bytes", "abc", "header too small"},
        {"header_length_over_cap", u64_le(200'000'000) + "{}", "100000000"},
        {"header_past_end_of_file", u64_le(1000) + "{}", "past the end"},
        {"header_not_utf8", safetensors_bytes("{\"\xff\xfe\":{}}", 0), "UTF-8"},
        {"header_not_json", safetensors_bytes("{not json", 0), "JSON"},
        {"header_not_object", safetensors_bytes("[1,2]", 0), "object"},
        {"unknown_dtype", safetensors_bytes(R"({"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}})", 2), "Q4"},
        {"dtype_not_string", safetensors_bytes(R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8), "dtype"},
        {"negative_shape", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "shape"},
        {"offsets_wrong_arity", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
         "data_offsets"},
        {"truncated_data", safetensors_bytes(ok, 15), "a"},
        {"trailing_bytes", safetensors_bytes(ok, 17), "trailing"},
        {"byte_length_disagrees_with_shape",
         safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", 12), "'a'"},
        {"overlapping_offsets",
         safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           12),
         "'b'"},
        {"gap_between_tensors",
         safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                           20),
         "'b'"},
        {"first_offset_not_zero", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
         "'a'"},
        {"end_before_begin", safetensors_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), "'a'"},
        {"overflowing_shape",
         safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}})", 8),
         "overflow"},
        {"duplicate_names",
         safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                           16),
         "duplicate"},
        {"metadata_not_strings",
         safetensors_bytes(R"({"__metadata__":{"format":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
         "__metadata__"},
    };
}

class InspectMalformedTest : public ::testing::TestWithParam<Malformed> {};

TEST_P(InspectMalformedTest, OneLineErrorAndNonZeroExit) {
    const Malformed& c = GetParam();
    st_test::ScopedTempDir dir;
    for (const char* file : {"config.json", "tokenizer.model"}) {
        fs::copy_file(kFixtures / "tiny-g128-sym" / file, dir.path() / file);
    }
    write_file(dir.path() / "model.safetensors", c.bytes);
    const ToolRun run = run_tool(Q4TP_INSPECT_BIN, {dir.path().string()});
    EXPECT_EQ(run.signal, 0) << "crashed";
    EXPECT_EQ(run.exit_code, 1) << run.err;
    const auto lines = run.error_lines();
    ASSERT_EQ(lines.size(), 1u) << run.err;
    EXPECT_EQ(lines[0].rfind("q4tp-inspect: error: ", 0), 0u) << lines[0];
    EXPECT_NE(lines[0].find("model.safetensors"), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find(c.keyword), std::string::npos) << lines[0];
}

INSTANTIATE_TEST_SUITE_P(Cases, InspectMalformedTest, ::testing::ValuesIn(malformed_cases()),
                         [](const ::testing::TestParamInfo<Malformed>& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace q4tp::test
