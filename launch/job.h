//! Job: where this process runs. Under mpirun (Open MPI's or PMIx's environment variables are present) it
//! starts an MPI session, gives each rank the GPU of its node-local rank and builds the communicator the
//! backend needs (NCCL for CUDA, MPI for the CPU). Without mpirun it is a single process with no MPI at all,
//! the single-GPU fallback. Errors at the boundary end the whole job (parallel/failure.h), so no rank is left
//! waiting in a collective.
#pragma once

#include <exception>
#include <memory>

#include "core/model/llama_model.h"
#include "core/model/ops.h"

namespace q4tp::parallel {
class MpiSession;
class Communicator;
class IpcAllReduce;
}  // namespace q4tp::parallel

namespace q4tp::launch {

enum class DeviceChoice { Auto, Cpu, Cuda };
//! Parses "auto", "cpu" or "cuda" (the --device option); throws UsageError otherwise.
DeviceChoice parse_device(const std::string& text);

class Job {
public:
    Job();
    ~Job();
    Job(const Job&) = delete;
    Job& operator=(const Job&) = delete;

    int rank() const noexcept { return rank_; }
    int size() const noexcept { return size_; }
    //! Rank 0 prints the tool's output; the others stay quiet.
    bool is_root() const noexcept { return rank_ == 0; }

    //! The backend for this rank (CUDA on the node-local GPU when asked or available) and, at size > 1, the
    //! communicator that matches it. Call once.
    std::unique_ptr<model::Ops> make_backend(DeviceChoice choice);
    //! This rank's place in the job for a model of this hidden size. CUDA jobs of several ranks on one node also
    //! get the one-shot all-reduce (parallel/ipc_all_reduce.h), set up on the first call: a collective, so every
    //! rank calls this at the same point. Q4TP_CUSTOM_ALL_REDUCE=0 keeps NCCL for everything.
    model::ParallelContext parallel(std::int64_t hidden_size);
    //! The communicator of a job of size > 1 (nullptr otherwise).
    parallel::Communicator* communicator() const noexcept { return comm_.get(); }

    //! Rank 0's value on every rank (a collective: every rank calls it), e.g. a random seed that all ranks must share
    //! so that they sample the same tokens.
    std::uint64_t root_value(std::uint64_t value) const;

    //! The tools' job: created on the first call and kept until end(). run_tool (launch/tool_main.h) ends it only
    //! after reporting an error, so that under mpirun the failing rank names its reason before the job is torn
    //! down. (A Job on the stack of the tool's body would be destroyed while the exception unwinds, and its MPI
    //! session would abort the job with no word of why.)
    static Job& start();
    //! Ends the job start() made (MPI finalized, communicators freed); nothing if there is none.
    static void end() noexcept;
    //! The job of this process, if one was created (run_tool uses it to end every rank on an error).
    static Job* current() noexcept;
    //! Logs the reason naming this rank, aborts the communicator and the MPI job; returns only at size 1.
    void fail(const std::exception& error) noexcept;

private:
    std::unique_ptr<parallel::MpiSession> session_;
    std::unique_ptr<parallel::Communicator> comm_;
    std::unique_ptr<parallel::IpcAllReduce> fused_all_reduce_;
    bool cuda_ = false;
    bool fused_all_reduce_tried_ = false;
    int rank_ = 0;
    int size_ = 1;
    int local_rank_ = 0;
};

}  // namespace q4tp::launch
