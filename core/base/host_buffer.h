//! HostBuffer<T>: an owning, move-only, 64-byte aligned array in host memory.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <span>
#include <utility>

#include "core/base/error.h"

namespace q4tp {

template <typename T>
class HostBuffer {
public:
    HostBuffer() = default;
    explicit HostBuffer(std::size_t count) : count_(count) {
        if (count == 0) return;
        Q4TP_CHECK(count <= (static_cast<std::size_t>(-1) - 63) / sizeof(T), "host buffer of " << count << " elements overflows");
        const std::size_t bytes = (count * sizeof(T) + 63) / 64 * 64;  // aligned_alloc wants a multiple
        data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
        if (!data_) Q4TP_THROW("out of host memory allocating " << count * sizeof(T) << " bytes");
        std::memset(static_cast<void*>(data_), 0, count * sizeof(T));
    }
    ~HostBuffer() { std::free(data_); }

    HostBuffer(const HostBuffer&) = delete;
    HostBuffer& operator=(const HostBuffer&) = delete;
    HostBuffer(HostBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
    HostBuffer& operator=(HostBuffer&& other) noexcept {
        if (this != &other) {
            std::free(data_);
            data_ = std::exchange(other.data_, nullptr);
            count_ = std::exchange(other.count_, 0);
        }
        return *this;
    }

    T* data() noexcept { return data_; }
    const T* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return count_; }
    std::size_t bytes() const noexcept { return count_ * sizeof(T); }
    bool empty() const noexcept { return count_ == 0; }
    T& operator[](std::size_t i) noexcept { return data_[i]; }
    const T& operator[](std::size_t i) const noexcept { return data_[i]; }
    T* begin() noexcept { return data_; }
    T* end() noexcept { return data_ + count_; }
    const T* begin() const noexcept { return data_; }
    const T* end() const noexcept { return data_ + count_; }
    std::span<T> span() noexcept { return {data_, count_}; }
    std::span<const T> span() const noexcept { return {data_, count_}; }

private:
    T* data_ = nullptr;
    std::size_t count_ = 0;
};

}  // namespace q4tp
