//! q4tp::Error and the Q4TP_CHECK family: library errors are exceptions carrying file:line and rank.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace q4tp {

//! Every error raised inside the library. what() is one line: "<message> [file:line, rank r]".
class Error : public std::runtime_error {
public:
    Error(const std::string& message, const char* file, int line);

    //! The message without the location suffix (what a user needs to read).
    const std::string& message() const noexcept { return message_; }
    const char* file() const noexcept { return file_; }
    int line() const noexcept { return line_; }

private:
    std::string message_;
    const char* file_;
    int line_;
};

//! Rank of this process in the job (0 when not under MPI). Set once by launch/ after MPI init.
void set_process_rank(int rank) noexcept;
int process_rank() noexcept;

namespace detail {
[[noreturn]] void throw_error(const std::string& message, const char* file, int line);
}  // namespace detail

}  // namespace q4tp

//! Throws q4tp::Error with a streamed message: Q4TP_THROW("tensor " << name << " missing").
#define Q4TP_THROW(msg_stream)                                          \
    do {                                                                \
        std::ostringstream q4tp_oss_;                                   \
        q4tp_oss_ << msg_stream;                                        \
        ::q4tp::detail::throw_error(q4tp_oss_.str(), __FILE__, __LINE__); \
    } while (0)

//! Checks a precondition; the message says what was expected and what was found.
#define Q4TP_CHECK(cond, msg_stream)         \
    do {                                     \
        if (!(cond)) {                       \
            Q4TP_THROW(msg_stream);          \
        }                                    \
    } while (0)

//! Generic status check: evaluates expr once, compares with ok, throws with to_string(status).
//! The CUDA, cuBLAS, NCCL and MPI variants are all built from this one.
#define Q4TP_CHECK_GEN(expr, ok, to_string_fn)                                                    \
    do {                                                                                          \
        auto q4tp_status_ = (expr);                                                               \
        if (q4tp_status_ != (ok)) {                                                               \
            Q4TP_THROW(#expr << " failed: " << to_string_fn(q4tp_status_));                       \
        }                                                                                         \
    } while (0)
