//! Ops: the interface through which LlamaModel runs a decoder on a backend. Two implementations:
//! CpuOps (float32 reference over kernels/cpu: CI's backend and the oracle) and, later, CudaOps (the product).
//! Tensors are TensorViews into memory the backend owns (allocate() at load/plan time only). Activations
//! are in activation_dtype(); logits are always F32.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>

#include "core/base/tensor_view.h"

namespace q4tp::loaders {
struct GptqLinear;
}

namespace q4tp::model {

//! A quantized linear layer in the backend's own representation (dequantized float32 on the CPU,
//! repacked int4 on the GPU). y[m][n] = x[m][k] . W[k][n] (+ bias).
class LinearWeights {
public:
    virtual ~LinearWeights() = default;
    virtual std::int64_t k() const = 0;
    virtual std::int64_t n() const = 0;
    //! Device bytes this layer occupies (for memory reports).
    virtual std::size_t bytes() const = 0;
};

//! RoPE frequencies for the current call (docs/formats.md R4.4-R4.11): inv_freq [head_dim/2] F32 in
//! backend memory, and yarn's attention scaling (1 otherwise).
struct RopeFrequencies {
    TensorView inv_freq;
    float attention_scaling = 1.0f;
};

//! Arguments of rope_and_cache(): this step's q, k, v and where k and v go.
struct CacheWrite {
    TensorView q;          //!< [m][num_heads][head_dim], rotated in place
    TensorView k;          //!< [m][num_kv_heads][head_dim], rotated in place
    TensorView v;          //!< [m][num_kv_heads][head_dim]
    TensorView positions;  //!< I32 [m]: past_len, past_len + 1, ...
    const RopeFrequencies* freqs = nullptr;
    TensorView k_cache;    //!< [num_kv_heads][capacity][head_dim]
    TensorView v_cache;
    std::int64_t past_len = 0;
};

//! Arguments of one attention call over one layer's cache.
struct AttentionArgs {
    TensorView q;          //!< [m][num_heads][head_dim], already rotated
    TensorView k_cache;    //!< [num_kv_heads][capacity][head_dim]
    TensorView v_cache;    //!< [num_kv_heads][capacity][head_dim]
    std::int64_t past_len = 0;  //!< tokens already in the cache before this call's m tokens
    TensorView positions;       //!< I32 [m] in backend memory; positions[0] == past_len (for graph replays)
    TensorView out;        //!< [m][num_heads][head_dim]
};

class Ops {
public:
    virtual ~Ops() = default;

    virtual Device device() const = 0;
    virtual DType activation_dtype() const = 0;
    virtual const char* name() const = 0;

    // ---- memory: load and plan time only, never per token ----
    //! Backend-owned memory, alive as long as the Ops object.
    virtual TensorView allocate(DType dtype, const Shape& shape) = 0;
    //! Copies host data of src_dtype (F16, BF16 or F32) into dst, converting to dst's dtype.
    virtual void upload(const void* src, DType src_dtype, TensorView dst) = 0;
    //! Copies an I32 host array into dst (token ids, positions).
    virtual void upload_ids(std::span<const std::int32_t> ids, TensorView dst) = 0;
    //! Copies any floating tensor to host float32.
    virtual void download(TensorView src, std::span<float> dst) = 0;
    virtual std::unique_ptr<LinearWeights> make_linear(const loaders::GptqLinear& layer) = 0;
    //! Waits for queued work (no-op on the CPU).
    virtual void synchronize() = 0;
    //! Runs `step` (a fixed sequence of ops over fixed buffers whose per-step values live in backend
    //! memory). The CUDA backend captures it into a graph under `key` the first time and replays the graph
    //! afterwards; the default just runs it.
    virtual void run_step(int key, const std::function<void()>& step) {
        (void)key;
        step();
    }

    // ---- forward ops ----
    //! out[t][:] = table[ids[t]][:]
    virtual void embedding(TensorView table, TensorView ids, TensorView out) = 0;
    //! out = weight * x / sqrt(mean(x^2) + eps), per row.
    virtual void rms_norm(TensorView x, TensorView weight, float eps, TensorView out) = 0;
    //! y = x . W (+ bias)
    virtual void linear(const LinearWeights& weights, TensorView x, TensorView y) = 0;
    //! Rotates q [m][num_heads][head_dim] and k [m][num_kv_heads][head_dim] in place at the given
    //! positions (I32 [m], backend memory) and writes k and v into cache rows positions[0..m) (one fused
    //! kernel on the GPU). past_len == positions[0], given for backends that index on the host.
    virtual void rope_and_cache(const CacheWrite& args) = 0;
    //! Causal attention of m queries over past_len + m cached keys (GQA).
    virtual void attention(const AttentionArgs& args) = 0;
    //! out = silu(gate) * up
    virtual void silu_mul(TensorView gate, TensorView up, TensorView out) = 0;
    //! x += y
    virtual void add(TensorView x, TensorView y) = 0;
    //! logits [m][V] (F32) = x [m][H] . weight[V][H]^T
    virtual void lm_head(TensorView x, TensorView weight, TensorView logits) = 0;
};

}  // namespace q4tp::model
