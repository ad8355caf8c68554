// GPU tests of the int4 GPTQ GEMV and dequantizer (label gpu; skipped where no device is present).
//
// Oracles: (1) the double-precision GEMV over the fp32 reference dequantizer of tests/gpu/gptq (written from
// docs/formats.md R2.10, reading the checkpoint tensors, independent of the prepared layout), and (2) for the
// Llama-2-70B shapes, the dequantizer + cublasGemmEx (fp16 in, fp32 compute and output).
//
// Tolerance. The GEMV multiplies x by the exact weights s (q - z) (exact products: codes enter the tensor cores as
// exact subnormals, scales and zero points are applied per group in fp32), sums in fp32 and rounds the result
// (+ residual) to fp16 once. Against the double reference over the same exact weights:
//   |y - ref| <= half an fp16 ulp of the result (<= 2^-11 |ref|, 1.001 for the rounding of the fp32 value itself)
//              + the fp32 summation error, bounded by c * sum_k |x_k W_kn| ("abs") with c = 8e-6 (tensor-core fp32
//                accumulation over one group, the per-group s (sum q x - z sum x) step, the split-K sum; realistic
//                errors are ~1e-7 abs, the bound leaves room for truncating tensor-core adds)
//              + 1e-6 absolute for results near zero, where the fp16 grid is 2^-24.
// One wrong weight changes y by |x_k| |dW| ~ abs / K (>= 3.5e-5 abs for K <= 28672), above that bound.
// Against cuBLAS over the dequantizer's fp16 weights fp16(s (q - z)) (R2.11), each weight differs from the exact one
// by up to 2^-11 of itself, so c grows by 2^-11 there: that oracle catches gross errors (wrong tile, group, slice:
// ~abs / sqrt(K)) on the 70B shapes; sampled columns of the same runs are also checked against the exact host
// reference with the tight bound.
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/device_buffer.h"
#include "core/base/half.h"
#include "kernels/cuda/gptq_gemv.h"
#include "tests/gpu/common/gpu_test_util.h"
#include "tests/gpu/gptq/gptq_test_support.h"

namespace q4tp {
namespace {

namespace kc = kernels::cuda;
using gptq_test::DeviceLayer;
using gptq_test::GptqLayer;
using gptq_test::LayerSpec;

constexpr double kAccRelReference = 8e-6;
constexpr double kAccRelCublas = 1.0 / 2048.0 + 1e-5;
constexpr double kAtol = 1e-6;
constexpr double kHalfUlp = 1.001 / 2048.0;

const std::vector<int> kMs = {1, 2, 3, 4, 7, 8};

// Largest error-to-tolerance ratio of the current test, printed at its end to show how much margin is left.
double g_worst_ratio = 0.0;

__global__ void abs_half_kernel(__half* p, long long count) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        p[i] = __habs(p[i]);
    }
}

//! Activations or residuals: fp16 values uniform in [-2, 2), never zero, as fp16 bits and their exact floats.
struct HalfMatrix {
    std::vector<std::uint16_t> bits;  // [rows][ld]
    std::vector<float> dense;         // [rows][cols]
};

HalfMatrix random_half_matrix(int rows, std::int64_t cols, std::int64_t ld, std::mt19937_64& rng) {
    HalfMatrix h;
    h.bits.assign(static_cast<std::size_t>(rows * ld), float_to_half(NAN));
    h.dense.resize(static_cast<std::size_t>(rows * cols));
    const std::vector<float> v = test::random_floats(static_cast<std::size_t>(rows * cols), rng, -2.0f, 2.0f);
    for (int r = 0; r < rows; ++r) {
        for (std::int64_t c = 0; c < cols; ++c) {
            const std::uint16_t b = float_to_half(v[static_cast<std::size_t>(r * cols + c)]);
            h.bits[static_cast<std::size_t>(r * ld + c)] = b;
            h.dense[static_cast<std::size_t>(r * cols + c)] = half_to_float(b);
        }
    }
    return h;
}

//! Checks y (fp16 bits, [m][ldy]) against ref/abs ([m][n]): finite, within tolerance, padding columns untouched
//! (still NaN from the poison). Reports the worst error-to-tolerance ratio.
::testing::AssertionResult check_output(const std::vector<std::uint16_t>& y,
                                        int m,
                                        std::int64_t n,
                                        std::int64_t ldy,
                                        const std::vector<double>& ref,
                                        const std::vector<double>& abs,
                                        double acc_rel) {
    std::size_t bad = 0;
    double worst = 0.0;
    std::ostringstream report;
    for (int r = 0; r < m; ++r) {
        for (std::int64_t c = 0; c < ldy; ++c) {
            const float v = half_to_float(y[static_cast<std::size_t>(r * ldy + c)]);
            if (c >= n) {
                if (!std::isnan(v) && bad++ < 8) report << "\n  padding [" << r << "][" << c << "] written: " << v;
                continue;
            }
            const double want = ref[static_cast<std::size_t>(r * n + c)];
            const double tol = kHalfUlp * std::fabs(want) + acc_rel * abs[static_cast<std::size_t>(r * n + c)] + kAtol;
            const double err = std::fabs(static_cast<double>(v) - want);
            if (std::isfinite(v)) worst = std::max(worst, err / tol);
            if (!std::isfinite(v) || err > tol) {
                if (bad++ < 8) {
                    report << "\n  [" << r << "][" << c << "] got " << v << " want " << want << " (tol " << tol
                           << ", abs " << abs[static_cast<std::size_t>(r * n + c)] << ")";
                }
            }
        }
    }
    g_worst_ratio = std::max(g_worst_ratio, worst);
    if (bad == 0) return ::testing::AssertionSuccess() << "worst error/tolerance " << worst;
    return ::testing::AssertionFailure() << bad << " bad elements, worst error/tolerance " << worst << report.str();
}

//! One prepared layer on the device plus its host reference weights.
struct TestLayer {
    GptqLayer layer;
    DeviceLayer device;
    std::vector<float> w;  // exact reference weights s (q - z) [K][N]; empty for the cuBLAS-checked shapes
};

TestLayer make_test_layer(const LayerSpec& spec, std::mt19937_64& rng, bool host_reference = true) {
    TestLayer t;
    t.layer = gptq_test::make_random_layer(spec, rng);
    t.device = gptq_test::upload(gptq_test::prepare(t.layer));
    if (host_reference) t.w = gptq_test::reference_dequantize(t.layer, false);
    return t;
}

//! Options of one GEMV run.
struct RunOptions {
    std::int64_t x_pad = 0;  // ldx = K + x_pad
    std::int64_t y_pad = 0;  // ldy = N + y_pad
    bool residual = false;
    bool in_place = false;  // residual is y itself
};

struct RunResult {
    std::vector<std::uint16_t> y;  // [m][ldy]
    std::vector<double> ref;       // [m][n]
    std::vector<double> abs;
    std::int64_t ldy = 0;
};

//! Fresh random x (and residual), poisoned y, one launch, and the double reference.
RunResult run_gemv(const TestLayer& t,
                   int m,
                   const RunOptions& opt,
                   std::mt19937_64& rng,
                   DeviceBuffer<std::byte>& ws,
                   cudaStream_t stream) {
    const std::int64_t k = t.layer.spec.k;
    const std::int64_t n = t.layer.spec.n;
    RunResult out;
    out.ldy = n + opt.y_pad;
    const HalfMatrix x = random_half_matrix(m, k, k + opt.x_pad, rng);
    DeviceBuffer<std::uint16_t> dx = test::to_device(x.bits);
    DeviceBuffer<std::uint16_t> dy(static_cast<std::size_t>(m * out.ldy));
    test::poison(dy);
    HalfMatrix res;
    DeviceBuffer<std::uint16_t> dres;
    if (opt.residual) {
        res = random_half_matrix(m, n, out.ldy, rng);
        if (opt.in_place) {
            Q4TP_CUDA_CHECK(cudaMemcpy(dy.data(), res.bits.data(), dy.bytes(), cudaMemcpyHostToDevice));
        } else {
            dres = test::to_device(res.bits);
        }
    }
    kc::GptqGemvParams p;
    p.weights = t.device.view();
    p.m = m;
    p.x = reinterpret_cast<const __half*>(dx.data());
    p.ldx = k + opt.x_pad;
    p.y = reinterpret_cast<__half*>(dy.data());
    p.ldy = out.ldy;
    if (opt.residual) {
        p.residual = opt.in_place ? p.y : reinterpret_cast<const __half*>(dres.data());
        p.ldr = out.ldy;
    }
    p.workspace = ws.data();
    p.workspace_bytes = ws.bytes();
    kc::gptq_gemv(p, stream);
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));
    out.y = test::to_host(dy);
    gptq_test::reference_gemv(t.w, k, n, x.dense, m, out.ref, out.abs);
    if (opt.residual) {
        for (int r = 0; r < m; ++r) {
            for (std::int64_t c = 0; c < n; ++c) {
                const double v = res.dense[static_cast<std::size_t>(r * n + c)];
                out.ref[static_cast<std::size_t>(r * n + c)] += v;
                out.abs[static_cast<std::size_t>(r * n + c)] += std::fabs(v);
            }
        }
    }
    return out;
}

DeviceBuffer<std::byte> make_workspace(std::size_t bytes) {
    DeviceBuffer<std::byte> ws(bytes);
    kc::gptq_gemv_workspace_init(ws.data(), ws.bytes(), nullptr);
    return ws;
}

//! Sweeps m over one layer with a mix of options (strided x, padded y, residual, in place).
void sweep_m(const TestLayer& t, std::mt19937_64& rng) {
    DeviceBuffer<std::byte> ws =
        make_workspace(kc::gptq_gemv_workspace_bytes(kc::kGptqGemvMaxM, t.device.k_rows, t.layer.spec.n));
    for (const int m : kMs) {
        RunOptions opt;
        opt.x_pad = m == 2 ? 8 : 0;
        opt.y_pad = m == 4 ? 8 : 0;
        opt.residual = m == 3 || m == 7;
        opt.in_place = m == 7;
        SCOPED_TRACE("m=" + std::to_string(m) +
                     " splits=" + std::to_string(kc::gptq_gemv_plan(m, t.device.k_rows, t.layer.spec.n).splits));
        const RunResult r = run_gemv(t, m, opt, rng, ws, nullptr);
        ASSERT_TRUE(check_output(r.y, m, t.layer.spec.n, r.ldy, r.ref, r.abs, kAccRelReference));
    }
}

class GptqGemvTest : public ::testing::Test {
   protected:
    void SetUp() override {
        Q4TP_SKIP_WITHOUT_GPU();
        g_worst_ratio = 0.0;
    }
    void TearDown() override { std::printf("[ margin   ] worst error/tolerance %.3f\n", g_worst_ratio); }
};

// ---- against the host reference --------------------------------------------------------------------

TEST_F(GptqGemvTest, MatchesReference_SmallShapes) {
    std::mt19937_64 rng(test::test_seed());
    // (32, 32) and (96, 296): one CTA, N not a multiple of 32; (2048, 96): split-K with a partial tile.
    const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{32, 32}, {96, 8 * 37}, {2048, 96}};
    for (const auto& [k, n] : shapes) {
        for (const std::int64_t gs : {32, 64, 128, -1}) {
            for (const bool act : {false, true}) {
                for (const ZeroFormat fmt : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
                    for (const bool sym : {true, false}) {
                        const LayerSpec spec{k, n, gs, fmt, act, sym};
                        SCOPED_TRACE(spec.str());
                        const TestLayer t = make_test_layer(spec, rng);
                        sweep_m(t, rng);
                        if (HasFatalFailure()) return;
                    }
                }
            }
        }
    }
}

TEST_F(GptqGemvTest, MatchesReference_LlamaShapes) {
    std::mt19937_64 rng(test::test_seed() + 1);
    const std::vector<LayerSpec> specs = {
        {4096, 4096, 128, ZeroFormat::GptqV1, true, true},   {4096, 4096, 32, ZeroFormat::GptqV2, false, false},
        {11008, 4096, 128, ZeroFormat::GptqV2, true, false}, {11008, 4096, -1, ZeroFormat::GptqV1, false, true},
        {4096, 11008, 64, ZeroFormat::GptqV1, true, false},  {4096, 11008, 128, ZeroFormat::GptqV1, false, true},
        {8192, 1024, 128, ZeroFormat::GptqV1, true, true},   {8192, 1024, -1, ZeroFormat::GptqV2, false, false},
    };
    for (const LayerSpec& spec : specs) {
        SCOPED_TRACE(spec.str());
        const TestLayer t = make_test_layer(spec, rng);
        sweep_m(t, rng);
        if (HasFatalFailure()) return;
    }
}

// Row shards as tensor parallelism loads them (o_proj / down_proj on rank r of N): an act-order layer's shard holds
// parts of scattered groups, so the prepared layout pads groups to whole k-blocks and reads a block-group table.
TestLayer make_shard_layer(const LayerSpec& full, std::int64_t begin, std::int64_t end, std::mt19937_64& rng) {
    TestLayer t;
    t.layer = gptq_test::row_shard(gptq_test::make_random_layer(full, rng), begin, end);
    t.device = gptq_test::upload(gptq_test::prepare(t.layer));
    t.w = gptq_test::reference_dequantize(t.layer, false);
    return t;
}

TEST_F(GptqGemvTest, MatchesReference_ActOrderRowShards) {
    std::mt19937_64 rng(test::test_seed() + 11);
    struct Case {
        LayerSpec full;
        std::int64_t begin, end;
    };
    const std::vector<Case> cases = {
        {{1024, 96, 128, ZeroFormat::GptqV1, true, false}, 0, 512},        // TP=2 rank 0
        {{1024, 96, 64, ZeroFormat::GptqV2, true, true}, 512, 1024},       // TP=2 rank 1
        {{1024, 296, 32, ZeroFormat::GptqV1, true, false}, 256, 512},      // TP=4 rank 1
        {{2048, 520, 128, ZeroFormat::GptqV1, true, true}, 96, 1376},      // uneven cut, not group aligned
        {{8192, 1024, 128, ZeroFormat::GptqV2, true, false}, 4096, 8192},  // 70B o_proj rows at TP=2, split-K
        {{2048, 96, 128, ZeroFormat::GptqV1, false, false}, 1024, 2048},   // in order: stays unpadded
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.full.str() + " rows [" + std::to_string(c.begin) + ", " + std::to_string(c.end) + ")");
        const TestLayer t = make_shard_layer(c.full, c.begin, c.end, rng);
        EXPECT_EQ(t.device.k_rows > t.device.k, c.full.act_order) << "padding expected exactly for act-order shards";
        sweep_m(t, rng);
        if (HasFatalFailure()) return;
    }
}

// ---- determinism, graphs, residual in place, shared workspace ---------------------------------------

TEST_F(GptqGemvTest, GraphReplayEqualsEager_SplitK) {
    std::mt19937_64 rng(test::test_seed() + 2);
    const TestLayer t = make_test_layer({4096, 4096, 128, ZeroFormat::GptqV1, true, false}, rng);
    DeviceBuffer<std::byte> ws = make_workspace(kc::gptq_gemv_workspace_bytes());
    cudaStream_t stream = nullptr;
    Q4TP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    for (const int m : {1, 4, 8}) {
        SCOPED_TRACE("m=" + std::to_string(m));
        ASSERT_GT(kc::gptq_gemv_plan(m, 4096, 4096).splits, 1) << "this test must exercise the split-K reduction";
        const HalfMatrix x = random_half_matrix(m, 4096, 4096, rng);
        DeviceBuffer<std::uint16_t> dx = test::to_device(x.bits);
        DeviceBuffer<std::uint16_t> dy(static_cast<std::size_t>(m * 4096));
        kc::GptqGemvParams p;
        p.weights = t.device.view();
        p.m = m;
        p.x = reinterpret_cast<const __half*>(dx.data());
        p.y = reinterpret_cast<__half*>(dy.data());
        p.workspace = ws.data();
        p.workspace_bytes = ws.bytes();

        test::poison(dy);
        kc::gptq_gemv(p, stream);
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));
        const std::vector<std::uint16_t> eager = test::to_host(dy);
        std::vector<double> ref, abs;
        gptq_test::reference_gemv(t.w, 4096, 4096, x.dense, m, ref, abs);
        ASSERT_TRUE(check_output(eager, m, 4096, 4096, ref, abs, kAccRelReference));

        test::poison(dy);
        kc::gptq_gemv(p, stream);
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));
        EXPECT_EQ(test::to_host(dy), eager) << "two eager launches differ: the split-K sum is not deterministic";

        cudaGraph_t graph = nullptr;
        Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        kc::gptq_gemv(p, stream);
        Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        cudaGraphExec_t exec = nullptr;
        Q4TP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        for (int replay = 0; replay < 3; ++replay) {
            Q4TP_CUDA_CHECK(cudaMemsetAsync(dy.data(), 0xFF, dy.bytes(), stream));
            Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));
            Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));
            EXPECT_EQ(test::to_host(dy), eager) << "graph replay " << replay << " differs from the eager launch";
        }
        Q4TP_CUDA_CHECK(cudaGraphExecDestroy(exec));
        Q4TP_CUDA_CHECK(cudaGraphDestroy(graph));
    }
    Q4TP_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST_F(GptqGemvTest, InPlaceResidual_SplitKAndSingleSlice) {
    std::mt19937_64 rng(test::test_seed() + 3);
    // 4096 x 4096 splits K; 256 x 57344 (wide, short) runs one slice per CTA.
    for (const LayerSpec& spec : {LayerSpec{4096, 4096, 64, ZeroFormat::GptqV2, true, false},
                                  LayerSpec{256, 57344, 128, ZeroFormat::GptqV1, false, false}}) {
        SCOPED_TRACE(spec.str());
        const TestLayer t = make_test_layer(spec, rng);
        DeviceBuffer<std::byte> ws = make_workspace(kc::gptq_gemv_workspace_bytes());
        for (const int m : {1, 5, 8}) {
            RunOptions opt;
            opt.residual = true;
            opt.in_place = true;
            const RunResult r = run_gemv(t, m, opt, rng, ws, nullptr);
            ASSERT_TRUE(check_output(r.y, m, spec.n, r.ldy, r.ref, r.abs, kAccRelReference)) << "m=" << m;
        }
    }
}

TEST_F(GptqGemvTest, SharedWorkspace_AlternatingShapes) {
    // Layers of different widths share one workspace: each must find its counters clear after the other ran.
    std::mt19937_64 rng(test::test_seed() + 4);
    const TestLayer a = make_test_layer({4096, 1024, 128, ZeroFormat::GptqV1, false, true}, rng);
    const TestLayer b = make_test_layer({2048, 12288, 128, ZeroFormat::GptqV1, true, false}, rng);
    DeviceBuffer<std::byte> ws = make_workspace(kc::gptq_gemv_workspace_bytes());
    for (int round = 0; round < 3; ++round) {
        for (const TestLayer* t : {&a, &b}) {
            const int m = 1 + round * 3;
            const RunResult r = run_gemv(*t, m, RunOptions{}, rng, ws, nullptr);
            ASSERT_TRUE(check_output(r.y, m, t->layer.spec.n, r.ldy, r.ref, r.abs, kAccRelReference))
                << t->layer.spec.str() << " round " << round;
        }
    }
}

// ---- the dequantizer ---------------------------------------------------------------------------------

class GptqDequantTest : public ::testing::Test {
   protected:
    void SetUp() override { Q4TP_SKIP_WITHOUT_GPU(); }
};

void check_dequant_bit_exact(const TestLayer& t, std::int64_t ldw_pad) {
    const std::vector<float> want = gptq_test::reference_dequantize(t.layer, true);
    const std::int64_t k = t.layer.spec.k;
    const std::int64_t n = t.layer.spec.n;
    const std::int64_t ldw = n + ldw_pad;
    DeviceBuffer<std::uint16_t> dw(static_cast<std::size_t>(k * ldw));
    test::poison(dw);
    kc::GptqDequantParams p;
    p.weights = t.device.view();
    p.w = reinterpret_cast<__half*>(dw.data());
    p.ldw = ldw;
    kc::gptq_dequantize(p, nullptr);
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<std::uint16_t> got = test::to_host(dw);
    std::size_t bad = 0;
    for (std::int64_t row = 0; row < k; ++row) {
        for (std::int64_t c = 0; c < ldw; ++c) {
            const float v = half_to_float(got[static_cast<std::size_t>(row * ldw + c)]);
            const bool ok = c < n ? v == want[static_cast<std::size_t>(row * n + c)] : std::isnan(v);
            if (!ok && bad++ < 8) {
                ADD_FAILURE() << "W[" << row << "][" << c << "] = " << v << ", want "
                              << (c < n ? want[static_cast<std::size_t>(row * n + c)] : NAN);
            }
        }
    }
    EXPECT_EQ(bad, 0u);
}

TEST_F(GptqDequantTest, BitExact_SmallShapes) {
    std::mt19937_64 rng(test::test_seed() + 5);
    for (const auto& [k, n] : std::vector<std::pair<std::int64_t, std::int64_t>>{{32, 32}, {96, 296}, {512, 520}}) {
        for (const std::int64_t gs : {32, 64, 128, -1}) {
            for (const bool act : {false, true}) {
                for (const ZeroFormat fmt : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
                    const LayerSpec spec{k, n, gs, fmt, act, fmt == ZeroFormat::GptqV1};
                    SCOPED_TRACE(spec.str());
                    check_dequant_bit_exact(make_test_layer(spec, rng), gs == 64 ? 8 : 0);
                    if (HasFailure()) return;
                }
            }
        }
    }
}

// Prefill dequantizes wide layers a column slice at a time (CudaOps::kPrefillDequantColumns): each slice lands in
// columns 0.. of its own buffer, bit-exact, nothing written past the slice.
TEST_F(GptqDequantTest, BitExact_ColumnSlices) {
    std::mt19937_64 rng(test::test_seed() + 13);
    for (const bool act : {false, true}) {
        const LayerSpec spec{512, 8 * 129, 64, ZeroFormat::GptqV1, act, false};
        SCOPED_TRACE(spec.str());
        const TestLayer t = make_test_layer(spec, rng, false);
        const std::vector<float> want = gptq_test::reference_dequantize(t.layer, true);
        const std::int64_t n = spec.n;
        for (const auto& [begin, columns] :
             std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 256}, {256, 512}, {768, n - 768}, {512, 8}}) {
            const std::int64_t ldw = columns + 8;
            DeviceBuffer<std::uint16_t> dw(static_cast<std::size_t>(spec.k * ldw));
            test::poison(dw);
            kc::GptqDequantParams p;
            p.weights = t.device.view();
            p.w = reinterpret_cast<__half*>(dw.data());
            p.ldw = ldw;
            p.column_begin = begin;
            p.columns = columns;
            kc::gptq_dequantize(p, nullptr);
            Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
            const std::vector<std::uint16_t> got = test::to_host(dw);
            std::size_t bad = 0;
            for (std::int64_t row = 0; row < spec.k; ++row) {
                for (std::int64_t c = 0; c < ldw; ++c) {
                    const float v = half_to_float(got[static_cast<std::size_t>(row * ldw + c)]);
                    const bool ok =
                        c < columns ? v == want[static_cast<std::size_t>(row * n + begin + c)] : std::isnan(v);
                    if (!ok && bad++ < 4) ADD_FAILURE() << "slice at " << begin << ": W[" << row << "][" << c << "]";
                }
            }
            ASSERT_EQ(bad, 0u);
        }
    }
}

TEST_F(GptqDequantTest, BitExact_ActOrderRowShards) {
    std::mt19937_64 rng(test::test_seed() + 12);
    for (const auto& [begin, end] :
         std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 512}, {512, 1024}, {96, 736}}) {
        for (const std::int64_t gs : {32, 128}) {
            const LayerSpec full{1024, 296, gs, ZeroFormat::GptqV1, true, false};
            SCOPED_TRACE(full.str() + " rows [" + std::to_string(begin) + ", " + std::to_string(end) + ")");
            TestLayer t;
            t.layer = gptq_test::row_shard(gptq_test::make_random_layer(full, rng), begin, end);
            t.device = gptq_test::upload(gptq_test::prepare(t.layer));
            ASSERT_GT(t.device.k_rows, t.device.k);
            check_dequant_bit_exact(t, gs == 32 ? 8 : 0);
            if (HasFailure()) return;
        }
    }
}

TEST_F(GptqDequantTest, BitExact_LlamaShape_ActOrder) {
    std::mt19937_64 rng(test::test_seed() + 6);
    check_dequant_bit_exact(make_test_layer({11008, 4096, 128, ZeroFormat::GptqV2, true, false}, rng), 0);
}

// ---- Llama-2-70B shapes against dequantize + cuBLAS ----------------------------------------------------

TEST_F(GptqGemvTest, MatchesCublas_Llama70BShapes) {
    std::mt19937_64 rng(test::test_seed() + 7);
    cublasHandle_t handle = nullptr;
    Q4TP_CUBLAS_CHECK(cublasCreate(&handle));
    DeviceBuffer<std::byte> ws = make_workspace(kc::gptq_gemv_workspace_bytes());
    const std::vector<LayerSpec> specs = {
        {8192, 10240, 128, ZeroFormat::GptqV1, true, true},    // fused q/k/v
        {8192, 8192, 128, ZeroFormat::GptqV1, true, false},    // o_proj
        {8192, 57344, 128, ZeroFormat::GptqV2, false, false},  // fused gate + up
        {28672, 8192, 128, ZeroFormat::GptqV1, true, true},    // down_proj
    };
    for (const LayerSpec& spec : specs) {
        SCOPED_TRACE(spec.str());
        const std::int64_t k = spec.k;
        const std::int64_t n = spec.n;
        const TestLayer t = make_test_layer(spec, rng, false);
        DeviceBuffer<std::uint16_t> dw(static_cast<std::size_t>(k * n));
        kc::GptqDequantParams dq;
        dq.weights = t.device.view();
        dq.w = reinterpret_cast<__half*>(dw.data());
        dq.ldw = n;
        kc::gptq_dequantize(dq, nullptr);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        // Tie the oracle to the reference: 16 random rows of the device W equal the host reference bitwise.
        std::uniform_int_distribution<std::int64_t> row_dist(0, k - 1);
        for (int i = 0; i < 16; ++i) {
            const std::int64_t row = row_dist(rng);
            std::vector<std::uint16_t> got(static_cast<std::size_t>(n));
            Q4TP_CUDA_CHECK(cudaMemcpy(got.data(), dw.data() + row * n, n * 2, cudaMemcpyDeviceToHost));
            const std::vector<float> want = gptq_test::reference_dequantize_row(t.layer, row, true);
            for (std::int64_t c = 0; c < n; ++c) {
                ASSERT_EQ(half_to_float(got[static_cast<std::size_t>(c)]), want[static_cast<std::size_t>(c)])
                    << "row " << row << " column " << c;
            }
        }
        for (const int m : {1, 2, 4, 8}) {
            SCOPED_TRACE("m=" + std::to_string(m));
            const HalfMatrix x = random_half_matrix(m, k, k, rng);
            std::vector<std::uint16_t> x_abs(x.bits.size());
            for (std::size_t i = 0; i < x.bits.size(); ++i) x_abs[i] = static_cast<std::uint16_t>(x.bits[i] & 0x7FFFu);
            DeviceBuffer<std::uint16_t> dx = test::to_device(x.bits);
            DeviceBuffer<std::uint16_t> dy(static_cast<std::size_t>(m * n));
            test::poison(dy);
            kc::GptqGemvParams p;
            p.weights = t.device.view();
            p.m = m;
            p.x = reinterpret_cast<const __half*>(dx.data());
            p.y = reinterpret_cast<__half*>(dy.data());
            p.workspace = ws.data();
            p.workspace_bytes = ws.bytes();
            kc::gptq_gemv(p, nullptr);
            // Row-major y[m][n] = x[m][k] W[k][n] is column-major y^T = W^T x^T (W^T: n x k, ld n).
            DeviceBuffer<float> dref(static_cast<std::size_t>(m * n));
            const float one = 1.0f, zero = 0.0f;
            Q4TP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), m,
                                           static_cast<int>(k), &one, dw.data(), CUDA_R_16F, static_cast<int>(n),
                                           dx.data(), CUDA_R_16F, static_cast<int>(k), &zero, dref.data(), CUDA_R_32F,
                                           static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
            const std::vector<std::uint16_t> y = test::to_host(dy);
            const std::vector<float> ref32 = test::to_host(dref);
            // sum |x| |W|: the same GEMM on absolute values (W made absolute in a copy).
            DeviceBuffer<std::uint16_t> dw_abs(dw.size());
            Q4TP_CUDA_CHECK(cudaMemcpy(dw_abs.data(), dw.data(), dw.bytes(), cudaMemcpyDeviceToDevice));
            abs_half_kernel<<<1024, 256>>>(reinterpret_cast<__half*>(dw_abs.data()), static_cast<long long>(dw.size()));
            Q4TP_CUDA_CHECK(cudaGetLastError());
            DeviceBuffer<std::uint16_t> dx_abs = test::to_device(x_abs);
            Q4TP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), m,
                                           static_cast<int>(k), &one, dw_abs.data(), CUDA_R_16F, static_cast<int>(n),
                                           dx_abs.data(), CUDA_R_16F, static_cast<int>(k), &zero, dref.data(),
                                           CUDA_R_32F, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
            const std::vector<float> abs32 = test::to_host(dref);
            const std::vector<double> ref(ref32.begin(), ref32.end());
            const std::vector<double> abs(abs32.begin(), abs32.end());
            ASSERT_TRUE(check_output(y, m, n, n, ref, abs, kAccRelCublas));
            // 8 sampled columns against the exact host reference, with the tight bound.
            std::uniform_int_distribution<std::int64_t> col_dist(0, n - 1);
            for (int i = 0; i < 8; ++i) {
                const std::int64_t col = col_dist(rng);
                std::vector<double> cref(static_cast<std::size_t>(m), 0.0), cabs(static_cast<std::size_t>(m), 0.0);
                for (std::int64_t kk = 0; kk < k; ++kk) {
                    const double w = gptq_test::reference_weight(t.layer, kk, col);
                    for (int r = 0; r < m; ++r) {
                        const double xv = x.dense[static_cast<std::size_t>(r * k + kk)];
                        cref[static_cast<std::size_t>(r)] += xv * w;
                        cabs[static_cast<std::size_t>(r)] += std::fabs(xv * w);
                    }
                }
                std::vector<std::uint16_t> ycol(static_cast<std::size_t>(m));
                for (int r = 0; r < m; ++r)
                    ycol[static_cast<std::size_t>(r)] = y[static_cast<std::size_t>(r * n + col)];
                ASSERT_TRUE(check_output(ycol, m, 1, 1, cref, cabs, kAccRelReference)) << "column " << col;
            }
        }
    }
    Q4TP_CUBLAS_CHECK(cublasDestroy(handle));
}

}  // namespace
}  // namespace q4tp
