//! fail_job: the process boundary's way out of an error in a tensor-parallel job (docs/design.md, failure
//! semantics). A rank that dies silently leaves its peers waiting in a collective forever; this one logs why,
//! aborts the communicator and ends the whole job.
#pragma once

#include <exception>
#include <string_view>

#include "parallel/communicator.h"
#include "parallel/mpi_session.h"

namespace q4tp::parallel {

//! Logs "rank r: <reason>" once per process (ERROR, so every rank prints), aborts `comm` (if any), then
//! MPI_Abort(1) through `session` (or directly when MPI is up without one). Without MPI the process exits
//! with status 1. Either pointer may be null. For main's catch blocks:
//!     catch (const std::exception& e) { q4tp::parallel::fail_job(e, comm.get(), &session); }
[[noreturn]] void fail_job(std::string_view reason, Communicator* comm, const MpiSession* session) noexcept;
[[noreturn]] void fail_job(const std::exception& error, Communicator* comm, const MpiSession* session) noexcept;

}  // namespace q4tp::parallel
