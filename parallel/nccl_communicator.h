//! NcclCommunicator: collectives over GPU memory through NCCL, queued on the caller's stream (graph-capturable),
//! bootstrapped through MpiSession; select_device maps a node-local rank to its GPU.
#pragma once

#include <atomic>

#include "parallel/communicator.h"
#include "parallel/mpi_session.h"

// NCCL's opaque communicator (ncclComm_t is `ncclComm*`), declared so that this header needs no <nccl.h>.
struct ncclComm;

namespace q4tp::parallel {

//! Makes GPU `local_rank` current for the calling thread (cudaSetDevice) and returns its index. Every rank of
//! a node is expected to see all of the node's GPUs; throws q4tp::Error when there are fewer GPUs than needed.
int select_device(int local_rank);

//! all_reduce_sum takes F16 and F32 (summed in that type by NCCL); all_gather and broadcast take any dtype.
//! The collectives only enqueue work on the given stream: no host synchronization, so they may be captured
//! into a CUDA graph. sync() is the one place that waits, and it must not run while the stream is captured.
//! The communicator is blocking-mode NCCL: a rank whose peer died before connections were set up can block
//! inside a call; the job-level MPI_Abort of fail_job (parallel/failure.h) is what releases it.
class NcclCommunicator final : public Communicator {
public:
    //! Collective over the session's ranks: rank 0 creates the unique id, MPI broadcasts it, every rank joins
    //! with ncclCommInitRank on the device current for the calling thread (call select_device first).
    explicit NcclCommunicator(const MpiSession& session);
    //! ncclCommDestroy, or ncclCommAbort while an exception unwinds (destroy would wait for peers that may be
    //! gone). Never throws.
    ~NcclCommunicator() override;

    int rank() const noexcept override { return rank_; }
    int size() const noexcept override { return size_; }
    Device device() const noexcept override { return Device::Cuda; }
    const char* name() const noexcept override { return "nccl"; }
    //! The CUDA device the communicator was created on.
    int cuda_device() const noexcept { return cuda_device_; }

    //! Host barrier through MPI (the session's).
    void barrier() override;
    //! Polls cudaStreamQuery and ncclCommGetAsyncError until the stream is idle; on an error or after
    //! `timeout`, aborts the communicator and throws q4tp::Error ("rank r: ...").
    void sync(cudaStream_t stream, std::chrono::milliseconds timeout) override;
    //! ncclCommAbort: NCCL kernels of this communicator return, so the stream drains. Safe from another thread.
    void abort() noexcept override;
    bool aborted() const noexcept override { return comm_.load() == nullptr; }

private:
    void do_all_reduce_sum(TensorView inout, cudaStream_t stream) override;
    void do_all_gather(TensorView send, TensorView recv, cudaStream_t stream) override;
    void do_broadcast(TensorView data, int root, cudaStream_t stream) override;
    ncclComm* live_comm(const char* operation) const;
    [[noreturn]] void abort_and_throw(const std::string& reason);

    const MpiSession& session_;
    std::atomic<ncclComm*> comm_{nullptr};  // null once aborted or destroyed
    int rank_ = 0;
    int size_ = 1;
    int cuda_device_ = 0;
    int uncaught_at_start_ = 0;
};

}  // namespace q4tp::parallel
