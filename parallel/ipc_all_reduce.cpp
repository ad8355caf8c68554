#include "parallel/ipc_all_reduce.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "core/base/logging.h"

namespace q4tp::parallel {

namespace {

// ---------------------------------------------------------------------------------------------------------------
// The setup exchange. Every rank sends one fixed-size record to every other rank, twice (after allocating, after
// opening the peers), whatever happened locally: a rank that failed says so in its record instead of throwing early
// and leaving the others waiting in a broadcast. Everyone then decides from the same records, so all ranks throw,
// give up or succeed together.

enum class SetupStatus : std::int32_t { Ok = 0, Failed = 1, Unsupported = 2 };

struct SetupRecord {
    SetupStatus status;
    std::int32_t device;
    std::int64_t max_tokens;
    std::int64_t hidden;
    cudaIpcMemHandle_t handle;
    char bus_id[32];
    char host[64];
    char message[400];
};

template <std::size_t N>
void set_text(char (&dst)[N], const std::string& text) {
    std::snprintf(dst, N, "%s", text.c_str());
}

std::vector<SetupRecord> all_gather(const MpiSession& session, const SetupRecord& mine) {
    std::vector<SetupRecord> all(static_cast<std::size_t>(session.size()));
    all[static_cast<std::size_t>(session.rank())] = mine;
    for (int root = 0; root < session.size(); ++root) {
        session.broadcast_bytes(&all[static_cast<std::size_t>(root)], sizeof(SetupRecord), root);
    }
    return all;
}

//! Throws on every rank alike when any record reports a failure (the first failing rank is named).
void throw_if_any_failed(const std::vector<SetupRecord>& all) {
    for (std::size_t r = 0; r < all.size(); ++r) {
        Q4TP_CHECK(all[r].status != SetupStatus::Failed,
                   "IpcAllReduce setup failed on rank " << r << ": " << all[r].message);
    }
}

//! fp16 -0.0, the mark of a value that has not arrived (kernels/cuda/fused_all_reduce.h).
constexpr std::uint16_t kNegativeZero = 0x8000;

//! Fills count halves with -0.0: one host-to-device copy of a pattern, then device copies doubling the filled part
//! (parallel/ launches no kernels of its own).
void fill_negative_zero(std::uint16_t* data, std::size_t count) {
    constexpr std::size_t kPatternHalves = std::size_t{1} << 16;
    const std::vector<std::uint16_t> pattern(std::min(count, kPatternHalves), kNegativeZero);
    Q4TP_CUDA_CHECK(cudaMemcpy(data, pattern.data(), pattern.size() * sizeof(std::uint16_t), cudaMemcpyHostToDevice));
    for (std::size_t done = pattern.size(); done < count;) {
        const std::size_t piece = std::min(done, count - done);
        Q4TP_CUDA_CHECK(cudaMemcpy(data + done, data, piece * sizeof(std::uint16_t), cudaMemcpyDeviceToDevice));
        done += piece;
    }
}

std::string host_name() {
    char name[64] = {};
    if (gethostname(name, sizeof name - 1) != 0) return "?";
    return name;
}

void check_options(const IpcAllReduceOptions& o) {
    Q4TP_CHECK(o.max_tokens >= 1 && o.max_tokens <= IpcAllReduce::kMaxTokens,
               "max_tokens = " << o.max_tokens << ", expected 1.." << IpcAllReduce::kMaxTokens);
    Q4TP_CHECK(o.hidden >= 8 && o.hidden <= IpcAllReduce::kMaxHidden && o.hidden % 8 == 0,
               "hidden = " << o.hidden << ", expected a multiple of 8 in [8, " << IpcAllReduce::kMaxHidden << "]");
    Q4TP_CHECK(o.timeout.count() > 0 && o.timeout.count() < std::numeric_limits<std::int64_t>::max() / 1'000'000,
               "timeout = " << o.timeout.count() << " ms, expected a positive number of milliseconds");
}

//! Why this rank cannot map rank `peer`'s buffers, or "" when it can.
std::string peer_problem(const SetupRecord& mine, const SetupRecord& theirs, int rank, int peer) {
    if (std::strcmp(mine.host, theirs.host) != 0) {
        return "rank " + std::to_string(peer) + " runs on host '" + theirs.host + "' and rank " + std::to_string(rank) +
               " on '" + mine.host + "'; CUDA IPC needs every rank on one node";
    }
    int device = -1;
    if (cudaDeviceGetByPCIBusId(&device, theirs.bus_id) != cudaSuccess) {
        (void)cudaGetLastError();  // an expected failure must not surface at the next launch check
        return "rank " + std::to_string(peer) + "'s GPU " + theirs.bus_id + " is not visible to rank " +
               std::to_string(rank) + " (CUDA_VISIBLE_DEVICES hides it)";
    }
    if (device == mine.device) {
        return "ranks " + std::to_string(rank) + " and " + std::to_string(peer) + " share GPU " + mine.bus_id;
    }
    int can_access = 0;
    Q4TP_CUDA_CHECK(cudaDeviceCanAccessPeer(&can_access, mine.device, device));
    if (!can_access) {
        return "GPU " + std::string(mine.bus_id) + " of rank " + std::to_string(rank) + " has no peer access to GPU " +
               theirs.bus_id + " of rank " + std::to_string(peer);
    }
    return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// IpcAllReduce

std::unique_ptr<IpcAllReduce> IpcAllReduce::create(const MpiSession& session,
                                                   const IpcAllReduceOptions& options,
                                                   std::string* unsupported_reason) {
    const int rank = session.rank();
    const int size = session.size();
    if (size > kMaxRanks) {
        // The same on every rank, so no exchange is needed to agree on it.
        if (unsupported_reason) {
            *unsupported_reason = std::to_string(size) + " ranks, at most " + std::to_string(kMaxRanks) + " supported";
        }
        return nullptr;
    }
    std::unique_ptr<IpcAllReduce> self(new IpcAllReduce());
    self->rank_ = rank;
    self->size_ = size;
    self->max_tokens_ = options.max_tokens;
    self->hidden_ = options.hidden;
    self->timeout_ = options.timeout;

    // Phase 1, local: allocate, poison, export.
    SetupRecord mine{};
    mine.status = SetupStatus::Ok;
    mine.max_tokens = options.max_tokens;
    mine.hidden = options.hidden;
    set_text(mine.host, host_name());
    try {
        check_options(options);
        self->timeout_ns_ = static_cast<std::uint64_t>(options.timeout.count()) * 1'000'000u;
        Q4TP_CUDA_CHECK(cudaGetDevice(&mine.device));
        Q4TP_CUDA_CHECK(cudaDeviceGetPCIBusId(mine.bus_id, sizeof mine.bus_id, mine.device));
        const auto count = static_cast<std::size_t>(kBuffers * size * options.max_tokens * options.hidden);
        // DeviceBuffer is one cudaMalloc, so data() is the allocation's base: the address a peer's
        // cudaIpcOpenMemHandle maps (a handle always stands for a whole allocation, never an interior pointer).
        self->buffers_ = DeviceBuffer<std::uint16_t>(count);
        self->peer_table_ = DeviceBuffer<void*>(static_cast<std::size_t>(size));
        self->state_ = DeviceBuffer<std::uint32_t>(kStateWords);
        fill_negative_zero(self->buffers_.data(), count);
        Q4TP_CUDA_CHECK(cudaMemset(self->state_.data(), 0, self->state_.bytes()));
        // Poisoned before any peer learns the handle: no push can land on unpoisoned memory.
        Q4TP_CUDA_CHECK(cudaDeviceSynchronize());
        if (size > 1) Q4TP_CUDA_CHECK(cudaIpcGetMemHandle(&mine.handle, self->buffers_.data()));
    } catch (const Error& error) {
        mine.status = SetupStatus::Failed;
        set_text(mine.message, error.message());
    }
    const std::vector<SetupRecord> first = all_gather(session, mine);
    throw_if_any_failed(first);
    for (int r = 1; r < size; ++r) {
        const SetupRecord& other = first[static_cast<std::size_t>(r)];
        Q4TP_CHECK(other.max_tokens == first[0].max_tokens && other.hidden == first[0].hidden,
                   "IpcAllReduce: rank " << r << " set up max_tokens " << other.max_tokens << ", hidden "
                                         << other.hidden << " but rank 0 max_tokens " << first[0].max_tokens
                                         << ", hidden " << first[0].hidden << "; every rank must pass the same");
    }

    // Phase 2, local: check that every peer is reachable, then map its buffers.
    SetupRecord verdict{};
    verdict.status = SetupStatus::Ok;
    try {
        std::vector<void*> table(static_cast<std::size_t>(size), nullptr);
        table[static_cast<std::size_t>(rank)] = self->buffers_.data();
        for (int p = 0; p < size && verdict.status == SetupStatus::Ok; ++p) {
            if (p == rank) continue;
            const std::string problem = peer_problem(mine, first[static_cast<std::size_t>(p)], rank, p);
            if (!problem.empty()) {
                verdict.status = SetupStatus::Unsupported;
                set_text(verdict.message, problem);
            }
        }
        for (int p = 0; p < size && verdict.status == SetupStatus::Ok; ++p) {
            if (p == rank) continue;
            void* mapped = nullptr;
            const cudaError_t status = cudaIpcOpenMemHandle(&mapped, first[static_cast<std::size_t>(p)].handle,
                                                            cudaIpcMemLazyEnablePeerAccess);
            if (status != cudaSuccess) {
                (void)cudaGetLastError();
                Q4TP_THROW("cudaIpcOpenMemHandle of rank " << p << "'s buffers failed: " << cudaGetErrorString(status));
            }
            self->opened_.push_back(mapped);
            table[static_cast<std::size_t>(p)] = mapped;
        }
        Q4TP_CUDA_CHECK(
            cudaMemcpy(self->peer_table_.data(), table.data(), table.size() * sizeof(void*), cudaMemcpyHostToDevice));
    } catch (const Error& error) {
        verdict.status = SetupStatus::Failed;
        set_text(verdict.message, error.message());
    }
    const std::vector<SetupRecord> second = all_gather(session, verdict);
    throw_if_any_failed(second);
    for (std::size_t r = 0; r < second.size(); ++r) {
        if (second[r].status == SetupStatus::Unsupported) {
            if (unsupported_reason)
                *unsupported_reason = std::string("rank ") + std::to_string(r) + ": " + second[r].message;
            return nullptr;
        }
    }
    Q4TP_LOG_DEBUG("IpcAllReduce: rank " << rank << " of " << size << ", " << options.max_tokens << " x "
                                         << options.hidden << " halves per slot, " << self->buffers_.bytes()
                                         << " bytes of buffers");
    return self;
}

IpcAllReduce::~IpcAllReduce() {
    // A call still in flight pushes into the peers' buffers: let it end before their mappings go.
    const cudaError_t synced = cudaDeviceSynchronize();
    if (synced != cudaSuccess)
        Q4TP_LOG_ERROR("IpcAllReduce: cudaDeviceSynchronize failed: " << cudaGetErrorString(synced));
    for (void* mapped : opened_) {
        const cudaError_t status = cudaIpcCloseMemHandle(mapped);
        if (status != cudaSuccess) {
            Q4TP_LOG_ERROR("IpcAllReduce: cudaIpcCloseMemHandle failed: " << cudaGetErrorString(status));
        }
    }
}

void IpcAllReduce::check(cudaStream_t stream) const {
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::uint32_t timed_out = 0;
    Q4TP_CUDA_CHECK(cudaMemcpy(&timed_out, state_.data() + kStateTimedOut, sizeof timed_out, cudaMemcpyDeviceToHost));
    Q4TP_CHECK(timed_out == 0, "rank " << rank_ << ": an IPC all-reduce call waited more than " << timeout_.count()
                                       << " ms for rank " << timed_out - 1
                                       << "'s data and gave up (the ranks' calls are out of step or a rank stopped); "
                                       << "that call's results and every later call's are invalid");
}

}  // namespace q4tp::parallel
