// GoogleTest main for suites run under mpirun: initializes MPI once for the whole binary, agrees on a seed,
// lets rank 0 print the usual report and the other ranks only their failures (prefixed with their rank).
// The exit status is per rank; mpirun exits non-zero when any rank does.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <random>
#include <string>

#include "parallel/failure.h"
#include "parallel/mpi_session.h"
#include "tests/mpi/mpi_test_env.h"

namespace q4tp::test {

namespace {
parallel::MpiSession* g_session = nullptr;
std::uint64_t g_seed = 0;

// Reports failed assertions of a non-zero rank, which would otherwise go unseen without the default printer.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
public:
    explicit RankFailurePrinter(int rank) : rank_(rank) {}
    // The name is kept here because UnitTest::current_test_info() takes the lock that gtest already holds
    // while it reports a result: calling it from OnTestPartResult deadlocks.
    void OnTestStart(const ::testing::TestInfo& info) override {
        test_name_ = std::string(info.test_suite_name()) + "." + info.name();
    }
    void OnTestPartResult(const ::testing::TestPartResult& result) override {
        if (!result.failed()) return;
        std::fprintf(stdout, "[rank %d] %s failed at %s:%d\n%s\n", rank_, test_name_.c_str(),
                     result.file_name() ? result.file_name() : "?", result.line_number(), result.message());
        std::fflush(stdout);
    }

private:
    int rank_;
    std::string test_name_ = "(outside a test)";
};
}  // namespace

parallel::MpiSession& mpi_session() {
    if (g_session == nullptr) {
        std::fprintf(stderr, "mpi_session() called before main created the session\n");
        std::abort();
    }
    return *g_session;
}

std::uint64_t mpi_test_seed() { return g_seed; }

}  // namespace q4tp::test

int main(int argc, char** argv) {
    ::testing::InitGoogleTest(&argc, argv);
    std::unique_ptr<q4tp::parallel::MpiSession> session;
    try {
        session = std::make_unique<q4tp::parallel::MpiSession>(&argc, &argv);
        q4tp::test::g_session = session.get();
        if (session->rank() == 0) {
            const char* env = std::getenv("Q4TP_TEST_SEED");
            q4tp::test::g_seed = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
            std::printf("[ seed     ] Q4TP_TEST_SEED=%llu\n", static_cast<unsigned long long>(q4tp::test::g_seed));
        }
        session->broadcast_bytes(&q4tp::test::g_seed, sizeof q4tp::test::g_seed, 0);
        if (session->rank() != 0) {
            ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
            delete listeners.Release(listeners.default_result_printer());
            listeners.Append(new q4tp::test::RankFailurePrinter(session->rank()));
        }
        const int status = RUN_ALL_TESTS();
        q4tp::test::g_session = nullptr;
        session.reset();
        return status;
    } catch (const std::exception& error) {
        q4tp::parallel::fail_job(error, nullptr, session.get());
    }
}
