// GPU tests of programmatic dependent launch (kernels/cuda/pdl.h, common/pdl.cuh). The small kernels are chained as
// in a decode step of a two-layer model: embedding, RMSNorm, RoPE + KV append, attention, fused add + RMSNorm,
// SwiGLU, residual add, final norm, lm_head (cuBLAS), argmax and sampling, whose token is the next step's input. The
// chain runs eagerly and as a captured CUDA graph, each with PDL off and on, over several steps with new device-side
// positions; every kernel is deterministic, so all four runs must agree bit for bit at every step. A kernel that
// read its predecessor's output before pdl_wait(), or wrote a buffer its predecessor still reads (sample_rows
// rewrites the logits argmax_rows reads), would break that. The captured graphs are also checked for what PDL puts
// in them: one programmatic edge into every kernel of ours after the first when PDL is on, none when it is off.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/base/model_config.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/lm_head.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"
#include "tests/gpu/common/cuda_graph_util.h"
#include "tests/gpu/common/gpu_test_util.h"

namespace q4tp::kernels::cuda {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Shapes: a small GQA model (group 4), big enough for several decode chunks and two prefill tiles.

constexpr std::int64_t kHeads = 8;
constexpr std::int64_t kKvHeads = 2;
constexpr std::int64_t kHeadDim = 64;
constexpr std::int64_t kHidden = kHeads * kHeadDim;  // q is the attention-norm output itself
constexpr std::int64_t kKvDim = kKvHeads * kHeadDim;
constexpr std::int64_t kVocab = 1000;
constexpr std::int64_t kCapacity = 512;
constexpr int kLayers = 2;
constexpr std::int64_t kHistory = 16;
constexpr float kEps = 1e-5f;

// ---------------------------------------------------------------------------------------------------------------
// Helpers

//! Requests PDL on or off for one scope and restores the previous request.
class ScopedPdl {
public:
    explicit ScopedPdl(bool on) : saved_(pdl_enabled()) { set_pdl_enabled(on); }
    ~ScopedPdl() { set_pdl_enabled(saved_); }
    ScopedPdl(const ScopedPdl&) = delete;
    ScopedPdl& operator=(const ScopedPdl&) = delete;

private:
    bool saved_;
};

bool device_supports_pdl() {
    if (!test::gpu_available()) return false;
    int device = 0;
    Q4TP_CUDA_CHECK(cudaGetDevice(&device));
    return device_info(device).compute_capability >= 90;
}

//! Kernel nodes and programmatic edges of a graph.
struct GraphCounts {
    std::size_t kernel_nodes = 0;
    std::size_t programmatic_edges = 0;
};

cudaError_t graph_edges(cudaGraph_t graph, cudaGraphNode_t* from, cudaGraphNode_t* to, cudaGraphEdgeData* data,
                        std::size_t* count) {
#if CUDART_VERSION >= 13000
    return cudaGraphGetEdges(graph, from, to, data, count);
#else
    return cudaGraphGetEdges_v2(graph, from, to, data, count);  // CUDA 12.3 - 12.x
#endif
}

GraphCounts count_graph(cudaGraph_t graph) {
    GraphCounts counts;
    std::size_t node_count = 0;
    Q4TP_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &node_count));
    std::vector<cudaGraphNode_t> nodes(node_count);
    Q4TP_CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &node_count));
    for (cudaGraphNode_t node : nodes) {
        cudaGraphNodeType type{};
        Q4TP_CUDA_CHECK(cudaGraphNodeGetType(node, &type));
        counts.kernel_nodes += type == cudaGraphNodeTypeKernel ? 1 : 0;
    }
    std::size_t edge_count = 0;
    Q4TP_CUDA_CHECK(graph_edges(graph, nullptr, nullptr, nullptr, &edge_count));
    std::vector<cudaGraphNode_t> from(edge_count);
    std::vector<cudaGraphNode_t> to(edge_count);
    std::vector<cudaGraphEdgeData> data(edge_count);
    Q4TP_CUDA_CHECK(graph_edges(graph, from.data(), to.data(), data.data(), &edge_count));
    for (std::size_t i = 0; i < edge_count; ++i) {
        counts.programmatic_edges += data[i].type == cudaGraphDependencyTypeProgrammatic ? 1 : 0;
    }
    return counts;
}

__half* as_half(DeviceBuffer<std::uint16_t>& b) { return reinterpret_cast<__half*>(b.data()); }
const __half* as_half(const DeviceBuffer<std::uint16_t>& b) { return reinterpret_cast<const __half*>(b.data()); }

//! Random fp16 bits, never zero, in [lo, hi).
std::vector<std::uint16_t> random_half_bits(std::int64_t n, std::mt19937_64& rng, float lo = -1.0f, float hi = 1.0f) {
    return test::to_half_bits(test::random_floats(static_cast<std::size_t>(n), rng, lo, hi));
}

template <typename T>
void upload_async(DeviceBuffer<T>& dst, const std::vector<T>& src, cudaStream_t stream) {
    Q4TP_CHECK(dst.size() == src.size(), "upload of " << src.size() << " elements into " << dst.size());
    Q4TP_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), dst.bytes(), cudaMemcpyHostToDevice, stream));
}

//! Every buffer a step writes, copied back as bytes after the step.
struct Snapshot {
    std::vector<std::string> names;
    std::vector<std::vector<unsigned char>> bytes;

    const std::vector<unsigned char>& get(const std::string& name) const {
        for (std::size_t i = 0; i < names.size(); ++i) {
            if (names[i] == name) return bytes[i];
        }
        Q4TP_THROW("snapshot has no buffer '" << name << "'");
    }
    template <typename T>
    std::vector<T> values(const std::string& name) const {
        const auto& b = get(name);
        std::vector<T> v(b.size() / sizeof(T));
        std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
        return v;
    }
};

//! "" when a and b hold the same bytes, else the first buffer and byte that differ.
std::string first_difference(const Snapshot& a, const Snapshot& b) {
    if (a.names != b.names) return "different buffer lists";
    for (std::size_t i = 0; i < a.names.size(); ++i) {
        const auto& x = a.bytes[i];
        const auto& y = b.bytes[i];
        if (x.size() != y.size()) return a.names[i] + ": sizes differ";
        for (std::size_t j = 0; j < x.size(); ++j) {
            if (x[j] != y[j]) return a.names[i] + " differs first at byte " + std::to_string(j);
        }
    }
    return "";
}

// ---------------------------------------------------------------------------------------------------------------
// The chain

//! Weights, state and activations of the decode-step chain for m tokens per step.
class Chain {
public:
    Chain(std::int64_t m, int steps, std::mt19937_64& rng) : m_(m) {
        const auto mu = static_cast<std::size_t>(m);
        table_ = test::to_device(random_half_bits(kVocab * kHidden, rng));
        for (int l = 0; l < kLayers; ++l) {
            g_attn_.push_back(test::to_device(random_half_bits(kHidden, rng, 0.5f, 1.5f)));
            g_mlp_.push_back(test::to_device(random_half_bits(kHidden, rng, 0.5f, 1.5f)));
            table_k_.push_back(test::to_device(random_half_bits(kVocab * kKvDim, rng)));
            table_v_.push_back(test::to_device(random_half_bits(kVocab * kKvDim, rng)));
            k_cache0_.push_back(random_half_bits(kKvHeads * kCapacity * kHeadDim, rng));
            v_cache0_.push_back(random_half_bits(kKvHeads * kCapacity * kHeadDim, rng));
            k_cache_.emplace_back(k_cache0_.back().size());
            v_cache_.emplace_back(v_cache0_.back().size());
        }
        g_final_ = test::to_device(random_half_bits(kHidden, rng, 0.5f, 1.5f));
        // Small lm_head weights keep the logits O(1), so sampling has real choices to make.
        w_lm_ = test::to_device(random_half_bits(kVocab * kHidden, rng, -0.05f, 0.05f));
        ModelConfig config;
        config.head_dim = kHeadDim;
        inv_freq_ = test::to_device(cpu::rope_inv_freq(config).inv_freq);

        std::vector<SamplingOptions> options(mu);
        for (std::size_t r = 0; r < mu; ++r) {
            options[r].repetition_penalty = 1.3f;
            if (r % 3 == 2) options[r].temperature = 0.0f;  // greedy rows take the argmax path
        }
        options_ = test::to_device(options);

        std::uniform_int_distribution<std::int32_t> token(0, static_cast<std::int32_t>(kVocab - 1));
        ids0_.resize(mu);
        for (auto& id : ids0_) id = token(rng);
        history0_.resize(mu * kHistory);
        for (auto& id : history0_) id = token(rng);
        history_len0_.resize(mu);
        std::uniform_int_distribution<std::int64_t> len(0, 3 * kHistory);
        for (auto& n : history_len0_) n = len(rng);
        step0_ = {rng()};
        // Cache rows below the first position hold random "earlier tokens"; the steps append after them.
        const std::int64_t last_start = kCapacity - steps * m;
        Q4TP_CHECK(last_start > 1, "m = " << m << " x " << steps << " steps do not fit the cache");
        past0_ = std::uniform_int_distribution<std::int64_t>(1, last_start)(rng);

        ids_ = DeviceBuffer<std::int32_t>(mu);
        history_ = DeviceBuffer<std::int32_t>(history0_.size());
        history_len_ = DeviceBuffer<std::int64_t>(mu);
        step_ = DeviceBuffer<std::uint64_t>(1);
        positions_ = DeviceBuffer<std::int32_t>(mu);
        past_len_ = DeviceBuffer<std::int32_t>(1);
        for (auto* b : {&x_, &q_, &attn_, &h_, &act_, &y_}) *b = DeviceBuffer<std::uint16_t>(mu * kHidden);
        k_ = DeviceBuffer<std::uint16_t>(mu * kKvDim);
        v_ = DeviceBuffer<std::uint16_t>(mu * kKvDim);
        logits_ = DeviceBuffer<float>(mu * kVocab);
        greedy_ = DeviceBuffer<std::int32_t>(mu);
        const std::size_t ws_bytes = attention_workspace_bytes(static_cast<int>(m), kHeads, kKvHeads, kHeadDim,
                                                               kCapacity);
        attention_ws_ = DeviceBuffer<float>(ws_bytes / sizeof(float) + 1);
        attention_ws_bytes_ = ws_bytes;
        cublas_ws_ = DeviceBuffer<char>(kCublasWorkspaceBytes);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());  // to_device copied on the legacy stream
    }

    //! Restores everything the steps change and NaN-poisons the activations, so a run starts from scratch.
    void reset(cudaStream_t s) {
        upload_async(ids_, ids0_, s);
        upload_async(history_, history0_, s);
        upload_async(history_len_, history_len0_, s);
        upload_async(step_, step0_, s);
        for (int l = 0; l < kLayers; ++l) {
            upload_async(k_cache_[l], k_cache0_[l], s);
            upload_async(v_cache_[l], v_cache0_[l], s);
        }
        for (auto* b : {&x_, &q_, &attn_, &h_, &act_, &y_, &k_, &v_}) {
            Q4TP_CUDA_CHECK(cudaMemsetAsync(b->data(), 0xFF, b->bytes(), s));
        }
        Q4TP_CUDA_CHECK(cudaMemsetAsync(logits_.data(), 0xFF, logits_.bytes(), s));
        Q4TP_CUDA_CHECK(cudaMemsetAsync(greedy_.data(), 0xFF, greedy_.bytes(), s));
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(s));
    }

    //! The per-step values a replayed graph reads from device memory: the step's positions and past length.
    void set_step(int step, cudaStream_t s) {
        const std::int64_t past = past0_ + step * m_;
        positions_host_.resize(static_cast<std::size_t>(m_));
        for (std::int64_t t = 0; t < m_; ++t) positions_host_[static_cast<std::size_t>(t)] = static_cast<int>(past + t);
        past_host_ = {static_cast<std::int32_t>(past)};
        upload_async(positions_, positions_host_, s);
        upload_async(past_len_, past_host_, s);
    }

    //! One decode step of the two-layer chain; the sampled tokens overwrite ids_ for the next step.
    void enqueue(cudaStream_t s) {
        const std::int64_t mh = m_ * kHidden;
        embedding(ids_.data(), m_, as_half(table_), kVocab, kHidden, as_half(x_), s);
        for (int l = 0; l < kLayers; ++l) {
            rms_norm(as_half(x_), as_half(g_attn_[l]), m_, kHidden, kEps, as_half(q_), s);
            embedding(ids_.data(), m_, as_half(table_k_[l]), kVocab, kKvDim, as_half(k_), s);
            embedding(ids_.data(), m_, as_half(table_v_[l]), kVocab, kKvDim, as_half(v_), s);
            RopeAppendKvParams rope;
            rope.q = as_half(q_);
            rope.k = as_half(k_);
            rope.v = as_half(v_);
            rope.k_cache = as_half(k_cache_[l]);
            rope.v_cache = as_half(v_cache_[l]);
            rope.positions = positions_.data();
            rope.inv_freq = inv_freq_.data();
            rope.m = m_;
            rope.num_heads = kHeads;
            rope.num_kv_heads = kKvHeads;
            rope.head_dim = kHeadDim;
            rope.capacity = kCapacity;
            rope_append_kv(rope, s);
            AttentionParams att;
            att.q = as_half(q_);
            att.k_cache = as_half(k_cache_[l]);
            att.v_cache = as_half(v_cache_[l]);
            att.out = as_half(attn_);
            att.past_len = past_len_.data();
            att.workspace = attention_ws_.data();
            att.workspace_bytes = attention_ws_bytes_;
            att.m = static_cast<int>(m_);
            att.num_heads = kHeads;
            att.num_kv_heads = kKvHeads;
            att.head_dim = kHeadDim;
            att.capacity = kCapacity;
            attention(att, s);
            add_rms_norm(as_half(x_), as_half(attn_), as_half(g_mlp_[l]), m_, kHidden, kEps, as_half(h_), s);
            silu_mul(as_half(h_), as_half(q_), mh, as_half(act_), s);
            add_inplace(as_half(x_), as_half(act_), mh, s);
        }
        rms_norm(as_half(x_), as_half(g_final_), m_, kHidden, kEps, as_half(y_), s);
        enqueue_lm_head(s);
        argmax_rows(logits_.data(), m_, kVocab, greedy_.data(), s);
        SampleRowsParams sample;
        sample.logits = logits_.data();
        sample.m = m_;
        sample.vocab = kVocab;
        sample.options = options_.data();
        sample.history = history_.data();
        sample.history_len = history_len_.data();
        sample.history_capacity = kHistory;
        sample.append_to_history = true;
        sample.seed = 0x5EED0000ull + static_cast<std::uint64_t>(m_);
        sample.step = step_.data();
        sample.out = ids_.data();
        sample_rows(sample, s);
    }

    void enqueue_lm_head(cudaStream_t s) {
        LmHeadParams p;
        p.x = as_half(y_);
        p.weight = as_half(w_lm_);
        p.logits = logits_.data();
        p.m = m_;
        p.hidden = kHidden;
        p.vocab = kVocab;
        p.workspace = cublas_ws_.data();
        p.workspace_bytes = cublas_ws_.bytes();
        lm_head(cublas_.get(), p, s);
    }

    //! Waits for the stream and copies back every buffer a step writes.
    Snapshot snapshot(cudaStream_t s) {
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(s));
        Snapshot snap;
        add(snap, "x", x_);
        add(snap, "y", y_);
        add(snap, "q", q_);
        add(snap, "attn", attn_);
        add(snap, "logits", logits_);
        add(snap, "greedy", greedy_);
        add(snap, "ids", ids_);
        add(snap, "history", history_);
        add(snap, "history_len", history_len_);
        add(snap, "step", step_);
        for (int l = 0; l < kLayers; ++l) {
            add(snap, "k_cache[" + std::to_string(l) + "]", k_cache_[l]);
            add(snap, "v_cache[" + std::to_string(l) + "]", v_cache_[l]);
        }
        return snap;
    }

private:
    template <typename T>
    static void add(Snapshot& snap, const std::string& name, const DeviceBuffer<T>& b) {
        std::vector<unsigned char> host(b.bytes());
        Q4TP_CUDA_CHECK(cudaMemcpy(host.data(), b.data(), b.bytes(), cudaMemcpyDeviceToHost));
        snap.names.push_back(name);
        snap.bytes.push_back(std::move(host));
    }

    std::int64_t m_;
    // Weights (never written by a kernel).
    DeviceBuffer<std::uint16_t> table_, g_final_, w_lm_;
    std::vector<DeviceBuffer<std::uint16_t>> g_attn_, g_mlp_, table_k_, table_v_;
    DeviceBuffer<float> inv_freq_;
    DeviceBuffer<SamplingOptions> options_;
    // State the steps change, with its initial contents.
    std::vector<std::int32_t> ids0_, history0_;
    std::vector<std::int64_t> history_len0_;
    std::vector<std::uint64_t> step0_;
    std::vector<std::vector<std::uint16_t>> k_cache0_, v_cache0_;
    std::int64_t past0_ = 0;
    DeviceBuffer<std::int32_t> ids_, history_;
    DeviceBuffer<std::int64_t> history_len_;
    DeviceBuffer<std::uint64_t> step_;
    std::vector<DeviceBuffer<std::uint16_t>> k_cache_, v_cache_;
    // Per-step inputs.
    std::vector<std::int32_t> positions_host_, past_host_;
    DeviceBuffer<std::int32_t> positions_, past_len_;
    // Activations and scratch.
    DeviceBuffer<std::uint16_t> x_, q_, attn_, h_, act_, y_, k_, v_;
    DeviceBuffer<float> logits_;
    DeviceBuffer<std::int32_t> greedy_;
    DeviceBuffer<float> attention_ws_;
    std::size_t attention_ws_bytes_ = 0;
    DeviceBuffer<char> cublas_ws_;
    test::CublasHandle cublas_;
};

//! One run of `steps` steps from the chain's initial state: eager launches or replays of one captured graph.
struct RunResult {
    std::vector<Snapshot> steps;
    GraphCounts counts;  // graph runs only
};

RunResult run_chain(Chain& chain, bool graph, bool pdl, int steps, cudaStream_t s) {
    const ScopedPdl scoped(pdl);
    RunResult result;
    chain.reset(s);
    test::CudaGraph captured;
    if (graph) {
        captured.capture(s, [&] { chain.enqueue(s); });
        result.counts = count_graph(captured.graph());
    }
    for (int step = 0; step < steps; ++step) {
        chain.set_step(step, s);
        if (graph) {
            captured.launch(s);
        } else {
            chain.enqueue(s);
        }
        result.steps.push_back(chain.snapshot(s));
    }
    return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

TEST(PdlSwitchTest, RequestTogglesPdl_OnlyWhereTheDeviceSupportsIt) {
    const bool supported = device_supports_pdl();
    const ScopedPdl off(false);
    EXPECT_FALSE(pdl_enabled());
    set_pdl_enabled(true);
    EXPECT_EQ(pdl_enabled(), supported);
    set_pdl_enabled(false);
    EXPECT_FALSE(pdl_enabled());
}

struct ChainCase {
    std::int64_t m;  //!< tokens per step: 1 and 3 take the split-KV decode kernels, 72 the prefill kernel
    int steps;
};

class PdlChainTest : public ::testing::TestWithParam<ChainCase> {};

TEST_P(PdlChainTest, GraphAndEagerAgreeBitwise_WithPdlOnAndOff) {
    Q4TP_SKIP_WITHOUT_GPU();
    const ChainCase c = GetParam();
    std::mt19937_64 rng(test::test_seed() + static_cast<std::uint64_t>(c.m));
    Chain chain(c.m, c.steps, rng);
    CudaStream stream;
    const cudaStream_t s = stream.get();

    const RunResult reference = run_chain(chain, false, false, c.steps, s);
    // The reference must be a real computation: finite logits, tokens in range, and steps that differ (so equality
    // below cannot come from a graph that ignores the device-side positions or ids).
    for (int step = 0; step < c.steps; ++step) {
        const Snapshot& snap = reference.steps[static_cast<std::size_t>(step)];
        for (float l : snap.values<float>("logits")) ASSERT_TRUE(std::isfinite(l)) << "step " << step;
        for (std::int32_t id : snap.values<std::int32_t>("ids")) ASSERT_TRUE(id >= 0 && id < kVocab) << id;
        for (std::int32_t id : snap.values<std::int32_t>("greedy")) ASSERT_TRUE(id >= 0 && id < kVocab) << id;
        if (step > 0) {
            ASSERT_NE(snap.get("logits"), reference.steps[static_cast<std::size_t>(step - 1)].get("logits"))
                << "steps " << step - 1 << " and " << step << " computed the same logits";
        }
    }

    const RunResult eager_pdl = run_chain(chain, false, true, c.steps, s);
    const RunResult graph_plain = run_chain(chain, true, false, c.steps, s);
    const RunResult graph_pdl = run_chain(chain, true, true, c.steps, s);
    for (int step = 0; step < c.steps; ++step) {
        const auto i = static_cast<std::size_t>(step);
        EXPECT_EQ(first_difference(eager_pdl.steps[i], reference.steps[i]), "") << "eager with PDL, step " << step;
        EXPECT_EQ(first_difference(graph_plain.steps[i], reference.steps[i]), "") << "graph without PDL, step " << step;
        EXPECT_EQ(first_difference(graph_pdl.steps[i], reference.steps[i]), "") << "graph with PDL, step " << step;
    }

    // What PDL put into the graph. cuBLAS's own kernels are the same in both captures and cancel out; each of our
    // launches after the first follows a kernel and gets exactly one programmatic edge when PDL is on.
    ASSERT_EQ(graph_pdl.counts.kernel_nodes, graph_plain.counts.kernel_nodes);
    if (device_supports_pdl()) {
        test::CudaGraph lm_head_only;
        lm_head_only.capture(s, [&] { chain.enqueue_lm_head(s); });
        const GraphCounts cublas = count_graph(lm_head_only.graph());
        const std::size_t ours = graph_pdl.counts.kernel_nodes - cublas.kernel_nodes;
        EXPECT_EQ(graph_pdl.counts.programmatic_edges - graph_plain.counts.programmatic_edges, ours - 1)
            << graph_pdl.counts.kernel_nodes << " kernel nodes (" << cublas.kernel_nodes << " from cuBLAS); "
            << graph_pdl.counts.programmatic_edges << " programmatic edges with PDL, "
            << graph_plain.counts.programmatic_edges << " without";
    } else {
        EXPECT_EQ(graph_pdl.counts.programmatic_edges, graph_plain.counts.programmatic_edges);
    }
}

INSTANTIATE_TEST_SUITE_P(Tokens, PdlChainTest,
                         ::testing::Values(ChainCase{1, 6}, ChainCase{3, 5}, ChainCase{72, 3}),
                         [](const ::testing::TestParamInfo<ChainCase>& param_info) {
                             return "m" + std::to_string(param_info.param.m);
                         });

}  // namespace
}  // namespace q4tp::kernels::cuda
