// The trained tiny Llama (models/tiny-llama) and transformers' perplexity on held-out text
// (tests/data/perplexity/golden.h5, made by tools/gptq_quantize.py; protocol in its attributes).
#pragma once

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

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

}  // namespace q4tp::test
