//! Test helpers for safetensors files: a self-deleting temporary directory, raw file bytes built
//! from a header string (to craft malformed files), reproducible non-zero random data, and act-order g_idx.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "core/base/error.h"

namespace q4tp::st_test {

//! A fresh directory under ::testing::TempDir(), removed with everything in it on destruction.
class ScopedTempDir {
public:
    ScopedTempDir() {
        static std::atomic<int> counter{0};
        const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
        std::string name = "q4tp_st_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
        if (test != nullptr) name += std::string("_") + test->name();
        for (char& c : name) {
            if (c == '/') c = '_';  // parameterized test names contain '/'
        }
        path_ = std::filesystem::path(::testing::TempDir()) / name;
        std::filesystem::remove_all(path_);
        std::filesystem::create_directories(path_);
    }
    ~ScopedTempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    ScopedTempDir(const ScopedTempDir&) = delete;
    ScopedTempDir& operator=(const ScopedTempDir&) = delete;

    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

//! The 8 bytes of a little-endian u64 (a safetensors header length).
inline std::string u64_le(std::uint64_t value) {
    std::string out(8, '\0');
    for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xFF);
    return out;
}

//! A whole safetensors file: length prefix + header text as given + data bytes.
inline std::string safetensors_bytes(std::string_view header, std::string_view data) {
    return u64_le(header.size()) + std::string(header) + std::string(data);
}

//! Same with `data_size` filler bytes (1, 2, 3, ...; never all zero) as the data buffer.
inline std::string safetensors_bytes(std::string_view header, std::size_t data_size) {
    std::string data(data_size, '\0');
    for (std::size_t i = 0; i < data_size; ++i) data[i] = static_cast<char>(1 + i % 251);
    return safetensors_bytes(header, data);
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    ASSERT_TRUE(out.is_open()) << path;
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    ASSERT_FALSE(out.fail()) << path;
}

inline std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

//! `count` random bytes in [1, 255] (no zero, so a missed copy cannot pass as a match).
inline std::vector<std::byte> random_bytes(std::size_t count, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> dist(1, 255);
    std::vector<std::byte> out(count);
    for (std::byte& b : out) b = static_cast<std::byte>(dist(rng));
    return out;
}

//! `count` random non-zero floats in [-2, -0.01] U [0.01, 2].
inline std::vector<float> random_floats(std::size_t count, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> magnitude(0.01f, 2.0f);
    std::bernoulli_distribution negative(0.5);
    std::vector<float> out(count);
    for (float& v : out) v = negative(rng) ? -magnitude(rng) : magnitude(rng);
    return out;
}

//! `count` random non-zero int32 values.
inline std::vector<std::int32_t> random_ints(std::size_t count, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int32_t> dist(1, 0x7FFFFFFF);
    std::bernoulli_distribution negative(0.5);
    std::vector<std::int32_t> out(count);
    for (std::int32_t& v : out) v = negative(rng) ? -dist(rng) : dist(rng);
    return out;
}

//! Runs `fn`, expects a q4tp::Error whose one-line message contains every keyword.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& keywords) {
    try {
        fn();
        ADD_FAILURE() << "expected q4tp::Error containing '" << keywords.front() << "'";
    } catch (const Error& e) {
        for (const auto& kw : keywords) {
            EXPECT_NE(e.message().find(kw), std::string::npos) << "message: " << e.message() << "\nmissing: " << kw;
        }
        EXPECT_EQ(e.message().find('\n'), std::string::npos) << "message is not one line: " << e.message();
    }
}

//! g_idx as GPTQ writes it with desc_act (R2.15): group j covers rows perm[j*gs .. (j+1)*gs).
inline std::vector<std::int32_t> act_order_g_idx(std::int64_t k, std::int64_t gs, std::mt19937& rng) {
    std::vector<std::int32_t> perm(static_cast<std::size_t>(k));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<std::int32_t> g_idx(static_cast<std::size_t>(k));
    for (std::int64_t j = 0; j < k; ++j)
        g_idx[static_cast<std::size_t>(perm[static_cast<std::size_t>(j)])] = static_cast<std::int32_t>(j / gs);
    return g_idx;
}

}  // namespace q4tp::st_test
