//! TensorView: a non-owning, typed view {data, dtype, shape, device}. Row-major and contiguous;
//! owners are HostBuffer/DeviceBuffer in the model, the KV cache or the workspace.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/base/dtype.h"
#include "core/base/error.h"

namespace q4tp {

enum class Device { Host, Cuda };

inline const char* to_string(Device device) {
    switch (device) {
        case Device::Host: return "host";
        case Device::Cuda: return "cuda";
    }
    return "?";
}

//! Up to four dimensions, fixed storage so a view never allocates.
class Shape {
public:
    static constexpr int kMaxRank = 4;
    Shape() = default;
    Shape(std::initializer_list<std::int64_t> dims);

    int rank() const noexcept { return rank_; }
    std::int64_t operator[](int i) const noexcept { return dims_[static_cast<std::size_t>(i)]; }
    std::int64_t numel() const noexcept;
    void set_dim(int i, std::int64_t value);
    bool operator==(const Shape& other) const noexcept;
    std::string str() const;  //!< "[4096, 11008]"

private:
    std::array<std::int64_t, kMaxRank> dims_{};
    int rank_ = 0;
};

struct TensorView {
    void* data = nullptr;
    DType dtype = DType::F32;
    Shape shape;
    Device device = Device::Host;

    std::int64_t numel() const noexcept { return shape.numel(); }
    std::size_t bytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype); }

    //! Typed pointer: view.as<float>(). The caller knows the dtype (checked where the view is made).
    template <typename T>
    T* as() const {
        return static_cast<T*>(data);
    }

    //! The same memory seen with another shape of equal element count.
    TensorView reshaped(const Shape& new_shape) const;
    //! Rows [begin, begin + count) of the outermost dimension.
    TensorView rows(std::int64_t begin, std::int64_t count) const;
};

}  // namespace q4tp
