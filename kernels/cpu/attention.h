//! Causal multi-head attention over a KV cache, float32 reference (docs/formats.md R4.3, R4.5): prefill
//! (m > 1) and decode (m = 1) are the same op, grouped-query attention included.
#pragma once

#include <cstdint>

namespace q4tp::kernels::cpu {

//! One attention call over one layer's cache. Query row i sits at absolute position past_len + i and its keys
//! (rows 0 .. past_len + m - 1 of the cache) must already have been appended.
struct AttentionParams {
    const float* q = nullptr;        //!< [m][num_heads][head_dim], already rotated
    const float* k_cache = nullptr;  //!< [num_kv_heads][capacity][head_dim]
    const float* v_cache = nullptr;  //!< [num_kv_heads][capacity][head_dim]
    std::int64_t m = 0;              //!< query rows in this call
    std::int64_t num_heads = 0;      //!< nh
    std::int64_t num_kv_heads = 0;   //!< nkv, divides nh
    std::int64_t head_dim = 0;       //!< d
    std::int64_t capacity = 0;       //!< cache rows per kv head
    std::int64_t past_len = 0;       //!< cache rows written before this call's m
    float* out = nullptr;            //!< [m][num_heads][head_dim]; must not alias q or the caches
};

//! For query row i < m and head h < nh, with g = h / (nh / nkv) (R4.3: repeat_kv gives each kv head nh/nkv
//! consecutive query heads, not h % nkv) and keys j <= past_len + i (the causal mask, R4.5):
//!   s_j = (q[i][h] . k_cache[g][j]) * d^-0.5,   p_j = exp(s_j - max s) / sum exp(s - max s),
//!   out[i][h] = sum_j p_j v_cache[g][j],
//! in double throughout and rounded once. Throws unless nh % nkv == 0 and past_len + m <= capacity.
void attention(const AttentionParams& params);

//! Writes k, v [m][num_kv_heads][head_dim] into rows past_len .. past_len + m - 1 of k_cache, v_cache
//! ([num_kv_heads][capacity][head_dim] each). Throws, writing nothing, if past_len + m > capacity.
void append_kv(const float* k,
               const float* v,
               float* k_cache,
               float* v_cache,
               std::int64_t capacity,
               std::int64_t past_len,
               std::int64_t m,
               std::int64_t num_kv_heads,
               std::int64_t head_dim);

}  // namespace q4tp::kernels::cpu
