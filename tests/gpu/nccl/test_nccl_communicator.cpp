// NcclCommunicator under mpirun -np 2, one GPU per rank: all-reduce (F32, F16) against the host sum,
// identical results on every rank, all-gather, broadcast, all-reduce captured in a CUDA graph and replayed,
// the timeout path of sync(), and select_device. Every test skips when the node has fewer GPUs than ranks.
// As in tests/mpi, all ranks run the same collectives in the same order and assert afterwards.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/tensor_view.h"
#include "parallel/nccl_communicator.h"
#include "tests/gpu/common/cuda_graph_util.h"
#include "tests/gpu/common/gpu_test_util.h"
#include "tests/gpu/common/nccl_suite.h"
#include "tests/mpi/mpi_test_env.h"

namespace q4tp::parallel {
namespace {

using q4tp::test::error_of;
using q4tp::test::from_half_bits;
using q4tp::test::mpi_session;
using q4tp::test::rank_floats;
using q4tp::test::to_device;
using q4tp::test::to_half_bits;
using q4tp::test::to_host;
using q4tp::test::visible_gpus;
using std::chrono::milliseconds;

constexpr milliseconds kSyncTimeout{10'000};

TensorView device_view(void* data, DType dtype, Shape shape) { return TensorView{data, dtype, shape, Device::Cuda}; }

// Exact double sums over every rank's data, and the sums of magnitudes that bound the rounding error.
struct HostSum {
    std::vector<double> sum, sum_abs;
};

HostSum host_sum(int size, std::size_t n, std::uint64_t salt, bool through_half) {
    HostSum s{std::vector<double>(n, 0.0), std::vector<double>(n, 0.0)};
    for (int r = 0; r < size; ++r) {
        const std::vector<float> part = rank_floats(r, n, salt);
        for (std::size_t i = 0; i < n; ++i) {
            const double x = through_half ? round_to_half(part[i]) : part[i];
            s.sum[i] += x;
            s.sum_abs[i] += std::fabs(x);
        }
    }
    return s;
}

// |got - sum| <= (size - 1) * (unit * sum|x| + floor) elementwise, and finite; reports the first mismatches.
::testing::AssertionResult matches_sum(const std::vector<float>& got, const HostSum& ref, int size, double unit,
                                       double floor) {
    int bad = 0;
    std::string report;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double bound = (size - 1) * (unit * ref.sum_abs[i] + floor);
        if (!std::isfinite(got[i]) || !(std::fabs(got[i] - ref.sum[i]) <= bound)) {
            if (bad++ < 8) {
                report += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " expected " +
                          std::to_string(ref.sum[i]) + " +- " + std::to_string(bound);
            }
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << bad << " of " << got.size() << " elements off" << report;
}

// ---------------------------------------------------------------------------------------------------------
// select_device (local: no collective)

TEST(SelectDeviceTest, RejectsALocalRankBeyondTheVisibleGpus) {
    const int gpus = visible_gpus();
    const std::string message = error_of([&] { select_device(gpus); });
    if (gpus == 0) {
        EXPECT_NE(message.find("found no usable CUDA device"), std::string::npos) << message;
    } else {
        EXPECT_NE(message.find("needs GPU " + std::to_string(gpus) + " but this node has " + std::to_string(gpus) +
                               " visible GPU(s)"),
                  std::string::npos)
            << message;
    }
    EXPECT_NE(error_of([] { select_device(-1); }).find("negative"), std::string::npos);
}

TEST(SelectDeviceTest, MakesTheLocalRanksGpuCurrent) {
    const int local_rank = mpi_session().local_rank();
    if (visible_gpus() <= local_rank) GTEST_SKIP() << "needs GPU " << local_rank;
    EXPECT_EQ(select_device(local_rank), local_rank);
    int current = -1;
    Q4TP_CUDA_CHECK(cudaGetDevice(&current));
    EXPECT_EQ(current, local_rank);
}

// ---------------------------------------------------------------------------------------------------------
// NcclCommunicator

class NcclCommunicatorTest : public test::NcclSuiteTest {
protected:
    static void SetUpTestSuite() { set_up_suite(); }
};

TEST_F(NcclCommunicatorTest, RankSizeAndDevice_MatchTheSession) {
    EXPECT_EQ(comm().rank(), mpi_session().rank());
    EXPECT_EQ(comm().size(), mpi_session().size());
    EXPECT_EQ(comm().cuda_device(), mpi_session().local_rank());
    EXPECT_EQ(comm().device(), Device::Cuda);
}

TEST_F(NcclCommunicatorTest, AllReduceSumF32_MatchesTheHostSum) {
    for (const std::size_t n : {std::size_t{1}, std::size_t{4097}, std::size_t{1} << 20}) {
        DeviceBuffer<float> data = to_device(rank_floats(comm().rank(), n, n));
        comm().all_reduce_sum(device_view(data.data(), DType::F32, {static_cast<std::int64_t>(n)}), stream());
        comm().sync(stream(), kSyncTimeout);
        // size-1 float additions, each off by at most 2^-24 of a partial sum bounded by sum|x|.
        EXPECT_TRUE(matches_sum(to_host(data), host_sum(comm().size(), n, n, false), comm().size(),
                                std::ldexp(1.0, -24), 0.0))
            << "n = " << n;
    }
}

TEST_F(NcclCommunicatorTest, AllReduceSumF16_MatchesTheHostSum) {
    for (const std::size_t n : {std::size_t{3}, std::size_t{8191}, std::size_t{1} << 19}) {
        DeviceBuffer<std::uint16_t> data = to_device(to_half_bits(rank_floats(comm().rank(), n, 50 + n)));
        comm().all_reduce_sum(device_view(data.data(), DType::F16, {static_cast<std::int64_t>(n)}), stream());
        comm().sync(stream(), kSyncTimeout);
        const std::vector<float> got = from_half_bits(to_host(data));
        // NCCL adds in fp16: each of the size-1 additions rounds to nearest, off by at most 2^-11 of a partial
        // sum bounded by sum|x|, plus 2^-25 (half the subnormal spacing) where the partial sum is subnormal.
        // With 2 ranks that is exactly the correctly rounded sum of the two inputs.
        EXPECT_TRUE(matches_sum(got, host_sum(comm().size(), n, 50 + n, true), comm().size(), std::ldexp(1.0, -11),
                                std::ldexp(1.0, -25)))
            << "n = " << n;
    }
}

TEST_F(NcclCommunicatorTest, AllReduceSum_IsBitwiseIdenticalOnEveryRank) {
    const std::size_t n = 300'007;
    const int size = comm().size();
    DeviceBuffer<float> data = to_device(rank_floats(comm().rank(), n, 77));
    DeviceBuffer<float> all(n * static_cast<std::size_t>(size));
    comm().all_reduce_sum(device_view(data.data(), DType::F32, {static_cast<std::int64_t>(n)}), stream());
    comm().all_gather(device_view(data.data(), DType::F32, {static_cast<std::int64_t>(n)}),
                      device_view(all.data(), DType::F32, {size, static_cast<std::int64_t>(n)}), stream());
    comm().sync(stream(), kSyncTimeout);
    const std::vector<float> mine = to_host(data);
    const std::vector<float> gathered = to_host(all);
    for (int r = 0; r < size; ++r) {
        EXPECT_EQ(std::memcmp(gathered.data() + static_cast<std::size_t>(r) * n, mine.data(), n * sizeof(float)), 0)
            << "rank " << r << " and rank " << comm().rank() << " hold different sums";
    }
}

TEST_F(NcclCommunicatorTest, AllGather_PlacesEachRankInItsSlice) {
    const int size = comm().size();
    const std::size_t n = 2 * 1027;
    DeviceBuffer<std::uint16_t> send = to_device(to_half_bits(rank_floats(comm().rank(), n, 5)));
    DeviceBuffer<std::uint16_t> recv(n * static_cast<std::size_t>(size));
    Q4TP_CUDA_CHECK(cudaMemset(recv.data(), 0xFF, recv.bytes()));
    comm().all_gather(device_view(send.data(), DType::F16, {2, 1027}),
                      device_view(recv.data(), DType::F16, {size * 2, 1027}), stream());
    // In place: this rank's slice already holds its data.
    const std::vector<float> own = rank_floats(comm().rank(), 64, 6);
    std::vector<float> seeded(64 * static_cast<std::size_t>(size), -7.0f);
    std::copy(own.begin(), own.end(), seeded.begin() + comm().rank() * 64);
    DeviceBuffer<float> in_place = to_device(seeded);
    const TensorView whole = device_view(in_place.data(), DType::F32, {size, 64});
    comm().all_gather(whole.rows(comm().rank(), 1), whole, stream());
    comm().sync(stream(), kSyncTimeout);

    const std::vector<std::uint16_t> got = to_host(recv);
    const std::vector<float> got_in_place = to_host(in_place);
    for (int r = 0; r < size; ++r) {
        const std::vector<std::uint16_t> expected = to_half_bits(rank_floats(r, n, 5));
        EXPECT_TRUE(std::equal(expected.begin(), expected.end(), got.begin() + static_cast<std::ptrdiff_t>(r * n)))
            << "slice " << r;
        const std::vector<float> expected_in_place = rank_floats(r, 64, 6);
        EXPECT_TRUE(std::equal(expected_in_place.begin(), expected_in_place.end(), got_in_place.begin() + r * 64))
            << "in-place slice " << r;
    }
}

TEST_F(NcclCommunicatorTest, Broadcast_CopiesTheRootsDataFromEveryRoot) {
    for (int root = 0; root < comm().size(); ++root) {
        const auto salt = 30 + static_cast<std::uint64_t>(root);
        DeviceBuffer<float> data = to_device(rank_floats(comm().rank(), 5000, salt));
        comm().broadcast(device_view(data.data(), DType::F32, {5, 1000}), root, stream());
        comm().sync(stream(), kSyncTimeout);
        EXPECT_EQ(to_host(data), rank_floats(root, 5000, salt)) << "root " << root;
    }
}

TEST_F(NcclCommunicatorTest, AllReduceSum_ReplaysInsideACapturedCudaGraph) {
    const std::size_t n = 4096 * 3;
    DeviceBuffer<float> buffer(n);
    const TensorView data = device_view(buffer.data(), DType::F32, {3, 4096});
    // Eager call first: NCCL sets up its connections on first use, which is not capturable work.
    comm().all_reduce_sum(data, stream());
    comm().sync(stream(), kSyncTimeout);

    // CudaGraph captures in thread-local mode: NCCL's own threads may make CUDA calls that global mode forbids.
    test::CudaGraph g;
    const std::string capture_error =
        error_of([&] { g.capture(stream(), [&] { comm().all_reduce_sum(data, stream()); }); });
    ASSERT_EQ(capture_error, "") << "all_reduce_sum is not capturable";

    for (std::uint64_t replay = 0; replay < 3; ++replay) {
        // Fresh inputs each time: the replayed all-reduce must read the buffer's current contents.
        const std::vector<float> input = rank_floats(comm().rank(), n, 900 + replay);
        Q4TP_CUDA_CHECK(
            cudaMemcpyAsync(buffer.data(), input.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream()));
        g.launch(stream());
        comm().sync(stream(), kSyncTimeout);
        EXPECT_TRUE(matches_sum(to_host(buffer), host_sum(comm().size(), n, 900 + replay, false), comm().size(),
                                std::ldexp(1.0, -24), 0.0))
            << "replay " << replay;
    }
}

TEST_F(NcclCommunicatorTest, Collectives_RejectHostTensorsAndUnsupportedDtypes) {
    float host_value = 1.0f;
    const std::string host = error_of(
        [&] { comm().all_reduce_sum(TensorView{&host_value, DType::F32, {1}, Device::Host}, stream()); });
    EXPECT_NE(host.find("in host memory, expected cuda memory"), std::string::npos) << host;
    DeviceBuffer<std::int32_t> ints(4);
    const std::string dtype =
        error_of([&] { comm().all_reduce_sum(device_view(ints.data(), DType::I32, {4}), stream()); });
    EXPECT_NE(dtype.find("supports F16 and F32, got I32"), std::string::npos) << dtype;
}

TEST_F(NcclCommunicatorTest, Sync_TimesOutAndAbortsWhenAPeerNeverJoins) {
    // A communicator of its own: after this test it is aborted on every rank.
    NcclCommunicator victim(mpi_session());
    CudaStream victim_stream;
    const std::size_t n = 1024;
    DeviceBuffer<float> data = to_device(rank_floats(victim.rank(), n, 3));
    const TensorView view = device_view(data.data(), DType::F32, {static_cast<std::int64_t>(n)});
    // Same size and dtype as the call that will hang, so that call needs no new connection (whose setup would
    // wait on the host for the absent peer).
    victim.all_reduce_sum(view, victim_stream.get());
    victim.sync(victim_stream.get(), kSyncTimeout);

    std::string timeout_error;
    bool drained = false;
    if (victim.rank() == 0) {
        victim.all_reduce_sum(view, victim_stream.get());  // rank 1 never joins this one
        const auto start = std::chrono::steady_clock::now();
        timeout_error = error_of([&] { victim.sync(victim_stream.get(), milliseconds(500)); });
        EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(500));
        // The abort makes the stuck NCCL kernel return, so the stream drains instead of hanging forever.
        for (int i = 0; i < 1000 && !drained; ++i) {
            const cudaError_t state = cudaStreamQuery(victim_stream.get());
            drained = state != cudaErrorNotReady;
            EXPECT_TRUE(state == cudaSuccess || state == cudaErrorNotReady) << cudaGetErrorString(state);
            if (!drained) std::this_thread::sleep_for(milliseconds(10));
        }
    }
    mpi_session().barrier();
    victim.abort();  // the other ranks' side of the broken communicator
    if (victim.rank() == 0) {
        EXPECT_NE(timeout_error.find("rank 0: the work queued on the stream did not complete within 500 ms"),
                  std::string::npos)
            << timeout_error;
        EXPECT_NE(timeout_error.find("NCCL communicator aborted"), std::string::npos) << timeout_error;
        EXPECT_TRUE(drained) << "the stream still runs 10 s after ncclCommAbort";
    }
    EXPECT_TRUE(victim.aborted());
    const std::string after = error_of([&] { victim.all_reduce_sum(view, victim_stream.get()); });
    EXPECT_NE(after.find("after the communicator was aborted"), std::string::npos) << after;
    victim.abort();  // a second abort is harmless
}

}  // namespace
}  // namespace q4tp::parallel
