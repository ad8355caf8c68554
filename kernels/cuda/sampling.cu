// GPU token selection: argmax_rows and sample_rows, one 1024-thread block per logits row.
//
// argmax_rows: each thread keeps the best (value, index) of a strided slice, then a warp-shuffle and a
// shared-memory merge under one total order ("NaN above numbers, then larger value, then lower index"), so the
// answer is torch.argmax's whatever the reduction tree.
//
// sample_rows, per row, in Hugging Face's processor order (core/model/sampling.h is the host twin):
//  1. Repetition penalty, in place. The history window may repeat an id, and HF penalizes each distinct id once:
//     the threads first clear the bits of their ids in a shared bitmap (one bit per token), then atomicOr them;
//     only the thread that flips a bit from 0 to 1 rewrites that logit.
//  2. One pass: argmax (the greedy answer), the largest non-NaN logit l_max, and the count of finite tokens.
//     temperature 0 takes the argmax and stops.
//  3. Top-k by radix select on order keys: the logit's float bits mapped to a uint32 whose unsigned order is the
//     float order (-inf and NaN map to 0 = masked). Four 8-bit passes of a 256-bin shared histogram find the
//     key t of the k-th best token; if several tokens share t, a located prefix count picks the lowest ids.
//     Temperature is monotonic, so cutting on logits is HF's cut on scaled logits.
//  4. p_i = exp((l_i - l_max) / T), converted to 2^-40 fixed point ("mass"). Integer sums are exact and order
//     independent, so shared-memory atomics and any reduction tree give the same bits: the drawn token is a
//     function of (logits, options, history, seed, step) alone. A token with p < 2^-41 has mass 0 and is never
//     drawn (a 5e-13 probability, far below anything a test or a user can see).
//  5. Two paths:
//     A. At most 1024 candidates remain (top_k <= 1024, or a small vocabulary): they are compacted into shared
//        memory, bitonic-sorted by (larger logit, lower id) - the host's order - and a block prefix scan of their
//        masses gives top-p (the shortest prefix whose mass reaches top_p of the candidates' total), min-p
//        (p >= min_p, where p_max = 1 by construction) and the inverse-CDF draw directly.
//     B. Otherwise every pass streams the row from L2. Top-p is a second radix select, weighted by mass: the
//        largest key t whose "at or above" mass reaches the target; among tokens with key t (equal logits, so
//        equal masses) exactly as many as the target needs are kept, lowest ids first. min-p is a per-token test.
//        The draw sums masses per warp chunk, finds the chunk holding the target, and one warp scans it.
//     Both paths keep the same set: top-k, then top-p measured against the post-top-k mass, then min-p.
//  6. u = 64 bits of Philox4x32-10 at counter (step, row) under key seed; target = floor(u * kept_mass / 2^64);
//     the token is the first whose cumulative kept mass exceeds target. The launch then adds 1 to *step.
//
// Cost, measured on an H200 for one row of V = 128256 (N(0, 3) logits): greedy 22 us, plain temperature 100 us,
// T 0.8 / top_k 40 / top_p 0.95 / min_p 0.05 1.24 ms, top_k 0 / top_p 0.95 1.39 ms; argmax_rows alone 15 us.
// Known bottlenecks, in order: (1) the first radix pass sees only a handful of distinct top bytes (sign and
// exponent), so nearly every token's 64-bit shared atomicAdd lands on a few bins and serializes - per-warp
// sub-histograms or __match_any_sync aggregation would remove it; (2) one block streams the row with one scalar
// load in flight per thread, so each pass is latency bound (~20 us) - vector loads and unrolling would cut it;
// (3) the draw's second level is one warp walking 4K tokens serially - the whole block should scan that chunk.
//
// PDL (common/pdl.cuh): logits, options, history and the step counter may all be written by earlier kernels or
// copies of the step, so every kernel here calls pdl_wait() before its first read.

#include "kernels/cuda/sampling.h"

#include <cuda_runtime.h>

#include <climits>
#include <cmath>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "kernels/cuda/common/pdl.cuh"

namespace q4tp::kernels::cuda {

namespace {

// ---------------------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------------------

constexpr int kThreads = 1024;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreads / kWarpSize;
constexpr unsigned kFullMask = 0xFFFFFFFFu;
//! Path A's limit: the bitonic sort gives each thread one candidate.
constexpr int kMaxCandidates = kThreads;
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
//! One bit per token for the penalty's "seen" set.
constexpr int kPenaltyWords = static_cast<int>(kMaxSamplingVocab / 32);
//! Fixed-point scale of a probability: p = 1 is 2^40, so 2^18 tokens sum to at most 2^58 (no uint64 overflow).
constexpr float kMassScale = 1099511627776.0f;
constexpr std::int32_t kNoToken = INT_MAX;

// Philox4x32 multipliers and Weyl key increments (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr std::uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr std::uint32_t kPhiloxW1 = 0xBB67AE85u;
constexpr int kPhiloxRounds = 10;

// ---------------------------------------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------------------------------------

//! Philox4x32-10 in place on c[4] with key (k0, k1); shared by the kernel and the host wrapper.
__host__ __device__ inline void philox_rounds(std::uint32_t (&c)[4], std::uint32_t k0, std::uint32_t k1) {
    for (int round = 0; round < kPhiloxRounds; ++round) {
        if (round > 0) {
            k0 += kPhiloxW0;
            k1 += kPhiloxW1;
        }
        const std::uint64_t p0 = static_cast<std::uint64_t>(kPhiloxM0) * c[0];
        const std::uint64_t p1 = static_cast<std::uint64_t>(kPhiloxM1) * c[2];
        const auto hi0 = static_cast<std::uint32_t>(p0 >> 32);
        const auto lo0 = static_cast<std::uint32_t>(p0);
        const auto hi1 = static_cast<std::uint32_t>(p1 >> 32);
        const auto lo1 = static_cast<std::uint32_t>(p1);
        c[0] = hi1 ^ c[1] ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c[3] ^ k1;
        c[3] = lo0;
    }
}

__host__ __device__ inline std::uint64_t random_bits(std::uint64_t seed, std::uint64_t step, std::uint64_t row) {
    std::uint32_t c[4] = {static_cast<std::uint32_t>(step), static_cast<std::uint32_t>(step >> 32),
                          static_cast<std::uint32_t>(row), static_cast<std::uint32_t>(row >> 32)};
    philox_rounds(c, static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32));
    return static_cast<std::uint64_t>(c[0]) | (static_cast<std::uint64_t>(c[1]) << 32);
}

//! Order key: unsigned order of the result = float order of the logit; 0 means masked (-inf or NaN).
//!   positive float  0|exp|man  ->  1|exp|man   (above every negative)
//!   negative float  1|exp|man  ->  ~bits      (larger magnitude -> smaller key)
//! -0 is folded into +0 first, so that equal logits always share a key.
__device__ __forceinline__ std::uint32_t order_key(float logit) {
    if (!(logit > -INFINITY)) return 0;
    std::uint32_t bits = __float_as_uint(logit);
    if (bits == 0x80000000u) bits = 0;
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_to_logit(std::uint32_t key) {
    return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}

//! argmax's total order: NaN above every number (the first NaN wins), then the larger value, then the lower index.
__device__ __forceinline__ bool argmax_better(float v, std::int32_t i, float best_v, std::int32_t best_i) {
    const bool v_nan = isnan(v);
    const bool best_nan = isnan(best_v);
    if (v_nan != best_nan) return v_nan;
    if (!v_nan && v != best_v) return v > best_v;
    return i < best_i;
}

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
}

__device__ __forceinline__ unsigned long long warp_inclusive_scan(unsigned long long v) {
    const int lane = threadIdx.x % kWarpSize;
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
        const unsigned long long other = __shfl_up_sync(kFullMask, v, offset);
        if (lane >= offset) v += other;
    }
    return v;
}

//! Shared scratch of the block reductions. Each reduction ends with a barrier, so the next may reuse it.
struct ReduceScratch {
    float value[kWarps];
    std::int32_t index[kWarps];
    unsigned long long sum[kWarps];
};

struct ArgmaxResult {
    float value;
    std::int32_t index;
};

__device__ ArgmaxResult block_argmax(float v, std::int32_t i, ReduceScratch& s) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        const float other_v = __shfl_xor_sync(kFullMask, v, offset);
        const std::int32_t other_i = __shfl_xor_sync(kFullMask, i, offset);
        if (argmax_better(other_v, other_i, v, i)) {
            v = other_v;
            i = other_i;
        }
    }
    const int warp = threadIdx.x / kWarpSize;
    if (threadIdx.x % kWarpSize == 0) {
        s.value[warp] = v;
        s.index[warp] = i;
    }
    __syncthreads();
    ArgmaxResult best{s.value[0], s.index[0]};
    for (int w = 1; w < kWarps; ++w) {
        if (argmax_better(s.value[w], s.index[w], best.value, best.index)) best = {s.value[w], s.index[w]};
    }
    __syncthreads();
    return best;
}

__device__ float block_max(float v, ReduceScratch& s) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    if (threadIdx.x % kWarpSize == 0) s.value[threadIdx.x / kWarpSize] = v;
    __syncthreads();
    float best = s.value[0];
    for (int w = 1; w < kWarps; ++w) best = fmaxf(best, s.value[w]);
    __syncthreads();
    return best;
}

__device__ unsigned long long block_sum(unsigned long long v, ReduceScratch& s) {
    v = warp_sum(v);
    if (threadIdx.x % kWarpSize == 0) s.sum[threadIdx.x / kWarpSize] = v;
    __syncthreads();
    unsigned long long total = 0;
    for (int w = 0; w < kWarps; ++w) total += s.sum[w];
    __syncthreads();
    return total;
}

//! Inclusive prefix sum over the block in thread order; `total` receives the sum of all threads.
__device__ unsigned long long block_inclusive_scan(unsigned long long v, ReduceScratch& s, unsigned long long& total) {
    const unsigned long long inclusive = warp_inclusive_scan(v);
    const int warp = threadIdx.x / kWarpSize;
    if (threadIdx.x % kWarpSize == kWarpSize - 1) s.sum[warp] = inclusive;
    __syncthreads();
    unsigned long long offset = 0;
    total = 0;
    for (int w = 0; w < kWarps; ++w) {
        if (w < warp) offset += s.sum[w];
        total += s.sum[w];
    }
    __syncthreads();
    return inclusive + offset;
}

//! Keep rule of a threshold on order keys: key above `key`, or equal to it with an id below `end`.
//! {0, 0} keeps every unmasked token.
struct KeyCut {
    std::uint32_t key;
    std::int32_t end;
};

__device__ __forceinline__ bool keeps(const KeyCut& cut, std::uint32_t key, std::int32_t i) {
    return key > cut.key || (key == cut.key && i < cut.end);
}

struct KeyWeight {
    std::uint32_t key;
    unsigned long long weight;
};

struct RadixResult {
    std::uint32_t key;         //!< the selected key t
    unsigned long long above;  //!< weight of the tokens with key > t (< need)
    unsigned long long tie;    //!< weight of the tokens with key == t (above + tie >= need)
};

struct RadixScratch {
    unsigned long long bins[kRadixBins];
    std::uint32_t digit;
    unsigned long long above;
    unsigned long long tie;
};

//! The largest key t with weight(key >= t) >= need, over tokens with key > 0 and weight > 0 (fn(i) gives both).
//! The caller guarantees 1 <= need <= the total weight. Integer weights make the histogram order independent.
template <typename Fn>
__device__ RadixResult radix_select(int vocab, unsigned long long need, Fn fn, RadixScratch& s) {
    std::uint32_t prefix = 0;
    std::uint32_t mask = 0;
    unsigned long long above = 0;
    for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
        for (int b = threadIdx.x; b < kRadixBins; b += kThreads) s.bins[b] = 0;
        __syncthreads();
        // Neighbouring tokens of one thread often share a digit (the first pass sees mostly sign and exponent):
        // a run is added once, which keeps shared atomics from serializing on a handful of bins.
        int run_bin = -1;
        unsigned long long run_weight = 0;
        for (int i = threadIdx.x; i < vocab; i += kThreads) {
            const KeyWeight kw = fn(i);
            if (kw.key == 0 || kw.weight == 0 || (kw.key & mask) != prefix) continue;
            const int bin = static_cast<int>((kw.key >> shift) & (kRadixBins - 1));
            if (bin != run_bin) {
                if (run_weight != 0) atomicAdd(&s.bins[run_bin], run_weight);
                run_bin = bin;
                run_weight = 0;
            }
            run_weight += kw.weight;
        }
        if (run_weight != 0) atomicAdd(&s.bins[run_bin], run_weight);
        __syncthreads();
        if (threadIdx.x < kWarpSize) {
            // Lane l owns bins 255-8l down to 248-8l: a warp scan gives each lane the weight of all higher bins.
            constexpr int kBinsPerLane = kRadixBins / kWarpSize;
            const int lane = threadIdx.x;
            unsigned long long lane_total = 0;
            for (int j = 0; j < kBinsPerLane; ++j) lane_total += s.bins[kRadixBins - 1 - kBinsPerLane * lane - j];
            unsigned long long running = above + warp_inclusive_scan(lane_total) - lane_total;
            for (int j = 0; j < kBinsPerLane; ++j) {
                const int bin = kRadixBins - 1 - kBinsPerLane * lane - j;
                const unsigned long long h = s.bins[bin];
                if (running < need && running + h >= need) {
                    s.digit = static_cast<std::uint32_t>(bin);
                    s.above = running;
                    s.tie = h;
                }
                running += h;
            }
        }
        __syncthreads();
        prefix |= s.digit << shift;
        mask |= static_cast<std::uint32_t>(kRadixBins - 1) << shift;
        above = s.above;
    }
    return {prefix, above, s.tie};
}

struct LocateScratch {
    unsigned long long warp_total[kWarps];
    std::int32_t located;
};

//! The first i whose inclusive prefix sum of weight(i) (in id order) exceeds the target, or -1 if none does.
//! The target is `value` itself, or, when `scaled`, floor(value * total / 2^64) for the total weight (an
//! inverse-CDF draw from 64 random bits). Each warp sums a contiguous chunk; the warp whose chunk holds the
//! target then scans it 32 tokens at a time.
template <typename Fn>
__device__ std::int32_t locate(int vocab, Fn weight, bool scaled, unsigned long long value, LocateScratch& s) {
    const int lane = threadIdx.x % kWarpSize;
    const int warp = threadIdx.x / kWarpSize;
    const int chunk = ((vocab + kWarps - 1) / kWarps + kWarpSize - 1) / kWarpSize * kWarpSize;
    const int begin = min(vocab, warp * chunk);
    const int end = min(vocab, begin + chunk);
    unsigned long long sum = 0;
    for (int i = begin + lane; i < end; i += kWarpSize) sum += weight(i);
    sum = warp_sum(sum);
    if (lane == 0) s.warp_total[warp] = sum;
    if (threadIdx.x == 0) s.located = -1;
    __syncthreads();
    unsigned long long total = 0;
    for (int w = 0; w < kWarps; ++w) total += s.warp_total[w];
    const unsigned long long target = scaled ? __umul64hi(value, total) : value;
    unsigned long long base = 0;
    int owner = -1;
    for (int w = 0; w < kWarps; ++w) {
        if (base + s.warp_total[w] > target) {
            owner = w;
            break;
        }
        base += s.warp_total[w];
    }
    if (warp == owner) {
        for (int tile = begin; tile < end; tile += kWarpSize) {
            const int i = tile + lane;
            const unsigned long long w = i < end ? weight(i) : 0;
            const unsigned long long inclusive = base + warp_inclusive_scan(w);
            const bool hit = w > 0 && inclusive > target && inclusive - w <= target;
            if (__ballot_sync(kFullMask, hit) != 0) {
                if (hit) s.located = i;
                break;
            }
            base = __shfl_sync(kFullMask, inclusive, kWarpSize - 1);
        }
    }
    __syncthreads();
    return s.located;
}

//! Row options after the clamping documented in sampling.h.
struct RowOptions {
    bool greedy;
    float inv_temperature;
    std::int32_t top_k;  // 0 = off
    float top_p;         // 1 = off
    float min_p;         // 0 = off
};

__device__ RowOptions clamp_options(const SamplingOptions& o) {
    RowOptions r{};
    const float inv_t = 1.0f / o.temperature;
    // A denormal temperature overflows 1/T to inf, and 0 * inf is NaN: treat it as the greedy limit it is.
    r.greedy = !(o.temperature > 0.0f) || !(inv_t < INFINITY);
    r.inv_temperature = inv_t;
    r.top_k = o.top_k > 0 ? o.top_k : 0;
    r.top_p = o.top_p < 1.0f ? fmaxf(o.top_p, 0.0f) : 1.0f;
    r.min_p = o.min_p > 0.0f ? fminf(o.min_p, 1.0f) : 0.0f;
    return r;
}

//! The mass target of top-p: ceil(top_p * total), at least 1 (keep one token) and at most total.
__device__ unsigned long long top_p_target(float top_p, unsigned long long total) {
    const double x = ceil(static_cast<double>(top_p) * static_cast<double>(total));
    const auto need = static_cast<unsigned long long>(x);
    return need < 1 ? 1 : (need > total ? total : need);
}

struct SampleShared {
    ReduceScratch reduce;
    RadixScratch radix;
    LocateScratch locate;
    std::int32_t token;
    std::int32_t candidate_count;
    // The penalty bitmap is dead before the candidates are written.
    union {
        std::uint32_t penalty_bits[kPenaltyWords];
        struct {
            std::uint32_t key[kMaxCandidates];
            std::int32_t id[kMaxCandidates];
            unsigned long long cumulative[kMaxCandidates];
        } candidates;
    } u;
};

//! Row context shared by the sampling phases.
struct Row {
    float* logits;
    int vocab;
    float max_logit;  // largest non-NaN logit
    float inv_temperature;

    __device__ float prob(float logit) const {
        if (!(logit > -INFINITY)) return 0.0f;
        // Several +inf logits: exp(inf - inf) is NaN; the limit of the distribution shares the mass among them.
        if (max_logit == INFINITY) return logit == INFINITY ? 1.0f : 0.0f;
        return expf((logit - max_logit) * inv_temperature);
    }
    __device__ static unsigned long long mass(float p) { return __float2ull_rn(p * kMassScale); }
};

//! Top-k: exactly k tokens (k < number of unmasked tokens), ties at the threshold to the lowest ids.
__device__ KeyCut top_k_cut(const Row& row, std::int32_t k, SampleShared& s) {
    const float* logits = row.logits;
    const RadixResult r = radix_select(
        row.vocab, static_cast<unsigned long long>(k), [&](int i) { return KeyWeight{order_key(logits[i]), 1ull}; },
        s.radix);
    const unsigned long long ties_needed = static_cast<unsigned long long>(k) - r.above;
    std::int32_t end = row.vocab;
    if (r.tie > ties_needed) {
        const std::uint32_t t = r.key;
        const std::int32_t last = locate(
            row.vocab, [&](int i) { return order_key(logits[i]) == t ? 1ull : 0ull; }, false, ties_needed - 1,
            s.locate);
        end = last + 1;
    }
    return {r.key, end};
}

//! Path A: at most kMaxCandidates tokens survive top-k; sort them and finish in shared memory.
__device__ std::int32_t sample_candidates(const Row& row, const KeyCut& cut_k, const RowOptions& opt,
                                          std::uint64_t bits, SampleShared& s) {
    auto& c = s.u.candidates;
    if (threadIdx.x == 0) s.candidate_count = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < row.vocab; i += kThreads) {
        const std::uint32_t key = order_key(row.logits[i]);
        if (key != 0 && keeps(cut_k, key, i)) {
            const int slot = atomicAdd(&s.candidate_count, 1);
            if (slot < kMaxCandidates) {
                c.key[slot] = key;
                c.id[slot] = i;
            }
        }
    }
    __syncthreads();
    const int n = min(s.candidate_count, kMaxCandidates);
    int padded = 1;
    while (padded < n) padded *= 2;
    const int j = threadIdx.x;
    if (j >= n && j < padded) {
        c.key[j] = 0;
        c.id[j] = kNoToken;
    }
    __syncthreads();
    // The slots were claimed in scheduling order; the bitonic sort restores the host's total order
    // (larger key first, then lower id), which makes everything below deterministic.
    for (int size = 2; size <= padded; size *= 2) {
        for (int stride = size / 2; stride > 0; stride /= 2) {
            const int partner = j ^ stride;
            if (j < padded && partner > j) {
                const std::uint32_t ka = c.key[j];
                const std::uint32_t kb = c.key[partner];
                const std::int32_t ia = c.id[j];
                const std::int32_t ib = c.id[partner];
                const bool b_first = kb > ka || (kb == ka && ib < ia);
                const bool forward = (j & size) == 0;
                if (forward == b_first) {
                    c.key[j] = kb;
                    c.key[partner] = ka;
                    c.id[j] = ib;
                    c.id[partner] = ia;
                }
            }
            __syncthreads();
        }
    }
    const float p = j < n ? row.prob(key_to_logit(c.key[j])) : 0.0f;
    const unsigned long long w = j < n ? Row::mass(p) : 0;
    unsigned long long total = 0;
    const unsigned long long cumulative = block_inclusive_scan(w, s.reduce, total);
    c.cumulative[j] = cumulative;
    // The first candidate has p = 1 >= min_p, so both counts below are at least 1. p falls along the sorted
    // order, so each rule keeps a prefix and the intersection is the shorter one.
    const int keep_min_p = __syncthreads_count(j < n && p >= opt.min_p);
    const unsigned long long need = opt.top_p < 1.0f ? top_p_target(opt.top_p, total) : total;
    const int keep_top_p = __syncthreads_count(j < n && cumulative < need) + 1;
    const int keep = min(keep_min_p, keep_top_p);
    const unsigned long long kept_mass = c.cumulative[keep - 1];
    const unsigned long long target = __umul64hi(bits, kept_mass);
    if (threadIdx.x == 0) s.token = -1;
    __syncthreads();
    if (j < keep) {
        const unsigned long long before = j > 0 ? c.cumulative[j - 1] : 0;
        if (before <= target && target < cumulative) s.token = c.id[j];
    }
    __syncthreads();
    return s.token;
}

//! Path B: stream the row for each step (top_k off or above kMaxCandidates, large vocabulary).
__device__ std::int32_t sample_full(const Row& row, const KeyCut& cut_k, const RowOptions& opt, std::uint64_t bits,
                                    SampleShared& s) {
    const float* logits = row.logits;
    const auto top_k_mass = [&](int i) {
        const float l = logits[i];
        const std::uint32_t key = order_key(l);
        return KeyWeight{key, key != 0 && keeps(cut_k, key, i) ? Row::mass(row.prob(l)) : 0ull};
    };
    KeyCut cut_p{0, 0};
    if (opt.top_p < 1.0f) {
        unsigned long long partial = 0;
        for (int i = threadIdx.x; i < row.vocab; i += kThreads) partial += top_k_mass(i).weight;
        const unsigned long long need = top_p_target(opt.top_p, block_sum(partial, s.reduce));
        const RadixResult r = radix_select(row.vocab, need, top_k_mass, s.radix);
        // Tokens with key t have equal logits, hence equal masses: keep as many as the target still needs.
        const std::uint32_t t = r.key;
        // each > 0: radix_select only counts tokens of positive mass. The guard only keeps a broken invariant
        // from dividing by zero.
        const unsigned long long each = max(Row::mass(row.prob(key_to_logit(t))), 1ull);
        const unsigned long long ties_needed = (need - r.above + each - 1) / each;
        std::int32_t end = row.vocab;
        if (r.tie / each > ties_needed) {
            const std::int32_t last = locate(
                row.vocab,
                [&](int i) {
                    const std::uint32_t key = order_key(logits[i]);
                    return key == t && keeps(cut_k, key, i) ? 1ull : 0ull;
                },
                false, ties_needed - 1, s.locate);
            end = last + 1;
        }
        cut_p = {t, end};
    }
    const float min_p = opt.min_p;
    return locate(
        row.vocab,
        [&](int i) {
            const float l = logits[i];
            const std::uint32_t key = order_key(l);
            if (key == 0 || !keeps(cut_k, key, i) || !keeps(cut_p, key, i)) return 0ull;
            const float p = row.prob(l);
            return p >= min_p ? Row::mass(p) : 0ull;
        },
        true, bits, s.locate);
}

// ---------------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads) argmax_rows_kernel(const float* logits, int vocab, std::int32_t* out) {
    __shared__ ReduceScratch scratch;
    pdl_wait();
    pdl_launch_dependents();
    const float* row = logits + static_cast<std::int64_t>(blockIdx.x) * vocab;
    float best_v = -INFINITY;
    std::int32_t best_i = kNoToken;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
        const float v = row[i];
        if (argmax_better(v, i, best_v, best_i)) {
            best_v = v;
            best_i = i;
        }
    }
    const ArgmaxResult best = block_argmax(best_v, best_i, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = best.index;
}

__global__ void __launch_bounds__(kThreads) sample_rows_kernel(SampleRowsParams p, bool advance_step) {
    __shared__ SampleShared s;
    pdl_wait();
    pdl_launch_dependents();
    const int row_index = blockIdx.x;
    const int vocab = static_cast<int>(p.vocab);
    float* logits = p.logits + static_cast<std::int64_t>(row_index) * p.vocab;
    const SamplingOptions raw = p.options[row_index];
    const RowOptions opt = clamp_options(raw);
    const std::uint64_t step = *p.step;

    // 1. Repetition penalty (each distinct history id once).
    const float penalty = raw.repetition_penalty;
    if (penalty > 0.0f && penalty < INFINITY && penalty != 1.0f && p.history_capacity > 0) {
        const std::int32_t* history = p.history + row_index * p.history_capacity;
        const std::int64_t len = p.history_len[row_index];
        const std::int64_t count = len < 0 ? 0 : (len < p.history_capacity ? len : p.history_capacity);
        for (std::int64_t j = threadIdx.x; j < count; j += kThreads) {
            const std::int32_t id = history[j];
            if (id >= 0 && id < vocab) s.u.penalty_bits[id / 32] = 0;
        }
        __syncthreads();
        for (std::int64_t j = threadIdx.x; j < count; j += kThreads) {
            const std::int32_t id = history[j];
            if (id < 0 || id >= vocab) continue;
            const std::uint32_t bit = 1u << (id % 32);
            if ((atomicOr(&s.u.penalty_bits[id / 32], bit) & bit) == 0) {
                const float l = logits[id];
                logits[id] = l > 0.0f ? l / penalty : l * penalty;
            }
        }
        __syncthreads();
    }

    // 2. Argmax, largest non-NaN logit, unmasked count.
    float best_v = -INFINITY;
    std::int32_t best_i = kNoToken;
    float max_logit = -INFINITY;
    unsigned long long unmasked = 0;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
        const float v = logits[i];
        if (argmax_better(v, i, best_v, best_i)) {
            best_v = v;
            best_i = i;
        }
        max_logit = fmaxf(max_logit, v);  // fmaxf ignores NaN
        unmasked += v > -INFINITY ? 1 : 0;
    }
    const ArgmaxResult best = block_argmax(best_v, best_i, s.reduce);
    max_logit = block_max(max_logit, s.reduce);
    unmasked = block_sum(unmasked, s.reduce);

    std::int32_t token = best.index;
    if (!opt.greedy && unmasked > 0) {
        const Row row{logits, vocab, max_logit, opt.inv_temperature};
        const std::uint64_t seed = p.seed_device ? *p.seed_device : p.seed;
        const std::uint64_t bits = random_bits(seed, step, static_cast<std::uint64_t>(row_index));
        const bool top_k_active = opt.top_k > 0 && static_cast<unsigned long long>(opt.top_k) < unmasked;
        const KeyCut cut_k = top_k_active ? top_k_cut(row, opt.top_k, s) : KeyCut{0, 0};
        const unsigned long long candidates = top_k_active ? static_cast<unsigned long long>(opt.top_k) : unmasked;
        const std::int32_t drawn = candidates <= kMaxCandidates ? sample_candidates(row, cut_k, opt, bits, s)
                                                                : sample_full(row, cut_k, opt, bits, s);
        // -1 cannot happen (the best token always keeps a positive mass); argmax is the safe answer if it did.
        if (drawn >= 0) token = drawn;
    }

    __syncthreads();  // every thread has read *p.step and the history before thread 0 writes them
    if (threadIdx.x == 0) {
        p.out[row_index] = token;
        if (p.append_to_history) {
            const std::int64_t len = p.history_len[row_index] < 0 ? 0 : p.history_len[row_index];
            p.history[row_index * p.history_capacity + len % p.history_capacity] = token;
            p.history_len[row_index] = len + 1;
        }
        if (advance_step) *p.step = step + 1;
    }
}

//! With several rows no block may advance the step before every block has read it: a one-thread kernel after them.
__global__ void advance_step_kernel(std::uint64_t* step) {
    pdl_wait();  // every sample_rows block has read *step
    pdl_launch_dependents();
    *step += 1;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------------

void argmax_rows(const float* logits, std::int64_t m, std::int64_t vocab, std::int32_t* out, cudaStream_t stream) {
    Q4TP_CHECK(logits && out, "argmax_rows: null pointer (logits " << logits << ", out " << out << ")");
    Q4TP_CHECK(m >= 1 && m <= INT_MAX, "argmax_rows: m = " << m << ", expected 1 <= m <= " << INT_MAX);
    // The strided loop index is an int and must not overflow past the last element.
    constexpr std::int64_t kMaxVocab = INT_MAX - kThreads;
    Q4TP_CHECK(vocab >= 1 && vocab <= kMaxVocab,
               "argmax_rows: vocab = " << vocab << ", expected 1 <= vocab <= " << kMaxVocab);
    launch_kernel(argmax_rows_kernel, static_cast<unsigned>(m), kThreads, 0, stream, logits, static_cast<int>(vocab),
                  out);
}

void sample_rows(const SampleRowsParams& p, cudaStream_t stream) {
    Q4TP_CHECK(p.logits && p.options && p.step && p.out,
               "sample_rows: null pointer (logits " << p.logits << ", options " << p.options << ", step " << p.step
                                                    << ", out " << p.out << ")");
    Q4TP_CHECK(p.m >= 1 && p.m <= INT_MAX, "sample_rows: m = " << p.m << ", expected 1 <= m <= " << INT_MAX);
    Q4TP_CHECK(p.vocab >= 1 && p.vocab <= kMaxSamplingVocab,
               "sample_rows: vocab = " << p.vocab << ", expected 1 <= vocab <= " << kMaxSamplingVocab
                                       << " (the repetition-penalty bitmap's size)");
    Q4TP_CHECK(p.history_capacity >= 0,
               "sample_rows: history_capacity = " << p.history_capacity << ", expected >= 0");
    Q4TP_CHECK(p.history_capacity == 0 || (p.history && p.history_len),
               "sample_rows: history_capacity = " << p.history_capacity << " but history " << p.history
                                                  << " / history_len " << p.history_len << " is null");
    Q4TP_CHECK(!p.append_to_history || p.history_capacity > 0,
               "sample_rows: append_to_history is set but history_capacity = 0 (nowhere to append)");
    const bool single_block = p.m == 1;
    launch_kernel(sample_rows_kernel, static_cast<unsigned>(p.m), kThreads, 0, stream, p, single_block);
    if (!single_block) launch_kernel(advance_step_kernel, 1, 1, 0, stream, p.step);
}

std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> counter, std::array<std::uint32_t, 2> key) {
    std::uint32_t c[4] = {counter[0], counter[1], counter[2], counter[3]};
    philox_rounds(c, key[0], key[1]);
    return {c[0], c[1], c[2], c[3]};
}

std::uint64_t sampling_random_bits(std::uint64_t seed, std::uint64_t step, std::uint64_t row) {
    return random_bits(seed, step, row);
}

}  // namespace q4tp::kernels::cuda
