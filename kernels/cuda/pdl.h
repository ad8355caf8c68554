//! The process-wide switch for programmatic dependent launch (PDL): whether kernels/cuda launches its small kernels
//! with the programmatic-stream-serialization attribute (kernels/cuda/common/pdl.cuh).
#pragma once

namespace q4tp::kernels::cuda {

//! True when launches use PDL: PDL is supported (the current device at the first call is sm_90 or newer and the
//! library's kernels run code compiled for compute_90 or newer) AND it is requested. The request defaults to on
//! unless the environment variable Q4TP_PDL is "0"; support and the environment are looked at once and cached.
//! Never throws; false without a usable GPU.
bool pdl_enabled();

//! Requests PDL on or off for every later launch (graphs already captured keep their edges). Where PDL is not
//! supported pdl_enabled() stays false whatever is requested.
void set_pdl_enabled(bool enabled);

}  // namespace q4tp::kernels::cuda
