//! Q4TP_NCCL_CHECK: private to parallel/ (it includes <nccl.h>, which no other layer may see).
#pragma once

#include <nccl.h>

#include <string>

#include "core/base/error.h"

namespace q4tp::parallel::detail {

//! The result's name plus NCCL's last detailed message (which says which peer or transport failed).
inline std::string nccl_error_string(ncclResult_t result) {
    std::string text = ncclGetErrorString(result);
    const char* last = ncclGetLastError(nullptr);
    if (last != nullptr && last[0] != '\0') text += std::string(" (") + last + ")";
    return text;
}

}  // namespace q4tp::parallel::detail

#define Q4TP_NCCL_CHECK(expr) Q4TP_CHECK_GEN(expr, ncclSuccess, ::q4tp::parallel::detail::nccl_error_string)
