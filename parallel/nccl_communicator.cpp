#include "parallel/nccl_communicator.h"

#include <cstdio>
#include <exception>
#include <string>
#include <thread>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "core/base/logging.h"
#include "parallel/detail/nccl_check.h"

namespace q4tp::parallel {

int select_device(int local_rank) {
    Q4TP_CHECK(local_rank >= 0, "select_device: local rank " << local_rank << " is negative");
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    Q4TP_CHECK(status == cudaSuccess, "local rank " << local_rank << " found no usable CUDA device: "
                                                    << cudaGetErrorString(status));
    Q4TP_CHECK(local_rank < count, "local rank " << local_rank << " needs GPU " << local_rank << " but this node has "
                                                 << count << " visible GPU(s); start at most " << count
                                                 << " ranks per node");
    Q4TP_CUDA_CHECK(cudaSetDevice(local_rank));
    return local_rank;
}

NcclCommunicator::NcclCommunicator(const MpiSession& session)
    : session_(session), rank_(session.rank()), size_(session.size()) {
    Q4TP_CUDA_CHECK(cudaGetDevice(&cuda_device_));
    // Rank 0's outcome travels with the id: if it cannot make one, every rank throws instead of rank 0 throwing
    // and the others waiting for an id that never comes.
    struct IdMessage {
        ncclUniqueId id;
        int status;
        char error[256];
    };
    IdMessage message{};
    if (rank_ == 0) {
        const ncclResult_t result = ncclGetUniqueId(&message.id);
        message.status = static_cast<int>(result);
        if (result != ncclSuccess) {
            std::snprintf(message.error, sizeof message.error, "%s", detail::nccl_error_string(result).c_str());
        }
    }
    session.broadcast_bytes(&message, sizeof message, 0);
    Q4TP_CHECK(message.status == ncclSuccess, "rank 0 could not create the NCCL unique id: " << message.error);
    ncclComm_t comm = nullptr;
    Q4TP_NCCL_CHECK(ncclCommInitRank(&comm, size_, message.id, rank_));
    comm_.store(comm);
    uncaught_at_start_ = std::uncaught_exceptions();
    int version = 0;
    (void)ncclGetVersion(&version);
    Q4TP_LOG_INFO("NCCL " << version << ": " << size_ << " ranks, rank " << rank_ << " on GPU " << cuda_device_);
}

NcclCommunicator::~NcclCommunicator() {
    ncclComm* comm = comm_.exchange(nullptr);
    if (comm == nullptr) return;
    const bool unwinding = std::uncaught_exceptions() > uncaught_at_start_;
    const ncclResult_t result = unwinding ? ncclCommAbort(comm) : ncclCommDestroy(comm);
    if (result != ncclSuccess) {
        Q4TP_LOG_ERROR((unwinding ? "ncclCommAbort" : "ncclCommDestroy")
                       << " failed on rank " << rank_ << ": " << detail::nccl_error_string(result));
    }
}

ncclComm* NcclCommunicator::live_comm(const char* operation) const {
    ncclComm* comm = comm_.load();
    // abort() may run on another thread between the base class's check and here.
    Q4TP_CHECK(comm != nullptr, "nccl communicator: " << operation << " on rank " << rank_
                                                      << " after the communicator was aborted");
    return comm;
}

void NcclCommunicator::barrier() {
    check_not_aborted("barrier");
    session_.barrier();
}

void NcclCommunicator::abort() noexcept {
    ncclComm* comm = comm_.exchange(nullptr);
    if (comm == nullptr) return;
    const ncclResult_t result = ncclCommAbort(comm);
    if (result != ncclSuccess) {
        Q4TP_LOG_ERROR("ncclCommAbort failed on rank " << rank_ << ": " << detail::nccl_error_string(result));
    }
}

void NcclCommunicator::abort_and_throw(const std::string& reason) {
    abort();
    Q4TP_THROW("rank " << rank_ << ": " << reason << "; NCCL communicator aborted");
}

void NcclCommunicator::sync(cudaStream_t stream, std::chrono::milliseconds timeout) {
    ncclComm* comm = live_comm("sync");
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        // The stream state is read before the async error so that a stream that finished because NCCL
        // failed is reported as the NCCL failure, not as success.
        const cudaError_t stream_state = cudaStreamQuery(stream);
        ncclResult_t async_error = ncclSuccess;
        const ncclResult_t query = ncclCommGetAsyncError(comm, &async_error);
        if (query != ncclSuccess) abort_and_throw("ncclCommGetAsyncError failed: " + detail::nccl_error_string(query));
        if (async_error != ncclSuccess && async_error != ncclInProgress) {
            abort_and_throw("NCCL reported an asynchronous error: " + detail::nccl_error_string(async_error));
        }
        if (stream_state == cudaSuccess) return;
        if (stream_state != cudaErrorNotReady) {
            abort_and_throw(std::string("the stream failed: ") + cudaGetErrorString(stream_state));
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            abort_and_throw("the work queued on the stream did not complete within " + std::to_string(timeout.count()) +
                            " ms (a peer rank may have failed or stalled)");
        }
        // A decode step takes milliseconds: yielding keeps the latency of a busy wait without starving a
        // process that shares the core.
        std::this_thread::yield();
    }
}

void NcclCommunicator::do_all_reduce_sum(TensorView inout, cudaStream_t stream) {
    ncclDataType_t type = ncclFloat32;
    if (inout.dtype == DType::F32) {
        type = ncclFloat32;
    } else if (inout.dtype == DType::F16) {
        type = ncclFloat16;
    } else {
        Q4TP_THROW("nccl communicator: all_reduce_sum supports F16 and F32, got " << to_string(inout.dtype)
                                                                                  << " tensor " << inout.shape.str());
    }
    const auto count = static_cast<std::size_t>(inout.numel());
    Q4TP_NCCL_CHECK(ncclAllReduce(inout.data, inout.data, count, type, ncclSum, live_comm("all_reduce_sum"), stream));
}

void NcclCommunicator::do_all_gather(TensorView send, TensorView recv, cudaStream_t stream) {
    // Moved as bytes: gathering needs no arithmetic, so any dtype works. NCCL itself recognizes the in-place
    // case (send == recv + rank * bytes).
    Q4TP_NCCL_CHECK(ncclAllGather(send.data, recv.data, send.bytes(), ncclInt8, live_comm("all_gather"), stream));
}

void NcclCommunicator::do_broadcast(TensorView data, int root, cudaStream_t stream) {
    Q4TP_NCCL_CHECK(ncclBroadcast(data.data, data.data, data.bytes(), ncclInt8, root, live_comm("broadcast"), stream));
}

}  // namespace q4tp::parallel
