// A job in which rank 1 fails while its peers wait for it inside an all-reduce. Run under mpirun by
// run_fail_rank.sh, which requires the whole job to end non-zero within 10 s and rank 1's reason on stderr.
//   fail_rank fail_job  rank 1 throws; main catches and calls parallel::fail_job (what launch/ mains do)
//   fail_rank unwind    rank 1's exception leaves the MpiSession's scope; its destructor aborts the job
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "parallel/failure.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_session.h"

namespace {

// Every rank but 1 enters an all-reduce that rank 1 never joins; without the failure path they would wait forever.
void run(const q4tp::parallel::MpiSession& session, q4tp::parallel::MpiCommunicator& comm) {
    std::vector<float> data(1024, 1.0f);
    if (session.rank() == 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the peers are inside the all-reduce by now
        Q4TP_THROW("injected failure: rank 1 gives up before the all-reduce");
    }
    comm.all_reduce_sum(q4tp::TensorView{data.data(), q4tp::DType::F32, {1024}, q4tp::Device::Host}, nullptr);
    Q4TP_LOG_ERROR("rank " << session.rank() << " finished an all-reduce that rank 1 never joined");
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "unwind") {
        try {
            q4tp::parallel::MpiSession session(&argc, &argv);
            q4tp::parallel::MpiCommunicator comm(session);
            run(session, comm);
        } catch (const std::exception& error) {
            // Reached only when the session's destructor failed to end the job.
            std::fprintf(stderr, "session destructor did not abort the job: %s\n", error.what());
            return 0;
        }
        return 0;
    }
    if (mode != "fail_job") {
        std::fprintf(stderr, "usage: fail_rank fail_job|unwind\n");
        return 2;
    }
    std::unique_ptr<q4tp::parallel::MpiSession> session;
    std::unique_ptr<q4tp::parallel::MpiCommunicator> comm;
    try {
        session = std::make_unique<q4tp::parallel::MpiSession>(&argc, &argv);
        comm = std::make_unique<q4tp::parallel::MpiCommunicator>(*session);
        run(*session, *comm);
    } catch (const std::exception& error) {
        q4tp::parallel::fail_job(error, comm.get(), session.get());
    }
    return 0;
}
