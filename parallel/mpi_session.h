//! MpiSession: the process's MPI lifetime (init, ranks, host barrier and broadcast, finalize or abort).
//! One per process; the same binary runs without mpirun as rank 0 of 1 (Open MPI singleton init).
#pragma once

#include <cstddef>
#include <memory>

namespace q4tp::parallel {

class MpiSession {
public:
    //! Initializes MPI asking for MPI_THREAD_MULTIPLE (accepting whatever level is provided), or adopts an
    //! MPI that someone else already initialized (then the destructor leaves finalization to them).
    //! Sets q4tp::set_process_rank(rank) so that log lines and errors name this rank. Throws q4tp::Error
    //! when another MpiSession is alive or MPI was already finalized (MPI cannot be initialized twice).
    MpiSession();
    //! As above, handing mpirun's command line to MPI_Init_thread (which may strip MPI arguments).
    MpiSession(int* argc, char*** argv);
    //! Finalizes MPI if this session initialized it. When the scope is left by an exception in a job of more
    //! than one rank, calls MPI_Abort instead: MPI_Finalize could wait forever on peers still in a collective.
    ~MpiSession();

    MpiSession(const MpiSession&) = delete;
    MpiSession& operator=(const MpiSession&) = delete;
    MpiSession(MpiSession&&) = delete;
    MpiSession& operator=(MpiSession&&) = delete;

    int rank() const noexcept { return rank_; }              //!< rank in MPI_COMM_WORLD
    int size() const noexcept { return size_; }              //!< ranks in MPI_COMM_WORLD
    int local_rank() const noexcept { return local_rank_; }  //!< rank among the processes of this node
    int local_size() const noexcept { return local_size_; }  //!< processes on this node
    //! True when MPI granted MPI_THREAD_MULTIPLE (any thread may call MPI concurrently).
    bool thread_multiple() const noexcept { return thread_multiple_; }
    //! True when this session initialized MPI and will finalize it.
    bool owns_mpi() const noexcept { return owns_mpi_; }

    //! Host barrier over all ranks.
    void barrier() const;
    //! Copies `bytes` bytes at `data` from rank `root` to every rank (every rank passes the same bytes/root).
    void broadcast_bytes(void* data, std::size_t bytes, int root) const;
    //! Ends the whole job now: MPI_Abort on MPI_COMM_WORLD, which makes mpirun kill every rank with `code`.
    [[noreturn]] void abort(int code) const noexcept;

private:
    void init(int* argc, char*** argv);

    struct Impl;  // holds the MPI communicator handle, so this header needs no <mpi.h>
    std::unique_ptr<Impl> impl_;
    int rank_ = 0;
    int size_ = 1;
    int local_rank_ = 0;
    int local_size_ = 1;
    bool thread_multiple_ = false;
    bool owns_mpi_ = false;
    int uncaught_at_start_ = 0;
};

}  // namespace q4tp::parallel
