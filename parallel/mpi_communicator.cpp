#include "parallel/mpi_communicator.h"

#include <climits>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "parallel/detail/mpi_check.h"

namespace q4tp::parallel {

namespace {
// MPI counts are int; a larger message would need to be split, which no q4tp tensor needs.
void check_count(std::int64_t count, const char* operation, const char* unit) {
    Q4TP_CHECK(count <= INT_MAX, "mpi communicator: " << operation << " of " << count << " " << unit
                                                      << " exceeds MPI's limit of " << INT_MAX << " per call");
}
}  // namespace

struct MpiCommunicator::Impl {
    // Its own duplicate of MPI_COMM_WORLD: the collectives of different communicators can never match each
    // other, and errors come back as codes (MPI_ERRORS_RETURN) instead of killing the job.
    MPI_Comm comm = MPI_COMM_NULL;
};

MpiCommunicator::MpiCommunicator(const MpiSession& session) : impl_(std::make_unique<Impl>()) {
    // The session is the proof that MPI is up (and it outlives this communicator); the duplicate spans the
    // same ranks as the session's.
    (void)session;
    Q4TP_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl_->comm));
    try {
        Q4TP_MPI_CHECK(MPI_Comm_set_errhandler(impl_->comm, MPI_ERRORS_RETURN));
        Q4TP_MPI_CHECK(MPI_Comm_rank(impl_->comm, &rank_));
        Q4TP_MPI_CHECK(MPI_Comm_size(impl_->comm, &size_));
    } catch (...) {
        MPI_Comm_free(&impl_->comm);
        throw;
    }
}

MpiCommunicator::~MpiCommunicator() {
    int finalized = 0;
    // After MPI_Finalize no MPI call is allowed; the handle died with MPI.
    if (impl_->comm == MPI_COMM_NULL || MPI_Finalized(&finalized) != MPI_SUCCESS || finalized) return;
    const int status = MPI_Comm_free(&impl_->comm);
    if (status != MPI_SUCCESS) Q4TP_LOG_ERROR("MPI_Comm_free failed: " << detail::mpi_error_string(status));
}

void MpiCommunicator::barrier() {
    check_not_aborted("barrier");
    Q4TP_MPI_CHECK(MPI_Barrier(impl_->comm));
}

void MpiCommunicator::sync(cudaStream_t, std::chrono::milliseconds) { check_not_aborted("sync"); }

void MpiCommunicator::do_all_reduce_sum(TensorView inout, cudaStream_t) {
    Q4TP_CHECK(inout.dtype == DType::F32, "mpi communicator: all_reduce_sum supports F32, got "
                                              << to_string(inout.dtype) << " tensor " << inout.shape.str());
    check_count(inout.numel(), "all_reduce_sum", "elements");
    Q4TP_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, inout.data, static_cast<int>(inout.numel()), MPI_FLOAT, MPI_SUM,
                                 impl_->comm));
}

void MpiCommunicator::do_all_gather(TensorView send, TensorView recv, cudaStream_t) {
    const auto bytes = static_cast<std::int64_t>(send.bytes());
    check_count(bytes, "all_gather", "bytes per rank");
    // MPI forbids aliased send and receive buffers; this rank's own slice is MPI_IN_PLACE instead.
    const bool in_place = send.data == static_cast<char*>(recv.data) + static_cast<std::size_t>(rank_) * send.bytes();
    Q4TP_MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : send.data, static_cast<int>(bytes), MPI_BYTE, recv.data,
                                 static_cast<int>(bytes), MPI_BYTE, impl_->comm));
}

void MpiCommunicator::do_broadcast(TensorView data, int root, cudaStream_t) {
    const auto bytes = static_cast<std::int64_t>(data.bytes());
    check_count(bytes, "broadcast", "bytes");
    Q4TP_MPI_CHECK(MPI_Bcast(data.data, static_cast<int>(bytes), MPI_BYTE, root, impl_->comm));
}

}  // namespace q4tp::parallel
