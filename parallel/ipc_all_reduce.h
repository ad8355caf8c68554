//! IpcAllReduce: the buffers of the one-shot "Lamport" all-reduce (kernels/cuda/fused_all_reduce.h) for the ranks of
//! one node, shared through CUDA IPC. It allocates, poisons and exchanges them and keeps the peer table and the call
//! state in device memory; the kernels themselves are launched by core/model (parallel/ does not see kernels/), from
//! peer_table(), state() and the sizes below. The memory layout is the one fused_all_reduce.h documents.
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/base/device_buffer.h"
#include "parallel/mpi_session.h"

namespace q4tp::parallel {

struct IpcAllReduceOptions {
    std::int64_t max_tokens = 8;  //!< rows one call may reduce, 1..IpcAllReduce::kMaxTokens
    std::int64_t hidden = 0;      //!< fp16 elements per row, a multiple of 8 up to IpcAllReduce::kMaxHidden
    //! A call whose peers' data does not arrive within this time gives up and check() reports it (never a hang).
    std::chrono::milliseconds timeout{10'000};
};

class IpcAllReduce {
   public:
    // The contract with kernels/cuda/fused_all_reduce.h (kLamport*; the allreduce tests assert they agree).
    static constexpr int kMaxRanks = 8;
    static constexpr int kBuffers = 3;
    static constexpr std::int64_t kMaxTokens = 128;
    static constexpr std::int64_t kMaxHidden = 16384;
    static constexpr int kStateWords = 4;
    static constexpr int kStateTimedOut = 3;  //!< state word: 0, or 1 + the rank a call gave up waiting for

    //! Collective over the session's ranks (every rank calls it, with the same options), on the current CUDA device.
    //! Returns nullptr on every rank, with the reason in *unsupported_reason (if given), when the ranks cannot share
    //! memory: another node, a GPU not visible to a peer, two ranks on one GPU, no peer access, more than kMaxRanks
    //! ranks. Throws q4tp::Error on every rank when any rank's options differ or its setup fails (the message names
    //! the rank and the values); the ranks exchange their status first, so none is left waiting.
    static std::unique_ptr<IpcAllReduce> create(const MpiSession& session,
                                                const IpcAllReduceOptions& options,
                                                std::string* unsupported_reason = nullptr);

    //! Waits for the device to finish (a kernel may still push into peers), closes the peers' mappings, frees.
    ~IpcAllReduce();
    IpcAllReduce(const IpcAllReduce&) = delete;
    IpcAllReduce& operator=(const IpcAllReduce&) = delete;
    IpcAllReduce(IpcAllReduce&&) = delete;
    IpcAllReduce& operator=(IpcAllReduce&&) = delete;

    int rank() const noexcept { return rank_; }
    int size() const noexcept { return size_; }
    std::int64_t max_tokens() const noexcept { return max_tokens_; }
    std::int64_t hidden() const noexcept { return hidden_; }
    std::uint64_t timeout_ns() const noexcept { return timeout_ns_; }
    //! Device [size()]: base of every rank's buffers as mapped in this process (this rank's own at rank()).
    void* const* peer_table() const noexcept { return peer_table_.data(); }
    //! Device [kStateWords], zero at setup; the kernels advance it on every call.
    std::uint32_t* state() noexcept { return state_.data(); }

    //! Waits for `stream`, then throws q4tp::Error ("rank r: ... rank p ...") if any call so far gave up waiting for
    //! a peer: the ranks' calls were out of step or a rank stopped. The results of that call and of every later one
    //! are invalid (later calls no longer wait). Not while `stream` is being captured.
    void check(cudaStream_t stream) const;

   private:
    IpcAllReduce() = default;

    int rank_ = 0;
    int size_ = 1;
    std::int64_t max_tokens_ = 0;
    std::int64_t hidden_ = 0;
    std::uint64_t timeout_ns_ = 0;
    std::chrono::milliseconds timeout_{0};
    DeviceBuffer<std::uint16_t> buffers_;  // [kBuffers][size][max_tokens][hidden] fp16, exported to the peers
    DeviceBuffer<void*> peer_table_;       // [size]
    DeviceBuffer<std::uint32_t> state_;    // [kStateWords]
    std::vector<void*> opened_;            // peers' buffers mapped by cudaIpcOpenMemHandle, closed on destruction
};

}  // namespace q4tp::parallel
