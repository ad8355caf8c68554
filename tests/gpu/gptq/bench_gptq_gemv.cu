// Micro-benchmark of the int4 GPTQ GEMV on the real Llama-2 7B / 13B / 70B layer shapes (group size 128), and on one
// rank's share of 70B at TP=2.
//
// Method (docs/kernels.md §7): random prepared weights (never zeros), several copies per shape rotated so that the
// pool (>= 256 MB) is five times the 50 MB L2 and every launch reads cold weights; 200 launches captured in one CUDA
// graph, timed with events; median of 5 replays; the card's name printed. Bytes counted per launch are the weight
// stream only: qweight (K N / 2) + scales (2 G N) + zeros (G N / 2) with G = K / 128 (activations, outputs and
// split-K partials are < 1% and stay in L2). Roofline: 3.02 TB/s (device copy measured on this workplace's H100)
// and 3.35 TB/s (H100 SXM spec). The copy is re-measured on the card in hand and the % columns use that copy and
// the card's spec (an H200, 4.8 TB/s, may come instead of an H100).
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/device_buffer.h"
#include "core/base/error.h"
#include "kernels/cuda/gptq_gemv.h"

namespace {

using namespace q4tp;
namespace kc = q4tp::kernels::cuda;

constexpr int kLaunchesPerGraph = 200;
constexpr int kReplays = 5;
constexpr std::int64_t kGroupSize = 128;
constexpr double kPoolBytes = 256.0 * (1 << 20);
constexpr double kH100CopyTBs = 3.02;  // device copy measured on this workplace's H100 (performance.md)
constexpr double kH100SpecTBs = 3.35;
constexpr double kH200SpecTBs = 4.8;

struct Shape {
    const char* model;
    const char* layer;
    std::int64_t k;
    std::int64_t n;
    int layers;  // decoder layers of the model (for the per-token estimate)
};

const Shape kShapes[] = {
    {"7B", "qkv", 4096, 12288, 32},      {"7B", "o", 4096, 4096, 32},         {"7B", "gate+up", 4096, 22016, 32},
    {"7B", "down", 11008, 4096, 32},     {"13B", "qkv", 5120, 15360, 40},     {"13B", "o", 5120, 5120, 40},
    {"13B", "gate+up", 5120, 27648, 40}, {"13B", "down", 13824, 5120, 40},    {"70B", "qkv", 8192, 10240, 80},
    {"70B", "o", 8192, 8192, 80},        {"70B", "gate+up", 8192, 57344, 80}, {"70B", "down", 28672, 8192, 80},
    // One rank's share of 70B at TP=2 (columns or rows halved).
    {"70B/2", "qkv", 8192, 5120, 80},    {"70B/2", "o", 4096, 8192, 80},      {"70B/2", "gate+up", 8192, 28672, 80},
    {"70B/2", "down", 14336, 8192, 80},
};
std::vector<int> g_ms = {1, 2, 4, 8};  // --quick: {1}

__device__ std::uint32_t hash32(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return static_cast<std::uint32_t>(x ^ (x >> 31));
}

__global__ void fill_words(std::uint32_t* p, long long count, std::uint64_t seed) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        p[i] = hash32(seed * 0x100000001B3ull + static_cast<std::uint64_t>(i));
    }
}

//! Uniform in [lo, hi), never zero when lo > 0 or hi < 0.
__global__ void fill_halves(__half* p, long long count, std::uint64_t seed, float lo, float hi) {
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < count;
         i += static_cast<long long>(gridDim.x) * blockDim.x) {
        const float u = static_cast<float>(hash32(seed * 0x100000001B3ull + static_cast<std::uint64_t>(i)) >> 8) *
                        (1.0f / 16777216.0f);
        float v = lo + (hi - lo) * u;
        if (v == 0.0f) v = hi;
        p[i] = __float2half_rn(v);
    }
}

void check_launch() {
    Q4TP_CUDA_CHECK(cudaGetLastError());
}

struct Copy {
    DeviceBuffer<std::uint32_t> qweight;
    DeviceBuffer<std::uint16_t> scales;
    DeviceBuffer<std::uint32_t> zeros;
};

struct Result {
    const Shape* shape;
    int m;
    bool act;
    int splits;
    double us;
    double gbs;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

double measure_copy_tbs(cudaStream_t stream) {
    const std::size_t bytes = std::size_t{1} << 30;
    DeviceBuffer<std::byte> a(bytes), b(bytes);
    fill_words<<<1024, 256, 0, stream>>>(reinterpret_cast<std::uint32_t*>(a.data()), bytes / 4, 1);
    check_launch();
    cudaEvent_t e0, e1;
    Q4TP_CUDA_CHECK(cudaEventCreate(&e0));
    Q4TP_CUDA_CHECK(cudaEventCreate(&e1));
    Q4TP_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream));
    std::vector<double> ms;
    for (int i = 0; i < kReplays; ++i) {
        Q4TP_CUDA_CHECK(cudaEventRecord(e0, stream));
        Q4TP_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, stream));
        Q4TP_CUDA_CHECK(cudaEventRecord(e1, stream));
        Q4TP_CUDA_CHECK(cudaEventSynchronize(e1));
        float t = 0;
        Q4TP_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
        ms.push_back(t);
    }
    Q4TP_CUDA_CHECK(cudaEventDestroy(e0));
    Q4TP_CUDA_CHECK(cudaEventDestroy(e1));
    return 2.0 * static_cast<double>(bytes) / (median(ms) * 1e-3) / 1e12;  // read + write
}

double g_copy_tbs = kH100CopyTBs;
double g_spec_tbs = kH100SpecTBs;

std::vector<Result> bench_shape(const Shape& s, cudaStream_t stream, void* ws, std::size_t ws_bytes) {
    const std::int64_t groups = s.k / kGroupSize;
    const std::int64_t n_pad = (s.n + 31) / 32 * 32;
    const std::size_t qweight_words = static_cast<std::size_t>(s.k / 8 * n_pad);
    const std::size_t scale_count = static_cast<std::size_t>(groups * n_pad);
    const std::size_t zero_words = static_cast<std::size_t>(groups * n_pad / 8);
    const double bytes = 4.0 * qweight_words + 2.0 * scale_count + 4.0 * zero_words;
    const int copies = std::max(2, static_cast<int>(std::ceil(kPoolBytes / bytes)));

    std::vector<Copy> pool;
    for (int c = 0; c < copies; ++c) {
        Copy cp{DeviceBuffer<std::uint32_t>(qweight_words), DeviceBuffer<std::uint16_t>(scale_count),
                DeviceBuffer<std::uint32_t>(zero_words)};
        fill_words<<<1024, 256, 0, stream>>>(cp.qweight.data(), static_cast<long long>(qweight_words), 10 + c);
        check_launch();
        fill_halves<<<1024, 256, 0, stream>>>(reinterpret_cast<__half*>(cp.scales.data()),
                                              static_cast<long long>(scale_count), 1000 + c, 0.001f, 0.03f);
        check_launch();
        fill_words<<<1024, 256, 0, stream>>>(cp.zeros.data(), static_cast<long long>(zero_words), 2000 + c);
        check_launch();
        pool.push_back(std::move(cp));
    }
    // An act-order permutation (any permutation of the rows reads x the same way).
    std::vector<std::int32_t> perm_host(static_cast<std::size_t>(s.k));
    std::iota(perm_host.begin(), perm_host.end(), 0);
    std::shuffle(perm_host.begin(), perm_host.end(), std::mt19937_64(42));
    DeviceBuffer<std::int32_t> perm(perm_host.size());
    Q4TP_CUDA_CHECK(cudaMemcpy(perm.data(), perm_host.data(), perm.bytes(), cudaMemcpyHostToDevice));
    DeviceBuffer<std::uint16_t> x(static_cast<std::size_t>(8 * s.k));
    fill_halves<<<256, 256, 0, stream>>>(reinterpret_cast<__half*>(x.data()), static_cast<long long>(x.size()), 7,
                                         -2.0f, 2.0f);
    check_launch();
    DeviceBuffer<std::uint16_t> y(static_cast<std::size_t>(8 * s.n));
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));

    cudaEvent_t e0, e1;
    Q4TP_CUDA_CHECK(cudaEventCreate(&e0));
    Q4TP_CUDA_CHECK(cudaEventCreate(&e1));
    std::vector<Result> results;
    for (const bool act : {false, true}) {
        for (const int m : g_ms) {
            cudaGraph_t graph = nullptr;
            Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            for (int i = 0; i < kLaunchesPerGraph; ++i) {
                const Copy& cp = pool[static_cast<std::size_t>(i % copies)];
                kc::GptqGemvParams p;
                p.weights.qweight = cp.qweight.data();
                p.weights.scales = reinterpret_cast<const __half*>(cp.scales.data());
                p.weights.zeros = cp.zeros.data();
                p.weights.perm = act ? perm.data() : nullptr;
                p.weights.k = s.k;
                p.weights.n = s.n;
                p.weights.group_size = kGroupSize;
                p.m = m;
                p.x = reinterpret_cast<const __half*>(x.data());
                p.y = reinterpret_cast<__half*>(y.data());
                p.workspace = ws;
                p.workspace_bytes = ws_bytes;
                kc::gptq_gemv(p, stream);
            }
            Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
            cudaGraphExec_t exec = nullptr;
            Q4TP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
            Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up: clocks up, code loaded
            std::vector<double> ms;
            for (int r = 0; r < kReplays; ++r) {
                Q4TP_CUDA_CHECK(cudaEventRecord(e0, stream));
                Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));
                Q4TP_CUDA_CHECK(cudaEventRecord(e1, stream));
                Q4TP_CUDA_CHECK(cudaEventSynchronize(e1));
                float t = 0;
                Q4TP_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
                ms.push_back(t);
            }
            Q4TP_CUDA_CHECK(cudaGraphExecDestroy(exec));
            Q4TP_CUDA_CHECK(cudaGraphDestroy(graph));
            const double us = median(ms) * 1e3 / kLaunchesPerGraph;
            Result r{&s, m, act, kc::gptq_gemv_plan(m, s.k, s.n).splits, us, bytes / (us * 1e-6) / 1e9};
            std::printf(
                "%-5s %-8s K=%-6lld N=%-6lld MB=%-7.1f copies=%-3d m=%d act=%d splits=%-3d %8.2f us %7.0f GB/s"
                "  %5.1f%% of %.2f  %5.1f%% of %.2f\n",
                s.model, s.layer, static_cast<long long>(s.k), static_cast<long long>(s.n), bytes / 1e6, copies, m,
                act ? 1 : 0, r.splits, us, r.gbs, r.gbs / (g_copy_tbs * 10), g_copy_tbs, r.gbs / (g_spec_tbs * 10),
                g_spec_tbs);
            results.push_back(r);
        }
    }
    Q4TP_CUDA_CHECK(cudaEventDestroy(e0));
    Q4TP_CUDA_CHECK(cudaEventDestroy(e1));
    return results;
}

const Result& find(const std::vector<Result>& all, const Shape& s, int m, bool act) {
    for (const Result& r : all) {
        if (r.shape == &s && r.m == m && r.act == act) return r;
    }
    Q4TP_THROW("bench: no result for " << s.model << " " << s.layer << " m=" << m);
}

int run(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--quick") {
            g_ms = {1};
        } else {
            Q4TP_THROW("bench_gptq_gemv: unknown argument '" << arg << "' (expected --quick)");
        }
    }
    int device = 0;
    Q4TP_CUDA_CHECK(cudaGetDevice(&device));
    cudaDeviceProp prop{};
    Q4TP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    std::printf("card: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    cudaStream_t stream = nullptr;
    Q4TP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const double copy_tbs = measure_copy_tbs(stream);
    g_copy_tbs = copy_tbs;
    g_spec_tbs = std::string(prop.name).find("H200") != std::string::npos ? kH200SpecTBs : kH100SpecTBs;
    std::printf("device-to-device copy: %.2f TB/s (read + write); spec %.2f TB/s\n", copy_tbs, g_spec_tbs);

    DeviceBuffer<std::byte> ws(kc::gptq_gemv_workspace_bytes());
    kc::gptq_gemv_workspace_init(ws.data(), ws.bytes(), stream);
    std::vector<Result> all;
    for (const Shape& s : kShapes) {
        std::vector<Result> r = bench_shape(s, stream, ws.data(), ws.bytes());
        all.insert(all.end(), r.begin(), r.end());
    }

    std::printf("\n== GPTQ int4 GEMV, group 128, cold weights, median of %d x %d graph launches ==\n", kReplays,
                kLaunchesPerGraph);
    std::printf("card: %s; %% columns are of the copy measured now (%.2f TB/s) / of the spec (%.2f TB/s)\n", prop.name,
                copy_tbs, g_spec_tbs);
    const bool all_ms = g_ms.size() == 4;
    std::printf("%-5s %-8s %6s %6s | %-22s | %-22s", "mdl", "layer", "K", "N", "m=1 us  GB/s %copy/spec",
                "m=1 act-order");
    if (all_ms) std::printf(" | %7s %7s %7s | %-14s", "m=2 us", "m=4 us", "m=8 us", "m=8 GB/s %copy");
    std::printf("\n");
    for (const Shape& s : kShapes) {
        const Result& r1 = find(all, s, 1, false);
        const Result& a1 = find(all, s, 1, true);
        std::printf("%-5s %-8s %6lld %6lld | %6.1f %5.0f %3.0f/%3.0f | %6.1f %5.0f %3.0f/%3.0f", s.model, s.layer,
                    static_cast<long long>(s.k), static_cast<long long>(s.n), r1.us, r1.gbs, r1.gbs / (g_copy_tbs * 10),
                    r1.gbs / (g_spec_tbs * 10), a1.us, a1.gbs, a1.gbs / (g_copy_tbs * 10), a1.gbs / (g_spec_tbs * 10));
        if (all_ms) {
            const Result& r8 = find(all, s, 8, false);
            std::printf(" | %7.1f %7.1f %7.1f | %7.0f %5.0f%%", find(all, s, 2, false).us, find(all, s, 4, false).us,
                        r8.us, r8.gbs, r8.gbs / (g_copy_tbs * 10));
        }
        std::printf("\n");
    }
    // GEMV time per decoded token (m = 1) if the layers ran back to back like this, and the tokens/s it allows.
    std::string summary = "summary (GEMV us per token, m=1, in-order/act-order):";
    for (const char* model : {"7B", "13B", "70B", "70B/2"}) {
        for (const bool act : {false, true}) {
            double us = 0;
            int layers = 0;
            for (const Shape& s : kShapes) {
                if (std::string(s.model) != model) continue;
                us += find(all, s, 1, act).us;
                layers = s.layers;
            }
            std::printf("%-5s m=1 %-9s GEMVs per token: %7.0f us -> <= %4.0f tokens/s from the GEMVs alone\n", model,
                        act ? "act-order" : "in-order", us * layers, 1e6 / (us * layers));
            summary += (act ? "/" : std::string(" ") + model + "=") + std::to_string(static_cast<int>(us * layers));
        }
    }
    std::printf("%s\n", summary.c_str());
    Q4TP_CUDA_CHECK(cudaStreamDestroy(stream));
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_gptq_gemv: %s\n", e.what());
        return 1;
    }
}
