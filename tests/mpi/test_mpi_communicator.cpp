// MpiSession and MpiCommunicator under mpirun -np 2 and 4 (and once without mpirun, as rank 0 of 1).
// Every rank runs the same tests in the same order, so the collectives inside them pair up; assertions come
// after the collectives so that a failing rank does not leave the others waiting.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/base/error.h"
#include "core/base/tensor_view.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_session.h"
#include "tests/mpi/mpi_test_env.h"

namespace q4tp::parallel {
namespace {

using q4tp::test::error_of;
using q4tp::test::mpi_session;
using q4tp::test::rank_bytes;
using q4tp::test::rank_floats;

// An environment variable as an int, or `fallback` when it is not set (mpirun sets OMPI_COMM_WORLD_*).
int env_int(const char* name, int fallback) {
    const char* value = std::getenv(name);
    return value ? std::atoi(value) : fallback;
}

TensorView host_view(void* data, DType dtype, Shape shape) { return TensorView{data, dtype, shape, Device::Host}; }

// ---------------------------------------------------------------------------------------------------------
// MpiSession

TEST(MpiSessionTest, RankAndSize_MatchTheLaunch) {
    const MpiSession& session = mpi_session();
    // Q4TP_TEST_EXPECT_RANKS comes from the ctest registration; mpirun's own variables are a second witness.
    // A job whose ranks each think they are rank 0 of 1 (an MPI library mismatch) fails here.
    EXPECT_EQ(session.size(), env_int("Q4TP_TEST_EXPECT_RANKS", env_int("OMPI_COMM_WORLD_SIZE", 1)));
    EXPECT_EQ(session.size(), env_int("OMPI_COMM_WORLD_SIZE", 1));
    EXPECT_EQ(session.rank(), env_int("OMPI_COMM_WORLD_RANK", 0));
    EXPECT_EQ(session.local_rank(), env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0));
    EXPECT_EQ(session.local_size(), env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1));
    EXPECT_EQ(process_rank(), session.rank()) << "errors and log lines must name this rank";
    EXPECT_TRUE(session.owns_mpi());
}

TEST(MpiSessionTest, Ranks_AreDistinctAndLocalRanksCoverTheNode) {
    const MpiSession& session = mpi_session();
    MpiCommunicator comm(session);
    std::vector<std::int32_t> mine = {session.rank(), session.local_rank(), session.local_size()};
    std::vector<std::int32_t> all(3 * static_cast<std::size_t>(session.size()), -1);
    comm.all_gather(host_view(mine.data(), DType::I32, {3}), host_view(all.data(), DType::I32, {session.size(), 3}),
                    nullptr);
    std::vector<std::int32_t> ranks, local_ranks;
    for (int r = 0; r < session.size(); ++r) {
        ranks.push_back(all[3 * static_cast<std::size_t>(r)]);
        local_ranks.push_back(all[3 * static_cast<std::size_t>(r) + 1]);
        EXPECT_EQ(all[3 * static_cast<std::size_t>(r) + 2], session.local_size()) << "rank " << r;
    }
    for (int r = 0; r < session.size(); ++r) EXPECT_EQ(ranks[static_cast<std::size_t>(r)], r);
    // The tests run on one node, so the local ranks are a permutation of 0..size-1.
    std::sort(local_ranks.begin(), local_ranks.end());
    for (int r = 0; r < session.size(); ++r) EXPECT_EQ(local_ranks[static_cast<std::size_t>(r)], r);
}

TEST(MpiSessionTest, SecondSession_Throws) {
    const std::string message = error_of([] { MpiSession second; });
    EXPECT_NE(message.find("already exists"), std::string::npos) << message;
    // The refused session must not have torn down the live one.
    EXPECT_NO_THROW(mpi_session().barrier());
}

TEST(MpiSessionTest, BroadcastBytes_CopiesTheRootsBytes) {
    const MpiSession& session = mpi_session();
    for (int root = 0; root < session.size(); ++root) {
        const std::size_t n = 1000 + static_cast<std::size_t>(root) * 37;
        std::vector<std::uint8_t> buffer = rank_bytes(session.rank(), n, 1);
        session.broadcast_bytes(buffer.data(), n, root);
        EXPECT_EQ(buffer, rank_bytes(root, n, 1)) << "root " << root;
    }
}

TEST(MpiSessionTest, BroadcastBytes_RejectsRootOutsideTheJob) {
    const MpiSession& session = mpi_session();
    std::uint8_t byte = 0;
    const std::string high = error_of([&] { session.broadcast_bytes(&byte, 1, session.size()); });
    EXPECT_NE(high.find("root " + std::to_string(session.size())), std::string::npos) << high;
    const std::string negative = error_of([&] { session.broadcast_bytes(&byte, 1, -1); });
    EXPECT_NE(negative.find("root -1"), std::string::npos) << negative;
    const std::string null_data = error_of([&] { session.broadcast_bytes(nullptr, 4, 0); });
    EXPECT_NE(null_data.find("null"), std::string::npos) << null_data;
}

TEST(MpiSessionTest, Barrier_WaitsForTheSlowestRank) {
    const MpiSession& session = mpi_session();
    if (session.size() == 1) GTEST_SKIP() << "needs at least 2 ranks";
    // steady_clock is CLOCK_MONOTONIC, one clock for every process of the node, so times compare across ranks.
    const auto now_ns = [] {
        const auto since_boot = std::chrono::steady_clock::now().time_since_epoch();
        return static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(since_boot).count());
    };
    const int slow = session.size() - 1;
    session.barrier();
    if (session.rank() == slow) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::int64_t slow_entered = now_ns();
    session.barrier();
    const std::int64_t left = now_ns();
    session.broadcast_bytes(&slow_entered, sizeof slow_entered, slow);
    EXPECT_GE(left, slow_entered) << "rank " << session.rank() << " left the barrier "
                                  << (slow_entered - left) / 1000 << " us before rank " << slow << " entered it";
}

// ---------------------------------------------------------------------------------------------------------
// MpiCommunicator

class MpiCommunicatorTest : public ::testing::Test {
protected:
    // Created once for the suite (collectively, by every rank at the same point).
    static void SetUpTestSuite() { comm_ = new MpiCommunicator(mpi_session()); }
    static void TearDownTestSuite() {
        delete comm_;
        comm_ = nullptr;
    }
    static MpiCommunicator& comm() { return *comm_; }
    static inline MpiCommunicator* comm_ = nullptr;
};

TEST_F(MpiCommunicatorTest, RankAndSize_MatchTheSession) {
    EXPECT_EQ(comm().rank(), mpi_session().rank());
    EXPECT_EQ(comm().size(), mpi_session().size());
    EXPECT_EQ(comm().device(), Device::Host);
}

TEST_F(MpiCommunicatorTest, AllReduceSum_EqualsTheSumOfEveryRanksData) {
    const int size = comm().size();
    // The small sizes take Open MPI's latency algorithms, the large ones its segmented/ring algorithms.
    for (const std::size_t n : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{50'003},
                                std::size_t{300'001}}) {
        std::vector<float> data = rank_floats(comm().rank(), n, n);
        comm().all_reduce_sum(host_view(data.data(), DType::F32, {static_cast<std::int64_t>(n)}), nullptr);

        std::vector<double> sum(n, 0.0), sum_abs(n, 0.0);
        for (int r = 0; r < size; ++r) {
            const std::vector<float> part = rank_floats(r, n, n);
            for (std::size_t i = 0; i < n; ++i) {
                sum[i] += part[i];
                sum_abs[i] += std::fabs(part[i]);
            }
        }
        // size-1 float additions in whatever order MPI picks, each rounding by at most 2^-24 of a partial
        // sum bounded by sum|x|; the double reference is exact by comparison.
        const double unit = std::ldexp(1.0, -24);
        int reported = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const double bound = (size - 1) * unit * sum_abs[i];
            if (!(std::fabs(data[i] - sum[i]) <= bound) && reported++ < 5) {
                ADD_FAILURE() << "n " << n << " element " << i << ": got " << data[i] << ", expected " << sum[i]
                              << " +- " << bound;
            }
        }
        EXPECT_EQ(reported, 0) << "mismatches for n = " << n;
    }
}

TEST_F(MpiCommunicatorTest, AllReduceSum_IsBitwiseIdenticalOnEveryRank) {
    const int size = comm().size();
    for (const std::size_t n : {std::size_t{3}, std::size_t{4099}, std::size_t{262'147}}) {
        std::vector<float> data = rank_floats(comm().rank(), n, 100 + n);
        comm().all_reduce_sum(host_view(data.data(), DType::F32, {static_cast<std::int64_t>(n)}), nullptr);
        std::vector<float> all(n * static_cast<std::size_t>(size));
        comm().all_gather(host_view(data.data(), DType::F32, {static_cast<std::int64_t>(n)}),
                          host_view(all.data(), DType::F32, {size, static_cast<std::int64_t>(n)}), nullptr);
        for (int r = 0; r < size; ++r) {
            EXPECT_EQ(std::memcmp(all.data() + static_cast<std::size_t>(r) * n, data.data(), n * sizeof(float)), 0)
                << "rank " << r << " and rank " << comm().rank() << " hold different sums for n = " << n;
        }
    }
}

TEST_F(MpiCommunicatorTest, AllGather_PlacesEachRankInItsSlice) {
    const int size = comm().size();
    // F32 rows, and 13 single bytes: gathering moves bytes, so odd sizes and any dtype work.
    std::vector<float> send = rank_floats(comm().rank(), 3 * 5, 7);
    std::vector<float> recv(send.size() * static_cast<std::size_t>(size), 0.0f);
    comm().all_gather(host_view(send.data(), DType::F32, {3, 5}), host_view(recv.data(), DType::F32, {size * 3, 5}),
                      nullptr);
    std::vector<std::uint8_t> send_bytes = rank_bytes(comm().rank(), 13, 8);
    std::vector<std::uint8_t> recv_bytes(13 * static_cast<std::size_t>(size), 0);
    comm().all_gather(host_view(send_bytes.data(), DType::U8, {13}),
                      host_view(recv_bytes.data(), DType::U8, {size, 13}), nullptr);
    for (int r = 0; r < size; ++r) {
        const std::vector<float> expected = rank_floats(r, 3 * 5, 7);
        EXPECT_TRUE(std::equal(expected.begin(), expected.end(), recv.begin() + r * 15)) << "F32 slice " << r;
        const std::vector<std::uint8_t> expected_bytes = rank_bytes(r, 13, 8);
        EXPECT_TRUE(std::equal(expected_bytes.begin(), expected_bytes.end(), recv_bytes.begin() + r * 13))
            << "U8 slice " << r;
    }
}

TEST_F(MpiCommunicatorTest, AllGather_InPlaceUsesThisRanksSlice) {
    const int size = comm().size();
    const int rank = comm().rank();
    std::vector<float> recv(static_cast<std::size_t>(size) * 9, -123.0f);
    const std::vector<float> mine = rank_floats(rank, 9, 9);
    std::copy(mine.begin(), mine.end(), recv.begin() + rank * 9);
    const TensorView all = host_view(recv.data(), DType::F32, {size, 9});
    comm().all_gather(all.rows(rank, 1), all, nullptr);
    for (int r = 0; r < size; ++r) {
        const std::vector<float> expected = rank_floats(r, 9, 9);
        EXPECT_TRUE(std::equal(expected.begin(), expected.end(), recv.begin() + r * 9)) << "slice " << r;
    }
}

TEST_F(MpiCommunicatorTest, Broadcast_CopiesTheRootsDataFromEveryRoot) {
    for (int root = 0; root < comm().size(); ++root) {
        std::vector<float> data = rank_floats(comm().rank(), 2 * 33, 20 + static_cast<std::uint64_t>(root));
        comm().broadcast(host_view(data.data(), DType::F32, {2, 33}), root, nullptr);
        EXPECT_EQ(data, rank_floats(root, 2 * 33, 20 + static_cast<std::uint64_t>(root))) << "root " << root;
    }
}

TEST_F(MpiCommunicatorTest, AllReduceSum_RejectsDtypesOtherThanF32) {
    std::vector<std::uint16_t> half(8, 0x3c00);
    const std::string message =
        error_of([&] { comm().all_reduce_sum(host_view(half.data(), DType::F16, {8}), nullptr); });
    EXPECT_NE(message.find("supports F32, got F16"), std::string::npos) << message;
    EXPECT_EQ(half[0], 0x3c00) << "a rejected call must not touch the data";
}

TEST_F(MpiCommunicatorTest, Collectives_RejectDeviceTensors) {
    float value = 1.0f;
    const TensorView device_view{&value, DType::F32, {1}, Device::Cuda};
    const std::string reduce = error_of([&] { comm().all_reduce_sum(device_view, nullptr); });
    EXPECT_NE(reduce.find("in cuda memory, expected host memory"), std::string::npos) << reduce;
    const std::string broadcast = error_of([&] { comm().broadcast(device_view, 0, nullptr); });
    EXPECT_NE(broadcast.find("in cuda memory"), std::string::npos) << broadcast;
}

TEST_F(MpiCommunicatorTest, AllGather_RejectsRecvOfTheWrongSize) {
    std::vector<float> send(4, 1.0f), recv(4 * static_cast<std::size_t>(comm().size()) + 1, 0.0f);
    const std::string message = error_of([&] {
        comm().all_gather(host_view(send.data(), DType::F32, {4}),
                          host_view(recv.data(), DType::F32, {static_cast<std::int64_t>(recv.size())}), nullptr);
    });
    EXPECT_NE(message.find("expected " + std::to_string(comm().size()) + " ranks x 4"), std::string::npos) << message;
    std::vector<std::int32_t> ints(4 * static_cast<std::size_t>(comm().size()));
    const std::string dtype = error_of([&] {
        comm().all_gather(host_view(send.data(), DType::F32, {4}),
                          host_view(ints.data(), DType::I32, {static_cast<std::int64_t>(ints.size())}), nullptr);
    });
    EXPECT_NE(dtype.find("send dtype F32 differs from recv dtype I32"), std::string::npos) << dtype;
}

TEST_F(MpiCommunicatorTest, AllGather_RejectsSendOverlappingAnotherSlice) {
    const int size = comm().size();
    std::vector<float> recv(static_cast<std::size_t>(size) * 4 + 2, 0.0f);
    const TensorView all = host_view(recv.data(), DType::F32, {size * 4});
    // Two elements past this rank's slice: overlaps it and the next one, which is not in place.
    const TensorView shifted = host_view(recv.data() + comm().rank() * 4 + 2, DType::F32, {4});
    const std::string message = error_of([&] { comm().all_gather(shifted, all, nullptr); });
    EXPECT_NE(message.find("overlaps recv"), std::string::npos) << message;
}

TEST_F(MpiCommunicatorTest, Broadcast_RejectsRootOutsideTheJob) {
    float value = 0.0f;
    const std::string message =
        error_of([&] { comm().broadcast(host_view(&value, DType::F32, {1}), comm().size(), nullptr); });
    EXPECT_NE(message.find("root " + std::to_string(comm().size()) + " is not a rank"), std::string::npos)
        << message;
}

TEST_F(MpiCommunicatorTest, AllReduceSum_RejectsMoreElementsThanOneMpiCallTakes) {
    // Never dereferenced: the count is refused before MPI sees the pointer.
    float placeholder = 0.0f;
    const TensorView huge = host_view(&placeholder, DType::F32, {std::int64_t{1} << 31});
    const std::string message = error_of([&] { comm().all_reduce_sum(huge, nullptr); });
    EXPECT_NE(message.find("2147483648 elements exceeds MPI's limit"), std::string::npos) << message;
}

TEST_F(MpiCommunicatorTest, Abort_MakesEveryLaterCallThrow) {
    MpiCommunicator victim(mpi_session());
    float value = 1.0f;
    victim.all_reduce_sum(host_view(&value, DType::F32, {1}), nullptr);
    EXPECT_EQ(value, static_cast<float>(victim.size()));
    EXPECT_FALSE(victim.aborted());
    victim.abort();
    EXPECT_TRUE(victim.aborted());
    const std::string reduce = error_of([&] { victim.all_reduce_sum(host_view(&value, DType::F32, {1}), nullptr); });
    EXPECT_NE(reduce.find("all_reduce_sum on rank " + std::to_string(victim.rank()) + " after the communicator was "
                          "aborted"),
              std::string::npos)
        << reduce;
    EXPECT_NE(error_of([&] { victim.barrier(); }).find("aborted"), std::string::npos);
    EXPECT_NE(error_of([&] { victim.sync(nullptr, std::chrono::milliseconds(10)); }).find("aborted"),
              std::string::npos);
    // The suite's communicator is independent and still works.
    float other = 2.0f;
    comm().all_reduce_sum(host_view(&other, DType::F32, {1}), nullptr);
    EXPECT_EQ(other, 2.0f * static_cast<float>(comm().size()));
}

}  // namespace
}  // namespace q4tp::parallel
