#include "core/base/cuda_stream.h"

#include <utility>

#include "core/base/cuda_check.h"
#include "core/base/logging.h"

namespace q4tp {

CudaStream::CudaStream() { Q4TP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }

CudaStream::~CudaStream() {
    if (stream_ && cudaStreamDestroy(stream_) != cudaSuccess) Q4TP_LOG_ERROR("cudaStreamDestroy failed");
}

CudaStream::CudaStream(CudaStream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}

CudaStream& CudaStream::operator=(CudaStream&& other) noexcept {
    if (this != &other) {
        if (stream_) (void)cudaStreamDestroy(stream_);
        stream_ = std::exchange(other.stream_, nullptr);
    }
    return *this;
}

void CudaStream::synchronize() const { Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

CudaEvent::CudaEvent(bool timing) {
    Q4TP_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

CudaEvent::~CudaEvent() {
    if (event_ && cudaEventDestroy(event_) != cudaSuccess) Q4TP_LOG_ERROR("cudaEventDestroy failed");
}

CudaEvent::CudaEvent(CudaEvent&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}

CudaEvent& CudaEvent::operator=(CudaEvent&& other) noexcept {
    if (this != &other) {
        if (event_) (void)cudaEventDestroy(event_);
        event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
}

void CudaEvent::record(cudaStream_t stream) { Q4TP_CUDA_CHECK(cudaEventRecord(event_, stream)); }
void CudaEvent::synchronize() const { Q4TP_CUDA_CHECK(cudaEventSynchronize(event_)); }

float CudaEvent::elapsed_ms_since(const CudaEvent& start) const {
    float ms = 0.0f;
    Q4TP_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event_, event_));
    return ms;
}

}  // namespace q4tp
