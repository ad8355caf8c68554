#include "core/base/error.h"

#include <atomic>
#include <cstring>

namespace q4tp {
namespace {
std::atomic<int> g_rank{0};

const char* base_name(const char* path) {
    const char* slash = std::strrchr(path, '/');
    return slash ? slash + 1 : path;
}

std::string with_location(const std::string& message, const char* file, int line) {
    std::ostringstream oss;
    oss << message << " [" << base_name(file) << ":" << line << ", rank " << g_rank.load() << "]";
    return oss.str();
}
}  // namespace

Error::Error(const std::string& message, const char* file, int line)
    : std::runtime_error(with_location(message, file, line)), message_(message), file_(file), line_(line) {}

void set_process_rank(int rank) noexcept { g_rank.store(rank); }
int process_rank() noexcept { return g_rank.load(); }

namespace detail {
void throw_error(const std::string& message, const char* file, int line) { throw Error(message, file, line); }
}  // namespace detail

}  // namespace q4tp
