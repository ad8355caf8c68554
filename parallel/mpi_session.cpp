#include "parallel/mpi_session.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "parallel/detail/mpi_check.h"

namespace q4tp::parallel {

namespace {
// MPI can be initialized and finalized once per process, so two live sessions would finalize it under
// each other's feet.
std::atomic<bool> g_session_alive{false};

// MPI counts are int: larger transfers go in pieces.
constexpr std::size_t kMaxMpiCount = static_cast<std::size_t>(INT_MAX);
}  // namespace

struct MpiSession::Impl {
    // A private duplicate of MPI_COMM_WORLD whose error handler returns codes (Q4TP_MPI_CHECK turns them into
    // exceptions); the world communicator keeps whatever handler its owner chose.
    MPI_Comm world = MPI_COMM_NULL;
};

MpiSession::MpiSession() { init(nullptr, nullptr); }

MpiSession::MpiSession(int* argc, char*** argv) { init(argc, argv); }

void MpiSession::init(int* argc, char*** argv) {
    Q4TP_CHECK(!g_session_alive.exchange(true),
               "an MpiSession already exists in this process; MPI is initialized once, share that session");
    try {
        int finalized = 0;
        Q4TP_MPI_CHECK(MPI_Finalized(&finalized));
        Q4TP_CHECK(!finalized, "MPI was already finalized in this process and cannot be initialized again");
        int initialized = 0;
        Q4TP_MPI_CHECK(MPI_Initialized(&initialized));
        int provided = MPI_THREAD_SINGLE;
        if (initialized) {
            Q4TP_MPI_CHECK(MPI_Query_thread(&provided));
        } else {
            Q4TP_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided));
            owns_mpi_ = true;
        }
        thread_multiple_ = provided >= MPI_THREAD_MULTIPLE;
        if (!thread_multiple_) {
            // Only the thread that created the session may then call MPI; q4tp makes every call from one
            // thread, so this is worth knowing rather than fatal.
            Q4TP_LOG_DEBUG("MPI grants thread level " << provided << ", not MPI_THREAD_MULTIPLE ("
                                                      << MPI_THREAD_MULTIPLE << ")");
        }

        impl_ = std::make_unique<Impl>();
        Q4TP_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl_->world));
        Q4TP_MPI_CHECK(MPI_Comm_set_errhandler(impl_->world, MPI_ERRORS_RETURN));
        Q4TP_MPI_CHECK(MPI_Comm_rank(impl_->world, &rank_));
        Q4TP_MPI_CHECK(MPI_Comm_size(impl_->world, &size_));
        set_process_rank(rank_);

        // Processes that share memory are the processes of one node: their order picks each one's GPU.
        MPI_Comm node = MPI_COMM_NULL;
        Q4TP_MPI_CHECK(MPI_Comm_split_type(impl_->world, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
        const int rank_status = MPI_Comm_rank(node, &local_rank_);
        const int size_status = MPI_Comm_size(node, &local_size_);
        MPI_Comm_free(&node);
        Q4TP_MPI_CHECK(rank_status);
        Q4TP_MPI_CHECK(size_status);
    } catch (...) {
        if (impl_ && impl_->world != MPI_COMM_NULL) MPI_Comm_free(&impl_->world);
        g_session_alive.store(false);
        throw;
    }
    uncaught_at_start_ = std::uncaught_exceptions();
    Q4TP_LOG_DEBUG("MPI session: rank " << rank_ << " of " << size_ << ", local rank " << local_rank_ << " of "
                                        << local_size_ << (owns_mpi_ ? "" : " (MPI initialized elsewhere)"));
}

MpiSession::~MpiSession() {
    // Alone in the job no peer can be left waiting, so a lone rank finalizes normally even while unwinding.
    if (size_ > 1 && std::uncaught_exceptions() > uncaught_at_start_) {
        try {
            Q4TP_LOG_ERROR("rank " << rank_ << ": leaving the MPI session because of an exception; aborting the job "
                                   << "so that no peer waits in a collective for this rank");
        } catch (...) {
        }
        abort(1);
    }
    int finalized = 0;
    // An adopted MPI may have been finalized by its owner already; then no MPI call is allowed.
    if (MPI_Finalized(&finalized) != MPI_SUCCESS || finalized) {
        g_session_alive.store(false);
        return;
    }
    if (impl_->world != MPI_COMM_NULL) {
        const int status = MPI_Comm_free(&impl_->world);
        if (status != MPI_SUCCESS) Q4TP_LOG_ERROR("MPI_Comm_free failed: " << detail::mpi_error_string(status));
    }
    if (owns_mpi_) {
        const int status = MPI_Finalize();
        if (status != MPI_SUCCESS) Q4TP_LOG_ERROR("MPI_Finalize failed: " << detail::mpi_error_string(status));
    }
    g_session_alive.store(false);
}

void MpiSession::barrier() const { Q4TP_MPI_CHECK(MPI_Barrier(impl_->world)); }

void MpiSession::broadcast_bytes(void* data, std::size_t bytes, int root) const {
    Q4TP_CHECK(root >= 0 && root < size_,
               "broadcast root " << root << " is not a rank of this job (0.." << size_ - 1 << ")");
    Q4TP_CHECK(data != nullptr || bytes == 0, "broadcast of " << bytes << " bytes from a null pointer");
    auto* cursor = static_cast<char*>(data);
    for (std::size_t done = 0; done < bytes;) {
        const std::size_t piece = std::min(bytes - done, kMaxMpiCount);
        Q4TP_MPI_CHECK(MPI_Bcast(cursor + done, static_cast<int>(piece), MPI_BYTE, root, impl_->world));
        done += piece;
    }
}

void MpiSession::abort(int code) const noexcept {
    int finalized = 1;
    if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
    // MPI_Abort does not return; reaching here means MPI is gone, and a process that must not hang its
    // peers ends itself.
    std::fflush(stderr);
    std::_Exit(code);
}

}  // namespace q4tp::parallel
