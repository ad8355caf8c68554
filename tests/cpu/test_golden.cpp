// The CPU backend against Hugging Face transformers' LlamaForCausalLM (float32, eager attention) loaded with
// the same dequantized weights (tools/make_fixtures.py): logits at every position, each layer's output,
// and a 32-token greedy continuation, for every fixture.
//
// Tolerance. Both sides compute in float32 from identical float32 weights; they differ only in summation
// order (torch's blocked GEMM vs our double-accumulated loops) and in transcendental functions (cos, sin,
// exp). Float32 rounding of a K-term dot product is ~sqrt(K) * 6e-8 relative (K <= 512 here: ~1.4e-6), and
// 2-3 layers with RMSNorm amplify it modestly, so differences of order 1e-5 of the values' scale are
// expected. We require max |diff| <= 2e-5 * max(1, max |value|): 5-20x the largest difference observed (the
// measured errors are printed), yet any real bug (a wrong RoPE pair, scale, zero point, mask, GQA mapping or
// norm) moves logits by O(0.1-1) and fails it by orders of magnitude.

#include <gtest/gtest.h>

#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "core/model/generator.h"
#include "golden_util.h"
#include "loaders/hdf5_file.h"

namespace q4tp::test {
namespace {

constexpr double kRelativeTolerance = 2e-5;

struct Golden {
    std::string text;
    std::vector<std::int32_t> tokens;
    loaders::Hdf5Array<float> logits, embeddings, layer_outputs, final_norm;
    std::vector<std::int32_t> greedy;
};

std::vector<std::int32_t> as_int32(const loaders::Hdf5Array<std::int64_t>& a) {
    return std::vector<std::int32_t>(a.data.begin(), a.data.end());
}

std::vector<Golden> read_goldens(const std::filesystem::path& path) {
    const loaders::Hdf5File file = loaders::Hdf5File::open_read(path);
    std::vector<Golden> goldens;
    for (int i = 0;; ++i) {
        const std::string group = "prompt" + std::to_string(i);
        if (!file.has(group)) break;
        Golden g;
        g.text = file.read_string_attribute(group, "text");
        g.tokens = as_int32(file.read_int(group + "/tokens"));
        g.logits = file.read_float(group + "/logits");
        g.embeddings = file.read_float(group + "/embeddings");
        g.layer_outputs = file.read_float(group + "/layer_outputs");
        g.final_norm = file.read_float(group + "/final_norm");
        g.greedy = as_int32(file.read_int(group + "/greedy_tokens"));
        goldens.push_back(std::move(g));
    }
    return goldens;
}

// Expects a within the tolerance of the golden b; returns the measured max abs difference.
double expect_close(const float* a, const loaders::Hdf5Array<float>& b, std::size_t offset, std::size_t n,
                    const std::string& what) {
    const double diff = max_abs_diff(a, b.data.data() + offset, n);
    const double bound = kRelativeTolerance * std::max(1.0, max_abs(b.data.data() + offset, n));
    EXPECT_LE(diff, bound) << what << ": max |q4tp - transformers| = " << diff;
    return diff;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, CpuBackendMatchesTransformers) {
    const std::filesystem::path dir = fixtures_dir() / GetParam();
    const std::vector<Golden> goldens = read_goldens(dir / "golden.h5");
    ASSERT_FALSE(goldens.empty());
    CpuFixture fx(dir);
    const auto hidden = static_cast<std::size_t>(fx.config.hidden_size);
    const auto vocab = static_cast<std::size_t>(fx.config.vocab_size);
    double worst_logit = 0.0, worst_hidden = 0.0;

    for (const Golden& g : goldens) {
        SCOPED_TRACE("prompt '" + g.text + "'");
        // The tokenizer agrees with sentencepiece's Python API (BOS first, as Hugging Face encodes).
        EXPECT_EQ(fx.tokenizer->encode(g.text, true), g.tokens);
        const std::size_t t = g.tokens.size();

        // Hidden states of every stage, downloaded as the forward pass goes.
        std::vector<std::vector<float>> stages(static_cast<std::size_t>(fx.config.num_hidden_layers) + 2);
        model::HiddenObserver observer = [&](std::int64_t stage, TensorView h) {
            auto& out = stages[static_cast<std::size_t>(stage + 1)];
            out.assign(static_cast<std::size_t>(h.numel()), NAN);
            fx.ops.download(h, out);
        };
        std::vector<float> logits;
        fx.model->forward(g.tokens, 0, model::LogitsMode::All, logits, &observer);
        ASSERT_EQ(logits.size(), t * vocab);

        worst_hidden = std::max(worst_hidden, expect_close(stages[0].data(), g.embeddings, 0, t * hidden, "embeddings"));
        for (std::int64_t layer = 0; layer < fx.config.num_hidden_layers; ++layer) {
            worst_hidden = std::max(
                worst_hidden, expect_close(stages[static_cast<std::size_t>(layer + 1)].data(), g.layer_outputs,
                                           static_cast<std::size_t>(layer) * t * hidden, t * hidden,
                                           "layer " + std::to_string(layer) + " output"));
        }
        worst_hidden =
            std::max(worst_hidden, expect_close(stages.back().data(), g.final_norm, 0, t * hidden, "final norm"));
        worst_logit = std::max(worst_logit, expect_close(logits.data(), g.logits, 0, t * vocab, "logits"));

        // 32 greedy tokens, not stopping at EOS, exactly as transformers chose them.
        model::GenerationConfig greedy;
        greedy.max_new_tokens = static_cast<std::int64_t>(g.greedy.size());
        greedy.ignore_eos = true;
        greedy.sampling.temperature = 0.0;
        const model::GenerationResult result = model::generate(*fx.model, *fx.tokenizer, g.tokens, greedy, nullptr);
        EXPECT_EQ(result.tokens, g.greedy);
    }
    std::printf("[ golden   ] %s: max |logit diff| %.3g, max |hidden diff| %.3g\n", GetParam().c_str(), worst_logit,
                worst_hidden);
}

// Splitting the prompt into chunks of 3 tokens (each chunk attending to the cache of the previous ones)
// gives the same logits as one pass.
TEST_P(GoldenTest, ChunkedPrefillEqualsOnePass) {
    const std::filesystem::path dir = fixtures_dir() / GetParam();
    const std::vector<Golden> goldens = read_goldens(dir / "golden.h5");
    CpuFixture whole(dir, 64);
    CpuFixture chunked(dir, 3);
    std::vector<float> a, b;
    whole.model->forward(goldens[0].tokens, 0, model::LogitsMode::All, a);
    chunked.model->forward(goldens[0].tokens, 0, model::LogitsMode::All, b);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_LE(max_abs_diff(a.data(), b.data(), a.size()), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(fixture_names()),
                         [](const ::testing::TestParamInfo<std::string>& param_info) {
                             std::string name = param_info.param;
                             for (char& c : name) {
                                 if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                             }
                             return name;
                         });

}  // namespace
}  // namespace q4tp::test
