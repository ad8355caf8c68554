#include "core/model/cuda_ops.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/logging.h"
#include "core/model/lamport_group.h"
#include "core/model/sampling.h"
#include "core/model/synthetic.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/fused_all_reduce.h"
#include "kernels/cuda/gptq_gemv.h"
#include "kernels/cuda/gptq_prepare.h"
#include "kernels/cuda/lm_head.h"
#include "kernels/cuda/random_fill.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"
#include "loaders/gptq.h"
#include "parallel/ipc_all_reduce.h"

namespace q4tp::model {
namespace {

namespace kc = kernels::cuda;

__half* half_ptr(const TensorView& t) {
    return static_cast<__half*>(t.data);
}
std::int64_t last_dim(const TensorView& t) {
    return t.shape[t.shape.rank() - 1];
}
std::int64_t outer_rows(const TensorView& t) {
    return t.numel() / last_dim(t);
}

void expect_device(const TensorView& t, DType dtype, const char* what) {
    Q4TP_CHECK(t.device == Device::Cuda && t.dtype == dtype,
               "cuda backend: " << what << " must be a device " << to_string(dtype) << " tensor, got "
                                << to_string(t.dtype) << " on " << to_string(t.device));
}

// A GPTQ layer in the GEMV's prepared layout (kernels/cuda/gptq_prepare.h), resident on the device.
class CudaLinear final : public LinearWeights {
   public:
    CudaLinear(std::int64_t k,
               std::int64_t k_rows,
               std::int64_t n,
               std::int64_t n_padded,
               std::int64_t group_size,
               std::int64_t num_groups)
        : k_(k), k_rows_(k_rows), n_(n), n_padded_(n_padded), group_size_(group_size), num_groups_(num_groups) {}

    std::int64_t k() const override { return k_; }
    std::int64_t n() const override { return n_; }
    std::size_t bytes() const override {
        return qweight_.bytes() + scales_.bytes() + zeros_.bytes() + perm_.bytes() + block_groups_.bytes() +
               bias_.bytes();
    }

    kc::GptqWeights view() const {
        kc::GptqWeights w;
        w.qweight = qweight_.data();
        w.scales = reinterpret_cast<const __half*>(scales_.data());
        w.zeros = zeros_.data();
        w.perm = perm_.empty() ? nullptr : perm_.data();
        w.block_groups = block_groups_.empty() ? nullptr : block_groups_.data();
        w.k = k_;
        w.k_rows = k_rows_;
        w.n = n_;
        w.group_size = group_size_;
        return w;
    }
    const __half* bias() const { return bias_.empty() ? nullptr : reinterpret_cast<const __half*>(bias_.data()); }

    std::int64_t k_, k_rows_, n_, n_padded_, group_size_, num_groups_;
    DeviceBuffer<std::uint32_t> qweight_;
    DeviceBuffer<std::uint16_t> scales_;
    DeviceBuffer<std::uint32_t> zeros_;
    DeviceBuffer<std::int32_t> perm_;
    DeviceBuffer<std::int32_t> block_groups_;
    DeviceBuffer<std::uint16_t> bias_;
};

// One sequence's token-selection state on the device. Everything select() reads per step lives here (options,
// Philox key and step, penalty ring), so a captured step replays with whatever reset() last copied; only the
// variant (argmax or sampling, the ring's length) is fixed at capture.
class CudaTokenSelector final : public TokenSelector {
   public:
    CudaTokenSelector(std::int64_t vocab, std::int64_t max_history, cudaStream_t stream)
        : vocab_(vocab),
          max_history_(max_history),
          stream_(stream),
          options_(1),
          seed_(1),
          step_(1),
          history_len_(1),
          history_(static_cast<std::size_t>(std::max<std::int64_t>(max_history, 1))) {}

    void reset(const SamplingConfig& config, std::span<const std::int32_t> history) override {
        config.validate();
        check_history(history, vocab_);
        const bool penalty = config.repetition_penalty != 1.0;
        argmax_only_ = config.greedy() && !penalty;
        Q4TP_CHECK(argmax_only_ || vocab_ <= kc::kMaxSamplingVocab,
                   "cuda backend: sampling over a vocabulary of " << vocab_ << " exceeds the GPU sampler's limit of "
                                                                  << kc::kMaxSamplingVocab << " tokens");
        // The penalty window is a ring of exactly its length; "the whole history" (0) and windows longer than
        // any history this sequence can reach are the whole buffer.
        const std::int64_t last_n = config.repetition_last_n;
        window_ = !penalty ? 0 : (last_n == 0 || last_n > max_history_ ? max_history_ : last_n);
        Q4TP_CHECK(!penalty || window_ > 0, "cuda backend: a repetition penalty needs a history buffer");
        const auto length = static_cast<std::int64_t>(history.size());
        Q4TP_CHECK(!(penalty && last_n == 0 && length > max_history_),
                   "cuda backend: a history of " << length << " ids exceeds the selector's " << max_history_);

        kc::SamplingOptions options;
        options.temperature = static_cast<float>(config.temperature);
        options.top_k = config.top_k;
        options.top_p = static_cast<float>(config.top_p);
        options.min_p = static_cast<float>(config.min_p);
        options.repetition_penalty = static_cast<float>(config.repetition_penalty);
        // Token t of the history sits at ring[t % window], as sample_rows appends them.
        std::vector<std::int32_t> ring(static_cast<std::size_t>(window_), -1);
        for (std::int64_t t = std::max<std::int64_t>(0, length - window_); t < length; ++t) {
            ring[static_cast<std::size_t>(t % window_)] = history[static_cast<std::size_t>(t)];
        }
        const std::uint64_t seed = config.seed, step = 0;
        copy_to_device(options_.data(), &options, sizeof(options));
        copy_to_device(seed_.data(), &seed, sizeof(seed));
        copy_to_device(step_.data(), &step, sizeof(step));
        copy_to_device(history_len_.data(), &length, sizeof(length));
        if (!ring.empty()) copy_to_device(history_.data(), ring.data(), ring.size() * sizeof(std::int32_t));
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_));  // the host values above die when we return
        ready_ = true;
    }

    int graph_variant() const override { return argmax_only_ ? 0 : 1 + static_cast<int>(window_); }

    //! logits is written only by the repetition penalty (in place, as the host Sampler does).
    void select(float* logits, std::int32_t* out) {
        Q4TP_CHECK(ready_, "cuda backend: select_token() before the selector was reset()");
        if (argmax_only_) {
            kc::argmax_rows(logits, 1, vocab_, out, stream_);
            return;
        }
        kc::SampleRowsParams p;
        p.logits = logits;
        p.m = 1;
        p.vocab = vocab_;
        p.options = options_.data();
        if (window_ > 0) {
            p.history = history_.data();
            p.history_len = history_len_.data();
            p.history_capacity = window_;
            p.append_to_history = true;
        }
        p.seed_device = seed_.data();
        p.step = step_.data();
        p.out = out;
        kc::sample_rows(p, stream_);
    }

    std::int64_t vocab() const { return vocab_; }

   private:
    void copy_to_device(void* dst, const void* src, std::size_t bytes) {
        Q4TP_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    }

    std::int64_t vocab_, max_history_;
    cudaStream_t stream_;
    DeviceBuffer<kc::SamplingOptions> options_;  //!< [1]
    DeviceBuffer<std::uint64_t> seed_;           //!< [1] Philox key
    DeviceBuffer<std::uint64_t> step_;           //!< [1] Philox counter, advanced by every draw
    DeviceBuffer<std::int64_t> history_len_;     //!< [1] ids ever appended to the ring
    DeviceBuffer<std::int32_t> history_;         //!< [max_history] penalty ring; the first window_ entries in use
    bool argmax_only_ = true;
    std::int64_t window_ = 0;  //!< ring length this sequence uses; 0 = no penalty
    bool ready_ = false;
};

template <typename T>
DeviceBuffer<T> upload_vector(const std::vector<T>& host, cudaStream_t stream) {
    DeviceBuffer<T> d(host.size());
    if (!host.empty()) {
        Q4TP_CUDA_CHECK(cudaMemcpyAsync(d.data(), host.data(), d.bytes(), cudaMemcpyHostToDevice, stream));
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));  // the host vector dies when we return
    }
    return d;
}

}  // namespace

CudaOps::CudaOps() {
    int device = 0;
    Q4TP_CUDA_CHECK(cudaGetDevice(&device));
    const kc::DeviceInfo info = kc::device_info(device);
    name_ = "cuda:" + std::to_string(device) + " (" + info.name + ")";
    Q4TP_CUBLAS_CHECK(cublasCreate(&cublas_));
    Q4TP_CUBLAS_CHECK(cublasSetStream(cublas_, stream_.get()));
    // A fixed cuBLAS workspace keeps cuBLAS from allocating inside graph capture (lm_head is captured).
    cublas_workspace_ = DeviceBuffer<std::byte>(kc::kCublasWorkspaceBytes);
    Q4TP_CUBLAS_CHECK(cublasSetWorkspace(cublas_, cublas_workspace_.data(), cublas_workspace_.bytes()));
}

CudaOps::~CudaOps() {
    for (auto& [key, exec] : graphs_) {
        if (cudaGraphExecDestroy(exec) != cudaSuccess) Q4TP_LOG_ERROR("cudaGraphExecDestroy failed");
    }
    if (cublas_ && cublasDestroy(cublas_) != CUBLAS_STATUS_SUCCESS) Q4TP_LOG_ERROR("cublasDestroy failed");
}

void* CudaOps::allocate_bytes(std::size_t bytes) {
    // Round up so every tensor starts 256-byte aligned (16-byte vector loads, cuBLAS).
    allocations_.emplace_back((bytes + 255) / 256 * 256);
    return allocations_.back().data();
}

TensorView CudaOps::allocate(DType dtype, const Shape& shape) {
    void* ptr = allocate_bytes(static_cast<std::size_t>(shape.numel()) * dtype_size(dtype));
    return TensorView{ptr, dtype, shape, Device::Cuda};
}

void CudaOps::upload(const void* src, DType src_dtype, TensorView dst) {
    const auto count = static_cast<std::size_t>(dst.numel());
    std::vector<std::uint16_t> converted;
    const void* from = src;
    if (dst.dtype == DType::F16 && src_dtype == DType::F32) {
        converted.resize(count);
        for (std::size_t i = 0; i < count; ++i) converted[i] = float_to_half(static_cast<const float*>(src)[i]);
        from = converted.data();
    } else if (dst.dtype == DType::F16 && src_dtype == DType::BF16) {
        converted.resize(count);
        for (std::size_t i = 0; i < count; ++i) {
            converted[i] = float_to_half(bf16_to_float(static_cast<const std::uint16_t*>(src)[i]));
        }
        from = converted.data();
    } else {
        Q4TP_CHECK(src_dtype == dst.dtype,
                   "cuda backend: cannot upload " << to_string(src_dtype) << " into " << to_string(dst.dtype));
    }
    Q4TP_CUDA_CHECK(cudaMemcpyAsync(dst.data, from, dst.bytes(), cudaMemcpyHostToDevice, stream_.get()));
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
}

void CudaOps::upload_ids(std::span<const std::int32_t> ids, TensorView dst) {
    expect_device(dst, DType::I32, "ids destination");
    Q4TP_CHECK(static_cast<std::size_t>(dst.numel()) == ids.size(),
               "cuda backend: ids destination holds " << dst.numel() << ", got " << ids.size());
    // Pageable source: the copy is staged before cudaMemcpyAsync returns, so the caller may reuse it.
    Q4TP_CUDA_CHECK(cudaMemcpyAsync(dst.data, ids.data(), ids.size_bytes(), cudaMemcpyHostToDevice, stream_.get()));
}

void CudaOps::download(TensorView src, std::span<float> dst) {
    Q4TP_CHECK(static_cast<std::size_t>(src.numel()) == dst.size(),
               "cuda backend: download of " << src.numel() << " elements into " << dst.size());
    if (src.dtype == DType::F32) {
        Q4TP_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data, dst.size_bytes(), cudaMemcpyDeviceToHost, stream_.get()));
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
        return;
    }
    expect_device(src, DType::F16, "download source");
    std::vector<std::uint16_t> halves(dst.size());
    Q4TP_CUDA_CHECK(cudaMemcpyAsync(halves.data(), src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_.get()));
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    for (std::size_t i = 0; i < dst.size(); ++i) dst[i] = half_to_float(halves[i]);
}

std::unique_ptr<LinearWeights> CudaOps::make_linear(const loaders::GptqLinear& layer) {
    kc::GptqSource source;
    source.name = layer.name;
    source.k = layer.k;
    source.n = layer.n;
    source.group_size = layer.group_size;
    source.num_groups = layer.num_groups;
    source.zero_format = layer.zero_format;
    source.qweight = layer.qweight.span();
    source.qzeros = layer.qzeros.span();
    source.scales = layer.scales.span();
    source.g_idx = layer.g_idx;
    const kc::GptqPrepared prepared = kc::gptq_prepare(source);
    auto linear = std::make_unique<CudaLinear>(prepared.k, prepared.k_rows, prepared.n, prepared.n_padded,
                                               prepared.group_size, prepared.num_groups);
    linear->qweight_ = upload_vector(prepared.qweight, stream_.get());
    linear->scales_ = upload_vector(prepared.scales, stream_.get());
    linear->zeros_ = upload_vector(prepared.zeros, stream_.get());
    linear->perm_ = upload_vector(prepared.perm, stream_.get());
    linear->block_groups_ = upload_vector(prepared.block_groups, stream_.get());
    if (!layer.bias.empty()) {
        linear->bias_ = upload_vector(std::vector<std::uint16_t>(layer.bias.begin(), layer.bias.end()), stream_.get());
    }
    reserve_scratch(prepared.k, prepared.k_rows, prepared.n, prepared.n_padded);
    return linear;
}

std::unique_ptr<LinearWeights> CudaOps::make_synthetic_linear(const SyntheticLinearSpec& spec) {
    Q4TP_CHECK(spec.k % kc::kGptqBlockK == 0 && spec.n % kc::kGptqTileN == 0,
               "synthetic layer " << spec.k << "x" << spec.n << " must have K % 32 == 0 and N % 32 == 0");
    const std::int64_t group_size = spec.group_size > 0 ? spec.group_size : spec.k;
    const bool act_order_shard = spec.act_order && spec.full_k > spec.k;
    const std::int64_t groups = ((act_order_shard ? spec.full_k : spec.k) + group_size - 1) / group_size;
    // Row order: a random permutation (act-order) or, for a row shard of an act-order layer, the padded layout a
    // real checkpoint's shard gets: this rank's rows of a whole layer whose groups are scattered over all of K.
    kc::GptqRowLayout layout;
    layout.k_rows = spec.k;
    if (act_order_shard) {
        std::mt19937_64 layout_rng(spec.layout_seed);
        const std::vector<std::int32_t> g_idx = random_act_order_g_idx(spec.full_k, group_size, layout_rng);
        layout = kc::gptq_row_layout(std::span<const std::int32_t>(g_idx).subspan(
                                         static_cast<std::size_t>(spec.row_begin), static_cast<std::size_t>(spec.k)),
                                     groups, group_size);
    } else if (spec.act_order) {
        layout.perm.resize(static_cast<std::size_t>(spec.k));
        std::iota(layout.perm.begin(), layout.perm.end(), 0);
        std::shuffle(layout.perm.begin(), layout.perm.end(), std::mt19937_64(spec.seed));
    }
    auto linear = std::make_unique<CudaLinear>(spec.k, layout.k_rows, spec.n, spec.n, group_size, groups);
    cudaStream_t s = stream_.get();
    // Uniform random words are uniform 4-bit codes in any layout, so the prepared layout is filled directly.
    linear->qweight_ = DeviceBuffer<std::uint32_t>(static_cast<std::size_t>(layout.k_rows * spec.n / 8));
    kc::fill_random_words(linear->qweight_.data(), static_cast<std::int64_t>(linear->qweight_.size()), spec.seed, s);
    linear->scales_ = DeviceBuffer<std::uint16_t>(static_cast<std::size_t>(groups * spec.n));
    kc::fill_random_half(reinterpret_cast<__half*>(linear->scales_.data()),
                         static_cast<std::int64_t>(linear->scales_.size()), spec.seed + 1, 0.75f * spec.scale,
                         1.25f * spec.scale, s);
    // Zero points 7 or 8 at random (as core/model/synthetic.cpp): q - z then has zero mean like trained
    // weights; a constant 8 would give every weight a -s/2 bias that deep models amplify to overflow.
    std::vector<std::uint32_t> zeros(static_cast<std::size_t>(groups * spec.n / 8));
    std::mt19937_64 zero_rng(spec.seed + 2);
    for (auto& word : zeros) {
        const auto bits = static_cast<std::uint32_t>(zero_rng());
        word = 0x77777777u + (bits & 0x11111111u);  // each nibble 7 or 8
    }
    linear->zeros_ = upload_vector(zeros, s);
    linear->perm_ = upload_vector(layout.perm, s);
    linear->block_groups_ = upload_vector(layout.block_groups, s);
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(s));
    reserve_scratch(spec.k, layout.k_rows, spec.n, spec.n);
    return linear;
}

void CudaOps::fill_random(TensorView dst, std::uint64_t seed, float center, float spread) {
    expect_device(dst, DType::F16, "fill_random destination");
    kc::fill_random_half(half_ptr(dst), dst.numel(), seed, center - spread, center + spread, stream_.get());
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
}

void CudaOps::reserve_scratch(std::int64_t k, std::int64_t k_rows, std::int64_t n, std::int64_t n_padded) {
    const auto halves = static_cast<std::size_t>(k * std::min(n_padded, kPrefillDequantColumns));
    if (dequant_scratch_.bytes() < halves * sizeof(__half))
        dequant_scratch_ = DeviceBuffer<std::byte>(halves * sizeof(__half));
    gemv_workspace_needed_ =
        std::max(gemv_workspace_needed_, kc::gptq_gemv_workspace_bytes(kc::kGptqGemvMaxM, k_rows, n));
}

void CudaOps::plan_attention(const AttentionPlan& plan) {
    const std::size_t bytes = kc::attention_workspace_bytes(
        static_cast<int>(std::min<std::int64_t>(plan.max_m, kc::kMaxDecodeM)), static_cast<int>(plan.num_heads),
        static_cast<int>(plan.num_kv_heads), static_cast<int>(plan.head_dim), static_cast<int>(plan.capacity));
    if (attention_workspace_.bytes() < bytes) attention_workspace_ = DeviceBuffer<std::byte>(bytes);
    // The GEMV's split-K partials and counters, sized for the largest layer loaded (they self-reset, so one
    // clearing here serves every later call and graph replay).
    if (gemv_workspace_.bytes() < gemv_workspace_needed_) {
        gemv_workspace_ = DeviceBuffer<std::byte>(gemv_workspace_needed_);
        kc::gptq_gemv_workspace_init(gemv_workspace_.data(), gemv_workspace_.bytes(), stream_.get());
        Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    }
}

void CudaOps::synchronize() {
    stream_.synchronize();
}

void CudaOps::run_step(int key, const std::function<void()>& step) {
    auto found = graphs_.find(key);
    if (found == graphs_.end()) {
        // Capture once: every buffer the step touches is fixed and per-step values live in device memory
        // (token id, positions), so the same graph serves every later step.
        cudaGraph_t graph = nullptr;
        Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
        try {
            step();
        } catch (...) {
            (void)cudaStreamEndCapture(stream_.get(), &graph);
            if (graph) (void)cudaGraphDestroy(graph);
            throw;
        }
        Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream_.get(), &graph));
        cudaGraphExec_t exec = nullptr;
        const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
        (void)cudaGraphDestroy(graph);
        Q4TP_CUDA_CHECK(status);
        found = graphs_.emplace(key, exec).first;
        Q4TP_LOG_DEBUG("captured decode graph for key " << key);
    }
    Q4TP_CUDA_CHECK(cudaGraphLaunch(found->second, stream_.get()));
}

void CudaOps::embedding(TensorView table, TensorView ids, TensorView out) {
    expect_device(table, DType::F16, "embedding table");
    kc::embedding(ids.as<const std::int32_t>(), ids.numel(), half_ptr(table), table.shape[0], table.shape[1],
                  half_ptr(out), stream_.get());
}

void CudaOps::rms_norm(TensorView x, TensorView weight, float eps, TensorView out) {
    kc::rms_norm(half_ptr(x), half_ptr(weight), outer_rows(x), last_dim(x), eps, half_ptr(out), stream_.get());
}

void CudaOps::linear(const LinearWeights& weights, TensorView x, TensorView y) {
    run_linear(weights, x, y, false);
}

void CudaOps::linear_add(const LinearWeights& weights, TensorView x, TensorView y) {
    run_linear(weights, x, y, true);
}

void CudaOps::run_linear(const LinearWeights& weights, TensorView x, TensorView y, bool accumulate) {
    const auto& w = static_cast<const CudaLinear&>(weights);
    const std::int64_t m = outer_rows(x);
    Q4TP_CHECK(last_dim(x) == w.k() && last_dim(y) == w.n() && outer_rows(y) == m,
               "cuda backend: linear [" << w.k() << " -> " << w.n() << "] got x " << x.shape.str() << " and y "
                                        << y.shape.str());
    Q4TP_CHECK(w.bias() == nullptr, "cuda backend: GPTQ layers with a non-zero bias are not supported yet");
    if (m <= kGemvMaxRows) {
        // Decode: each packed weight is read once by the fused int4 GEMV (bandwidth-bound).
        kc::GptqGemvParams p;
        p.weights = w.view();
        p.x = half_ptr(x);
        p.ldx = w.k();
        p.y = half_ptr(y);
        p.ldy = w.n();
        p.m = static_cast<int>(m);
        if (accumulate) {
            p.residual = half_ptr(y);  // in place: the kernel adds y in fp32 before its one rounding
            p.ldr = w.n();
        }
        p.workspace = gemv_workspace_.data();
        p.workspace_bytes = gemv_workspace_.bytes();
        kc::gptq_gemv(p, stream_.get());
        return;
    }
    // Prefill: compute-bound, so dequantize the layer to fp16 and use the tensor cores through cuBLAS, a slice of
    // columns at a time (kPrefillDequantColumns) so that the scratch stays small.
    static_assert(kPrefillDequantColumns % kc::kGptqDequantColumnStep == 0);
    __half* scratch = reinterpret_cast<__half*>(dequant_scratch_.data());
    const std::int64_t slice = std::min(w.n(), kPrefillDequantColumns);
    const std::int64_t ldw = (slice + kc::kGptqTileN - 1) / kc::kGptqTileN * kc::kGptqTileN;
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    for (std::int64_t begin = 0; begin < w.n(); begin += slice) {
        const std::int64_t columns = std::min(slice, w.n() - begin);
        kc::GptqDequantParams dq;
        dq.weights = w.view();
        dq.w = scratch;
        dq.ldw = ldw;
        dq.column_begin = begin;
        dq.columns = columns;
        kc::gptq_dequantize(dq, stream_.get());
        // Row-major y[m][begin..] = x[m][k] . W[k][begin..] is column-major y^T = W^T x^T, W^T a columns x k matrix.
        Q4TP_CUBLAS_CHECK(cublasGemmEx(
            cublas_, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(columns), static_cast<int>(m), static_cast<int>(w.k()),
            &alpha, scratch, CUDA_R_16F, static_cast<int>(ldw), half_ptr(x), CUDA_R_16F, static_cast<int>(w.k()), &beta,
            half_ptr(y) + begin, CUDA_R_16F, static_cast<int>(w.n()), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
}

bool CudaOps::all_reduce_add_rms_norm(
    parallel::IpcAllReduce* group, TensorView partial, TensorView x, TensorView gain, float eps, TensorView out) {
    if (group == nullptr) return false;
    const std::int64_t m = outer_rows(x);
    if (m > group->max_tokens() || last_dim(x) != group->hidden()) return false;
    expect_device(partial, DType::F16, "all-reduce partial");
    expect_device(x, DType::F16, "residual");
    expect_device(gain, DType::F16, "norm weight");
    expect_device(out, DType::F16, "norm output");
    Q4TP_CHECK(partial.numel() == x.numel() && out.numel() == x.numel() && gain.numel() == last_dim(x),
               "cuda backend: fused all-reduce + rms_norm got partial "
                   << partial.shape.str() << ", x " << x.shape.str() << ", gain " << gain.shape.str() << ", out "
                   << out.shape.str());
    const kc::LamportGroup g = lamport_group(*group);
    kc::LamportAddRmsNormParams p;
    p.partial = half_ptr(partial);
    p.residual = half_ptr(x);
    p.gain = half_ptr(gain);
    p.eps = eps;
    p.out = half_ptr(out);
    p.m = m;
    kc::lamport_all_reduce_add_rms_norm(g, p, stream_.get());
    return true;
}

void CudaOps::rope_and_cache(const CacheWrite& args) {
    kc::RopeAppendKvParams p;
    p.q = half_ptr(args.q);
    p.k = half_ptr(args.k);
    p.v = half_ptr(args.v);
    p.k_cache = half_ptr(args.k_cache);
    p.v_cache = half_ptr(args.v_cache);
    p.positions = args.positions.as<const std::int32_t>();
    p.inv_freq = args.freqs->inv_freq.as<const float>();
    p.attention_scaling = args.freqs->attention_scaling;
    p.m = args.q.shape[0];
    p.num_heads = args.q.shape[1];
    p.num_kv_heads = args.k.shape[1];
    p.head_dim = args.q.shape[2];
    p.capacity = args.k_cache.shape[1];
    kc::rope_append_kv(p, stream_.get());
}

void CudaOps::attention(const AttentionArgs& args) {
    kc::AttentionParams p;
    p.q = half_ptr(args.q);
    p.k_cache = half_ptr(args.k_cache);
    p.v_cache = half_ptr(args.v_cache);
    p.out = half_ptr(args.out);
    // positions[0] is the number of rows already cached: read on the device so graph replays see each step's.
    p.past_len = args.positions.as<const std::int32_t>();
    p.workspace = reinterpret_cast<float*>(attention_workspace_.data());
    p.workspace_bytes = attention_workspace_.bytes();
    p.m = static_cast<int>(args.q.shape[0]);
    p.num_heads = static_cast<int>(args.q.shape[1]);
    p.num_kv_heads = static_cast<int>(args.k_cache.shape[0]);
    p.head_dim = static_cast<int>(args.q.shape[2]);
    p.capacity = static_cast<int>(args.k_cache.shape[1]);
    kc::attention(p, stream_.get());
}

void CudaOps::copy_columns(TensorView src, std::int64_t column, TensorView dst) {
    const std::int64_t rows = outer_rows(dst), width = last_dim(dst), total = last_dim(src);
    Q4TP_CHECK(outer_rows(src) == rows && column >= 0 && column + width <= total,
               "cuda backend: columns [" << column << ", " << column + width << ") of " << src.shape.str());
    const std::size_t element = dtype_size(src.dtype);
    Q4TP_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, static_cast<std::size_t>(width) * element,
                                      static_cast<const char*>(src.data) + static_cast<std::size_t>(column) * element,
                                      static_cast<std::size_t>(total) * element,
                                      static_cast<std::size_t>(width) * element, static_cast<std::size_t>(rows),
                                      cudaMemcpyDeviceToDevice, stream_.get()));
}

void CudaOps::silu_mul(TensorView gate, TensorView up, TensorView out) {
    kc::silu_mul(half_ptr(gate), half_ptr(up), gate.numel(), half_ptr(out), stream_.get());
}

void CudaOps::add(TensorView x, TensorView y) {
    Q4TP_CHECK(x.numel() == y.numel(), "cuda backend: add of " << x.shape.str() << " and " << y.shape.str());
    kc::add_inplace(half_ptr(x), half_ptr(y), x.numel(), stream_.get());
}

void CudaOps::lm_head(TensorView x, TensorView weight, TensorView logits) {
    kc::LmHeadParams p;
    p.x = half_ptr(x);
    p.weight = half_ptr(weight);
    p.logits = logits.as<float>();
    p.m = outer_rows(x);
    p.hidden = last_dim(x);
    p.vocab = weight.shape[0];
    p.workspace = cublas_workspace_.data();
    p.workspace_bytes = cublas_workspace_.bytes();
    kc::lm_head(cublas_, p, stream_.get());
}

std::unique_ptr<TokenSelector> CudaOps::make_token_selector(std::int64_t vocab, std::int64_t max_history) {
    Q4TP_CHECK(vocab > 0 && max_history >= 0,
               "cuda backend: token selector for vocab " << vocab << " and history " << max_history);
    return std::make_unique<CudaTokenSelector>(vocab, max_history, stream_.get());
}

void CudaOps::select_token(TokenSelector& selector, TensorView logits, TensorView out) {
    expect_device(logits, DType::F32, "select_token logits");
    expect_device(out, DType::I32, "select_token output");
    auto& cuda = dynamic_cast<CudaTokenSelector&>(selector);
    Q4TP_CHECK(logits.numel() == cuda.vocab() && out.numel() == 1,
               "cuda backend: select_token over logits " << logits.shape.str() << " into " << out.shape.str()
                                                         << " for a vocabulary of " << cuda.vocab());
    cuda.select(logits.as<float>(), out.as<std::int32_t>());
}

std::int32_t CudaOps::read_id(TensorView id) {
    expect_device(id, DType::I32, "read_id source");
    Q4TP_CHECK(id.numel() == 1, "cuda backend: read_id of " << id.shape.str() << ", expected one id");
    std::int32_t value = 0;
    Q4TP_CUDA_CHECK(cudaMemcpyAsync(&value, id.data, sizeof(value), cudaMemcpyDeviceToHost, stream_.get()));
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    return value;
}

}  // namespace q4tp::model
