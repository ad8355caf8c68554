#include "parallel/communicator.h"

#include <cstdint>

#include "core/base/error.h"

namespace q4tp::parallel {

void Communicator::check_not_aborted(const char* operation) const {
    Q4TP_CHECK(!aborted(), name() << " communicator: " << operation << " on rank " << rank()
                                  << " after the communicator was aborted");
}

void Communicator::check_view(const TensorView& view, const char* operation, const char* role) const {
    Q4TP_CHECK(view.device == device(), name() << " communicator: " << operation << " " << role << " tensor "
                                               << view.shape.str() << " is in " << to_string(view.device)
                                               << " memory, expected " << to_string(device()) << " memory");
    Q4TP_CHECK(view.data != nullptr || view.numel() == 0,
               name() << " communicator: " << operation << " " << role << " tensor " << view.shape.str()
                      << " has a null data pointer");
}

void Communicator::all_reduce_sum(TensorView inout, cudaStream_t stream) {
    check_not_aborted("all_reduce_sum");
    check_view(inout, "all_reduce_sum", "inout");
    do_all_reduce_sum(inout, stream);
}

void Communicator::all_gather(TensorView send, TensorView recv, cudaStream_t stream) {
    check_not_aborted("all_gather");
    check_view(send, "all_gather", "send");
    check_view(recv, "all_gather", "recv");
    Q4TP_CHECK(send.dtype == recv.dtype, name() << " communicator: all_gather send dtype " << to_string(send.dtype)
                                                << " differs from recv dtype " << to_string(recv.dtype));
    Q4TP_CHECK(recv.numel() == send.numel() * size(),
               name() << " communicator: all_gather recv " << recv.shape.str() << " holds " << recv.numel()
                      << " elements, expected " << size() << " ranks x " << send.numel() << " (send "
                      << send.shape.str() << ")");
    // In place is only the exact slice of this rank; any other overlap would read what is being written.
    const auto send_begin = reinterpret_cast<std::uintptr_t>(send.data);
    const auto recv_begin = reinterpret_cast<std::uintptr_t>(recv.data);
    const bool in_place = send_begin == recv_begin + static_cast<std::uintptr_t>(rank()) * send.bytes();
    const bool disjoint = send_begin + send.bytes() <= recv_begin || recv_begin + recv.bytes() <= send_begin;
    Q4TP_CHECK(in_place || disjoint || send.bytes() == 0,
               name() << " communicator: all_gather send overlaps recv but is not rank " << rank()
                      << "'s slice of it");
    do_all_gather(send, recv, stream);
}

void Communicator::broadcast(TensorView data, int root, cudaStream_t stream) {
    check_not_aborted("broadcast");
    check_view(data, "broadcast", "data");
    Q4TP_CHECK(root >= 0 && root < size(),
               name() << " communicator: broadcast root " << root << " is not a rank (0.." << size() - 1 << ")");
    do_broadcast(data, root, stream);
}

}  // namespace q4tp::parallel
