#include "parallel/failure.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "parallel/detail/mpi_check.h"

namespace q4tp::parallel {

namespace {
std::atomic<bool> g_reported{false};
}  // namespace

void fail_job(std::string_view reason, Communicator* comm, const MpiSession* session) noexcept {
    // Two threads failing at once (or a failure while failing) must not print the story twice.
    if (!g_reported.exchange(true)) {
        try {
            Q4TP_LOG_ERROR("rank " << process_rank() << ": " << reason);
        } catch (...) {
            std::fprintf(stderr, "[q4tp][r%d] error: rank %d: %.*s\n", process_rank(), process_rank(),
                         static_cast<int>(reason.size()), reason.data());
        }
    }
    // Abort the communicator first: NCCL kernels of this rank stop, and its GPU memory is not read by peers
    // that MPI_Abort has not reached yet.
    if (comm != nullptr) comm->abort();
    if (session != nullptr) session->abort(1);
    int initialized = 0;
    int finalized = 0;
    if (MPI_Initialized(&initialized) == MPI_SUCCESS && initialized && MPI_Finalized(&finalized) == MPI_SUCCESS &&
        !finalized) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    std::fflush(stderr);
    std::_Exit(1);
}

void fail_job(const std::exception& error, Communicator* comm, const MpiSession* session) noexcept {
    fail_job(std::string_view(error.what()), comm, session);
}

}  // namespace q4tp::parallel
