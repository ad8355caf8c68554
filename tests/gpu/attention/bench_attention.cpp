// Micro-benchmark of kernels/cuda/attention: decode at a 1920-token context for Llama-2 7B (32/32 heads) and 70B
// on one GPU (64/8 heads), plus prefill chunks, printed as a table of microseconds per call and KV GB/s.
//
// Method (docs/kernels.md §7): each call runs on its own layer's cache, cycling over enough layers that the caches
// total >= 256 MiB (five times the 50 MiB L2), so KV comes from HBM as in the model; 8 passes over the layers are
// captured in one CUDA graph, the graph is replayed after a warm-up and the median replay / calls is reported.
// Decode bytes = K and V rows read (2 * nkv * (past + m) * d * 2 bytes) + q + out; prefill reports causal TFLOP/s
// (4 * nh * d * sum over rows of the keys each sees).
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/base/half.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/device_info.h"

namespace q4tp {
namespace {

using kernels::cuda::AttentionParams;

constexpr int kCapacity = 2048;
constexpr std::size_t kMinCacheBytes = std::size_t{256} << 20;
constexpr int kPasses = 8;
constexpr int kReplays = 15;
constexpr double kHbmSpecGBs = 3350.0;  // H100 SXM spec; docs/kernels.md measured 3020 GB/s for a copy

struct Case {
    const char* model;
    int num_heads;
    int num_kv_heads;
    int head_dim;
    int m;
    int past;
};

struct Result {
    double us_per_call = 0.0;
    int layers = 0;
};

Result run_case(const Case& c, cudaStream_t stream) {
    const std::size_t d = static_cast<std::size_t>(c.head_dim);
    const std::size_t cache_elems = static_cast<std::size_t>(c.num_kv_heads) * kCapacity * d;
    const std::size_t layer_bytes = 2 * cache_elems * sizeof(std::uint16_t);
    const int layers = static_cast<int>(std::max<std::size_t>(1, (kMinCacheBytes + layer_bytes - 1) / layer_bytes));

    // Random fp16 in [-1, 1): realistic magnitudes, no zeros (docs/kernels.md §7).
    std::mt19937_64 rng(12345);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<std::uint16_t> block(std::size_t{1} << 22);
    for (std::uint16_t& h : block) h = float_to_half(dist(rng));
    auto fill = [&](DeviceBuffer<std::uint16_t>& buf) {
        for (std::size_t at = 0; at < buf.size(); at += block.size()) {
            const std::size_t n = std::min(block.size(), buf.size() - at);
            Q4TP_CUDA_CHECK(
                cudaMemcpy(buf.data() + at, block.data(), n * sizeof(std::uint16_t), cudaMemcpyHostToDevice));
        }
    };
    DeviceBuffer<std::uint16_t> k_all(cache_elems * layers);
    DeviceBuffer<std::uint16_t> v_all(cache_elems * layers);
    fill(k_all);
    fill(v_all);
    DeviceBuffer<std::uint16_t> q(static_cast<std::size_t>(c.m) * c.num_heads * d);
    fill(q);
    DeviceBuffer<std::uint16_t> out(q.size());
    DeviceBuffer<std::int32_t> past(1);
    Q4TP_CUDA_CHECK(cudaMemcpy(past.data(), &c.past, sizeof(c.past), cudaMemcpyHostToDevice));
    const std::size_t ws_bytes =
        kernels::cuda::attention_workspace_bytes(c.m, c.num_heads, c.num_kv_heads, c.head_dim, kCapacity);
    DeviceBuffer<float> workspace((ws_bytes + sizeof(float) - 1) / sizeof(float));
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());

    AttentionParams p;
    p.q = reinterpret_cast<const __half*>(q.data());
    p.out = reinterpret_cast<__half*>(out.data());
    p.past_len = past.data();
    p.workspace = workspace.data();
    p.workspace_bytes = workspace.bytes();
    p.m = c.m;
    p.num_heads = c.num_heads;
    p.num_kv_heads = c.num_kv_heads;
    p.head_dim = c.head_dim;
    p.capacity = kCapacity;
    auto call_layer = [&](int layer) {
        p.k_cache = reinterpret_cast<const __half*>(k_all.data() + cache_elems * layer);
        p.v_cache = reinterpret_cast<const __half*>(v_all.data() + cache_elems * layer);
        kernels::cuda::attention(p, stream);
    };

    cudaGraph_t graph = nullptr;
    Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int pass = 0; pass < kPasses; ++pass) {
        for (int layer = 0; layer < layers; ++layer) call_layer(layer);
    }
    Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    Q4TP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));

    CudaEvent start;
    CudaEvent stop;
    for (int i = 0; i < 3; ++i) Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up: clocks, caches, TLB
    std::vector<double> ms;
    for (int i = 0; i < kReplays; ++i) {
        start.record(stream);
        Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        stop.record(stream);
        stop.synchronize();
        ms.push_back(stop.elapsed_ms_since(start));
    }
    Q4TP_CUDA_CHECK(cudaGraphExecDestroy(exec));
    Q4TP_CUDA_CHECK(cudaGraphDestroy(graph));
    std::sort(ms.begin(), ms.end());
    Result r;
    r.us_per_call = ms[ms.size() / 2] * 1000.0 / (static_cast<double>(kPasses) * layers);
    r.layers = layers;
    return r;
}

int run() {
    const kernels::cuda::DeviceInfo info = kernels::cuda::device_info(0);
    std::printf("device: %s, %d SMs, L2 %zu MiB; capacity %d, caches rotated over >= %zu MiB, graph of %d passes\n",
                info.name.c_str(), info.sm_count, info.l2_bytes >> 20, kCapacity, kMinCacheBytes >> 20, kPasses);
    const std::vector<Case> cases = {
        {"7B", 32, 32, 128, 1, 1919},      {"70B-TP1", 64, 8, 128, 1, 1919}, {"70B-TP2", 32, 4, 128, 1, 1919},
        {"7B", 32, 32, 128, 8, 1912},      {"70B-TP1", 64, 8, 128, 8, 1912}, {"7B", 32, 32, 128, 1, 511},
        {"7B", 32, 32, 128, 512, 1408},    {"7B", 32, 32, 128, 1920, 0},     {"70B-TP1", 64, 8, 128, 512, 1408},
    };
    CudaStream stream;
    std::printf("%-8s %5s %5s %5s %6s %6s %9s %8s %9s %7s %9s\n", "model", "heads", "kv", "d", "m", "ctx", "us/call",
                "KV MB", "GB/s", "%3.35T", "TFLOP/s");
    for (const Case& c : cases) {
        const Result r = run_case(c, stream.get());
        const int ctx = c.past + c.m;
        const double kv_bytes = 2.0 * c.num_kv_heads * ctx * c.head_dim * 2.0;
        const double act_bytes = 2.0 * c.m * c.num_heads * c.head_dim * 2.0;
        const double gbs = (kv_bytes + act_bytes) / (r.us_per_call * 1e3);
        // Causal FLOPs: row t sees past + t + 1 keys; q.k and p.v are 2 * d each per key.
        double keys_seen = 0.0;
        for (int t = 0; t < c.m; ++t) keys_seen += c.past + t + 1;
        const double tflops = 4.0 * c.num_heads * c.head_dim * keys_seen / (r.us_per_call * 1e6);
        std::printf("%-8s %5d %5d %5d %6d %6d %9.2f %8.2f %9.1f %6.1f%% %9.2f\n", c.model, c.num_heads,
                    c.num_kv_heads, c.head_dim, c.m, ctx, r.us_per_call, kv_bytes / 1e6, gbs,
                    100.0 * gbs / kHbmSpecGBs, tflops);
    }
    return 0;
}

}  // namespace
}  // namespace q4tp

int main() {
    try {
        return q4tp::run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_attention: %s\n", e.what());
        return 1;
    }
}
