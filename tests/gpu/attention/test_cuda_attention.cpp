// CUDA attention (kernels/cuda/attention.h) against the float32 CPU reference kernels::cpu::attention: decode and
// prefill over head sizes, GQA ratios, m and past_len, with NaN in every cache row the call must not read; graph
// replay with *past_len changed in device memory; out-of-range past_len; launcher validation (no GPU needed).
#include "kernels/cuda/attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/error.h"
#include "tests/gpu/attention/attention_test_util.h"
#include "tests/gpu/common/gpu_test_util.h"

namespace q4tp::kernels::cuda {
namespace {

using test::AttentionProblem;
using test::AttentionShape;
using test::attention_close;

constexpr int kCapacity = 2048;

// Tolerances. Inputs are fp16 values taken exactly by both sides, so the error is what the kernel adds:
// - decode accumulates in fp32 (~1e-6 here) and rounds the output to fp16 once: relative 2^-11 = 4.9e-4, so
//   rtol 1e-3 and an atol of 5e-5 for outputs near zero; relative RMS of rounding alone is ~3e-4.
// - prefill also rounds the softmax weights to fp16 for the tensor-core P.V product (relative 4.9e-4 each, random
//   in sign), at most 4.9e-4 * max|v| = 4.9e-4 absolute, typically far less: atol 5e-4, rtol 2e-3, RMS 3e-3.
// A dropped key out of L <= 1200 moves the relative RMS by roughly 1 / sqrt(L) >= 3e-2.
constexpr double kDecodeAtol = 5e-5;
constexpr double kDecodeRtol = 1e-3;
constexpr double kDecodeRms = 1.5e-3;
constexpr double kPrefillAtol = 5e-4;
constexpr double kPrefillRtol = 2e-3;
constexpr double kPrefillRms = 3e-3;

std::mt19937_64 make_rng(std::uint64_t salt) { return std::mt19937_64(test::test_seed() * 1000003u + salt); }

std::string shape_name(const AttentionShape& s) {
    return "d" + std::to_string(s.head_dim) + "_h" + std::to_string(s.num_heads) + "kv" +
           std::to_string(s.num_kv_heads);
}

std::vector<AttentionShape> sweep_shapes() {
    std::vector<AttentionShape> shapes;
    for (const int d : {64, 128}) {
        for (const auto& [nh, nkv] : std::vector<std::pair<int, int>>{{8, 8}, {32, 8}, {64, 8}, {8, 2}}) {
            shapes.push_back({nh, nkv, d});
        }
    }
    // The small head sizes of the tiny fixtures (tests/data/fixtures): fewer 16-byte lanes per key row.
    for (const int d : {16, 32}) shapes.push_back({8, 2, d});
    return shapes;
}

using SweepParam = std::tuple<AttentionShape, int, int>;  // shape, m, past_len

std::string sweep_name(const ::testing::TestParamInfo<SweepParam>& info) {
    return shape_name(std::get<0>(info.param)) + "_m" + std::to_string(std::get<1>(info.param)) + "_past" +
           std::to_string(std::get<2>(info.param));
}

std::uint64_t salt_of(const SweepParam& p) {
    const AttentionShape& s = std::get<0>(p);
    return static_cast<std::uint64_t>(s.head_dim) * 1000000007u + static_cast<std::uint64_t>(s.num_heads) * 100003u +
           static_cast<std::uint64_t>(s.num_kv_heads) * 1009u + static_cast<std::uint64_t>(std::get<1>(p)) * 10007u +
           static_cast<std::uint64_t>(std::get<2>(p));
}

// ---- decode sweep --------------------------------------------------------------------------------------------

class CudaAttentionDecodeTest : public ::testing::TestWithParam<SweepParam> {};

TEST_P(CudaAttentionDecodeTest, MatchesCpuReference_NaNBeyondPastLenPlusM) {
    Q4TP_SKIP_WITHOUT_GPU();
    const auto& [shape, m, past] = GetParam();
    std::mt19937_64 rng = make_rng(salt_of(GetParam()));
    AttentionProblem problem(shape, m, kCapacity, past, rng);
    attention_decode(problem.params(), nullptr);
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(attention_close(problem.output(), problem.reference(), kDecodeAtol, kDecodeRtol, kDecodeRms));
}

INSTANTIATE_TEST_SUITE_P(Sweep, CudaAttentionDecodeTest,
                         ::testing::Combine(::testing::ValuesIn(sweep_shapes()), ::testing::Values(1, 2, 3, 7),
                                            ::testing::Values(0, 1, 37, 1000)),
                         sweep_name);

// ---- prefill sweep -------------------------------------------------------------------------------------------

class CudaAttentionPrefillTest : public ::testing::TestWithParam<SweepParam> {};

TEST_P(CudaAttentionPrefillTest, MatchesCpuReference_NaNBeyondPastLenPlusM) {
    Q4TP_SKIP_WITHOUT_GPU();
    const auto& [shape, m, past] = GetParam();
    std::mt19937_64 rng = make_rng(salt_of(GetParam()) + 7);
    AttentionProblem problem(shape, m, kCapacity, past, rng);
    attention_prefill(problem.params(), nullptr);
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(attention_close(problem.output(), problem.reference(), kPrefillAtol, kPrefillRtol, kPrefillRms));
}

INSTANTIATE_TEST_SUITE_P(Sweep, CudaAttentionPrefillTest,
                         ::testing::Combine(::testing::ValuesIn(sweep_shapes()), ::testing::Values(5, 64, 200),
                                            ::testing::Values(0, 1, 37, 1000)),
                         sweep_name);

// ---- long contexts, cross-checks, dispatch ---------------------------------------------------------------------

TEST(CudaAttentionTest, Decode_Context1920_7BAnd70BHeads) {
    Q4TP_SKIP_WITHOUT_GPU();
    for (const AttentionShape shape : {AttentionShape{32, 32, 128}, AttentionShape{64, 8, 128}}) {
        SCOPED_TRACE(shape_name(shape));
        std::mt19937_64 rng = make_rng(1920 + static_cast<std::uint64_t>(shape.num_kv_heads));
        AttentionProblem problem(shape, 1, kCapacity, 1919, rng);
        attention(problem.params(), nullptr);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        EXPECT_TRUE(attention_close(problem.output(), problem.reference(), kDecodeAtol, kDecodeRtol, kDecodeRms));
    }
}

TEST(CudaAttentionTest, Decode_FullCache_LastRowOfCapacity) {
    Q4TP_SKIP_WITHOUT_GPU();
    // past_len + m == capacity: the very last cache row is read, nothing after it exists.
    std::mt19937_64 rng = make_rng(2047);
    AttentionProblem problem({32, 8, 128}, 4, kCapacity, kCapacity - 4, rng);
    attention_decode(problem.params(), nullptr);
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(attention_close(problem.output(), problem.reference(), kDecodeAtol, kDecodeRtol, kDecodeRms));
}

TEST(CudaAttentionTest, Decode_OneKvHeadLongCache_MoreChunksThanMergeThreads) {
    Q4TP_SKIP_WITHOUT_GPU();
    // One kv head over a 40000-row cache splits into hundreds of chunks: the merge's strided loads and the
    // partial kernel's long grid both get exercised.
    constexpr int kLongCapacity = 40000;
    ASSERT_GT(attention_decode_chunks(1, kLongCapacity), 256);
    for (const int m : {1, 5}) {
        SCOPED_TRACE("m " + std::to_string(m));
        std::mt19937_64 rng = make_rng(40000 + static_cast<std::uint64_t>(m));
        AttentionProblem problem({8, 1, 64}, m, kLongCapacity, 35000, rng);
        attention_decode(problem.params(), nullptr);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        EXPECT_TRUE(attention_close(problem.output(), problem.reference(), kDecodeAtol, kDecodeRtol, kDecodeRms));
    }
}

TEST(CudaAttentionTest, ChunkedPrefill_LastChunkOf1920TokenPrompt) {
    Q4TP_SKIP_WITHOUT_GPU();
    // The fourth 512-token chunk of a 1920-token prompt: 384 new rows after 1536 cached ones, then the full prompt.
    for (const auto& [m, past] : std::vector<std::pair<int, int>>{{384, 1536}, {512, 1024}, {1920, 0}}) {
        SCOPED_TRACE("m " + std::to_string(m) + " past " + std::to_string(past));
        std::mt19937_64 rng = make_rng(static_cast<std::uint64_t>(m) * 7 + static_cast<std::uint64_t>(past));
        AttentionProblem problem({8, 2, 128}, m, kCapacity, past, rng);
        attention(problem.params(), nullptr);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        EXPECT_TRUE(
            attention_close(problem.output(), problem.reference(), kPrefillAtol, kPrefillRtol, kPrefillRms));
    }
}

TEST(CudaAttentionTest, DecodeAndPrefill_Agree_SameInputs) {
    Q4TP_SKIP_WITHOUT_GPU();
    for (const int m : {1, 8}) {
        SCOPED_TRACE("m " + std::to_string(m));
        std::mt19937_64 rng = make_rng(77 + static_cast<std::uint64_t>(m));
        AttentionProblem problem({16, 4, 64}, m, 512, 300, rng);
        attention_decode(problem.params(), nullptr);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> decoded = problem.output();
        problem.poison_output();
        attention_prefill(problem.params(), nullptr);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        EXPECT_TRUE(attention_close(problem.output(), decoded, kPrefillAtol, kPrefillRtol, kPrefillRms));
    }
}

TEST(CudaAttentionTest, Dispatcher_RunsPrefillAboveMaxDecodeM_WithoutWorkspace) {
    Q4TP_SKIP_WITHOUT_GPU();
    std::mt19937_64 rng = make_rng(9);
    AttentionProblem problem({32, 8, 128}, kMaxDecodeM + 1, kCapacity, 100, rng);
    AttentionParams p = problem.params();
    EXPECT_EQ(p.workspace_bytes, 0u);  // attention_workspace_bytes() is 0 above kMaxDecodeM
    p.workspace = nullptr;
    attention(p, nullptr);
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(attention_close(problem.output(), problem.reference(), kPrefillAtol, kPrefillRtol, kPrefillRms));
}

// ---- CUDA graphs -------------------------------------------------------------------------------------------------

TEST(CudaAttentionTest, GraphReplay_EqualsEager_WhenPastLenChangesInDeviceMemory) {
    Q4TP_SKIP_WITHOUT_GPU();
    for (const int m : {1, 3}) {
        SCOPED_TRACE("m " + std::to_string(m));
        constexpr int kMaxPast = 1700;
        std::mt19937_64 rng = make_rng(4242 + static_cast<std::uint64_t>(m));
        // Rows up to the longest replay's end are filled; everything after stays NaN.
        AttentionProblem problem({64, 8, 128}, m, kCapacity, 0, rng, kMaxPast + m);
        CudaStream stream;

        cudaGraph_t graph = nullptr;
        Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream.get(), cudaStreamCaptureModeThreadLocal));
        attention(problem.params(), stream.get());
        Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream.get(), &graph));
        cudaGraphExec_t exec = nullptr;
        Q4TP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));

        for (const int past : {0, 1, 37, 600, 31, kMaxPast}) {
            SCOPED_TRACE("past " + std::to_string(past));
            problem.set_past_len(past);
            problem.poison_output();
            Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream.get()));
            stream.synchronize();
            const std::vector<float> replayed = problem.output();

            problem.poison_output();
            attention(problem.params(), stream.get());
            stream.synchronize();
            const std::vector<float> eager = problem.output();

            ASSERT_EQ(replayed.size(), eager.size());
            std::size_t differing = 0;
            for (std::size_t i = 0; i < eager.size(); ++i) {
                if (!(replayed[i] == eager[i])) ++differing;  // NaN never compares equal: it counts too
            }
            EXPECT_EQ(differing, 0u) << "graph replay and eager call differ in " << differing << " elements";
            EXPECT_TRUE(attention_close(replayed, problem.reference(), kDecodeAtol, kDecodeRtol, kDecodeRms));
        }
        Q4TP_CUDA_CHECK(cudaGraphExecDestroy(exec));
        Q4TP_CUDA_CHECK(cudaGraphDestroy(graph));
    }
}

// ---- past_len out of range -------------------------------------------------------------------------------------

TEST(CudaAttentionTest, PastLenOutOfRange_WritesNaNEverywhere) {
    Q4TP_SKIP_WITHOUT_GPU();
    constexpr int kSmallCapacity = 96;
    for (const int m : {2, 70}) {
        for (const int past : {-1, kSmallCapacity - m + 1, 1 << 30}) {
            SCOPED_TRACE("m " + std::to_string(m) + " past " + std::to_string(past));
            std::mt19937_64 rng = make_rng(31 + static_cast<std::uint64_t>(m));
            AttentionProblem problem({8, 2, 64}, m, kSmallCapacity, 0, rng, kSmallCapacity);
            // Not NaN before the call, so NaN after it is the kernel's doing.
            Q4TP_CUDA_CHECK(cudaMemset(problem.out_buffer().data(), 0, problem.out_buffer().bytes()));
            problem.set_past_len(past);
            attention(problem.params(), nullptr);
            Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
            const std::vector<float> out = problem.output();
            const auto finite = std::count_if(out.begin(), out.end(), [](float x) { return !std::isnan(x); });
            EXPECT_EQ(finite, 0) << finite << " of " << out.size() << " outputs are not NaN";
        }
    }
}

// ---- launcher validation (host-side checks: these run without a GPU) ------------------------------------------

class CudaAttentionValidationTest : public ::testing::Test {
protected:
    // Host memory stands in for device buffers: every case throws before anything is launched.
    alignas(16) static inline std::uint16_t q_[4 * 8 * 128];
    alignas(16) static inline std::uint16_t k_[2 * 64 * 128];
    alignas(16) static inline std::uint16_t v_[2 * 64 * 128];
    alignas(16) static inline std::uint16_t out_[4 * 8 * 128];
    alignas(16) static inline float workspace_[1 << 16];
    static inline std::int32_t past_ = 0;

    static AttentionParams valid() {
        AttentionParams p;
        p.q = reinterpret_cast<const __half*>(q_);
        p.k_cache = reinterpret_cast<const __half*>(k_);
        p.v_cache = reinterpret_cast<const __half*>(v_);
        p.out = reinterpret_cast<__half*>(out_);
        p.past_len = &past_;
        p.workspace = workspace_;
        p.workspace_bytes = sizeof(workspace_);
        p.m = 4;
        p.num_heads = 8;
        p.num_kv_heads = 2;
        p.head_dim = 128;
        p.capacity = 64;
        return p;
    }

    //! Expects both launchers (decode when m allows) to throw q4tp::Error whose message contains `what`.
    static void expect_rejected(const AttentionParams& p, const std::string& what) {
        for (int path = 0; path < 2; ++path) {
            if (path == 0 && p.m > kMaxDecodeM) continue;
            try {
                if (path == 0) {
                    attention_decode(p, nullptr);
                } else {
                    attention_prefill(p, nullptr);
                }
                ADD_FAILURE() << (path == 0 ? "decode" : "prefill") << " accepted parameters it should reject ("
                              << what << ")";
            } catch (const Error& e) {
                EXPECT_NE(e.message().find(what), std::string::npos) << "message: " << e.message();
            }
        }
    }
};

TEST_F(CudaAttentionValidationTest, Rejects_UnsupportedHeadDim) {
    AttentionParams p = valid();
    p.head_dim = 96;
    expect_rejected(p, "head_dim = 96, expected 16, 32, 64 or 128");
}

TEST_F(CudaAttentionValidationTest, Rejects_HeadsNotMultipleOfKvHeads) {
    AttentionParams p = valid();
    p.num_heads = 6;
    p.num_kv_heads = 4;
    expect_rejected(p, "num_heads = 6 is not a positive multiple of num_kv_heads = 4");
}

TEST_F(CudaAttentionValidationTest, Rejects_NullPastLen) {
    AttentionParams p = valid();
    p.past_len = nullptr;
    expect_rejected(p, "null q, k_cache, v_cache, out or past_len pointer");
}

TEST_F(CudaAttentionValidationTest, Rejects_MisalignedCache) {
    AttentionParams p = valid();
    p.k_cache = reinterpret_cast<const __half*>(k_ + 1);
    expect_rejected(p, "16-byte aligned");
}

TEST_F(CudaAttentionValidationTest, Rejects_CapacityBelowM) {
    AttentionParams p = valid();
    p.capacity = 3;
    expect_rejected(p, "capacity = 3 is below m = 4");
}

TEST_F(CudaAttentionValidationTest, Rejects_OutAliasingQ) {
    AttentionParams p = valid();
    p.out = reinterpret_cast<__half*>(q_);
    expect_rejected(p, "out overlaps q, k_cache or v_cache");
}

TEST_F(CudaAttentionValidationTest, Rejects_ZeroM) {
    AttentionParams p = valid();
    p.m = 0;
    expect_rejected(p, "m = 0, expected >= 1");
}

TEST_F(CudaAttentionValidationTest, DecodeRejects_SmallWorkspace) {
    AttentionParams p = valid();
    const std::size_t need = attention_workspace_bytes(p.m, p.num_heads, p.num_kv_heads, p.head_dim, p.capacity);
    ASSERT_GT(need, 0u);
    p.workspace_bytes = need - 1;
    EXPECT_THROW(attention_decode(p, nullptr), Error);
    p.workspace = nullptr;
    p.workspace_bytes = need;
    EXPECT_THROW(attention_decode(p, nullptr), Error);
}

TEST_F(CudaAttentionValidationTest, DecodeRejects_MAboveMaxDecodeM) {
    AttentionParams p = valid();
    p.m = kMaxDecodeM + 1;
    p.capacity = 64;
    try {
        attention_decode(p, nullptr);
        ADD_FAILURE() << "attention_decode accepted m = " << p.m;
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("expected <= 8"), std::string::npos) << e.message();
    }
}

TEST(CudaAttentionWorkspaceTest, Size_GrowsWithM_ZeroAbovePrefillThreshold) {
    const int chunks = attention_decode_chunks(8, kCapacity);
    EXPECT_GE(chunks, 1);
    EXPECT_LE(chunks, kCapacity);
    // Partial outputs of head_dim floats plus one log-sum-exp per (row, chunk).
    EXPECT_EQ(attention_workspace_bytes(1, 64, 8, 128, kCapacity),
              static_cast<std::size_t>(64) * chunks * 129 * sizeof(float));
    EXPECT_EQ(attention_workspace_bytes(3, 64, 8, 128, kCapacity),
              3 * attention_workspace_bytes(1, 64, 8, 128, kCapacity));
    EXPECT_EQ(attention_workspace_bytes(kMaxDecodeM + 1, 64, 8, 128, kCapacity), 0u);
    // A tiny cache never gets more chunks than it has minimum-length pieces of keys.
    EXPECT_EQ(attention_decode_chunks(1, 1), 1);
    EXPECT_THROW(attention_workspace_bytes(1, 64, 8, 80, kCapacity), Error);
}

}  // namespace
}  // namespace q4tp::kernels::cuda
