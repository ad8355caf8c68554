// q4tp-generate as a user runs it: greedy output is reproducible, --logits-out writes the documented HDF5
// datasets, bad input gets one line and a non-zero exit.

#include <gtest/gtest.h>

#include <filesystem>

#include "cli_runner.h"
#include "loaders/hdf5_file.h"

namespace q4tp::test {
namespace {

namespace fs = std::filesystem;

const std::string kModel = (fs::path(Q4TP_TEST_DATA_DIR) / "fixtures" / "tiny-llama2-vocab").string();

TEST(GenerateCliTest, GreedyIsReproducibleAndStreamsAfterThePrompt) {
    const std::vector<std::string> args = {"--model", kModel, "--prompt", "Once upon a time", "-n", "12",
                                           "--temperature", "0", "--device", "cpu"};
    const ToolRun a = run_tool(Q4TP_GENERATE_BIN, args);
    const ToolRun b = run_tool(Q4TP_GENERATE_BIN, args);
    ASSERT_EQ(a.exit_code, 0) << a.err;
    EXPECT_EQ(a.out, b.out);
    EXPECT_EQ(a.out.rfind("Once upon a time", 0), 0u) << a.out;
    EXPECT_GT(a.out.size(), std::string("Once upon a time\n").size());
    EXPECT_NE(a.err.find("tokens/s"), std::string::npos) << a.err;
}

TEST(GenerateCliTest, SeedMakesSamplingReproducible) {
    auto args = [](const std::string& seed) {
        return std::vector<std::string>{"-m", kModel, "-p", "The", "-n", "16", "--temperature", "1.2", "--seed", seed,
                                        "--no-display-prompt", "--device", "cpu"};
    };
    const ToolRun a = run_tool(Q4TP_GENERATE_BIN, args("7"));
    const ToolRun b = run_tool(Q4TP_GENERATE_BIN, args("7"));
    ASSERT_EQ(a.exit_code, 0) << a.err;
    EXPECT_EQ(a.out, b.out);
}

TEST(GenerateCliTest, LogitsOutHoldsOneRowPerStepAndTheTokens) {
    const fs::path out = fs::temp_directory_path() / ("q4tp_logits_" + std::to_string(::getpid()) + ".h5");
    const ToolRun run = run_tool(Q4TP_GENERATE_BIN, {"-m", kModel, "-p", "Hello", "-n", "5", "--temperature", "0",
                                                      "--ignore-eos", "--logits-out", out.string(), "--device", "cpu"});
    ASSERT_EQ(run.exit_code, 0) << run.err;
    const loaders::Hdf5File file = loaders::Hdf5File::open_read(out);
    const auto logits = file.read_float("logits");
    const auto tokens = file.read_int("tokens");
    fs::remove(out);
    ASSERT_EQ(logits.shape.size(), 2u);
    EXPECT_EQ(logits.shape[0], 6);  // the prompt's last position + one row per generated token
    EXPECT_EQ(logits.shape[1], 32000);
    ASSERT_EQ(tokens.shape.size(), 1u);
    const std::int64_t generated = 5;
    const std::int64_t prompt_len = tokens.shape[0] - generated;
    EXPECT_EQ(tokens.data[0], 1);  // BOS
    // Greedy: generated token i is the argmax of row i.
    for (std::int64_t i = 0; i < generated; ++i) {
        const float* row = logits.data.data() + i * 32000;
        const auto best = std::max_element(row, row + 32000) - row;
        EXPECT_EQ(tokens.data[static_cast<std::size_t>(prompt_len + i)], best) << "step " << i;
    }
}

TEST(GenerateCliTest, BadInputGetsOneLineAndNonZeroExit) {
    struct Case {
        std::vector<std::string> args;
        int exit_code;
        const char* keyword;
    };
    const std::vector<Case> cases = {
        {{"-p", "hi"}, 2, "--model"},
        {{"-m", kModel}, 2, "--prompt"},
        {{"-m", "/nonexistent/model", "-p", "hi"}, 1, "/nonexistent/model"},
        {{"-m", kModel, "-p", "hi", "--temperature", "warm"}, 2, "--temperature"},
        {{"-m", kModel, "-p", "hi", "--top-p", "1.5", "--device", "cpu"}, 1, "top_p"},
        {{"-m", kModel, "-p", "hi", "--device", "tpu"}, 2, "--device"},
        {{"-m", kModel, "-p", "a long prompt that does not fit", "--ctx-size", "4", "--device", "cpu"}, 1, "context"},
        {{"-m", kModel, "--file", "/nonexistent/prompt.txt"}, 1, "/nonexistent/prompt.txt"},
    };
    for (const Case& c : cases) {
        const ToolRun run = run_tool(Q4TP_GENERATE_BIN, c.args);
        EXPECT_EQ(run.signal, 0);
        EXPECT_EQ(run.exit_code, c.exit_code) << run.err;
        const auto lines = run.error_lines();
        ASSERT_EQ(lines.size(), 1u) << run.err;
        EXPECT_NE(lines[0].find(c.keyword), std::string::npos) << lines[0];
    }
    EXPECT_EQ(run_tool(Q4TP_GENERATE_BIN, {"--help"}).exit_code, 0);
}

}  // namespace
}  // namespace q4tp::test
