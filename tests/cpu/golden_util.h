// Shared by the end-to-end suites: the fixtures under tests/data/fixtures and their golden.h5 files
// (layout in tests/data/fixtures/README.md), and a CPU model loaded from a fixture.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "core/model/cpu_ops.h"
#include "core/model/llama_model.h"
#include "loaders/checkpoint.h"
#include "loaders/config_json.h"
#include "loaders/quant_config.h"
#include "loaders/tokenizer.h"

namespace q4tp::test {

inline std::filesystem::path fixtures_dir() { return std::filesystem::path(Q4TP_TEST_DATA_DIR) / "fixtures"; }

//! Every fixture directory holding a golden.h5, sorted.
inline std::vector<std::string> fixture_names() {
    std::vector<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(fixtures_dir())) {
        if (std::filesystem::exists(entry.path() / "golden.h5")) names.push_back(entry.path().filename().string());
    }
    std::sort(names.begin(), names.end());
    return names;
}

//! A model directory loaded on `ops`: the whole model, or this rank's share under tensor parallelism.
inline std::unique_ptr<model::LlamaModel> load_model(const std::filesystem::path& dir, model::Ops& ops,
                                                     const model::RuntimeConfig& runtime,
                                                     const model::ParallelContext& parallel = {}) {
    const ModelConfig config = loaders::load_model_config(dir / "config.json");
    const QuantConfig quant = loaders::load_quant_config(dir);
    const loaders::Checkpoint checkpoint = loaders::Checkpoint::open(dir, quant.model_file_base_name);
    model::CheckpointWeights weights(checkpoint, quant);
    return std::make_unique<model::LlamaModel>(config, quant, weights, ops, runtime, parallel);
}

//! A fixture loaded on the CPU backend.
struct CpuFixture {
    ModelConfig config;
    QuantConfig quant;
    std::unique_ptr<loaders::Tokenizer> tokenizer;
    model::CpuOps ops;
    std::unique_ptr<model::LlamaModel> model;

    explicit CpuFixture(const std::filesystem::path& dir, std::int64_t max_batch_tokens = 64,
                        std::int64_t context = 256) {
        config = loaders::load_model_config(dir / "config.json");
        quant = loaders::load_quant_config(dir);
        tokenizer = std::make_unique<loaders::Tokenizer>(loaders::Tokenizer::load(dir / "tokenizer.model"));
        model::RuntimeConfig runtime;
        runtime.max_context = context;
        runtime.max_batch_tokens = max_batch_tokens;
        model = load_model(dir, ops, runtime);
    }
};

//! Largest |a - b| over two equally long arrays; NaN anywhere makes it infinite.
inline double max_abs_diff(const float* a, const float* b, std::size_t n) {
    double worst = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        const double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
        if (!std::isfinite(d)) return INFINITY;
        worst = std::max(worst, d);
    }
    return worst;
}

inline double max_abs(const float* a, std::size_t n) {
    double worst = 0.0;
    for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(static_cast<double>(a[i])));
    return worst;
}

}  // namespace q4tp::test
