//! Rotary position embedding fused with the KV-cache append: the attention input of m tokens (docs/formats.md
//! R4.4-R4.6 and R4.3's cache layout).
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace q4tp::kernels::cuda {

//! One call per layer and step. Positions and inv_freq live in device memory, so a captured CUDA graph replays with
//! the values of the current step. The CALLER guarantees 0 <= positions[t] < capacity (the model checks it on the
//! host, where the positions come from); the kernel asserts it in debug builds only.
struct RopeAppendKvParams {
    __half* q = nullptr;                     //!< [m][num_heads][head_dim], rotated in place
    const __half* k = nullptr;               //!< [m][num_kv_heads][head_dim], read only (rotated into k_cache)
    const __half* v = nullptr;               //!< [m][num_kv_heads][head_dim]
    __half* k_cache = nullptr;               //!< [num_kv_heads][capacity][head_dim]
    __half* v_cache = nullptr;               //!< [num_kv_heads][capacity][head_dim]
    const std::int32_t* positions = nullptr;  //!< device [m], absolute position = cache row of token t
    const float* inv_freq = nullptr;         //!< device [head_dim / 2] (kernels::cpu::rope_inv_freq)
    float attention_scaling = 1.0f;          //!< multiplies cos and sin (R4.6; 1 except yarn)
    std::int64_t m = 0;                      //!< tokens
    std::int64_t num_heads = 0;              //!< nh
    std::int64_t num_kv_heads = 0;           //!< nkv, divides nh
    std::int64_t head_dim = 0;               //!< d, even
    std::int64_t capacity = 0;               //!< cache rows per kv head
};

//! For token t at p = positions[t], pair i < d/2, a = float(p) * inv_freq[i], c = cos(a) * attention_scaling,
//! s = sin(a) * attention_scaling (fp32): x[i] <- x[i] c - x[i + d/2] s, x[i + d/2] <- x[i + d/2] c + x[i] s
//! (rotate-half pairs), rounded once to fp16. Applied to every q head in place; the rotated k heads and the
//! unchanged v heads are written to row p of k_cache[g] and v_cache[g]. Unlike HF, c and s stay fp32 (not rounded
//! to fp16 first), as in kernels::cpu::apply_rope.
void rope_append_kv(const RopeAppendKvParams& params, cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
