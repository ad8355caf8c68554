// GPU tests of kernels/cuda/lm_head and kernels/cuda/sampling against the float/double host references:
// kernels::cpu::matmul_transposed_b and argmax, and sampling_reference.h (the host Sampler's rules).
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "core/base/cuda_stream.h"
#include "core/base/error.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cuda/lm_head.h"
#include "kernels/cuda/sampling.h"
#include "tests/gpu/common/cuda_graph_util.h"
#include "tests/gpu/common/gpu_test_util.h"
#include "tests/gpu/sampling/sampling_reference.h"

namespace q4tp::test {
namespace {

using kernels::cuda::SampleRowsParams;
using kernels::cuda::SamplingOptions;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

//! Passes when fn throws q4tp::Error whose message contains `needle` (so a different failure cannot pass).
::testing::AssertionResult throws_with(const std::function<void()>& fn, const std::string& needle) {
    try {
        fn();
    } catch (const Error& e) {
        if (e.message().find(needle) != std::string::npos) return ::testing::AssertionSuccess();
        return ::testing::AssertionFailure() << "message '" << e.message() << "' lacks '" << needle << "'";
    }
    return ::testing::AssertionFailure() << "no q4tp::Error thrown (expected one mentioning '" << needle << "')";
}

// ---------------------------------------------------------------------------------------------------------
// Philox (host; no GPU needed)
// ---------------------------------------------------------------------------------------------------------

TEST(PhiloxTest, MatchesKnownAnswers_Random123Vectors) {
    // Random123's kat_vectors for philox4x32-10: counter, key -> output.
    using kernels::cuda::philox4x32_10;
    EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}),
              (std::array<std::uint32_t, 4>{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
    EXPECT_EQ(philox4x32_10({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}),
              (std::array<std::uint32_t, 4>{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
    EXPECT_EQ(philox4x32_10({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}),
              (std::array<std::uint32_t, 4>{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(PhiloxTest, RandomBits_ComeFromCounterStepRowAndKeySeed) {
    using kernels::cuda::philox4x32_10;
    using kernels::cuda::sampling_random_bits;
    const std::uint64_t seed = 0x0123456789abcdefull;
    const std::uint64_t step = 0xfedcba9876543210ull;
    const std::uint64_t row = 0x0000000500000007ull;
    const auto words = philox4x32_10({0x76543210u, 0xfedcba98u, 0x00000007u, 0x00000005u}, {0x89abcdefu, 0x01234567u});
    EXPECT_EQ(sampling_random_bits(seed, step, row), words[0] | (static_cast<std::uint64_t>(words[1]) << 32));
    EXPECT_NE(sampling_random_bits(seed, step, row), sampling_random_bits(seed + 1, step, row));
    EXPECT_NE(sampling_random_bits(seed, step, row), sampling_random_bits(seed, step + 1, row));
    EXPECT_NE(sampling_random_bits(seed, step, row), sampling_random_bits(seed, step, row + 1));
}

// ---------------------------------------------------------------------------------------------------------
// lm_head
// ---------------------------------------------------------------------------------------------------------

//! x [m][H] and weight [V][H] in fp16 (random, non-zero), with their float values for the reference.
struct LmHeadData {
    std::int64_t m, hidden, vocab;
    std::vector<float> x, weight;  // fp16-rounded values
    DeviceBuffer<std::uint16_t> d_x, d_weight;
};

LmHeadData make_lm_head_data(std::int64_t m, std::int64_t hidden, std::int64_t vocab, std::mt19937_64& rng) {
    const auto xh = to_half_bits(random_floats(static_cast<std::size_t>(m * hidden), rng));
    const auto wh = to_half_bits(random_floats(static_cast<std::size_t>(vocab * hidden), rng));
    return {m, hidden, vocab, from_half_bits(xh), from_half_bits(wh), to_device(xh), to_device(wh)};
}

std::vector<float> lm_head_reference(const LmHeadData& d) {
    std::vector<float> y(static_cast<std::size_t>(d.m * d.vocab));
    kernels::cpu::matmul_transposed_b(d.x.data(), d.weight.data(), d.m, d.hidden, d.vocab, y.data(), nullptr);
    return y;
}

kernels::cuda::LmHeadParams lm_head_params(LmHeadData& d, DeviceBuffer<float>& logits, DeviceBuffer<char>& ws) {
    kernels::cuda::LmHeadParams p;
    p.x = reinterpret_cast<const __half*>(d.d_x.data());
    p.weight = reinterpret_cast<const __half*>(d.d_weight.data());
    p.logits = logits.data();
    p.m = d.m;
    p.hidden = d.hidden;
    p.vocab = d.vocab;
    p.workspace = ws.data();
    p.workspace_bytes = ws.size();
    return p;
}

// fp16 products are exact in fp32 and the sums of H terms of |x w| <= 1 stay below ~30 for these sizes; fp32
// accumulation errors are ~1e-5 there. 2e-3 absolute flags any wrong layout or fp16 rounding of the output
// (an fp16 logit near 20 is off by up to 8e-3) while leaving room for cuBLAS's blocked summation order.
constexpr double kLmHeadAtol = 2e-3;
constexpr double kLmHeadRtol = 1e-4;

TEST(LmHeadTest, MatchesCpuReference_Shapes) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed());
    CublasHandle handle;
    DeviceBuffer<char> workspace(kernels::cuda::kCublasWorkspaceBytes);
    for (const std::int64_t vocab : {32000, 1000}) {
        for (const std::int64_t hidden : {4096, 64}) {
            LmHeadData data = make_lm_head_data(5, hidden, vocab, rng);
            const std::vector<float> full_ref = lm_head_reference(data);
            for (const std::int64_t m : {1, 5}) {
                SCOPED_TRACE("vocab " + std::to_string(vocab) + " hidden " + std::to_string(hidden) + " m " +
                             std::to_string(m));
                DeviceBuffer<float> logits(static_cast<std::size_t>(m * vocab));
                poison(logits);
                auto p = lm_head_params(data, logits, workspace);
                p.m = m;  // the first m rows of x
                // The legacy default stream, so that the poisoning memset and the copies are ordered with it.
                kernels::cuda::lm_head(handle.get(), p, nullptr);
                const std::vector<float> ref(full_ref.begin(), full_ref.begin() + m * vocab);
                EXPECT_TRUE(all_close(to_host(logits), ref, kLmHeadAtol, kLmHeadRtol));
            }
        }
    }
}

TEST(LmHeadTest, GraphReplay_ReadsCurrentInputs) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 1);
    CublasHandle handle;
    CudaStream stream;
    DeviceBuffer<char> workspace(kernels::cuda::kCublasWorkspaceBytes);
    LmHeadData data = make_lm_head_data(3, 256, 5000, rng);
    DeviceBuffer<float> logits(static_cast<std::size_t>(3 * 5000));
    const auto p = lm_head_params(data, logits, workspace);
    CudaGraph graph(stream.get(), [&] { kernels::cuda::lm_head(handle.get(), p, stream.get()); });
    for (int replay = 0; replay < 3; ++replay) {
        // New activations in the same buffer: the replay must read them, as a decode step does.
        const auto xh = to_half_bits(random_floats(data.x.size(), rng));
        data.x = from_half_bits(xh);
        Q4TP_CUDA_CHECK(cudaMemcpy(data.d_x.data(), xh.data(), xh.size() * 2, cudaMemcpyHostToDevice));
        poison(logits);
        // The copies and the memset ran on the legacy stream, which a non-blocking stream does not wait for.
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        graph.launch(stream.get());
        stream.synchronize();
        EXPECT_TRUE(all_close(to_host(logits), lm_head_reference(data), kLmHeadAtol, kLmHeadRtol))
            << "replay " << replay;
    }
}

TEST(LmHeadTest, RejectsBadArguments) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed());
    CublasHandle handle;
    LmHeadData data = make_lm_head_data(2, 64, 100, rng);
    DeviceBuffer<float> logits(200);
    DeviceBuffer<char> workspace(1024);
    const auto good = lm_head_params(data, logits, workspace);
    const auto call = [&](kernels::cuda::LmHeadParams p, cublasHandle_t h) {
        return [p, h] { kernels::cuda::lm_head(h, p, nullptr); };
    };
    EXPECT_TRUE(throws_with(call(good, nullptr), "null cuBLAS handle"));
    auto p = good;
    p.weight = nullptr;
    EXPECT_TRUE(throws_with(call(p, handle.get()), "null pointer"));
    p = good;
    p.m = 0;
    EXPECT_TRUE(throws_with(call(p, handle.get()), "m = 0"));
    p = good;
    p.hidden = std::int64_t{1} << 31;
    EXPECT_TRUE(throws_with(call(p, handle.get()), "hidden = 2147483648"));
    p = good;
    p.workspace_bytes = 0;
    EXPECT_TRUE(throws_with(call(p, handle.get()), "workspace_bytes 0"));
    p = good;
    p.workspace = workspace.data() + 8;
    EXPECT_TRUE(throws_with(call(p, handle.get()), "not aligned to 256"));
}

// ---------------------------------------------------------------------------------------------------------
// argmax_rows
// ---------------------------------------------------------------------------------------------------------

std::vector<std::int32_t> gpu_argmax(const std::vector<float>& logits, std::int64_t m, std::int64_t vocab) {
    auto d_logits = to_device(logits);
    DeviceBuffer<std::int32_t> out(static_cast<std::size_t>(m));
    poison(out);
    kernels::cuda::argmax_rows(d_logits.data(), m, vocab, out.data(), nullptr);
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    return to_host(out);
}

std::vector<std::int32_t> cpu_argmax(const std::vector<float>& logits, std::int64_t m, std::int64_t vocab) {
    std::vector<std::int32_t> out(static_cast<std::size_t>(m));
    for (std::int64_t r = 0; r < m; ++r) {
        out[static_cast<std::size_t>(r)] =
            static_cast<std::int32_t>(kernels::cpu::argmax(logits.data() + r * vocab, vocab));
    }
    return out;
}

TEST(ArgmaxRowsTest, MatchesCpuArgmax_RandomRows) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 2);
    for (const std::int64_t vocab : {1, 7, 1000, 1025, 32000, 128256}) {
        const std::int64_t m = 4;
        const auto logits = random_floats(static_cast<std::size_t>(m * vocab), rng, -20.0f, 20.0f);
        EXPECT_EQ(gpu_argmax(logits, m, vocab), cpu_argmax(logits, m, vocab)) << "vocab " << vocab;
    }
}

TEST(ArgmaxRowsTest, PlantedTies_LowestIndexWins) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 3);
    const std::int64_t vocab = 32000;
    const std::int64_t m = 5;
    auto logits = random_floats(static_cast<std::size_t>(m * vocab), rng, -5.0f, 5.0f);
    std::uniform_int_distribution<std::int64_t> pos(0, vocab - 1);
    std::vector<std::int32_t> expected(m);
    for (std::int64_t r = 0; r < m - 1; ++r) {
        // 2 to 5 copies of the maximum, scattered over different threads and warps.
        std::int64_t lowest = vocab;
        for (int c = 0; c < 2 + r; ++c) {
            const std::int64_t i = pos(rng);
            logits[static_cast<std::size_t>(r * vocab + i)] = 7.5f;
            lowest = std::min(lowest, i);
        }
        expected[static_cast<std::size_t>(r)] = static_cast<std::int32_t>(lowest);
    }
    // Last row: every value equal, so token 0 wins.
    std::fill(logits.begin() + (m - 1) * vocab, logits.end(), 0.25f);
    expected[static_cast<std::size_t>(m - 1)] = 0;
    EXPECT_EQ(gpu_argmax(logits, m, vocab), expected);
    EXPECT_EQ(cpu_argmax(logits, m, vocab), expected);
}

TEST(ArgmaxRowsTest, SpecialValues_FirstNaNWinsAndAllNegInfGivesZero) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 4);
    const std::int64_t vocab = 5000;
    auto logits = random_floats(static_cast<std::size_t>(3 * vocab), rng);
    logits[4000] = kNaN;  // row 0: NaNs beat numbers, the first NaN wins
    logits[1234] = kNaN;
    logits[99] = kInf;
    std::fill(logits.begin() + vocab, logits.begin() + 2 * vocab, -kInf);  // row 1: all masked
    logits[static_cast<std::size_t>(2 * vocab + 4999)] = kInf;             // row 2: +inf at the end
    const std::vector<std::int32_t> expected{1234, 0, 4999};
    EXPECT_EQ(gpu_argmax(logits, 3, vocab), expected);
    EXPECT_EQ(cpu_argmax(logits, 3, vocab), expected);
}

TEST(ArgmaxRowsTest, RejectsBadArguments) {
    Q4TP_SKIP_WITHOUT_GPU();
    DeviceBuffer<float> logits(16);
    DeviceBuffer<std::int32_t> out(2);
    EXPECT_TRUE(throws_with([&] { kernels::cuda::argmax_rows(nullptr, 2, 8, out.data(), nullptr); }, "null pointer"));
    EXPECT_TRUE(throws_with([&] { kernels::cuda::argmax_rows(logits.data(), 0, 8, out.data(), nullptr); }, "m = 0"));
    EXPECT_TRUE(
        throws_with([&] { kernels::cuda::argmax_rows(logits.data(), 2, 0, out.data(), nullptr); }, "vocab = 0"));
}

// ---------------------------------------------------------------------------------------------------------
// sample_rows
// ---------------------------------------------------------------------------------------------------------

//! Device state of sample_rows for m rows of a vocabulary.
class SamplerState {
   public:
    SamplerState(std::int64_t m, std::int64_t vocab, std::int64_t capacity)
        : m_(m),
          vocab_(vocab),
          capacity_(capacity),
          logits_(static_cast<std::size_t>(m * vocab)),
          options_(static_cast<std::size_t>(m)),
          history_(static_cast<std::size_t>(std::max<std::int64_t>(m * capacity, 1))),
          history_len_(static_cast<std::size_t>(m)),
          step_(1),
          out_(static_cast<std::size_t>(m)) {
        set_history_len(0);
        set_step(0);
    }

    void set_logits(const std::vector<float>& logits) {
        ASSERT_EQ(logits.size(), logits_.size());
        Q4TP_CUDA_CHECK(cudaMemcpy(logits_.data(), logits.data(), logits_.bytes(), cudaMemcpyHostToDevice));
    }
    //! Every row gets `row` (vocab values).
    void set_logits_all_rows(const std::vector<float>& row) {
        std::vector<float> all;
        for (std::int64_t r = 0; r < m_; ++r) all.insert(all.end(), row.begin(), row.end());
        set_logits(all);
    }
    void set_options(const SamplingOptions& o) {
        const std::vector<SamplingOptions> all(static_cast<std::size_t>(m_), o);
        Q4TP_CUDA_CHECK(cudaMemcpy(options_.data(), all.data(), options_.bytes(), cudaMemcpyHostToDevice));
    }
    void set_history(const std::vector<std::int32_t>& all_rows) {
        ASSERT_EQ(all_rows.size(), static_cast<std::size_t>(m_ * capacity_));
        Q4TP_CUDA_CHECK(cudaMemcpy(history_.data(), all_rows.data(), all_rows.size() * 4, cudaMemcpyHostToDevice));
    }
    void set_history_len(std::int64_t len) {
        const std::vector<std::int64_t> all(static_cast<std::size_t>(m_), len);
        Q4TP_CUDA_CHECK(cudaMemcpy(history_len_.data(), all.data(), history_len_.bytes(), cudaMemcpyHostToDevice));
    }
    void set_step(std::uint64_t step) { Q4TP_CUDA_CHECK(cudaMemcpy(step_.data(), &step, 8, cudaMemcpyHostToDevice)); }
    std::uint64_t step() const { return to_host(step_)[0]; }
    std::vector<float> logits() const { return to_host(logits_); }
    std::vector<std::int32_t> history() const { return to_host(history_); }
    std::vector<std::int64_t> history_len() const { return to_host(history_len_); }

    SampleRowsParams params(std::uint64_t seed, bool append = false) {
        SampleRowsParams p;
        p.logits = logits_.data();
        p.m = m_;
        p.vocab = vocab_;
        p.options = options_.data();
        p.history = capacity_ > 0 ? history_.data() : nullptr;
        p.history_len = capacity_ > 0 ? history_len_.data() : nullptr;
        p.history_capacity = capacity_;
        p.append_to_history = append;
        p.seed = seed;
        p.step = step_.data();
        p.out = out_.data();
        return p;
    }
    //! One launch; the tokens of every row.
    std::vector<std::int32_t> sample(std::uint64_t seed) {
        poison(out_);
        kernels::cuda::sample_rows(params(seed), nullptr);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        return to_host(out_);
    }
    //! `launches` launches; how often each token was drawn over all rows.
    std::vector<std::int64_t> histogram(std::uint64_t seed, int launches) {
        std::vector<std::int64_t> counts(static_cast<std::size_t>(vocab_), 0);
        for (int l = 0; l < launches; ++l) {
            for (const std::int32_t t : sample(seed)) {
                EXPECT_TRUE(t >= 0 && t < vocab_) << "token " << t;
                if (t >= 0 && t < vocab_) ++counts[static_cast<std::size_t>(t)];
            }
        }
        return counts;
    }

   private:
    std::int64_t m_, vocab_, capacity_;
    DeviceBuffer<float> logits_;
    DeviceBuffer<SamplingOptions> options_;
    DeviceBuffer<std::int32_t> history_;
    DeviceBuffer<std::int64_t> history_len_;
    DeviceBuffer<std::uint64_t> step_;
    DeviceBuffer<std::int32_t> out_;
};

SamplingOptions options(
    float temperature, std::int32_t top_k = 0, float top_p = 1.0f, float min_p = 0.0f, float penalty = 1.0f) {
    return {temperature, top_k, top_p, min_p, penalty};
}

//! Random logits with the maximum planted at 2-4 scattered ids per row (ties to the lowest).
std::vector<float> logits_with_tied_max(std::int64_t m, std::int64_t vocab, std::mt19937_64& rng) {
    auto logits = random_floats(static_cast<std::size_t>(m * vocab), rng, -3.0f, 3.0f);
    std::uniform_int_distribution<std::int64_t> pos(0, vocab - 1);
    for (std::int64_t r = 0; r < m; ++r) {
        for (int c = 0; c < 2 + r % 3; ++c) logits[static_cast<std::size_t>(r * vocab + pos(rng))] = 3.5f;
    }
    return logits;
}

TEST(SamplingTest, TemperatureZero_EqualsArgmax) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 5);
    const std::int64_t m = 4, vocab = 32000;
    const auto logits = logits_with_tied_max(m, vocab, rng);
    SamplerState state(m, vocab, 0);
    state.set_logits(logits);
    state.set_options(options(0.0f, 40, 0.9f, 0.05f));  // the filters must not matter when greedy
    EXPECT_EQ(state.sample(1), cpu_argmax(logits, m, vocab));
    EXPECT_EQ(state.sample(1), gpu_argmax(logits, m, vocab));
    EXPECT_EQ(state.step(), 2u);  // a greedy launch still consumes a step
}

TEST(SamplingTest, TopKOne_EqualsArgmax) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 6);
    const std::int64_t m = 4, vocab = 32000;
    const auto logits = logits_with_tied_max(m, vocab, rng);
    SamplerState state(m, vocab, 0);
    state.set_logits(logits);
    state.set_options(options(2.0f, 1));
    const auto expected = cpu_argmax(logits, m, vocab);
    for (int launch = 0; launch < 16; ++launch) EXPECT_EQ(state.sample(test_seed()), expected) << "launch " << launch;
}

TEST(SamplingTest, SameSeedAndStep_SameTokens) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 7);
    const std::int64_t m = 64, vocab = 32000;
    SamplerState state(m, vocab, 0);
    state.set_logits(random_floats(static_cast<std::size_t>(m * vocab), rng, -1.0f, 1.0f));
    state.set_options(options(1.0f, 0, 0.9f));
    state.set_step(41);
    const auto first = state.sample(1234);
    EXPECT_EQ(state.step(), 42u);
    const auto next = state.sample(1234);
    state.set_step(41);
    EXPECT_EQ(state.sample(1234), first);
    EXPECT_NE(next, first);  // a new step draws new numbers
    state.set_step(41);
    EXPECT_NE(state.sample(1235), first);                                       // so does a new seed
    EXPECT_GT(std::set<std::int32_t>(first.begin(), first.end()).size(), 32u);  // rows draw independently
}

TEST(SamplingTest, GraphReplay_AdvancesStepAndMatchesDirectLaunches) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 8);
    for (const std::int64_t m : {1, 3}) {
        SCOPED_TRACE("m " + std::to_string(m));
        const std::int64_t vocab = 3000;
        const int replays = 20;
        SamplerState state(m, vocab, replays);
        state.set_logits(random_floats(static_cast<std::size_t>(m * vocab), rng, -1.0f, 1.0f));
        state.set_options(options(1.0f, 100, 0.95f));
        const std::uint64_t seed = test_seed();
        CudaStream stream;
        const auto params = state.params(seed, /*append=*/true);
        CudaGraph graph(stream.get(), [&] { kernels::cuda::sample_rows(params, stream.get()); });
        state.set_step(1000);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());  // the non-blocking stream does not wait for legacy-stream copies
        for (int r = 0; r < replays; ++r) graph.launch(stream.get());
        stream.synchronize();
        EXPECT_EQ(state.step(), 1000u + replays);
        EXPECT_EQ(state.history_len(), std::vector<std::int64_t>(static_cast<std::size_t>(m), replays));
        const auto replayed = state.history();

        // The same steps launched directly give the same tokens, in the same ring order.
        state.set_step(1000);
        std::vector<std::int32_t> direct(static_cast<std::size_t>(m * replays));
        for (int r = 0; r < replays; ++r) {
            const auto tokens = state.sample(seed);
            for (std::int64_t row = 0; row < m; ++row)
                direct[static_cast<std::size_t>(row * replays + r)] = tokens[row];
        }
        EXPECT_EQ(replayed, direct);
        EXPECT_GT(std::set<std::int32_t>(direct.begin(), direct.end()).size(), 5u);  // fresh numbers each replay
    }
}

//! One distribution scenario over 8 "hot" tokens; `pad` extra tokens of logit -1e4 (mass exactly 0) push the
//! vocabulary past 1024 candidates and so through the streaming path.
struct DistributionCase {
    std::string name;
    SamplingOptions options;
    std::vector<std::int32_t> history;  // repetition-penalty window, hot-token indices (may repeat / be invalid)
    bool expect_cut;                    // the options remove at least one hot token
};

class SamplingDistributionTest : public ::testing::TestWithParam<std::tuple<DistributionCase, std::int64_t>> {};

// Hot-token probabilities at temperature 1, deliberately not sorted by id.
const std::vector<double> kHotProbs{0.05, 0.25, 0.015, 0.40, 0.10, 0.005, 0.15, 0.03};

TEST_P(SamplingDistributionTest, FrequenciesMatchReference) {
    Q4TP_SKIP_WITHOUT_GPU();
    const auto& [c, pad] = GetParam();
    const std::int64_t hot = static_cast<std::int64_t>(kHotProbs.size());
    const std::int64_t vocab = hot + pad;
    const std::int64_t stride = vocab / hot;  // hot token j at id j * stride: spread over warps and chunks
    std::vector<float> row(static_cast<std::size_t>(vocab), -1e4f);
    std::vector<std::int32_t> hot_id(kHotProbs.size());
    for (std::int64_t j = 0; j < hot; ++j) {
        hot_id[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j * stride);
        // +2 makes the likely tokens' logits positive, so the penalty's divide branch is exercised too.
        row[static_cast<std::size_t>(j * stride)] =
            static_cast<float>(std::log(kHotProbs[static_cast<std::size_t>(j)]) + 2.0);
    }
    std::vector<std::int32_t> window;
    for (const std::int32_t h : c.history)
        window.push_back(h >= 0 && h < hot ? hot_id[static_cast<std::size_t>(h)] : h);
    std::vector<float> penalized = row;
    apply_repetition_penalty(penalized, window, c.options.repetition_penalty);
    const std::vector<double> prob = reference_distribution(penalized, c.options);
    ASSERT_EQ(kept_count(prob) < kHotProbs.size(), c.expect_cut) << "the scenario does not test what it claims";

    const std::int64_t m = 2000;
    const int launches = 10;  // 20000 draws
    const auto capacity = static_cast<std::int64_t>(window.size());
    SamplerState state(m, vocab, capacity);
    state.set_logits_all_rows(row);
    state.set_options(c.options);
    if (capacity > 0) {
        std::vector<std::int32_t> all;
        for (std::int64_t r = 0; r < m; ++r) all.insert(all.end(), window.begin(), window.end());
        state.set_history(all);
        state.set_history_len(capacity);
    }
    std::vector<std::int64_t> counts(static_cast<std::size_t>(vocab), 0);
    for (int l = 0; l < launches; ++l) {
        // The penalty rewrites the logits in place, so every launch starts from the raw row again.
        state.set_logits_all_rows(row);
        for (const std::int32_t t : state.sample(test_seed())) {
            ASSERT_TRUE(t >= 0 && t < vocab) << "token " << t;
            ++counts[static_cast<std::size_t>(t)];
        }
    }
    EXPECT_TRUE(frequencies_match(counts, prob, m * launches));
}

std::string distribution_case_name(const ::testing::TestParamInfo<std::tuple<DistributionCase, std::int64_t>>& info) {
    return std::get<0>(info.param).name + "_pad" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    Cases,
    SamplingDistributionTest,
    ::testing::Combine(
        ::testing::Values(
            DistributionCase{"Unfiltered", options(1.0f), {}, false},
            DistributionCase{"Temperature", options(0.6f), {}, false},
            // Top 3 by probability: 0.40 (id 3), 0.25 (1), 0.15 (6).
            DistributionCase{"TopK3", options(1.0f, 3), {}, true},
            // Cumulative 0.40, 0.65, 0.80 >= 0.75: three tokens.
            DistributionCase{"TopP", options(1.0f, 0, 0.75f), {}, true},
            // p >= 0.2 * 0.40 = 0.08: 0.40, 0.25, 0.15, 0.10.
            DistributionCase{"MinP", options(1.0f, 0, 1.0f, 0.2f), {}, true},
            DistributionCase{"Combined", options(0.9f, 6, 0.9f, 0.05f), {}, true},
            // Hot token 3 (logit 2 + ln 0.40 > 0) is divided by the penalty, hot token 5 (2 + ln 0.005 < 0)
            // multiplied; 3 repeats but counts once; -1 and 2^30 are outside the vocabulary and ignored.
            DistributionCase{"RepetitionPenalty", options(1.0f, 0, 1.0f, 0.0f, 1.6f), {3, 5, 3, -1, 1 << 30, 3}, false},
            // Top-k above 1024 candidates: streaming radix top-k with the cut inside the -1e4 padding ties.
            DistributionCase{"LargeTopKAndTopP", options(1.0f, 2000, 0.85f), {}, true}),
        ::testing::Values(std::int64_t{0}, std::int64_t{4000})),
    distribution_case_name);

//! Tokens drawn by every row over `launches` launches.
std::vector<std::vector<std::int32_t>> draws_per_row(SamplerState& state,
                                                     std::int64_t m,
                                                     int launches,
                                                     std::uint64_t seed) {
    std::vector<std::vector<std::int32_t>> per_row(static_cast<std::size_t>(m));
    for (int l = 0; l < launches; ++l) {
        const auto tokens = state.sample(seed);
        for (std::int64_t r = 0; r < m; ++r) per_row[static_cast<std::size_t>(r)].push_back(tokens[r]);
    }
    return per_row;
}

TEST(SamplingTest, TopKTies_KeepLowestIds) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 9);
    const std::int64_t vocab = 32000;
    std::vector<float> row = random_floats(static_cast<std::size_t>(vocab), rng, -6.0f, -1.0f);
    // Three tokens at 0.5 and ten tied at 0.0: top_k = 5 keeps the three and the two lowest-id ties.
    std::vector<std::int64_t> ids(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::set<std::int32_t> expected;
    for (int j = 0; j < 3; ++j) {
        row[static_cast<std::size_t>(ids[j])] = 0.5f;
        expected.insert(static_cast<std::int32_t>(ids[j]));
    }
    std::vector<std::int64_t> tied(ids.begin() + 3, ids.begin() + 13);
    for (const std::int64_t i : tied) row[static_cast<std::size_t>(i)] = 0.0f;
    std::sort(tied.begin(), tied.end());
    expected.insert(static_cast<std::int32_t>(tied[0]));
    expected.insert(static_cast<std::int32_t>(tied[1]));

    const std::int64_t m = 500;
    SamplerState state(m, vocab, 0);
    state.set_logits_all_rows(row);
    state.set_options(options(1.0f, 5));
    std::set<std::int32_t> drawn;
    for (int l = 0; l < 4; ++l) {
        for (const std::int32_t t : state.sample(test_seed())) drawn.insert(t);
    }
    EXPECT_EQ(drawn, expected);  // 2000 draws: each kept token (p >= 0.15) appears
}

//! One token at logit 2 and six tied at 1 (p = e^-1 each), `pad` tokens at -1e4 around them. top_p = 0.5 needs
//! 0.5 * (1 + 6/e) = 1.60 of mass: the top token (1) and two ties (1.74), the two lowest ids among the ties.
class SamplingTopPTiesTest : public ::testing::TestWithParam<std::int64_t> {};

TEST_P(SamplingTopPTiesTest, KeepsLowestIdsAtTheBoundary) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 10);
    const std::int64_t vocab = 7 + GetParam();
    std::vector<float> row(static_cast<std::size_t>(vocab), -1e4f);
    std::vector<std::int64_t> ids(vocab);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    row[static_cast<std::size_t>(ids[0])] = 2.0f;
    std::vector<std::int64_t> tied(ids.begin() + 1, ids.begin() + 7);
    for (const std::int64_t i : tied) row[static_cast<std::size_t>(i)] = 1.0f;
    std::sort(tied.begin(), tied.end());
    const std::set<std::int32_t> expected{static_cast<std::int32_t>(ids[0]), static_cast<std::int32_t>(tied[0]),
                                          static_cast<std::int32_t>(tied[1])};
    const auto opts = options(1.0f, 0, 0.5f);
    const auto prob = reference_distribution(row, opts);
    ASSERT_EQ(kept_count(prob), 3u);

    const std::int64_t m = 1000;
    SamplerState state(m, vocab, 0);
    state.set_logits_all_rows(row);
    state.set_options(opts);
    std::set<std::int32_t> drawn;
    for (int l = 0; l < 3; ++l) {
        for (const std::int32_t t : state.sample(test_seed())) drawn.insert(t);
    }
    EXPECT_EQ(drawn, expected);
}

INSTANTIATE_TEST_SUITE_P(Paths, SamplingTopPTiesTest, ::testing::Values(std::int64_t{0}, std::int64_t{5000}));

TEST(SamplingTest, RandomVocab32000_DrawsLieInReferenceKeptSet) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 11);
    const std::int64_t m = 32, vocab = 32000;
    const std::vector<SamplingOptions> configs{
        options(1.0f, 0, 0.9f),              // streaming top-p
        options(0.7f, 0, 1.0f, 0.1f),        // streaming min-p
        options(1.0f, 50, 0.8f, 0.05f),      // candidates path, all three cuts
        options(1.3f, 3000, 0.95f, 0.001f),  // streaming top-k, then top-p and min-p
        options(0.8f, 0, 0.5f, 0.02f)};
    for (std::size_t ci = 0; ci < configs.size(); ++ci) {
        SCOPED_TRACE("config " + std::to_string(ci));
        const auto logits = random_floats(static_cast<std::size_t>(m * vocab), rng, -6.0f, 6.0f);
        SamplerState state(m, vocab, 0);
        state.set_logits(logits);
        state.set_options(configs[ci]);
        const auto per_row = draws_per_row(state, m, 8, test_seed());
        for (std::int64_t r = 0; r < m; ++r) {
            const std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
            const auto prob = reference_distribution(row, configs[ci]);
            const std::size_t kept = kept_count(prob);
            ASSERT_GT(kept, 1u);
            ASSERT_LT(kept, static_cast<std::size_t>(vocab) / 2);  // the cuts really cut
            for (const std::int32_t t : per_row[static_cast<std::size_t>(r)]) {
                ASSERT_TRUE(t >= 0 && t < vocab) << "row " << r << " token " << t;
                EXPECT_GT(prob[static_cast<std::size_t>(t)], 0.0)
                    << "row " << r << " drew token " << t << " outside the kept set of " << kept;
            }
        }
    }
}

TEST(SamplingTest, MaskedAndNaNTokens_NeverDrawn) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 12);
    const std::int64_t vocab = 6000;
    // Row 0: only every third token finite, the rest -inf or NaN. Row 1: all -inf -> argmax answer (0).
    // Row 2: -inf and NaN only -> argmax answer (the first NaN).
    std::vector<float> logits(static_cast<std::size_t>(3 * vocab), -kInf);
    const auto values = random_floats(static_cast<std::size_t>(vocab), rng, -0.5f, 0.5f);
    for (std::int64_t i = 0; i < vocab; ++i) {
        if (i % 3 == 0) logits[static_cast<std::size_t>(i)] = values[static_cast<std::size_t>(i)];
        if (i % 3 == 1) logits[static_cast<std::size_t>(i)] = kNaN;
    }
    logits[static_cast<std::size_t>(2 * vocab + 777)] = kNaN;
    logits[static_cast<std::size_t>(2 * vocab + 4000)] = kNaN;
    SamplerState state(3, vocab, 0);
    state.set_logits(logits);
    state.set_options(options(1.0f, 0));
    std::set<std::int32_t> row0;
    for (int l = 0; l < 50; ++l) {
        const auto t = state.sample(test_seed());
        EXPECT_EQ(t[0] % 3, 0) << "drew masked token " << t[0];
        row0.insert(t[0]);
        EXPECT_EQ(t[1], 0);
        EXPECT_EQ(t[2], 777);
    }
    EXPECT_GT(row0.size(), 40u);  // 2000 near-equal candidates: the draws spread
}

TEST(SamplingTest, InfiniteLogits_ShareTheMass) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 13);
    const std::int64_t vocab = 2000;
    auto row = random_floats(static_cast<std::size_t>(vocab), rng);
    row[17] = kInf;
    row[1500] = kInf;
    SamplerState state(1000, vocab, 0);
    state.set_logits_all_rows(row);
    state.set_options(options(1.0f));
    const auto counts = state.histogram(test_seed(), 2);
    std::vector<double> prob(static_cast<std::size_t>(vocab), 0.0);
    prob[17] = prob[1500] = 0.5;
    EXPECT_TRUE(frequencies_match(counts, prob, 2000));
}

TEST(SamplingTest, RepetitionPenalty_RewritesEachDistinctIdOnce) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng(test_seed() + 14);
    const std::int64_t m = 2, vocab = 50000, capacity = 3000;
    const auto logits = random_floats(static_cast<std::size_t>(m * vocab), rng, -4.0f, 4.0f);
    std::uniform_int_distribution<std::int32_t> id(-5, static_cast<std::int32_t>(vocab) + 5);  // some out of range
    std::uniform_int_distribution<std::int32_t> few(0, 200);                                   // many repeats
    std::vector<std::int32_t> history(static_cast<std::size_t>(m * capacity));
    for (std::size_t j = 0; j < history.size(); ++j) history[j] = j % 2 == 0 ? id(rng) : few(rng);
    const float penalty = 1.3f;
    SamplerState state(m, vocab, capacity);
    state.set_logits(logits);
    state.set_history(history);
    // history_len beyond the capacity: the ring is full, every entry counts.
    state.set_history_len(capacity + 123);
    state.set_options(options(0.0f, 0, 1.0f, 0.0f, penalty));
    const auto tokens = state.sample(5);
    const auto got = state.logits();
    for (std::int64_t r = 0; r < m; ++r) {
        std::vector<float> expected(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
        const std::span<const std::int32_t> window(history.data() + r * capacity, static_cast<std::size_t>(capacity));
        apply_repetition_penalty(expected, window, penalty);
        const std::vector<float> row(got.begin() + r * vocab, got.begin() + (r + 1) * vocab);
        EXPECT_EQ(row, expected) << "row " << r;  // bit-exact: the same float formula, applied once per id
        EXPECT_NE(row, std::vector<float>(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab));
        EXPECT_EQ(tokens[static_cast<std::size_t>(r)], kernels::cpu::argmax(expected.data(), vocab));  // greedy
    }
}

TEST(SamplingTest, RejectsBadArguments) {
    Q4TP_SKIP_WITHOUT_GPU();
    SamplerState state(2, 100, 4);
    const auto good = state.params(1);
    const auto call = [](SampleRowsParams p) { return [p] { kernels::cuda::sample_rows(p, nullptr); }; };
    auto p = good;
    p.step = nullptr;
    EXPECT_TRUE(throws_with(call(p), "null pointer"));
    p = good;
    p.m = 0;
    EXPECT_TRUE(throws_with(call(p), "m = 0"));
    p = good;
    p.vocab = kernels::cuda::kMaxSamplingVocab + 1;
    EXPECT_TRUE(throws_with(call(p), "vocab = 262145"));
    p = good;
    p.history_capacity = -1;
    EXPECT_TRUE(throws_with(call(p), "history_capacity = -1"));
    p = good;
    p.history = nullptr;
    EXPECT_TRUE(throws_with(call(p), "is null"));
    p = good;
    p.history_capacity = 0;
    p.append_to_history = true;
    EXPECT_TRUE(throws_with(call(p), "nowhere to append"));
}

}  // namespace
}  // namespace q4tp::test
