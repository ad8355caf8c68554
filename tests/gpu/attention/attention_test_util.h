// One random attention problem on the device (fp16 q and caches, NaN in every cache row past past_len + m) and its
// float32 reference from kernels/cpu; shared by test_cuda_attention and bench_attention.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/device_buffer.h"
#include "core/base/half.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "tests/gpu/common/gpu_test_util.h"

namespace q4tp::test {

//! fp16 quiet NaN: what unwritten cache rows hold in the tests, to prove they are never read.
inline constexpr std::uint16_t kHalfNan = 0x7E00;

struct AttentionShape {
    int num_heads = 0;
    int num_kv_heads = 0;
    int head_dim = 0;
};

class AttentionProblem {
public:
    //! Random q in [-2, 2) and cache rows 0 .. filled_rows - 1 in [-1, 1), all fp16-representable; rows from
    //! filled_rows up are NaN. filled_rows defaults to past_len + m (what a real cache holds for this call).
    AttentionProblem(AttentionShape shape, int m, int capacity, int past_len, std::mt19937_64& rng,
                     int filled_rows = -1)
        : shape_(shape), m_(m), capacity_(capacity), past_len_(past_len) {
        const int filled = filled_rows < 0 ? past_len + m : filled_rows;
        const std::size_t d = static_cast<std::size_t>(shape.head_dim);
        q_bits_ = to_half_bits(random_floats(static_cast<std::size_t>(m) * shape.num_heads * d, rng, -2.0f, 2.0f));
        const std::size_t cache_elems = static_cast<std::size_t>(shape.num_kv_heads) * capacity * d;
        k_bits_.assign(cache_elems, kHalfNan);
        v_bits_.assign(cache_elems, kHalfNan);
        for (int g = 0; g < shape.num_kv_heads; ++g) {
            const std::size_t n = static_cast<std::size_t>(filled) * d;
            const std::vector<std::uint16_t> k = to_half_bits(random_floats(n, rng));
            const std::vector<std::uint16_t> v = to_half_bits(random_floats(n, rng));
            const std::size_t at = static_cast<std::size_t>(g) * capacity * d;
            std::copy(k.begin(), k.end(), k_bits_.begin() + static_cast<std::ptrdiff_t>(at));
            std::copy(v.begin(), v.end(), v_bits_.begin() + static_cast<std::ptrdiff_t>(at));
        }
        q_ = to_device(q_bits_);
        k_ = to_device(k_bits_);
        v_ = to_device(v_bits_);
        out_ = DeviceBuffer<std::uint16_t>(q_bits_.size());
        poison(out_);
        past_ = to_device(std::vector<std::int32_t>{past_len});
        const std::size_t ws = kernels::cuda::attention_workspace_bytes(m, shape.num_heads, shape.num_kv_heads,
                                                                         shape.head_dim, capacity);
        workspace_ = DeviceBuffer<float>((ws + sizeof(float) - 1) / sizeof(float));
        if (!workspace_.empty()) poison(workspace_);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    }

    kernels::cuda::AttentionParams params() {
        kernels::cuda::AttentionParams p;
        p.q = reinterpret_cast<const __half*>(q_.data());
        p.k_cache = reinterpret_cast<const __half*>(k_.data());
        p.v_cache = reinterpret_cast<const __half*>(v_.data());
        p.out = reinterpret_cast<__half*>(out_.data());
        p.past_len = past_.data();
        p.workspace = workspace_.data();
        p.workspace_bytes = workspace_.bytes();
        p.m = m_;
        p.num_heads = shape_.num_heads;
        p.num_kv_heads = shape_.num_kv_heads;
        p.head_dim = shape_.head_dim;
        p.capacity = capacity_;
        return p;
    }

    //! Changes *past_len on the device (synchronously) and the reference's notion of it.
    //! Both synchronize the device: the copy and memset run on the legacy stream, which a non-blocking stream
    //! (as used for graph capture) does not wait for.
    void set_past_len(int past_len) {
        past_len_ = past_len;
        Q4TP_CUDA_CHECK(cudaMemcpy(past_.data(), &past_len, sizeof(past_len), cudaMemcpyHostToDevice));
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    }

    void poison_output() {
        poison(out_);
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
    }

    std::vector<float> output() const { return from_half_bits(to_host(out_)); }

    //! kernels::cpu::attention on the same fp16 values, in float32 (double inside).
    std::vector<float> reference() const {
        const std::vector<float> q = from_half_bits(q_bits_);
        const std::vector<float> k = from_half_bits(k_bits_);
        const std::vector<float> v = from_half_bits(v_bits_);
        std::vector<float> out(q.size());
        kernels::cpu::AttentionParams p;
        p.q = q.data();
        p.k_cache = k.data();
        p.v_cache = v.data();
        p.m = m_;
        p.num_heads = shape_.num_heads;
        p.num_kv_heads = shape_.num_kv_heads;
        p.head_dim = shape_.head_dim;
        p.capacity = capacity_;
        p.past_len = past_len_;
        p.out = out.data();
        kernels::cpu::attention(p);
        return out;
    }

    DeviceBuffer<std::uint16_t>& out_buffer() { return out_; }

private:
    AttentionShape shape_;
    int m_;
    int capacity_;
    int past_len_;
    std::vector<std::uint16_t> q_bits_;
    std::vector<std::uint16_t> k_bits_;
    std::vector<std::uint16_t> v_bits_;
    DeviceBuffer<std::uint16_t> q_;
    DeviceBuffer<std::uint16_t> k_;
    DeviceBuffer<std::uint16_t> v_;
    DeviceBuffer<std::uint16_t> out_;
    DeviceBuffer<std::int32_t> past_;
    DeviceBuffer<float> workspace_;
};

//! Elementwise |out - ref| <= atol + rtol |ref| with no NaN/Inf, and also the relative RMS error over the whole
//! output <= max_rel_rms: one key dropped or double-counted out of L moves that by about 1 / sqrt(L), far above
//! fp16 rounding, even where each element stays inside its elementwise bound.
inline ::testing::AssertionResult attention_close(const std::vector<float>& out, const std::vector<float>& ref,
                                                  double atol, double rtol, double max_rel_rms) {
    ::testing::AssertionResult elementwise = all_close(out, ref, atol, rtol);
    if (!elementwise) return elementwise;
    double err2 = 0.0;
    double ref2 = 0.0;
    for (std::size_t i = 0; i < out.size(); ++i) {
        const double e = static_cast<double>(out[i]) - ref[i];
        err2 += e * e;
        ref2 += static_cast<double>(ref[i]) * ref[i];
    }
    const double rel_rms = std::sqrt(err2 / std::max(ref2, 1e-30));
    if (rel_rms > max_rel_rms) {
        return ::testing::AssertionFailure() << "relative RMS error " << rel_rms << " > " << max_rel_rms;
    }
    return ::testing::AssertionSuccess() << "relative RMS error " << rel_rms;
}

}  // namespace q4tp::test
