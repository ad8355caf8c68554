//! CudaOps: the product backend over kernels/cuda. fp16 activations, int4 GEMV for decode (m <= 8),
//! dequantize + cuBLAS above that, decode steps captured once into CUDA graphs and replayed.
//! Memory is allocated at load and plan time only; device_allocation_count() proves it in the tests.
#pragma once

#include <cublas_v2.h>

#include <map>
#include <memory>
#include <vector>

#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/model/ops.h"

namespace q4tp::model {

class CudaOps final : public Ops {
public:
    //! Uses the current CUDA device (launch/ selects it from the local rank).
    CudaOps();
    ~CudaOps() override;
    CudaOps(const CudaOps&) = delete;
    CudaOps& operator=(const CudaOps&) = delete;

    Device device() const override { return Device::Cuda; }
    DType activation_dtype() const override { return DType::F16; }
    const char* name() const override { return name_.c_str(); }
    cudaStream_t stream_handle() const override { return stream_.get(); }

    TensorView allocate(DType dtype, const Shape& shape) override;
    void upload(const void* src, DType src_dtype, TensorView dst) override;
    void upload_ids(std::span<const std::int32_t> ids, TensorView dst) override;
    void download(TensorView src, std::span<float> dst) override;
    std::unique_ptr<LinearWeights> make_linear(const loaders::GptqLinear& layer) override;
    std::unique_ptr<LinearWeights> make_synthetic_linear(const SyntheticLinearSpec& spec) override;
    void fill_random(TensorView dst, std::uint64_t seed, float center, float spread) override;
    void synchronize() override;
    void run_step(int key, const std::function<void()>& step) override;
    void plan_attention(const AttentionPlan& plan) override;

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
    //! The Lamport one-shot all-reduce fused with the residual add and RMSNorm (kernels/cuda/fused_all_reduce.h).
    bool all_reduce_add_rms_norm(parallel::IpcAllReduce* group, TensorView partial, TensorView x, TensorView gain,
                                 float eps, TensorView out) override;

    //! Device-resident options, Philox key and step, and a repetition-penalty ring of max_history ids.
    std::unique_ptr<TokenSelector> make_token_selector(std::int64_t vocab, std::int64_t max_history) override;
    //! argmax_rows (greedy without a penalty) or sample_rows (kernels/cuda/sampling.h); no host synchronization.
    void select_token(TokenSelector& selector, TensorView logits, TensorView out) override;
    std::int32_t read_id(TensorView id) override;

    cudaStream_t stream() const { return stream_.get(); }
    //! Rows up to which linear() uses the fused int4 GEMV; above it, dequantize + cuBLAS (docs/design.md).
    static constexpr std::int64_t kGemvMaxRows = 8;
    //! Prefill dequantizes a layer in slices of at most this many columns (a multiple of
    //! kernels::cuda::kGptqDequantColumnStep), each followed by its GEMM, so the fp16 scratch holds K x 4096 halves
    //! instead of the widest layer (70B's fused gate|up: 940 MB).
    static constexpr std::int64_t kPrefillDequantColumns = 4096;

private:
    void* allocate_bytes(std::size_t bytes);
    //! Grows (at load time only) the scratch that prefill dequantizes a layer into, and records the
    //! GEMV workspace the largest layer needs.
    void reserve_scratch(std::int64_t k, std::int64_t k_rows, std::int64_t n, std::int64_t n_padded);
    //! y = x . W, or y += x . W when accumulate (GEMV epilogue residual / cuBLAS beta = 1).
    void run_linear(const LinearWeights& weights, TensorView x, TensorView y, bool accumulate);

    std::string name_;
    CudaStream stream_;
    cublasHandle_t cublas_ = nullptr;
    std::vector<DeviceBuffer<std::byte>> allocations_;
    DeviceBuffer<std::byte> cublas_workspace_;
    DeviceBuffer<std::byte> gemv_workspace_;
    DeviceBuffer<std::byte> dequant_scratch_;
    DeviceBuffer<std::byte> attention_workspace_;
    std::size_t gemv_workspace_needed_ = 0;
    std::map<int, cudaGraphExec_t> graphs_;
};

}  // namespace q4tp::model
