// The one-shot IPC all-reduce (parallel/ipc_all_reduce.h + kernels/cuda/fused_all_reduce.h) under mpirun -np 2, one
// GPU per rank: the fused all-reduce + residual add + RMSNorm and the plain all-reduce against the host (kernels/cpu)
// and against NCCL + add_inplace + rms_norm, results identical on every rank, 1000 back-to-back calls of varying m
// (buffer rotation and re-poisoning), a captured CUDA graph replayed with new inputs, setup failures that every rank
// reports alike, argument checks, and the timeout of a call no peer answers. Every test skips when the node has
// fewer GPUs than ranks or the GPUs cannot share memory. All ranks make the same calls in the same order; checks
// that only one rank could fail use EXPECT, never an early return, so the ranks stay in step.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/tensor_view.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/rms_norm.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/fused_all_reduce.h"
#include "kernels/cuda/pdl.h"
#include "kernels/cuda/rms_norm.h"
#include "parallel/ipc_all_reduce.h"
#include "parallel/nccl_communicator.h"
#include "core/model/lamport_group.h"
#include "tests/gpu/common/cuda_graph_util.h"
#include "tests/gpu/common/gpu_test_util.h"
#include "tests/gpu/common/nccl_suite.h"
#include "tests/mpi/mpi_test_env.h"

namespace q4tp::parallel {
namespace {

namespace kc = q4tp::kernels::cuda;
using q4tp::test::error_of;
using q4tp::test::from_half_bits;
using q4tp::model::lamport_group;
using q4tp::test::mpi_session;
using q4tp::test::poison;
using q4tp::test::rank_floats;
using q4tp::test::to_device;
using q4tp::test::to_half_bits;
using q4tp::test::to_host;
using std::chrono::milliseconds;
using Halves = std::vector<std::uint16_t>;

constexpr float kEps = 1e-5f;
//! Long enough for any healthy call, short enough that a test bug fails in seconds instead of hanging.
constexpr milliseconds kCallTimeout{5'000};
constexpr milliseconds kSyncTimeout{10'000};
//! rank_floats "ranks" of the data every rank shares (the residual stream and the norm gain are replicated in TP).
constexpr int kResidualSource = 1000;
constexpr int kGainSource = 1001;

__half* half_ptr(DeviceBuffer<std::uint16_t>& buffer, std::int64_t offset = 0) {
    return reinterpret_cast<__half*>(buffer.data() + offset);
}

//! Waits for the uploads and fills made with cudaMemcpy (from pageable memory) and cudaMemset: they run on the legacy
//! default stream and may still be in flight when they return, and the test's non-blocking stream does not wait for
//! them.
void settle() {
    Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
}

// ---------------------------------------------------------------------------------------------------------------
// Inputs and the host reference

//! One call's data for m rows: this rank's partial sum, and the residual and gain every rank holds.
struct CallInputs {
    std::int64_t m = 0;
    std::int64_t hidden = 0;
    std::uint64_t salt = 0;
    Halves partial;   // [m][hidden]
    Halves residual;  // [m][hidden]
    Halves gain;      // [hidden], in [0.5, 1.5)
};

Halves partial_of(int rank, std::int64_t m, std::int64_t hidden, std::uint64_t salt) {
    return to_half_bits(rank_floats(rank, static_cast<std::size_t>(m * hidden), salt));
}

CallInputs make_inputs(int rank, std::int64_t m, std::int64_t hidden, std::uint64_t salt) {
    CallInputs in{m, hidden, salt, partial_of(rank, m, hidden, salt), {}, {}};
    in.residual = to_half_bits(rank_floats(kResidualSource, static_cast<std::size_t>(m * hidden), salt));
    std::vector<float> gain = rank_floats(kGainSource, static_cast<std::size_t>(hidden), salt);
    for (float& g : gain) g = 1.0f + 0.5f * g;
    in.gain = to_half_bits(gain);
    return in;
}

//! The exact sum over ranks of the fp16 partials (every rank regenerates every rank's data from the shared seed).
std::vector<double> exact_sum(int ranks, std::int64_t m, std::int64_t hidden, std::uint64_t salt) {
    std::vector<double> sum(static_cast<std::size_t>(m * hidden), 0.0);
    for (int r = 0; r < ranks; ++r) {
        const std::vector<float> part = from_half_bits(partial_of(r, m, hidden, salt));
        for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
    }
    return sum;
}

//! got within bound[i] of ref[i] everywhere, all finite; reports the first mismatches.
::testing::AssertionResult within(const std::vector<float>& got,
                                  const std::vector<double>& ref,
                                  const std::vector<double>& bound,
                                  const char* what) {
    std::size_t bad = 0;
    std::string report;
    for (std::size_t i = 0; i < got.size(); ++i) {
        if (!std::isfinite(got[i]) || !(std::fabs(got[i] - ref[i]) <= bound[i])) {
            if (bad++ < 8) {
                report += "\n  [" + std::to_string(i) + "] got " + std::to_string(got[i]) + " expected " +
                          std::to_string(ref[i]) + " +- " + std::to_string(bound[i]);
            }
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << bad << " of " << got.size() << " elements off" << report;
}

//! The plain all-reduce against the exact sum: one fp32 sum of fp16 values (each addition off by at most 2^-24 of
//! the partial sum, bounded by sum|x| <= ranks), then one rounding to fp16 (2^-11 relative, 2^-25 absolute in the
//! subnormal range).
::testing::AssertionResult sum_matches_host(
    const Halves& got, int ranks, std::int64_t m, std::int64_t hidden, std::uint64_t salt) {
    const std::vector<double> sum = exact_sum(ranks, m, hidden, salt);
    std::vector<double> bound(sum.size());
    for (std::size_t i = 0; i < sum.size(); ++i) {
        bound[i] = std::ldexp(std::fabs(sum[i]), -11) + std::ldexp(1.0, -25) + ranks * ranks * std::ldexp(1.0, -24);
    }
    return within(from_half_bits(got), sum, bound, "all-reduce sum");
}

//! The fused result against kernels/cpu: residual_ref = x + exact sum (cpu::add_inplace), out_ref =
//! cpu::rms_norm(residual_ref). Error budget of the fp16 path:
//!  - residual: the sum rounded to fp16 (2^-11 |sum|), then x + s rounded (2^-11 |x + s|), plus 2^-24 for the
//!    fp32 sum and subnormal spacing;
//!  - out: the residual error e_j carried through the norm (|g| inv_rms e_j), the relative error of inv_rms (half
//!    the relative error of the mean square: sum(2 |x| e + e^2) / sum x^2, plus hidden x 2^-24 for the fp32
//!    accumulation and 2^-22 for rsqrtf), and the two fp16 roundings of x * inv_rms and of the gain product
//!    (2^-11 each, relative to the output).
::testing::AssertionResult fused_matches_host(const Halves& residual,
                                              const Halves& out,
                                              const CallInputs& in,
                                              int ranks) {
    const std::int64_t m = in.m;
    const std::int64_t hidden = in.hidden;
    const std::vector<double> sum = exact_sum(ranks, m, hidden, in.salt);
    const std::vector<float> x0 = from_half_bits(in.residual);
    const std::vector<float> gain = from_half_bits(in.gain);
    std::vector<float> x_ref = x0;
    std::vector<float> sum_f(sum.begin(), sum.end());
    kernels::cpu::add_inplace(x_ref.data(), sum_f.data(), m * hidden);
    std::vector<float> out_ref(x_ref.size());
    kernels::cpu::rms_norm(x_ref.data(), gain.data(), m, hidden, kEps, out_ref.data());

    std::vector<double> res_ref(x_ref.begin(), x_ref.end());
    std::vector<double> res_bound(sum.size());
    for (std::size_t i = 0; i < sum.size(); ++i) {
        res_bound[i] = std::ldexp(std::fabs(sum[i]) + std::fabs(res_ref[i]), -11) * 1.01 + std::ldexp(1.0, -22);
    }
    std::vector<double> out_bound(sum.size());
    for (std::int64_t r = 0; r < m; ++r) {
        double sum_sq = 0.0;
        double spread = 0.0;
        for (std::int64_t j = 0; j < hidden; ++j) {
            const auto i = static_cast<std::size_t>(r * hidden + j);
            sum_sq += res_ref[i] * res_ref[i];
            spread += 2.0 * std::fabs(res_ref[i]) * res_bound[i] + res_bound[i] * res_bound[i];
        }
        const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(hidden) + kEps);
        const double inv_rel =
            0.5 * (spread / sum_sq + static_cast<double>(hidden) * std::ldexp(1.0, -24)) + std::ldexp(1.0, -22);
        for (std::int64_t j = 0; j < hidden; ++j) {
            const auto i = static_cast<std::size_t>(r * hidden + j);
            out_bound[i] = std::fabs(gain[static_cast<std::size_t>(j)]) * inv_rms * res_bound[i] +
                           std::fabs(out_ref[i]) * (inv_rel + std::ldexp(1.0, -10) * 1.01) + std::ldexp(1.0, -23);
        }
    }
    const ::testing::AssertionResult res_ok = within(from_half_bits(residual), res_ref, res_bound, "residual");
    if (!res_ok) return res_ok;
    return within(from_half_bits(out), std::vector<double>(out_ref.begin(), out_ref.end()), out_bound, "out");
}

//! Bit-for-bit equality, except that +0.0 and -0.0 count as equal: a partial of -0.0 travels as +0.0 (the -0.0 marks
//! "not arrived"), so where every rank's partial is -0.0 the sum is +0.0 where NCCL's is -0.0.
::testing::AssertionResult same_halves(const Halves& got, const Halves& want, const char* what) {
    std::size_t bad = 0;
    std::string report;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const bool both_zero = ((got[i] | want[i]) & 0x7FFFu) == 0;
        if (got[i] != want[i] && !both_zero) {
            if (bad++ < 8) {
                report += "\n  [" + std::to_string(i) + "] got " + std::to_string(half_to_float(got[i])) +
                          " expected " + std::to_string(half_to_float(want[i]));
            }
        }
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << bad << " of " << got.size() << " halves differ" << report;
}

//! EXPECT_TRUE(result) << context, returning the outcome (loops stop reporting after a few failing iterations).
bool expect(const ::testing::AssertionResult& result, const std::string& context) {
    EXPECT_TRUE(result) << context;
    return static_cast<bool>(result);
}

//! Collective: every rank's `data` equals this rank's (the all-reduce promises bitwise identical results).
::testing::AssertionResult identical_on_every_rank(const Halves& data) {
    std::string report;
    for (int root = 0; root < mpi_session().size(); ++root) {
        Halves theirs = data;
        mpi_session().broadcast_bytes(theirs.data(), theirs.size() * sizeof(std::uint16_t), root);
        if (theirs != data) report += " rank " + std::to_string(root) + " differs;";
    }
    if (report.empty()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "rank " << mpi_session().rank() << " holds other values:" << report;
}

// ---------------------------------------------------------------------------------------------------------------
// Fixture

class IpcAllReduceTest : public test::NcclSuiteTest {
   protected:
    // Whether the GPUs can share memory is decided by a collective setup, so every rank takes the same branch.
    static void SetUpTestSuite() {
        set_up_suite([] {
            std::string why;
            if (!IpcAllReduce::create(mpi_session(), IpcAllReduceOptions{8, 64, kCallTimeout}, &why)) {
                return "these GPUs cannot share memory: " + why;
            }
            return std::string();
        });
    }

    static int rank() { return mpi_session().rank(); }
    static int ranks() { return mpi_session().size(); }

    static std::unique_ptr<IpcAllReduce> make(std::int64_t max_tokens,
                                              std::int64_t hidden,
                                              milliseconds timeout = kCallTimeout) {
        std::string why;
        auto all_reduce = IpcAllReduce::create(mpi_session(), IpcAllReduceOptions{max_tokens, hidden, timeout}, &why);
        EXPECT_NE(all_reduce, nullptr) << why;
        return all_reduce;
    }

    //! Residual and output of one fused call on fresh device copies of `in` (the output NaN-poisoned first).
    static std::pair<Halves, Halves> run_fused(IpcAllReduce& all_reduce, const CallInputs& in) {
        DeviceBuffer<std::uint16_t> partial = to_device(in.partial);
        DeviceBuffer<std::uint16_t> residual = to_device(in.residual);
        DeviceBuffer<std::uint16_t> gain = to_device(in.gain);
        DeviceBuffer<std::uint16_t> out(in.partial.size());
        poison(out);
        settle();
        kc::LamportAddRmsNormParams p;
        p.partial = half_ptr(partial);
        p.residual = half_ptr(residual);
        p.gain = half_ptr(gain);
        p.eps = kEps;
        p.out = half_ptr(out);
        p.m = in.m;
        kc::lamport_all_reduce_add_rms_norm(lamport_group(all_reduce), p, stream());
        all_reduce.check(stream());
        return {to_host(residual), to_host(out)};
    }

    //! The unfused path the model takes today: NCCL all-reduce, add_inplace, rms_norm.
    static std::pair<Halves, Halves> run_unfused(const CallInputs& in) {
        DeviceBuffer<std::uint16_t> partial = to_device(in.partial);
        DeviceBuffer<std::uint16_t> residual = to_device(in.residual);
        DeviceBuffer<std::uint16_t> gain = to_device(in.gain);
        DeviceBuffer<std::uint16_t> out(in.partial.size());
        poison(out);
        settle();
        comm().all_reduce_sum(TensorView{partial.data(), DType::F16, {in.m, in.hidden}, Device::Cuda}, stream());
        kc::add_inplace(half_ptr(residual), half_ptr(partial), in.m * in.hidden, stream());
        kc::rms_norm(half_ptr(residual), half_ptr(gain), in.m, in.hidden, kEps, half_ptr(out), stream());
        comm().sync(stream(), kSyncTimeout);
        return {to_host(residual), to_host(out)};
    }
};

const std::int64_t kRowCounts[] = {1, 2, 3, 7, 8, 16, 128};

// ---------------------------------------------------------------------------------------------------------------
// Correctness of single calls

TEST_F(IpcAllReduceTest, FusedCall_MatchesTheHostAndTheUnfusedNcclPath) {
    // 1000: 125 vectors, a partly filled warp; 5120 and 16384: threads holding 2 and 4 vectors of the row.
    for (const std::int64_t hidden : {512, 1000, 4096, 5120, 8192, 16384}) {
        std::unique_ptr<IpcAllReduce> all_reduce = make(kc::kLamportMaxTokens, hidden);
        if (!all_reduce) continue;
        for (const std::int64_t m : kRowCounts) {
            const auto salt = static_cast<std::uint64_t>(hidden * 1000 + m);
            const CallInputs in = make_inputs(rank(), m, hidden, salt);
            const auto [residual, out] = run_fused(*all_reduce, in);
            EXPECT_TRUE(fused_matches_host(residual, out, in, ranks())) << "hidden " << hidden << ", m " << m;
            // At 2 ranks NCCL's fp16 sum is one correctly rounded addition, and so is ours (an fp32 sum of two fp16
            // values rounded to fp16 is correctly rounded: 24 >= 2 x 11 + 2), the add and the norm repeat the
            // kernels' rounding steps and reduction order: bit for bit. With more ranks NCCL rounds every partial
            // sum to fp16 in its ring order while we round once, so only the host comparison applies.
            if (ranks() == 2) {
                const auto [ref_residual, ref_out] = run_unfused(in);
                EXPECT_TRUE(same_halves(residual, ref_residual, "residual vs NCCL + add_inplace"))
                    << "hidden " << hidden << ", m " << m;
                EXPECT_TRUE(same_halves(out, ref_out, "out vs NCCL + add_inplace + rms_norm"))
                    << "hidden " << hidden << ", m " << m;
            }
            EXPECT_TRUE(identical_on_every_rank(residual)) << "hidden " << hidden << ", m " << m;
            EXPECT_TRUE(identical_on_every_rank(out)) << "hidden " << hidden << ", m " << m;
        }
    }
}

TEST_F(IpcAllReduceTest, PlainCall_MatchesTheHostSumAndNccl) {
    for (const std::int64_t hidden : {8, 4096, 8192}) {
        std::unique_ptr<IpcAllReduce> all_reduce = make(kc::kLamportMaxTokens, hidden);
        if (!all_reduce) continue;
        for (const std::int64_t m : kRowCounts) {
            const auto salt = static_cast<std::uint64_t>(7'000'000 + hidden * 1000 + m);
            const Halves partial = partial_of(rank(), m, hidden, salt);
            DeviceBuffer<std::uint16_t> inout = to_device(partial);
            settle();
            kc::lamport_all_reduce(model::lamport_group(*all_reduce), half_ptr(inout), m, stream());
            all_reduce->check(stream());
            const Halves got = to_host(inout);
            EXPECT_TRUE(sum_matches_host(got, ranks(), m, hidden, salt)) << "hidden " << hidden << ", m " << m;
            if (ranks() == 2) {
                DeviceBuffer<std::uint16_t> nccl = to_device(partial);
                settle();
                comm().all_reduce_sum(TensorView{nccl.data(), DType::F16, {m, hidden}, Device::Cuda}, stream());
                comm().sync(stream(), kSyncTimeout);
                EXPECT_TRUE(same_halves(got, to_host(nccl), "sum vs NCCL")) << "hidden " << hidden << ", m " << m;
            }
            EXPECT_TRUE(identical_on_every_rank(got)) << "hidden " << hidden << ", m " << m;
        }
    }
}

TEST_F(IpcAllReduceTest, NegativeZeroPartials_AreSummedAsZero) {
    // -0.0 is the "not arrived" mark: a rank whose partial holds it must still be counted (as +0.0), not awaited.
    const std::int64_t hidden = 64;
    std::unique_ptr<IpcAllReduce> all_reduce = make(4, hidden);
    ASSERT_NE(all_reduce, nullptr);
    Halves partial = partial_of(rank(), 2, hidden, 42);
    for (std::size_t i = 0; i < partial.size(); i += 3) partial[i] = 0x8000;  // every rank: -0.0 at i % 3 == 0
    DeviceBuffer<std::uint16_t> inout = to_device(partial);
    settle();
    kc::lamport_all_reduce(model::lamport_group(*all_reduce), half_ptr(inout), 2, stream());
    all_reduce->check(stream());
    const Halves got = to_host(inout);
    std::vector<double> sum(partial.size(), 0.0);
    std::vector<double> bound(partial.size());
    for (int r = 0; r < ranks(); ++r) {
        const std::vector<float> part = from_half_bits(partial_of(r, 2, hidden, 42));
        for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += i % 3 == 0 ? 0.0 : part[i];
    }
    for (std::size_t i = 0; i < sum.size(); ++i) bound[i] = std::ldexp(std::fabs(sum[i]), -11) + 1e-6;
    EXPECT_TRUE(within(from_half_bits(got), sum, bound, "sum with -0.0 partials"));
    for (std::size_t i = 0; i < got.size(); i += 3) EXPECT_EQ(got[i], 0u) << "element " << i << " is not +0.0";
}

// ---------------------------------------------------------------------------------------------------------------
// Rotation, graphs

TEST_F(IpcAllReduceTest, ThousandBackToBackCalls_StayCorrectAcrossTheBufferRotation) {
    // Calls of varying m, so each call re-poisons a different number of rows than it writes; every third call is the
    // plain variant. Each call has its own slice of the arrays, so all 1000 are queued without a host sync, then
    // compared with the same 1000 calls through NCCL + add_inplace + rms_norm and with the host.
    constexpr int kCalls = 1000;
    constexpr std::int64_t kMaxTokens = 8;
    constexpr std::int64_t kHidden = 1024;
    const std::int64_t row_counts[] = {1, 8, 3, 5, 2, 7};
    const std::int64_t slice = kMaxTokens * kHidden;
    std::unique_ptr<IpcAllReduce> all_reduce = make(kMaxTokens, kHidden);
    ASSERT_NE(all_reduce, nullptr);

    std::vector<CallInputs> inputs;
    Halves partial(static_cast<std::size_t>(kCalls * slice));
    Halves residual(partial.size());
    Halves gain(static_cast<std::size_t>(kCalls * kHidden));
    for (int c = 0; c < kCalls; ++c) {
        inputs.push_back(make_inputs(rank(), row_counts[c % 6], kHidden, 10'000 + static_cast<std::uint64_t>(c)));
        const CallInputs& in = inputs.back();
        std::copy(in.partial.begin(), in.partial.end(), partial.begin() + c * slice);
        std::copy(in.residual.begin(), in.residual.end(), residual.begin() + c * slice);
        std::copy(in.gain.begin(), in.gain.end(), gain.begin() + c * kHidden);
    }
    DeviceBuffer<std::uint16_t> d_partial = to_device(partial);
    DeviceBuffer<std::uint16_t> d_residual = to_device(residual);
    DeviceBuffer<std::uint16_t> d_gain = to_device(gain);
    DeviceBuffer<std::uint16_t> d_out(partial.size());
    DeviceBuffer<std::uint16_t> r_partial = to_device(partial);
    DeviceBuffer<std::uint16_t> r_residual = to_device(residual);
    DeviceBuffer<std::uint16_t> r_out(partial.size());
    poison(d_out);
    poison(r_out);
    settle();

    const kc::LamportGroup group = model::lamport_group(*all_reduce);
    for (int c = 0; c < kCalls; ++c) {
        const std::int64_t m = inputs[static_cast<std::size_t>(c)].m;
        const std::int64_t at = c * slice;
        if (c % 3 == 2) {
            kc::lamport_all_reduce(group, half_ptr(d_partial, at), m, stream());
            comm().all_reduce_sum(TensorView{r_partial.data() + at, DType::F16, {m, kHidden}, Device::Cuda}, stream());
        } else {
            kc::LamportAddRmsNormParams p;
            p.partial = half_ptr(d_partial, at);
            p.residual = half_ptr(d_residual, at);
            p.gain = half_ptr(d_gain, c * kHidden);
            p.eps = kEps;
            p.out = half_ptr(d_out, at);
            p.m = m;
            kc::lamport_all_reduce_add_rms_norm(group, p, stream());
            comm().all_reduce_sum(TensorView{r_partial.data() + at, DType::F16, {m, kHidden}, Device::Cuda}, stream());
            kc::add_inplace(half_ptr(r_residual, at), half_ptr(r_partial, at), m * kHidden, stream());
            kc::rms_norm(half_ptr(r_residual, at), half_ptr(d_gain, c * kHidden), m, kHidden, kEps, half_ptr(r_out, at),
                         stream());
        }
    }
    all_reduce->check(stream());
    comm().sync(stream(), kSyncTimeout);

    const Halves got_partial = to_host(d_partial), got_residual = to_host(d_residual), got_out = to_host(d_out);
    const Halves ref_partial = to_host(r_partial), ref_residual = to_host(r_residual), ref_out = to_host(r_out);
    int failed_calls = 0;
    for (int c = 0; c < kCalls && failed_calls < 3; ++c) {
        const CallInputs& in = inputs[static_cast<std::size_t>(c)];
        const auto begin = static_cast<std::ptrdiff_t>(c * slice);
        const auto end = begin + static_cast<std::ptrdiff_t>(in.m * kHidden);
        bool ok = true;
        if (c % 3 == 2) {
            const Halves sum(got_partial.begin() + begin, got_partial.begin() + end);
            ok &= expect(sum_matches_host(sum, ranks(), in.m, kHidden, in.salt), "call " + std::to_string(c));
            if (ranks() == 2) {
                ok &= expect(
                    same_halves(sum, Halves(ref_partial.begin() + begin, ref_partial.begin() + end), "sum vs NCCL"),
                    "call " + std::to_string(c));
            }
        } else {
            const Halves res(got_residual.begin() + begin, got_residual.begin() + end);
            const Halves out(got_out.begin() + begin, got_out.begin() + end);
            ok &= expect(fused_matches_host(res, out, in, ranks()), "call " + std::to_string(c));
            if (ranks() == 2) {
                ok &= expect(
                    same_halves(res, Halves(ref_residual.begin() + begin, ref_residual.begin() + end), "residual"),
                    "call " + std::to_string(c));
                ok &= expect(same_halves(out, Halves(ref_out.begin() + begin, ref_out.begin() + end), "out"),
                             "call " + std::to_string(c));
            }
        }
        if (!ok) ++failed_calls;
    }
    // The fused calls' outputs and the plain calls' sums (their partial slices hold the sum after the call; the fused
    // calls' partial slices keep each rank's own input).
    Halves sums;
    for (int c = 2; c < kCalls; c += 3) {
        const auto begin = got_partial.begin() + static_cast<std::ptrdiff_t>(c * slice);
        sums.insert(sums.end(), begin,
                    begin + static_cast<std::ptrdiff_t>(inputs[static_cast<std::size_t>(c)].m * kHidden));
    }
    EXPECT_TRUE(identical_on_every_rank(got_out));
    EXPECT_TRUE(identical_on_every_rank(sums));
}

TEST_F(IpcAllReduceTest, CapturedGraph_ReplaysWithNewInputsEveryTime) {
    // One graph holds a fused call of 5 rows and a plain call of 2 rows: the replays walk the rotation with nothing
    // but device state telling each call its buffer and the rows to re-poison. Captured with PDL (a programmatic edge
    // between the two calls: the second launches while the first drains) and without it.
    constexpr std::int64_t kHidden = 8192;
    constexpr std::int64_t kFusedRows = 5;
    constexpr std::int64_t kPlainRows = 2;
    std::unique_ptr<IpcAllReduce> all_reduce = make(8, kHidden);
    ASSERT_NE(all_reduce, nullptr);
    DeviceBuffer<std::uint16_t> partial(kFusedRows * kHidden), residual(kFusedRows * kHidden), gain(kHidden);
    DeviceBuffer<std::uint16_t> out(kFusedRows * kHidden), inout(kPlainRows * kHidden);
    struct RestorePdl {
        bool before = kc::pdl_enabled();
        ~RestorePdl() { kc::set_pdl_enabled(before); }
    } restore_pdl;

    for (const bool pdl : {true, false}) {
        kc::set_pdl_enabled(pdl);
        test::CudaGraph g;
        const std::string capture_error = error_of([&] {
            g.capture(stream(), [&] {
                kc::LamportAddRmsNormParams p;
                p.partial = half_ptr(partial);
                p.residual = half_ptr(residual);
                p.gain = half_ptr(gain);
                p.eps = kEps;
                p.out = half_ptr(out);
                p.m = kFusedRows;
                kc::lamport_all_reduce_add_rms_norm(model::lamport_group(*all_reduce), p, stream());
                kc::lamport_all_reduce(model::lamport_group(*all_reduce), half_ptr(inout), kPlainRows, stream());
            });
        });
        ASSERT_EQ(capture_error, "");

        int failed_replays = 0;
        const std::uint64_t replays = pdl ? 100 : 30;
        for (std::uint64_t replay = 0; replay < replays; ++replay) {
            const std::uint64_t salt = (pdl ? 50'000 : 70'000) + replay;
            const std::string context = std::string(pdl ? "PDL" : "no PDL") + ", replay " + std::to_string(replay);
            const CallInputs fused = make_inputs(rank(), kFusedRows, kHidden, salt);
            const Halves plain = partial_of(rank(), kPlainRows, kHidden, salt + 10'000);
            Q4TP_CUDA_CHECK(cudaMemcpyAsync(partial.data(), fused.partial.data(), partial.bytes(),
                                            cudaMemcpyHostToDevice, stream()));
            Q4TP_CUDA_CHECK(cudaMemcpyAsync(residual.data(), fused.residual.data(), residual.bytes(),
                                            cudaMemcpyHostToDevice, stream()));
            Q4TP_CUDA_CHECK(
                cudaMemcpyAsync(gain.data(), fused.gain.data(), gain.bytes(), cudaMemcpyHostToDevice, stream()));
            Q4TP_CUDA_CHECK(
                cudaMemcpyAsync(inout.data(), plain.data(), inout.bytes(), cudaMemcpyHostToDevice, stream()));
            Q4TP_CUDA_CHECK(cudaMemsetAsync(out.data(), 0xFF, out.bytes(), stream()));
            g.launch(stream());
            all_reduce->check(stream());
            const Halves got_residual = to_host(residual), got_out = to_host(out), got_sum = to_host(inout);
            bool ok = true;
            if (failed_replays < 3) {
                ok &= expect(fused_matches_host(got_residual, got_out, fused, ranks()), context);
                ok &= expect(sum_matches_host(got_sum, ranks(), kPlainRows, kHidden, salt + 10'000), context);
            }
            ok &= expect(identical_on_every_rank(got_out), context);
            ok &= expect(identical_on_every_rank(got_sum), context);
            if (!ok) ++failed_replays;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Setup and argument errors

TEST_F(IpcAllReduceTest, Setup_ThrowsOnEveryRankWhenTheShapesDiffer) {
    const std::int64_t hidden = rank() == 0 ? 4096 : 2048;
    const std::string message = error_of([&] {
        IpcAllReduce::create(mpi_session(), IpcAllReduceOptions{8, hidden, kCallTimeout});
    });
    EXPECT_NE(message.find("rank 1 set up max_tokens 8, hidden 2048 but rank 0 max_tokens 8, hidden 4096"),
              std::string::npos)
        << message;
}

TEST_F(IpcAllReduceTest, Setup_ThrowsOnEveryRankWhenOneRanksOptionsAreInvalid) {
    // Only the last rank is wrong; the others must not wait for it forever, and they report its error.
    const int last = ranks() - 1;
    const std::int64_t hidden = rank() == last ? 4100 : 4096;
    const std::string message = error_of([&] {
        IpcAllReduce::create(mpi_session(), IpcAllReduceOptions{8, hidden, kCallTimeout});
    });
    EXPECT_NE(message.find("IpcAllReduce setup failed on rank " + std::to_string(last) +
                           ": hidden = 4100, expected a multiple of 8 in [8, 16384]"),
              std::string::npos)
        << message;
}

TEST_F(IpcAllReduceTest, Setup_ReportsUnsupportedWhenRanksShareAGpu) {
    int device = -1;
    Q4TP_CUDA_CHECK(cudaGetDevice(&device));
    Q4TP_CUDA_CHECK(cudaSetDevice(0));
    std::string why;
    std::unique_ptr<IpcAllReduce> shared;
    const std::string message = error_of([&] {
        shared = IpcAllReduce::create(mpi_session(), IpcAllReduceOptions{8, 256, kCallTimeout}, &why);
    });
    shared.reset();
    Q4TP_CUDA_CHECK(cudaSetDevice(device));
    EXPECT_EQ(message, "");
    EXPECT_EQ(shared, nullptr);
    EXPECT_NE(why.find("share GPU"), std::string::npos) << why;
}

TEST_F(IpcAllReduceTest, Launchers_RejectBadArgumentsWithoutLaunching) {
    constexpr std::int64_t kHidden = 256;
    std::unique_ptr<IpcAllReduce> all_reduce = make(4, kHidden);
    ASSERT_NE(all_reduce, nullptr);
    const kc::LamportGroup group = model::lamport_group(*all_reduce);
    DeviceBuffer<std::uint16_t> a(5 * kHidden + 8), b(5 * kHidden), gain(kHidden), out(5 * kHidden);
    kc::LamportAddRmsNormParams good;
    good.partial = half_ptr(a);
    good.residual = half_ptr(b);
    good.gain = half_ptr(gain);
    good.eps = kEps;
    good.out = half_ptr(out);
    good.m = 2;
    auto fused_error = [&](auto change) {
        kc::LamportAddRmsNormParams p = good;
        change(p);
        return error_of([&] { kc::lamport_all_reduce_add_rms_norm(group, p, stream()); });
    };
    EXPECT_NE(fused_error([](auto& p) { p.m = 0; }).find("m = 0, expected 1..4"), std::string::npos);
    EXPECT_NE(fused_error([](auto& p) { p.m = 5; }).find("m = 5, expected 1..4"), std::string::npos);
    EXPECT_NE(fused_error([&](auto& p) { p.partial = half_ptr(a, 1); }).find("16-byte aligned"), std::string::npos);
    EXPECT_NE(fused_error([](auto& p) { p.out = p.residual; }).find("out aliases residual"), std::string::npos);
    EXPECT_NE(fused_error([](auto& p) { p.gain = nullptr; }).find("null"), std::string::npos);
    EXPECT_NE(fused_error([](auto& p) { p.eps = NAN; }).find("eps = nan"), std::string::npos);
    EXPECT_NE(error_of([&] { kc::lamport_all_reduce(group, half_ptr(a), 5, stream()); }).find("m = 5, expected 1..4"),
              std::string::npos);
    EXPECT_NE(error_of([&] { kc::lamport_all_reduce(group, nullptr, 1, stream()); }).find("null inout"),
              std::string::npos);
    kc::LamportGroup bad = group;
    bad.hidden = 260;
    EXPECT_NE(error_of([&] { kc::lamport_all_reduce(bad, half_ptr(a), 1, stream()); }).find("hidden = 260"),
              std::string::npos);

    // Nothing was launched: the ranks are still in step and a valid call works.
    const CallInputs in = make_inputs(rank(), 3, kHidden, 77);
    const auto [residual, result] = run_fused(*all_reduce, in);
    EXPECT_TRUE(fused_matches_host(residual, result, in, ranks()));
}

TEST_F(IpcAllReduceTest, Check_ReportsACallThatNoPeerAnswered) {
    std::unique_ptr<IpcAllReduce> all_reduce = make(2, 64, milliseconds(300));
    ASSERT_NE(all_reduce, nullptr);
    DeviceBuffer<std::uint16_t> inout = to_device(partial_of(rank(), 1, 64, 5));
    settle();
    std::string first, second;
    auto waited = milliseconds(0);
    if (rank() == 0) {
        // Rank 0 calls, the others never do: the call must give up after the timeout instead of spinning forever.
        kc::lamport_all_reduce(model::lamport_group(*all_reduce), half_ptr(inout), 1, stream());
        first = error_of([&] { all_reduce->check(stream()); });
        // Once a call gave up, later calls do not wait at all, and check() keeps failing.
        const auto start = std::chrono::steady_clock::now();
        kc::lamport_all_reduce(model::lamport_group(*all_reduce), half_ptr(inout), 1, stream());
        second = error_of([&] { all_reduce->check(stream()); });
        waited = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    } else {
        second = error_of([&] { all_reduce->check(stream()); });
    }
    mpi_session().barrier();
    if (rank() == 0) {
        EXPECT_NE(first.find("rank 0: an IPC all-reduce call waited more than 300 ms for rank"), std::string::npos)
            << first;
        EXPECT_NE(second.find("gave up"), std::string::npos) << second;
        EXPECT_LT(waited.count(), 250) << "a call after a timeout waited again";
    } else {
        EXPECT_EQ(second, "");
    }
}

}  // namespace
}  // namespace q4tp::parallel
