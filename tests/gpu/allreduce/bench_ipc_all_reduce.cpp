// Microseconds per call of the one-shot IPC all-reduce against NCCL, on the decoder's message sizes, under
// mpirun -np N (one GPU per rank): 200 back-to-back calls captured in one CUDA graph per variant, replayed after a
// host barrier, timed with events on every rank; a row reports the slowest rank's median of 5 replays.
//   ipc fused   all-reduce + residual add + RMSNorm in one kernel (what a decoder layer would run)
//   ipc plain   the all-reduce alone, in place
//   nccl+a+n    ncclAllReduce + add_inplace + rms_norm (what the model runs today)
//   nccl        ncclAllReduce alone
// Usage: mpirun -np 2 bench_ipc_all_reduce [calls per graph, default 200]
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/base/error.h"
#include "core/base/half.h"
#include "core/base/tensor_view.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/fused_all_reduce.h"
#include "kernels/cuda/rms_norm.h"
#include "parallel/failure.h"
#include "parallel/ipc_all_reduce.h"
#include "parallel/mpi_session.h"
#include "parallel/nccl_communicator.h"
#include "core/model/lamport_group.h"

namespace q4tp {
namespace {

namespace kc = kernels::cuda;

constexpr int kReplays = 5;
constexpr float kEps = 1e-5f;

struct Shape2 {
    std::int64_t m;
    std::int64_t hidden;
};

__half* half_ptr(DeviceBuffer<std::uint16_t>& buffer) {
    return reinterpret_cast<__half*>(buffer.data());
}

//! Small values (|x| < 1/64) so that hundreds of in-place sums stay finite.
DeviceBuffer<std::uint16_t> filled(std::int64_t count, int rank, int salt) {
    std::vector<std::uint16_t> host(static_cast<std::size_t>(count));
    for (std::size_t i = 0; i < host.size(); ++i) {
        const auto v =
            static_cast<float>(static_cast<int>((i * 7919 + static_cast<std::size_t>(rank * 31 + salt)) % 97) - 48);
        host[i] = float_to_half((v == 0.0f ? 1.0f : v) / 4096.0f);
    }
    DeviceBuffer<std::uint16_t> device(host.size());
    Q4TP_CUDA_CHECK(cudaMemcpy(device.data(), host.data(), device.bytes(), cudaMemcpyHostToDevice));
    return device;
}

//! Median microseconds per call of `body` (which enqueues `calls` calls) captured once and replayed, slowest rank.
double time_graphed(const parallel::MpiSession& session,
                    cudaStream_t stream,
                    int calls,
                    const std::function<void()>& body) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    body();
    Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    Q4TP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CudaEvent start, stop;
    std::vector<double> us;
    for (int replay = -2; replay < kReplays; ++replay) {  // two warm-up replays
        session.barrier();
        start.record(stream);
        Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        stop.record(stream);
        stop.synchronize();
        if (replay >= 0) us.push_back(1000.0 * stop.elapsed_ms_since(start) / calls);
    }
    Q4TP_CUDA_CHECK(cudaGraphExecDestroy(exec));
    Q4TP_CUDA_CHECK(cudaGraphDestroy(graph));
    std::sort(us.begin(), us.end());
    double median = us[us.size() / 2];
    for (int root = 0; root < session.size(); ++root) {
        double theirs = median;
        session.broadcast_bytes(&theirs, sizeof theirs, root);
        median = std::max(median, theirs);
    }
    return median;
}

int run(parallel::MpiSession& session, int calls) {
    parallel::select_device(session.local_rank());
    parallel::NcclCommunicator comm(session);
    CudaStream stream;
    cudaDeviceProp prop{};
    int device = 0;
    Q4TP_CUDA_CHECK(cudaGetDevice(&device));
    Q4TP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    if (session.rank() == 0) {
        std::printf("[ bench    ] %d ranks on %s, %d calls per graph, slowest rank's median of %d replays\n",
                    session.size(), prop.name, calls, kReplays);
        std::printf("[ bench    ] %4s %6s %8s | %10s %10s %10s %10s | %s\n", "m", "hidden", "bytes", "ipc fused",
                    "ipc plain", "nccl+a+n", "nccl", "us per call");
    }
    const Shape2 shapes[] = {{1, 8192}, {2, 8192}, {8, 8192}, {1, 5120}, {1, 4096}, {32, 8192}, {128, 8192}};
    for (const Shape2 s : shapes) {
        std::string why;
        std::unique_ptr<parallel::IpcAllReduce> all_reduce = parallel::IpcAllReduce::create(
            session, parallel::IpcAllReduceOptions{std::max<std::int64_t>(s.m, 8), s.hidden}, &why);
        Q4TP_CHECK(all_reduce != nullptr, "CUDA IPC all-reduce unsupported here: " << why);
        const kc::LamportGroup group = model::lamport_group(*all_reduce);
        const std::int64_t n = s.m * s.hidden;
        DeviceBuffer<std::uint16_t> partial = filled(n, session.rank(), 1);
        DeviceBuffer<std::uint16_t> residual = filled(n, 0, 2);
        DeviceBuffer<std::uint16_t> gain = filled(s.hidden, 0, 3);
        DeviceBuffer<std::uint16_t> out(static_cast<std::size_t>(n));
        DeviceBuffer<std::uint16_t> inout = filled(n, session.rank(), 4);
        // The fills ran on the legacy default stream, which the non-blocking bench stream does not wait for.
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        const TensorView view{inout.data(), DType::F16, {s.m, s.hidden}, Device::Cuda};
        // NCCL connects on its first call, which a capture must not contain.
        comm.all_reduce_sum(view, stream.get());
        comm.sync(stream.get(), std::chrono::milliseconds(30'000));

        kc::LamportAddRmsNormParams p;
        p.partial = half_ptr(partial);
        p.residual = half_ptr(residual);
        p.gain = half_ptr(gain);
        p.eps = kEps;
        p.out = half_ptr(out);
        p.m = s.m;
        const double fused = time_graphed(session, stream.get(), calls, [&] {
            for (int i = 0; i < calls; ++i) kc::lamport_all_reduce_add_rms_norm(group, p, stream.get());
        });
        const double plain = time_graphed(session, stream.get(), calls, [&] {
            for (int i = 0; i < calls; ++i) kc::lamport_all_reduce(group, half_ptr(inout), s.m, stream.get());
        });
        all_reduce->check(stream.get());
        const double nccl_add_norm = time_graphed(session, stream.get(), calls, [&] {
            for (int i = 0; i < calls; ++i) {
                comm.all_reduce_sum(view, stream.get());
                kc::add_inplace(half_ptr(residual), half_ptr(inout), n, stream.get());
                kc::rms_norm(half_ptr(residual), half_ptr(gain), s.m, s.hidden, kEps, half_ptr(out), stream.get());
            }
        });
        const double nccl = time_graphed(session, stream.get(), calls, [&] {
            for (int i = 0; i < calls; ++i) comm.all_reduce_sum(view, stream.get());
        });
        comm.sync(stream.get(), std::chrono::milliseconds(30'000));
        if (session.rank() == 0) {
            std::printf("[ bench    ] %4lld %6lld %8lld | %10.2f %10.2f %10.2f %10.2f |\n", static_cast<long long>(s.m),
                        static_cast<long long>(s.hidden), static_cast<long long>(n * 2), fused, plain, nccl_add_norm,
                        nccl);
            std::fflush(stdout);
        }
    }
    return 0;
}

}  // namespace
}  // namespace q4tp

int main(int argc, char** argv) {
    std::unique_ptr<q4tp::parallel::MpiSession> session;
    try {
        session = std::make_unique<q4tp::parallel::MpiSession>(&argc, &argv);
        const int calls = argc > 1 ? std::atoi(argv[1]) : 200;
        Q4TP_CHECK(calls > 0, "calls per graph = " << argv[1] << ", expected a positive number");
        return q4tp::run(*session, calls);
    } catch (const std::exception& error) {
        q4tp::parallel::fail_job(error, nullptr, session.get());
    }
}
