//! The process boundary shared by every tool: runs the tool's body, turns any error into one line on
//! stderr ("q4tp-generate: error: ...") and an exit code: 0 ok, 1 runtime error, 2 usage error.
#pragma once

#include <functional>

namespace q4tp::launch {

//! Runs body(argc, argv) and maps exceptions to exit codes; never lets an exception escape main. Under mpirun an
//! error ends every rank, saying which rank failed and why (Job::fail), before the job started by Job::start() ends.
int run_tool(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body);

}  // namespace q4tp::launch
