#include "core/model/cpu_ops.h"

#include <cstring>
#include <optional>
#include <random>

#include "core/base/error.h"
#include "core/base/half.h"
#include "kernels/cpu/activation.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cpu/rope.h"
#include "core/model/sampling.h"
#include "core/model/synthetic.h"
#include "loaders/gptq.h"

namespace q4tp::model {
namespace {

// A GPTQ layer dequantized once to float32 W [K][N] (formats.md R2.10), plus its optional bias.
class CpuLinear final : public LinearWeights {
public:
    explicit CpuLinear(const loaders::GptqLinear& layer)
        : k_(layer.k), n_(layer.n), w_(static_cast<std::size_t>(layer.k * layer.n)) {
        loaders::dequantize(layer, w_.span());
        if (!layer.bias.empty()) {
            bias_ = HostBuffer<float>(layer.bias.size());
            for (std::size_t i = 0; i < layer.bias.size(); ++i) bias_[i] = half_to_float(layer.bias[i]);
        }
    }
    std::int64_t k() const override { return k_; }
    std::int64_t n() const override { return n_; }
    std::size_t bytes() const override { return w_.bytes() + bias_.bytes(); }
    const float* w() const { return w_.data(); }
    const float* bias() const { return bias_.empty() ? nullptr : bias_.data(); }

private:
    std::int64_t k_, n_;
    HostBuffer<float> w_;
    HostBuffer<float> bias_;
};

// The host Sampler and the ids it has seen: the generator's host path, kept behind the Ops interface.
class CpuTokenSelector final : public TokenSelector {
public:
    CpuTokenSelector(std::int64_t vocab, std::int64_t max_history) : vocab_(vocab) {
        history_.reserve(static_cast<std::size_t>(max_history));
    }

    void reset(const SamplingConfig& config, std::span<const std::int32_t> history) override {
        check_history(history, vocab_);
        sampler_.emplace(config);
        history_.assign(history.begin(), history.end());
    }
    int graph_variant() const override { return 0; }

    std::int32_t select(std::span<float> logits) {
        Q4TP_CHECK(sampler_.has_value(), "token selection: select_token() before the selector was reset()");
        Q4TP_CHECK(static_cast<std::int64_t>(logits.size()) == vocab_,
                   "token selection: a logits row of " << logits.size() << " for a vocabulary of " << vocab_);
        const std::int32_t token = sampler_->sample(logits, history_);
        history_.push_back(token);
        return token;
    }

private:
    std::int64_t vocab_;
    std::optional<Sampler> sampler_;     //!< seeded by reset()
    std::vector<std::int32_t> history_;  //!< prompt, then every selected id
};

void expect_f32(const TensorView& t, const char* what) {
    Q4TP_CHECK(t.dtype == DType::F32 && t.device == Device::Host,
               "cpu backend: " << what << " must be a host F32 tensor, got " << to_string(t.dtype));
}

// Rows and the length of the last dimension of a row-major tensor.
std::int64_t last_dim(const TensorView& t) { return t.shape[t.shape.rank() - 1]; }
std::int64_t outer_rows(const TensorView& t) { return t.numel() / last_dim(t); }

}  // namespace

TensorView CpuOps::allocate(DType dtype, const Shape& shape) {
    HostBuffer<std::byte> buffer(static_cast<std::size_t>(shape.numel()) * dtype_size(dtype));
    TensorView view{buffer.data(), dtype, shape, Device::Host};
    allocations_.push_back(std::move(buffer));
    return view;
}

void CpuOps::upload(const void* src, DType src_dtype, TensorView dst) {
    expect_f32(dst, "upload destination");
    const auto count = static_cast<std::size_t>(dst.numel());
    float* out = dst.as<float>();
    switch (src_dtype) {
        case DType::F32: std::memcpy(out, src, count * sizeof(float)); return;
        case DType::F16:
            for (std::size_t i = 0; i < count; ++i) out[i] = half_to_float(static_cast<const std::uint16_t*>(src)[i]);
            return;
        case DType::BF16:
            for (std::size_t i = 0; i < count; ++i) out[i] = bf16_to_float(static_cast<const std::uint16_t*>(src)[i]);
            return;
        default: Q4TP_THROW("cpu backend: cannot upload " << to_string(src_dtype) << " data as floats");
    }
}

void CpuOps::upload_ids(std::span<const std::int32_t> ids, TensorView dst) {
    Q4TP_CHECK(dst.dtype == DType::I32 && static_cast<std::size_t>(dst.numel()) == ids.size(),
               "cpu backend: ids destination must be I32 with " << ids.size() << " elements");
    std::memcpy(dst.data, ids.data(), ids.size_bytes());
}

void CpuOps::download(TensorView src, std::span<float> dst) {
    expect_f32(src, "download source");
    Q4TP_CHECK(static_cast<std::size_t>(src.numel()) == dst.size(),
               "cpu backend: download of " << src.numel() << " elements into " << dst.size());
    std::memcpy(dst.data(), src.data, dst.size_bytes());
}

std::unique_ptr<LinearWeights> CpuOps::make_linear(const loaders::GptqLinear& layer) {
    return std::make_unique<CpuLinear>(layer);
}

std::unique_ptr<LinearWeights> CpuOps::make_synthetic_linear(const SyntheticLinearSpec& spec) {
    return make_linear(make_random_gptq_linear(spec));
}

void CpuOps::fill_random(TensorView dst, std::uint64_t seed, float center, float spread) {
    expect_f32(dst, "fill_random destination");
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<float> dist(center - spread, center + spread);
    float* out = dst.as<float>();
    for (std::int64_t i = 0; i < dst.numel(); ++i) out[i] = dist(rng);
}

void CpuOps::embedding(TensorView table, TensorView ids, TensorView out) {
    expect_f32(table, "embedding table");
    expect_f32(out, "embedding output");
    kernels::cpu::embedding(ids.as<const std::int32_t>(), ids.numel(), table.as<const float>(), table.shape[0],
                            table.shape[1], out.as<float>());
}

void CpuOps::rms_norm(TensorView x, TensorView weight, float eps, TensorView out) {
    expect_f32(x, "rms_norm input");
    kernels::cpu::rms_norm(x.as<const float>(), weight.as<const float>(), outer_rows(x), last_dim(x), eps,
                           out.as<float>());
}

void CpuOps::linear(const LinearWeights& weights, TensorView x, TensorView y) {
    const auto& w = static_cast<const CpuLinear&>(weights);
    Q4TP_CHECK(last_dim(x) == w.k() && last_dim(y) == w.n() && outer_rows(x) == outer_rows(y),
               "cpu backend: linear [" << w.k() << " -> " << w.n() << "] got x " << x.shape.str() << " and y "
                                       << y.shape.str());
    kernels::cpu::matmul(x.as<const float>(), w.w(), outer_rows(x), w.k(), w.n(), y.as<float>(), w.bias());
}

void CpuOps::linear_add(const LinearWeights& weights, TensorView x, TensorView y) {
    linear_scratch_.resize(static_cast<std::size_t>(y.numel()));
    TensorView product{linear_scratch_.data(), DType::F32, y.shape, Device::Host};
    linear(weights, x, product);
    kernels::cpu::add_inplace(y.as<float>(), linear_scratch_.data(), y.numel());
}

void CpuOps::rope_and_cache(const CacheWrite& args) {
    expect_f32(args.q, "rope q");
    const auto* positions = args.positions.as<const std::int32_t>();
    const float* inv_freq = args.freqs->inv_freq.as<const float>();
    const float scaling = args.freqs->attention_scaling;
    const std::int64_t m = args.q.shape[0];
    kernels::cpu::apply_rope(args.q.as<float>(), positions, m, args.q.shape[1], args.q.shape[2], inv_freq, scaling);
    kernels::cpu::apply_rope(args.k.as<float>(), positions, m, args.k.shape[1], args.k.shape[2], inv_freq, scaling);
    kernels::cpu::append_kv(args.k.as<const float>(), args.v.as<const float>(), args.k_cache.as<float>(),
                            args.v_cache.as<float>(), args.k_cache.shape[1], args.past_len, m, args.k.shape[1],
                            args.k.shape[2]);
}

void CpuOps::attention(const AttentionArgs& args) {
    kernels::cpu::AttentionParams p;
    p.q = args.q.as<const float>();
    p.k_cache = args.k_cache.as<const float>();
    p.v_cache = args.v_cache.as<const float>();
    p.m = args.q.shape[0];
    p.num_heads = args.q.shape[1];
    p.num_kv_heads = args.k_cache.shape[0];
    p.head_dim = args.q.shape[2];
    p.capacity = args.k_cache.shape[1];
    p.past_len = args.past_len;
    p.out = args.out.as<float>();
    kernels::cpu::attention(p);
}

void CpuOps::copy_columns(TensorView src, std::int64_t column, TensorView dst) {
    const std::int64_t rows = outer_rows(dst), width = last_dim(dst), total = last_dim(src);
    Q4TP_CHECK(outer_rows(src) == rows && column >= 0 && column + width <= total,
               "cpu backend: columns [" << column << ", " << column + width << ") of " << src.shape.str());
    for (std::int64_t r = 0; r < rows; ++r) {
        std::memcpy(dst.as<float>() + r * width, src.as<const float>() + r * total + column,
                    static_cast<std::size_t>(width) * sizeof(float));
    }
}

void CpuOps::silu_mul(TensorView gate, TensorView up, TensorView out) {
    kernels::cpu::silu_mul(gate.as<const float>(), up.as<const float>(), gate.numel(), out.as<float>());
}

void CpuOps::add(TensorView x, TensorView y) {
    Q4TP_CHECK(x.numel() == y.numel(), "cpu backend: add of " << x.shape.str() << " and " << y.shape.str());
    kernels::cpu::add_inplace(x.as<float>(), y.as<const float>(), x.numel());
}

void CpuOps::lm_head(TensorView x, TensorView weight, TensorView logits) {
    kernels::cpu::matmul_transposed_b(x.as<const float>(), weight.as<const float>(), outer_rows(x), last_dim(x),
                                      weight.shape[0], logits.as<float>(), nullptr);
}

std::unique_ptr<TokenSelector> CpuOps::make_token_selector(std::int64_t vocab, std::int64_t max_history) {
    Q4TP_CHECK(vocab > 0 && max_history >= 0,
               "cpu backend: token selector for vocab " << vocab << " and history " << max_history);
    return std::make_unique<CpuTokenSelector>(vocab, max_history);
}

void CpuOps::select_token(TokenSelector& selector, TensorView logits, TensorView out) {
    expect_f32(logits, "select_token logits");
    Q4TP_CHECK(out.dtype == DType::I32 && out.device == Device::Host && out.numel() == 1,
               "cpu backend: select_token output must be one host I32, got " << to_string(out.dtype) << " "
                                                                             << out.shape.str());
    auto& cpu = dynamic_cast<CpuTokenSelector&>(selector);
    const std::span<float> row(logits.as<float>(), static_cast<std::size_t>(logits.numel()));
    *out.as<std::int32_t>() = cpu.select(row);
}

std::int32_t CpuOps::read_id(TensorView id) {
    Q4TP_CHECK(id.dtype == DType::I32 && id.device == Device::Host && id.numel() == 1,
               "cpu backend: read_id needs one host I32, got " << to_string(id.dtype) << " " << id.shape.str());
    return *id.as<const std::int32_t>();
}

}  // namespace q4tp::model
