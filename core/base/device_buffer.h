//! DeviceBuffer<T>: an owning, move-only cudaMalloc'd array. Allocation counting lets tests prove
//! that nothing is allocated after load (docs/design.md: no per-token allocation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "core/base/error.h"

namespace q4tp {

namespace detail {
void* device_alloc(std::size_t bytes);
void device_free(void* ptr) noexcept;
}  // namespace detail

//! Number of device allocations made by DeviceBuffer in this process so far.
std::uint64_t device_allocation_count() noexcept;

template <typename T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(std::size_t count) : count_(count) {
        if (count > 0) data_ = static_cast<T*>(detail::device_alloc(count * sizeof(T)));
    }
    ~DeviceBuffer() { detail::device_free(data_); }

    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        if (this != &other) {
            detail::device_free(data_);
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

private:
    T* data_ = nullptr;
    std::size_t count_ = 0;
};

}  // namespace q4tp
