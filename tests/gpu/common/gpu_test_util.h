// Helpers shared by the GPU suites: skip where there is no GPU, fresh random inputs, NaN poisoning,
// host<->device copies of fp16 data, tolerance checks that print the first mismatches, and a cuBLAS handle.
#pragma once

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/device_buffer.h"
#include "core/base/half.h"

namespace q4tp::test {

//! CUDA devices this process can use (0 where there is no driver or no device).
inline int visible_gpus() {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

//! True when a CUDA device is usable; GPU tests call Q4TP_SKIP_WITHOUT_GPU() first.
inline bool gpu_available() { return visible_gpus() > 0; }

#define Q4TP_SKIP_WITHOUT_GPU()                                     \
    do {                                                            \
        if (!::q4tp::test::gpu_available()) GTEST_SKIP() << "no GPU"; \
    } while (0)

//! A fresh seed per test run unless Q4TP_TEST_SEED is set; printed so a failure can be replayed.
inline std::uint64_t test_seed() {
    static const std::uint64_t seed = [] {
        const char* env = std::getenv("Q4TP_TEST_SEED");
        const std::uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
        std::printf("[ seed     ] Q4TP_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
        return s;
    }();
    return seed;
}

//! Uniform random floats in [lo, hi), never exactly zero.
inline std::vector<float> random_floats(std::size_t n, std::mt19937_64& rng, float lo = -1.0f, float hi = 1.0f) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) {
        do x = dist(rng);
        while (x == 0.0f);
    }
    return v;
}

inline std::vector<std::uint16_t> to_half_bits(const std::vector<float>& v) {
    std::vector<std::uint16_t> h(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) h[i] = float_to_half(v[i]);
    return h;
}

inline std::vector<float> from_half_bits(const std::vector<std::uint16_t>& h) {
    std::vector<float> v(h.size());
    for (std::size_t i = 0; i < h.size(); ++i) v[i] = half_to_float(h[i]);
    return v;
}

//! Copies host data into a new device buffer.
template <typename T>
DeviceBuffer<T> to_device(const std::vector<T>& host) {
    DeviceBuffer<T> d(host.size());
    Q4TP_CUDA_CHECK(cudaMemcpy(d.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <typename T>
std::vector<T> to_host(const DeviceBuffer<T>& d) {
    std::vector<T> host(d.size());
    Q4TP_CUDA_CHECK(cudaMemcpy(host.data(), d.data(), d.bytes(), cudaMemcpyDeviceToHost));
    return host;
}

//! Fills device memory with NaN (0xFF bytes are NaN in fp16 and fp32) so unwritten outputs show.
template <typename T>
void poison(DeviceBuffer<T>& d) {
    Q4TP_CUDA_CHECK(cudaMemset(d.data(), 0xFF, d.bytes()));
}

//! Checks |out - ref| <= atol + rtol * |ref| elementwise, no NaN/Inf; prints the first 8 mismatches.
inline ::testing::AssertionResult all_close(const std::vector<float>& out, const std::vector<float>& ref, double atol,
                                            double rtol) {
    if (out.size() != ref.size()) {
        return ::testing::AssertionFailure() << "size " << out.size() << " != " << ref.size();
    }
    std::size_t bad = 0;
    double worst = 0.0;
    std::string report;
    for (std::size_t i = 0; i < out.size(); ++i) {
        const double diff = std::fabs(static_cast<double>(out[i]) - ref[i]);
        worst = std::max(worst, std::isfinite(diff) ? diff : INFINITY);
        if (!std::isfinite(out[i]) || diff > atol + rtol * std::fabs(static_cast<double>(ref[i]))) {
            if (bad++ < 8) {
                report += "\n  [" + std::to_string(i) + "] got " + std::to_string(out[i]) + " expected " +
                          std::to_string(ref[i]);
            }
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess() << "max abs diff " << worst;
    return ::testing::AssertionFailure() << bad << " of " << out.size() << " elements off (max abs diff " << worst
                                         << ")" << report;
}

//! Owns a cuBLAS handle for one test.
class CublasHandle {
public:
    CublasHandle() { Q4TP_CUBLAS_CHECK(cublasCreate(&handle_)); }
    ~CublasHandle() { cublasDestroy(handle_); }
    CublasHandle(const CublasHandle&) = delete;
    CublasHandle& operator=(const CublasHandle&) = delete;
    cublasHandle_t get() const { return handle_; }

private:
    cublasHandle_t handle_ = nullptr;
};

}  // namespace q4tp::test
