#include "launch/job.h"

#include <cstdlib>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/model/cpu_ops.h"
#include "core/model/cuda_ops.h"
#include "kernels/cuda/device_info.h"
#include "launch/cli.h"
#include "parallel/failure.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_session.h"
#include "parallel/nccl_communicator.h"

namespace q4tp::launch {
namespace {
Job* g_job = nullptr;

// mpirun (Open MPI) and PMIx launchers export these; a plain process has none of them.
bool launched_by_mpirun() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"}) {
        if (std::getenv(name)) return true;
    }
    return false;
}
}  // namespace

DeviceChoice parse_device(const std::string& text) {
    if (text == "auto") return DeviceChoice::Auto;
    if (text == "cpu") return DeviceChoice::Cpu;
    if (text == "cuda") return DeviceChoice::Cuda;
    throw UsageError("--device must be auto, cpu or cuda, got '" + text + "'");
}

Job::Job() {
    if (launched_by_mpirun()) {
        session_ = std::make_unique<parallel::MpiSession>();
        rank_ = session_->rank();
        size_ = session_->size();
        local_rank_ = session_->local_rank();
        set_process_rank(rank_);
    }
    g_job = this;
}

Job::~Job() {
    comm_.reset();
    if (g_job == this) g_job = nullptr;
}

Job* Job::current() noexcept { return g_job; }

std::unique_ptr<model::Ops> Job::make_backend(DeviceChoice choice) {
    const int gpus = kernels::cuda::device_count();
    const bool cuda = choice == DeviceChoice::Cuda || (choice == DeviceChoice::Auto && gpus > 0);
    Q4TP_CHECK(!cuda || gpus > 0, "--device cuda: no CUDA device is visible");
    std::unique_ptr<model::Ops> ops;
    if (cuda) {
        if (session_) parallel::select_device(local_rank_);
        ops = std::make_unique<model::CudaOps>();
        if (size_ > 1) comm_ = std::make_unique<parallel::NcclCommunicator>(*session_);
    } else {
        ops = std::make_unique<model::CpuOps>();
        if (size_ > 1) comm_ = std::make_unique<parallel::MpiCommunicator>(*session_);
    }
    return ops;
}

std::uint64_t Job::root_value(std::uint64_t value) const {
    if (size_ > 1) session_->broadcast_bytes(&value, sizeof(value), 0);
    return value;
}

model::ParallelContext Job::parallel() const { return model::ParallelContext{rank_, size_, comm_.get()}; }

void Job::fail(const std::exception& error) noexcept {
    if (size_ > 1) parallel::fail_job(error, comm_.get(), session_.get());
}

}  // namespace q4tp::launch
