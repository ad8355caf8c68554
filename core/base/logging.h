//! Leveled, rank-prefixed logging: Q4TP_LOG_INFO("loaded " << n << " tensors").
//! INFO and DEBUG print on rank 0 only; WARN and ERROR on every rank. All go to stderr so that
//! stdout carries only a tool's product (generated text, tables). The level is checked before
//! the message is formatted, so a disabled DEBUG line costs one comparison.
#pragma once

#include <sstream>
#include <string>
#include <string_view>

namespace q4tp {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

const char* to_string(LogLevel level);
//! Parses "debug", "info", "warn", "error", "off" (case-insensitive); throws q4tp::Error otherwise.
LogLevel parse_log_level(std::string_view text);

void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;
//! True when a message of this level would be printed by this rank.
bool log_enabled(LogLevel level) noexcept;
void log_message(LogLevel level, const std::string& message);

}  // namespace q4tp

#define Q4TP_LOG(level, msg_stream)                        \
    do {                                                   \
        if (::q4tp::log_enabled(level)) {                  \
            std::ostringstream q4tp_log_oss_;              \
            q4tp_log_oss_ << msg_stream;                   \
            ::q4tp::log_message(level, q4tp_log_oss_.str()); \
        }                                                  \
    } while (0)

#define Q4TP_LOG_DEBUG(msg_stream) Q4TP_LOG(::q4tp::LogLevel::Debug, msg_stream)
#define Q4TP_LOG_INFO(msg_stream) Q4TP_LOG(::q4tp::LogLevel::Info, msg_stream)
#define Q4TP_LOG_WARN(msg_stream) Q4TP_LOG(::q4tp::LogLevel::Warn, msg_stream)
#define Q4TP_LOG_ERROR(msg_stream) Q4TP_LOG(::q4tp::LogLevel::Error, msg_stream)
