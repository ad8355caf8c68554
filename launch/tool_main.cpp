#include "launch/tool_main.h"

#include <cstdio>
#include <exception>
#include <new>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "launch/cli.h"
#include "launch/job.h"

namespace q4tp::launch {

namespace {

int run_body(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body) {
    try {
        return body(argc, argv);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "%s: %s\n", tool, e.what());
        return 2;
    } catch (const Error& e) {
        // Under mpirun one failing rank must end every rank (parallel/failure.h): fail() logs "rank r: reason" and
        // aborts the job; it returns at size 1. The job is still alive here (Job::start), so the reason is said.
        if (Job* job = Job::current()) job->fail(e);
        // The message names the file, tensor or value at fault; the source location is for bug reports
        // and shows with --log-level debug.
        std::fprintf(stderr, "%s: error: %s\n", tool, e.message().c_str());
        Q4TP_LOG_DEBUG("raised at " << e.what());
        return 1;
    } catch (const std::bad_alloc& e) {
        if (Job* job = Job::current()) job->fail(e);
        std::fprintf(stderr, "%s: error: out of host memory\n", tool);
        return 1;
    } catch (const std::exception& e) {
        if (Job* job = Job::current()) job->fail(e);
        std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
        return 1;
    }
}

}  // namespace

int run_tool(const char* tool, int argc, char** argv, const std::function<int(int, char**)>& body) {
    const int status = run_body(tool, argc, argv, body);
    Job::end();  // after any error was reported, so every rank's reason is out before MPI goes down
    return status;
}

}  // namespace q4tp::launch
