// A CUDA graph for the GPU suites that check that work is capturable and replays like the eager calls.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>

#include "core/base/cuda_check.h"

namespace q4tp::test {

//! Owns a captured graph and its executable; the graph is kept for inspection (graph()).
class CudaGraph {
public:
    CudaGraph() = default;
    //! Captures and instantiates at once (see capture()).
    CudaGraph(cudaStream_t stream, const std::function<void()>& body) { capture(stream, body); }
    ~CudaGraph() { reset(); }
    CudaGraph(const CudaGraph&) = delete;
    CudaGraph& operator=(const CudaGraph&) = delete;

    //! Records what `body` enqueues on `stream` and instantiates it, replacing any earlier graph. Thread-local mode:
    //! NCCL's own threads may make CUDA calls that global mode would forbid during the capture. When body throws,
    //! the capture is ended and dropped first, so the stream is usable again, and the exception goes on to the caller.
    void capture(cudaStream_t stream, const std::function<void()>& body) {
        reset();
        Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        try {
            body();
        } catch (...) {
            cudaGraph_t partial = nullptr;
            if (cudaStreamEndCapture(stream, &partial) == cudaSuccess && partial != nullptr) {
                (void)cudaGraphDestroy(partial);
            }
            (void)cudaGetLastError();  // an invalidated capture's error must not surface at a later launch check
            throw;
        }
        Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph_));
        Q4TP_CUDA_CHECK(cudaGraphInstantiate(&exec_, graph_, 0));
    }

    void launch(cudaStream_t stream) const { Q4TP_CUDA_CHECK(cudaGraphLaunch(exec_, stream)); }
    cudaGraph_t graph() const { return graph_; }

private:
    void reset() {
        if (exec_ != nullptr) (void)cudaGraphExecDestroy(exec_);
        if (graph_ != nullptr) (void)cudaGraphDestroy(graph_);
        exec_ = nullptr;
        graph_ = nullptr;
    }

    cudaGraph_t graph_ = nullptr;
    cudaGraphExec_t exec_ = nullptr;
};

}  // namespace q4tp::test
