//! Communicator: the collectives tensor parallelism needs (all-reduce sum, all-gather, broadcast), over
//! host memory (MpiCommunicator, the CPU backend) or device memory (NcclCommunicator). The dtype-to-library
//! type mapping stays inside parallel/.
//!
//! Streams are cudaStream_t from <cuda_runtime_api.h>, which core/base already depends on: a typed handle
//! catches more mistakes than a void*, and it brings no NCCL or MPI type into other layers. Host
//! collectives take nullptr (any stream passed to them is ignored: they finish before returning).
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>

#include "core/base/tensor_view.h"

namespace q4tp::parallel {

class Communicator {
public:
    Communicator() = default;
    virtual ~Communicator() = default;
    Communicator(const Communicator&) = delete;
    Communicator& operator=(const Communicator&) = delete;
    Communicator(Communicator&&) = delete;
    Communicator& operator=(Communicator&&) = delete;

    virtual int rank() const noexcept = 0;
    virtual int size() const noexcept = 0;
    //! Where the tensors must live: Host for MPI, Cuda for NCCL.
    virtual Device device() const noexcept = 0;
    //! "mpi" or "nccl", for messages.
    virtual const char* name() const noexcept = 0;

    //! Element-wise sum over all ranks, in place; every rank passes the same shape and dtype.
    void all_reduce_sum(TensorView inout, cudaStream_t stream);
    //! recv holds size() x send.numel() elements of send's dtype: rank r's send lands in slice r (rank-major).
    //! send may be recv's own slice for this rank (in place).
    void all_gather(TensorView send, TensorView recv, cudaStream_t stream);
    //! Root's data is copied to every rank, in place.
    void broadcast(TensorView data, int root, cudaStream_t stream);
    //! Host barrier: every rank has reached this call (queued GPU work is not waited for).
    virtual void barrier() = 0;
    //! Waits for the collectives queued on `stream`; on an asynchronous communicator error or after
    //! `timeout`, aborts the communicator and throws q4tp::Error naming the rank and the reason.
    virtual void sync(cudaStream_t stream, std::chrono::milliseconds timeout) = 0;
    //! Stops this rank's use of the communicator so that it never blocks again: NCCL makes its in-flight
    //! kernels return. MPI cannot cancel a blocking collective, so the MPI communicator only refuses further
    //! calls; peers are released by MpiSession::abort. Later calls throw q4tp::Error.
    virtual void abort() noexcept = 0;
    virtual bool aborted() const noexcept = 0;

protected:
    // Called after the shared checks (device, null data, shapes, root range, not aborted).
    virtual void do_all_reduce_sum(TensorView inout, cudaStream_t stream) = 0;
    virtual void do_all_gather(TensorView send, TensorView recv, cudaStream_t stream) = 0;
    virtual void do_broadcast(TensorView data, int root, cudaStream_t stream) = 0;

    //! Throws when abort() was called: a collective on an aborted communicator would hang or fail obscurely.
    void check_not_aborted(const char* operation) const;
    //! Throws when the view is not on device() or has null data while holding elements.
    void check_view(const TensorView& view, const char* operation, const char* role) const;
};

}  // namespace q4tp::parallel
