//! GPU token selection: argmax over logit rows, and seeded sampling (repetition penalty, temperature, top-k,
//! top-p, min-p in Hugging Face's processor order, the semantics of core/model/sampling.h), graph-capturable.
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>

namespace q4tp::kernels::cuda {

//! Largest vocabulary sample_rows accepts: its repetition-penalty bitmap (one bit per token) lives in 32 KiB of
//! shared memory.
inline constexpr std::int64_t kMaxSamplingVocab = 262144;

//! out[r] = the index of the largest logits[r][i]; ties go to the lowest index and a NaN counts as larger than
//! any number, so the first NaN wins (torch.argmax and kernels::cpu::argmax). logits [m][vocab], out [m].
void argmax_rows(const float* logits, std::int64_t m, std::int64_t vocab, std::int32_t* out, cudaStream_t stream);

//! One row's options, read from DEVICE memory so that a captured graph samples with whatever the host last
//! copied there. Out-of-range values cannot be reported from the device, so they are clamped: validate on the
//! host first (model::SamplingConfig::validate). Clamping: temperature <= 0 or NaN -> greedy; top_k <= 0 -> off;
//! top_p >= 1 or NaN -> off, top_p <= 0 -> keeps one token; min_p <= 0 or NaN -> off, min_p > 1 -> 1;
//! repetition_penalty <= 0, NaN or inf -> off.
struct SamplingOptions {
    float temperature = 0.8f;         //!< logits / temperature; 0 = greedy (argmax_rows semantics)
    std::int32_t top_k = 40;          //!< keep the k best tokens, ties to the lowest id; 0 = off
    float top_p = 0.95f;              //!< keep the shortest best-first prefix holding this mass; 1 = off
    float min_p = 0.05f;              //!< drop tokens with p < min_p * p_max; 0 = off
    float repetition_penalty = 1.0f;  //!< HF: logit / penalty if > 0 else logit * penalty, once per distinct id
};

struct SampleRowsParams {
    float* logits = nullptr;                 //!< [m][vocab]; only the repetition penalty writes to it (in place)
    std::int64_t m = 0;                      //!< rows (sequences); one 1024-thread block each
    std::int64_t vocab = 0;                  //!< V <= kMaxSamplingVocab
    const SamplingOptions* options = nullptr;  //!< [m] device
    //! [m][history_capacity] device ring buffers of recent token ids: row r's window is its first
    //! min(history_len[r], history_capacity) entries, in any order (the penalty is a set operation). Ids
    //! outside [0, vocab) are ignored, so -1 can pad. May be null when history_capacity == 0.
    std::int32_t* history = nullptr;
    std::int64_t* history_len = nullptr;     //!< [m] device: tokens ever appended to each ring
    std::int64_t history_capacity = 0;       //!< N of "the last N tokens" (repetition_last_n)
    //! When set, each row's drawn token is written to history[r][history_len[r] % capacity] and history_len[r]
    //! is incremented, so that a replayed graph keeps the penalty window current without the host.
    bool append_to_history = false;
    //! Philox key. A host value, fixed for the life of a captured graph (one per request, the same on every
    //! tensor-parallel rank so that all ranks draw the same token).
    std::uint64_t seed = 0;
    //! Optional DEVICE copy of the key, read at run time instead of `seed`: one captured graph then serves
    //! requests with different seeds (core/model's decode step samples inside its graph).
    const std::uint64_t* seed_device = nullptr;
    //! DEVICE counter: row r draws with Philox counter (step, r); the launch then adds 1, so every replay of a
    //! captured graph draws fresh numbers, and resetting it replays the same tokens.
    std::uint64_t* step = nullptr;
    std::int32_t* out = nullptr;             //!< [m] device: the drawn token ids
};

//! Draws one token per row on `stream` (no allocation, no host synchronization: capturable in a CUDA graph).
//! Per row: repetition penalty on the logits in place; greedy rows (temperature 0) take argmax_rows's answer;
//! otherwise p_i = exp((l_i - l_max) / T), top-k, top-p and min-p cut as core/model's Sampler does (top-k keeps
//! exactly k tokens, ties to the lowest id; top-p keeps the shortest prefix of the order "larger logit, then
//! lower id" whose mass reaches top_p of the post-top-k total; min-p keeps p >= min_p), and the token is drawn
//! by inverse CDF from 64 Philox bits. Masses are summed as 2^-40 fixed point, so the result depends only on
//! (logits, options, history, seed, step), never on thread scheduling. -inf and NaN logits are never drawn; a
//! row with no finite logit falls back to its argmax. +inf logits share all the mass equally.
void sample_rows(const SampleRowsParams& params, cudaStream_t stream);

//! Philox4x32-10 (Salmon et al., SC'11), the counter-based RNG sample_rows draws from; exposed for tests.
std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter, std::array<std::uint32_t, 2> key);

//! The 64 random bits sample_rows uses for `row` at `step` with `seed`: the first two Philox words of
//! counter (step, row) under key seed, as low and high halves.
std::uint64_t sampling_random_bits(std::uint64_t seed, std::uint64_t step, std::uint64_t row);

}  // namespace q4tp::kernels::cuda
