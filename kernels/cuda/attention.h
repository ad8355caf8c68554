//! Causal grouped-query attention of fp16 queries over one layer's fp16 KV cache: a split-KV decode kernel
//! (m <= kMaxDecodeM) and a tiled flash-attention prefill kernel on tensor cores, both graph-capturable.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace q4tp::kernels::cuda {

//! Largest m the decode kernel takes; attention() sends larger calls to the prefill kernel.
inline constexpr int kMaxDecodeM = 8;

//! One attention call over one layer's cache. Query row t sits at absolute position *past_len + t and attends to
//! cache rows 0 .. *past_len + t, which must already hold the appended keys and values. m, capacity and the head
//! counts are fixed per captured graph; *past_len is read on the device, so a graph replays at any length.
struct AttentionParams {
    const __half* q = nullptr;               //!< [m][num_heads][head_dim], already rotated; 16-byte aligned
    const __half* k_cache = nullptr;         //!< [num_kv_heads][capacity][head_dim]; 16-byte aligned
    const __half* v_cache = nullptr;         //!< [num_kv_heads][capacity][head_dim]; 16-byte aligned
    __half* out = nullptr;                   //!< [m][num_heads][head_dim]; must not alias q or the caches
    const std::int32_t* past_len = nullptr;  //!< device memory, one value: cache rows written before this call
    float* workspace = nullptr;              //!< decode only: attention_workspace_bytes() of device memory
    std::size_t workspace_bytes = 0;         //!< size of workspace in bytes
    int m = 0;                               //!< query rows in this call
    int num_heads = 0;                       //!< query heads nh
    int num_kv_heads = 0;                    //!< kv heads nkv, divides nh; query head h reads kv head h / (nh / nkv)
    int head_dim = 0;                        //!< 16, 32, 64 or 128
    int capacity = 0;                        //!< cache rows per kv head
};

//! Key chunks the decode kernel splits the cache into (fixed at plan time from the capacity, so grids are sized for
//! the longest context and chunks past the current length exit at once).
int attention_decode_chunks(int num_kv_heads, int capacity);

//! Workspace bytes attention_decode() (and attention() with m <= kMaxDecodeM) needs for this shape; 0 for m above
//! kMaxDecodeM, where attention() runs the prefill kernel.
std::size_t attention_workspace_bytes(int m, int num_heads, int num_kv_heads, int head_dim, int capacity);

//! Split-KV decode: one CTA per (key chunk, kv head, block of that head's query rows) writes a partial output and its
//! log-sum-exp to the workspace, then a merge kernel combines the chunks. m must be 1 .. kMaxDecodeM.
void attention_decode(const AttentionParams& params, cudaStream_t stream);

//! Flash-attention prefill for any m >= 1 (workspace unused): 64 query rows of one head per CTA, online softmax over
//! 64-key tiles, mma.sync on fp16 with fp32 accumulation.
void attention_prefill(const AttentionParams& params, cudaStream_t stream);

//! attention_decode() for m <= kMaxDecodeM, attention_prefill() above. If *past_len is negative or *past_len + m
//! exceeds capacity (a caller bug the host cannot see), every output element is NaN and no memory outside the
//! buffers is touched.
void attention(const AttentionParams& params, cudaStream_t stream);

}  // namespace q4tp::kernels::cuda
