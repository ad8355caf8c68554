#include "core/base/logging.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <mutex>

#include "core/base/error.h"

namespace q4tp {
namespace {
std::atomic<LogLevel> g_level{LogLevel::Info};
std::mutex g_mutex;
}  // namespace

const char* to_string(LogLevel level) {
    switch (level) {
        case LogLevel::Debug: return "debug";
        case LogLevel::Info: return "info";
        case LogLevel::Warn: return "warn";
        case LogLevel::Error: return "error";
        case LogLevel::Off: return "off";
    }
    return "?";
}

LogLevel parse_log_level(std::string_view text) {
    std::string lower(text);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    for (LogLevel level : {LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error, LogLevel::Off}) {
        if (lower == to_string(level)) return level;
    }
    Q4TP_THROW("unknown log level '" << text << "' (expected debug, info, warn, error or off)");
}

void set_log_level(LogLevel level) noexcept { g_level.store(level); }
LogLevel log_level() noexcept { return g_level.load(); }

bool log_enabled(LogLevel level) noexcept {
    if (level < g_level.load()) return false;
    // Informational chatter from N identical ranks is noise: only rank 0 speaks below WARN.
    return level >= LogLevel::Warn || process_rank() == 0;
}

void log_message(LogLevel level, const std::string& message) {
    const char* tag = level == LogLevel::Warn ? "warning: " : level == LogLevel::Error ? "error: " : "";
    std::lock_guard<std::mutex> lock(g_mutex);
    std::fprintf(stderr, "[q4tp][r%d] %s%s\n", process_rank(), tag, message.c_str());
    std::fflush(stderr);
}

}  // namespace q4tp
