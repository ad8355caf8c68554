#include "core/base/tensor_view.h"

#include <sstream>

namespace q4tp {

Shape::Shape(std::initializer_list<std::int64_t> dims) {
    Q4TP_CHECK(dims.size() <= kMaxRank, "shape of rank " << dims.size() << " exceeds the maximum " << kMaxRank);
    for (std::int64_t d : dims) {
        Q4TP_CHECK(d >= 0, "negative dimension " << d);
        dims_[static_cast<std::size_t>(rank_++)] = d;
    }
}

std::int64_t Shape::numel() const noexcept {
    std::int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<std::size_t>(i)];
    return n;
}

void Shape::set_dim(int i, std::int64_t value) {
    Q4TP_CHECK(i >= 0 && i < rank_ && value >= 0, "bad dimension " << i << " = " << value << " for " << str());
    dims_[static_cast<std::size_t>(i)] = value;
}

bool Shape::operator==(const Shape& other) const noexcept {
    if (rank_ != other.rank_) return false;
    for (int i = 0; i < rank_; ++i) {
        if (dims_[static_cast<std::size_t>(i)] != other.dims_[static_cast<std::size_t>(i)]) return false;
    }
    return true;
}

std::string Shape::str() const {
    std::ostringstream oss;
    oss << "[";
    for (int i = 0; i < rank_; ++i) oss << (i ? ", " : "") << dims_[static_cast<std::size_t>(i)];
    oss << "]";
    return oss.str();
}

TensorView TensorView::reshaped(const Shape& new_shape) const {
    Q4TP_CHECK(new_shape.numel() == shape.numel(),
               "cannot view " << shape.str() << " as " << new_shape.str() << ": element counts differ");
    TensorView view = *this;
    view.shape = new_shape;
    return view;
}

TensorView TensorView::rows(std::int64_t begin, std::int64_t count) const {
    Q4TP_CHECK(shape.rank() >= 1 && begin >= 0 && count >= 0 && begin + count <= shape[0],
               "rows [" << begin << ", " << begin + count << ") out of range for shape " << shape.str());
    const std::int64_t row_elements = shape[0] == 0 ? 0 : shape.numel() / shape[0];
    TensorView view = *this;
    view.data = static_cast<char*>(data) + static_cast<std::size_t>(begin * row_elements) * dtype_size(dtype);
    view.shape.set_dim(0, count);
    return view;
}

}  // namespace q4tp
