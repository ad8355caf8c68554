// The trained tiny Llama (models/tiny-llama) and transformers' perplexity on held-out text
// (tests/data/perplexity/golden.h5, made by tools/gptq_quantize.py; protocol in its attributes).
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/model/llama_model.h"
#include "core/model/perplexity.h"
#include "loaders/hdf5_file.h"

namespace q4tp::test {

inline std::filesystem::path embedded_model_dir() {
    return std::filesystem::path(Q4TP_TEST_DATA_DIR).parent_path().parent_path() / "models" / "tiny-llama";
}

struct PerplexityGolden {
    std::string text;
    std::vector<std::int32_t> tokens;
    std::vector<float> gptq_window_nll;  //!< [windows] transformers on the dequantized 4-bit model
    double gptq_ppl = 0.0, gptq_nll_sum = 0.0, fp16_ppl = 0.0;
    model::PerplexityConfig config;

    PerplexityGolden() {
        const auto dir = std::filesystem::path(Q4TP_TEST_DATA_DIR) / "perplexity";
        std::ifstream in(dir / "heldout.txt", std::ios::binary);
        std::stringstream s;
        s << in.rdbuf();
        text = s.str();
        const loaders::Hdf5File file = loaders::Hdf5File::open_read(dir / "golden.h5");
        const auto ids = file.read_int("tokens");
        tokens.assign(ids.data.begin(), ids.data.end());
        gptq_window_nll = file.read_float("gptq/nll_per_window").data;
        gptq_ppl = file.read_float("gptq/ppl").data.at(0);
        gptq_nll_sum = file.read_float("gptq/nll_sum").data.at(0);
        fp16_ppl = file.read_float("fp16/ppl").data.at(0);
        config.window = std::stoll(file.read_string_attribute("/", "window"));
        config.stride = std::stoll(file.read_string_attribute("/", "stride"));
        config.add_bos = file.read_string_attribute("/", "add_bos") == "true";
        config.bos_id = static_cast<std::int32_t>(std::stol(file.read_string_attribute("/", "bos_id")));
    }
};

//! Scores the text tokens up to the end of window `windows - 1` (the first windows are then exactly those of the
//! full run) and expects each window's negative log-likelihood within 0.1% of transformers', the bound issue 6 sets.
//! With a non-empty `print_label` it prints each window's pair under that label. Returns the result for more checks.
inline model::PerplexityResult expect_windows_match_golden(model::LlamaModel& llama,
                                                           const PerplexityGolden& golden,
                                                           std::size_t windows,
                                                           const std::string& print_label = "") {
    if (windows == 0) {
        ADD_FAILURE() << "expect_windows_match_golden: windows = 0, expected at least 1";
        return {};
    }
    const std::int64_t text_window = golden.config.window - (golden.config.add_bos ? 1 : 0);
    const auto end =
        static_cast<std::size_t>(golden.config.stride * static_cast<std::int64_t>(windows - 1) + text_window);
    if (golden.gptq_window_nll.size() < windows || golden.tokens.size() < end) {
        ADD_FAILURE() << "the golden holds " << golden.gptq_window_nll.size() << " windows and "
                      << golden.tokens.size() << " tokens, expected at least " << windows << " windows and " << end
                      << " tokens";
        return {};
    }
    const std::vector<std::int32_t> prefix(golden.tokens.begin(),
                                           golden.tokens.begin() + static_cast<std::ptrdiff_t>(end));
    const model::PerplexityResult result = model::evaluate_perplexity(llama, prefix, golden.config);
    EXPECT_EQ(result.window_nll.size(), windows);
    for (std::size_t w = 0; w < windows && w < result.window_nll.size(); ++w) {
        const double want = golden.gptq_window_nll[w];
        EXPECT_NEAR(result.window_nll[w], want, 1e-3 * want) << "window " << w;
        if (!print_label.empty()) {
            std::printf("[ ppl      ] %s window %zu nll %.4f, transformers %.4f\n", print_label.c_str(), w,
                        result.window_nll[w], want);
        }
    }
    return result;
}

}  // namespace q4tp::test
