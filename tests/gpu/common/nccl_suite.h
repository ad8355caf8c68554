// The fixture of the GPU suites that run under mpirun, one GPU per rank (tests/gpu/nccl, tests/gpu/allreduce).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "core/base/cuda_stream.h"
#include "core/base/error.h"
#include "parallel/nccl_communicator.h"
#include "tests/gpu/common/gpu_test_util.h"
#include "tests/mpi/mpi_test_env.h"

namespace q4tp::test {

//! One NcclCommunicator and one stream for the whole suite, created by every rank at the same point
//! (ncclCommInitRank is collective). Every test skips, naming the reason, when the job has a single rank, the node has
//! fewer GPUs than ranks, or the suite's own precondition declines; those depend only on the job, the node and
//! collective calls, so every rank takes the same branch. A suite derives from it and calls set_up_suite() from its
//! SetUpTestSuite().
class NcclSuiteTest : public ::testing::Test {
protected:
    //! `precondition`, when given, runs after select_device and before the communicator is created, on every rank
    //! alike (it may make collective calls); it returns why the suite must skip, or "" to go on.
    static void set_up_suite(const std::function<std::string()>& precondition = {}) {
        const parallel::MpiSession& session = mpi_session();
        if (session.size() < 2) {
            skip_reason_ = "needs mpirun -np 2 or more";
            return;
        }
        if (visible_gpus() < session.local_size()) {
            skip_reason_ =
                "needs " + std::to_string(session.local_size()) + " GPUs, found " + std::to_string(visible_gpus());
            return;
        }
        try {
            parallel::select_device(session.local_rank());
            if (precondition) {
                skip_reason_ = precondition();
                if (!skip_reason_.empty()) return;
            }
            comm_ = new parallel::NcclCommunicator(session);
            stream_ = new CudaStream();
        } catch (const Error& error) {
            skip_reason_ = "setup failed";
            ADD_FAILURE() << "suite setup failed: " << error.what();
        }
    }
    static void TearDownTestSuite() {
        delete stream_;
        delete comm_;
        stream_ = nullptr;
        comm_ = nullptr;
    }
    void SetUp() override {
        if (comm_ == nullptr) GTEST_SKIP() << skip_reason_;
    }

    static parallel::NcclCommunicator& comm() { return *comm_; }
    static cudaStream_t stream() { return stream_->get(); }

private:
    static inline parallel::NcclCommunicator* comm_ = nullptr;
    static inline CudaStream* stream_ = nullptr;
    static inline std::string skip_reason_;
};

}  // namespace q4tp::test
