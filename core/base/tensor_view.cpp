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

}  // namespace q4tp
