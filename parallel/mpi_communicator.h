//! MpiCommunicator: collectives over host memory through MPI, for the CPU backend under mpirun.
#pragma once

#include <memory>

#include "parallel/communicator.h"
#include "parallel/mpi_session.h"

namespace q4tp::parallel {

//! all_reduce_sum takes F32; all_gather and broadcast take any dtype (they move bytes). Every call completes
//! before it returns, so the stream arguments are ignored.
//!
//! Every rank gets bitwise the same all-reduce result: Open MPI's allreduce algorithms either reduce each
//! element in one place and send the result on (ring, Rabenseifner, reduce+broadcast) or combine pairs
//! with IEEE addition, which is commutative, so partners compute the same bits (recursive doubling). The
//! order of the additions depends on the rank count and the message size, so results may differ between
//! job sizes, never between ranks of one job; tests/mpi checks this on every run.
class MpiCommunicator final : public Communicator {
public:
    //! Collective: every rank of the session constructs one, in the same order as its other communicators.
    explicit MpiCommunicator(const MpiSession& session);
    ~MpiCommunicator() override;

    int rank() const noexcept override { return rank_; }
    int size() const noexcept override { return size_; }
    Device device() const noexcept override { return Device::Host; }
    const char* name() const noexcept override { return "mpi"; }

    void barrier() override;
    //! Only reports an earlier abort: host collectives have already completed.
    void sync(cudaStream_t stream, std::chrono::milliseconds timeout) override;
    void abort() noexcept override { aborted_ = true; }
    bool aborted() const noexcept override { return aborted_; }

private:
    void do_all_reduce_sum(TensorView inout, cudaStream_t stream) override;
    void do_all_gather(TensorView send, TensorView recv, cudaStream_t stream) override;
    void do_broadcast(TensorView data, int root, cudaStream_t stream) override;

    struct Impl;  // holds the MPI_Comm, so this header needs no <mpi.h>
    std::unique_ptr<Impl> impl_;
    int rank_ = 0;
    int size_ = 1;
    bool aborted_ = false;
};

}  // namespace q4tp::parallel
