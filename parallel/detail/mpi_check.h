//! Q4TP_MPI_CHECK: private to parallel/ (it includes <mpi.h>, which no other layer may see).
#pragma once

#include <mpi.h>

#include <string>

#include "core/base/error.h"

namespace q4tp::parallel::detail {

//! MPI's own text for an error code, e.g. "MPI_ERR_ROOT: invalid root".
inline std::string mpi_error_string(int code) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
    return std::string(text, static_cast<std::size_t>(length));
}

}  // namespace q4tp::parallel::detail

//! Throws q4tp::Error when an MPI call does not return MPI_SUCCESS. Only meaningful on communicators
//! whose error handler is MPI_ERRORS_RETURN (the default, MPI_ERRORS_ARE_FATAL, aborts before returning).
#define Q4TP_MPI_CHECK(expr) Q4TP_CHECK_GEN(expr, MPI_SUCCESS, ::q4tp::parallel::detail::mpi_error_string)
