//! Move-only RAII owners of a CUDA stream and a CUDA event. Destructors log failures, never throw.
#pragma once

#include <cuda_runtime_api.h>

namespace q4tp {

class CudaStream {
public:
    //! Creates a non-blocking stream (it does not synchronize with the legacy default stream).
    CudaStream();
    ~CudaStream();
    CudaStream(const CudaStream&) = delete;
    CudaStream& operator=(const CudaStream&) = delete;
    CudaStream(CudaStream&& other) noexcept;
    CudaStream& operator=(CudaStream&& other) noexcept;

    cudaStream_t get() const noexcept { return stream_; }
    void synchronize() const;

private:
    cudaStream_t stream_ = nullptr;
};

class CudaEvent {
public:
    explicit CudaEvent(bool timing = true);
    ~CudaEvent();
    CudaEvent(const CudaEvent&) = delete;
    CudaEvent& operator=(const CudaEvent&) = delete;
    CudaEvent(CudaEvent&& other) noexcept;
    CudaEvent& operator=(CudaEvent&& other) noexcept;

    cudaEvent_t get() const noexcept { return event_; }
    void record(cudaStream_t stream);
    void synchronize() const;
    //! Milliseconds from start to this event (both recorded with timing enabled).
    float elapsed_ms_since(const CudaEvent& start) const;

private:
    cudaEvent_t event_ = nullptr;
};

}  // namespace q4tp
