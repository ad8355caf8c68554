#include "launch/job.h"

#include <cstdlib>
#include <string>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/model/cpu_ops.h"
#include "core/model/cuda_ops.h"
#include "kernels/cuda/device_info.h"
#include "launch/cli.h"
#include "parallel/failure.h"
#include "parallel/ipc_all_reduce.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_session.h"
#include "parallel/nccl_communicator.h"

namespace q4tp::launch {
namespace {
Job* g_job = nullptr;
std::unique_ptr<Job> g_started;  // Job::start()'s, ended by Job::end()
// Rows the one-shot all-reduce takes per call: decode steps (one token per sequence); prefill chunks use NCCL.
constexpr std::int64_t kFusedAllReduceTokens = 8;

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
    fused_all_reduce_.reset();  // its buffers are mapped by the peers: freed while CUDA and MPI are still up
    comm_.reset();
    if (g_job == this) g_job = nullptr;
}

Job& Job::start() {
    if (!g_started) g_started = std::make_unique<Job>();
    return *g_started;
}

void Job::end() noexcept {
    g_started.reset();
}

Job* Job::current() noexcept {
    return g_job;
}

std::unique_ptr<model::Ops> Job::make_backend(DeviceChoice choice) {
    const int gpus = kernels::cuda::device_count();
    const bool cuda = choice == DeviceChoice::Cuda || (choice == DeviceChoice::Auto && gpus > 0);
    Q4TP_CHECK(!cuda || gpus > 0, "--device cuda: no CUDA device is visible");
    std::unique_ptr<model::Ops> ops;
    if (cuda) {
        if (session_) parallel::select_device(local_rank_);
        ops = std::make_unique<model::CudaOps>();
        cuda_ = true;
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

model::ParallelContext Job::parallel(std::int64_t hidden_size) {
    if (cuda_ && size_ > 1 && !fused_all_reduce_tried_) {
        fused_all_reduce_tried_ = true;
        const char* env = std::getenv("Q4TP_CUSTOM_ALL_REDUCE");
        if (env != nullptr && std::string(env) == "0") {
            Q4TP_LOG_INFO("Q4TP_CUSTOM_ALL_REDUCE=0: every all-reduce goes through NCCL");
        } else if (hidden_size % 8 != 0 || hidden_size > parallel::IpcAllReduce::kMaxHidden) {
            // The same on every rank (one config), so no rank waits in the collective set-up below.
            Q4TP_LOG_INFO("hidden size " << hidden_size
                                         << " is outside the one-shot all-reduce's rows (multiples of 8 up to "
                                         << parallel::IpcAllReduce::kMaxHidden << "): NCCL only");
        } else {
            parallel::IpcAllReduceOptions options;
            options.hidden = hidden_size;
            options.max_tokens = kFusedAllReduceTokens;
            std::string why;
            fused_all_reduce_ = parallel::IpcAllReduce::create(*session_, options, &why);
            if (!fused_all_reduce_) Q4TP_LOG_INFO("one-shot all-reduce unavailable (" << why << "): NCCL only");
        }
    }
    return model::ParallelContext{rank_, size_, comm_.get(), fused_all_reduce_.get()};
}

void Job::fail(const std::exception& error) noexcept {
    if (size_ > 1) parallel::fail_job(error, comm_.get(), session_.get());
}

}  // namespace q4tp::launch
