// lm_head through cuBLAS: no kernel of our own, because a [m][H] x [H][V] product with V in the tens of
// thousands is a plain dense GEMM that cuBLAS already runs at the memory roofline.
//
// Layout. cuBLAS is column-major; every row-major [r][c] array is a column-major c x r matrix with leading
// dimension c. So weight [V][H] is the column-major H x V matrix Wc (ld H), x [m][H] is the H x m matrix Xc
// (ld H), and logits [m][V] is the V x m matrix Lc (ld V). The product we want, logits = x . weight^T, reads
// Lc = Wc^T . Xc: one GemmEx with op(A) = T on the weight and op(B) = N on the activations, no copies.
//
// Precision. fp16 inputs (products are exact in fp32), fp32 accumulation (CUBLAS_COMPUTE_32F) and fp32 output,
// so the sampler sees logits rounded once, not through fp16.
//
// Graph capture. cublasSetStream resets the workspace to cuBLAS's internal pool, which allocates lazily (an
// allocation cannot be captured, and each capture would leak a new one). The launcher therefore sets the
// caller's workspace after the stream, on every call.

#include "kernels/cuda/lm_head.h"

#include <climits>

#include "core/base/cuda_check.h"
#include "core/base/error.h"

namespace q4tp::kernels::cuda {

// ---------------------------------------------------------------------------------------------------------
// Launcher
// ---------------------------------------------------------------------------------------------------------

void lm_head(cublasHandle_t handle, const LmHeadParams& p, cudaStream_t stream) {
    Q4TP_CHECK(handle != nullptr, "lm_head: null cuBLAS handle");
    Q4TP_CHECK(p.x && p.weight && p.logits, "lm_head: null pointer (x " << p.x << ", weight " << p.weight
                                                                        << ", logits " << p.logits << ")");
    // cuBLAS takes int sizes and leading dimensions.
    Q4TP_CHECK(p.m >= 1 && p.m <= INT_MAX, "lm_head: m = " << p.m << ", expected 1 <= m <= " << INT_MAX);
    Q4TP_CHECK(p.hidden >= 1 && p.hidden <= INT_MAX,
               "lm_head: hidden = " << p.hidden << ", expected 1 <= hidden <= " << INT_MAX);
    Q4TP_CHECK(p.vocab >= 1 && p.vocab <= INT_MAX,
               "lm_head: vocab = " << p.vocab << ", expected 1 <= vocab <= " << INT_MAX);
    Q4TP_CHECK((p.workspace == nullptr) == (p.workspace_bytes == 0),
               "lm_head: workspace " << p.workspace << " with workspace_bytes " << p.workspace_bytes
                                     << ", expected both set or both empty");
    Q4TP_CHECK(reinterpret_cast<std::uintptr_t>(p.workspace) % kCublasWorkspaceAlignment == 0,
               "lm_head: workspace " << p.workspace << " is not aligned to " << kCublasWorkspaceAlignment
                                     << " bytes (cublasSetWorkspace requires it)");

    Q4TP_CUBLAS_CHECK(cublasSetStream(handle, stream));
    Q4TP_CUBLAS_CHECK(cublasSetWorkspace(handle, p.workspace, p.workspace_bytes));
    // alpha and beta below live on the host; a handle left in device pointer mode would read them as device
    // addresses.
    Q4TP_CUBLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));

    const float alpha = 1.0f;
    const float beta = 0.0f;
    const int m = static_cast<int>(p.m);
    const int hidden = static_cast<int>(p.hidden);
    const int vocab = static_cast<int>(p.vocab);
    Q4TP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, vocab, m, hidden, &alpha, p.weight, CUDA_R_16F,
                                   hidden, p.x, CUDA_R_16F, hidden, &beta, p.logits, CUDA_R_32F, vocab,
                                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    Q4TP_CUDA_CHECK_LAUNCH();
}

}  // namespace q4tp::kernels::cuda
