//! CpuOps: the float32 reference backend over kernels/cpu. Weights are dequantized once at load with the
//! loaders' reference dequantizer; every op is a plain loop. It is what CI runs end to end and the oracle
//! the CUDA backend is tested against.
#pragma once

#include <memory>
#include <vector>

#include "core/base/host_buffer.h"
#include "core/model/ops.h"

namespace q4tp::model {

class CpuOps final : public Ops {
public:
    Device device() const override { return Device::Host; }
    DType activation_dtype() const override { return DType::F32; }
    const char* name() const override { return "cpu (float32 reference)"; }

    TensorView allocate(DType dtype, const Shape& shape) override;
    void upload(const void* src, DType src_dtype, TensorView dst) override;
    void upload_ids(std::span<const std::int32_t> ids, TensorView dst) override;
    void download(TensorView src, std::span<float> dst) override;
    std::unique_ptr<LinearWeights> make_linear(const loaders::GptqLinear& layer) override;
    std::unique_ptr<LinearWeights> make_synthetic_linear(const SyntheticLinearSpec& spec) override;
    void fill_random(TensorView dst, std::uint64_t seed, float center, float spread) override;
    void synchronize() override {}

    void embedding(TensorView table, TensorView ids, TensorView out) override;
    void rms_norm(TensorView x, TensorView weight, float eps, TensorView out) override;
    void linear(const LinearWeights& weights, TensorView x, TensorView y) override;
    void linear_add(const LinearWeights& weights, TensorView x, TensorView y) override;
    void rope_and_cache(const CacheWrite& args) override;
    void attention(const AttentionArgs& args) override;
    void copy_columns(TensorView src, std::int64_t column, TensorView dst) override;
    void silu_mul(TensorView gate, TensorView up, TensorView out) override;
    void add(TensorView x, TensorView y) override;
    void lm_head(TensorView x, TensorView weight, TensorView logits) override;

    std::unique_ptr<TokenSelector> make_token_selector(std::int64_t vocab, std::int64_t max_history) override;
    //! Runs the host Sampler on the row in place: exactly the tokens sampling a downloaded copy gives.
    void select_token(TokenSelector& selector, TensorView logits, TensorView out) override;
    std::int32_t read_id(TensorView id) override;

private:
    std::vector<HostBuffer<std::byte>> allocations_;
    std::vector<float> linear_scratch_;  //!< linear_add's product before the add; grows to the largest [m][n]
};

}  // namespace q4tp::model
