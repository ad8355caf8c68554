#include "core/model/stop_strings.h"

#include <algorithm>
#include <utility>

#include "core/base/error.h"

namespace q4tp::model {

namespace {

bool is_continuation(unsigned char byte) {
    return (byte & 0xC0U) == 0x80U;
}

//! Bytes in the UTF-8 sequence that this lead byte starts; 0 when it cannot start one (a continuation byte,
//! the overlong leads C0/C1, or F5..FF beyond U+10FFFF).
std::size_t sequence_length(unsigned char lead) {
    if (lead < 0x80U) {
        return 1;
    }
    if (lead >= 0xC2U && lead <= 0xDFU) {
        return 2;
    }
    if (lead >= 0xE0U && lead <= 0xEFU) {
        return 3;
    }
    if (lead >= 0xF0U && lead <= 0xF4U) {
        return 4;
    }
    return 0;
}

//! Offset of the first byte that breaks UTF-8 (RFC 3629: no overlongs, no surrogates), or npos when valid.
std::size_t first_invalid_utf8(std::string_view text) {
    std::size_t i = 0;
    while (i < text.size()) {
        const auto lead = static_cast<unsigned char>(text[i]);
        const std::size_t length = sequence_length(lead);
        if (length == 0 || text.size() - i < length) {
            return i;
        }
        for (std::size_t j = 1; j < length; ++j) {
            if (!is_continuation(static_cast<unsigned char>(text[i + j]))) {
                return i;
            }
        }
        // The second byte's range rules out overlong 3/4-byte forms, surrogates and code points > U+10FFFF.
        const auto second = static_cast<unsigned char>(length > 1 ? text[i + 1] : 0);
        if ((lead == 0xE0U && second < 0xA0U) || (lead == 0xEDU && second >= 0xA0U) ||
            (lead == 0xF0U && second < 0x90U) || (lead == 0xF4U && second >= 0x90U)) {
            return i;
        }
        i += length;
    }
    return std::string_view::npos;
}

}  // namespace

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) : stop_strings_(std::move(stop_strings)) {
    for (std::size_t i = 0; i < stop_strings_.size(); ++i) {
        const std::string& stop = stop_strings_[i];
        Q4TP_CHECK(!stop.empty(), "stop string #" << i << " is empty: expected at least one character (an empty "
                                                  << "stop string would match before any text)");
        // Valid UTF-8 means a stop string starts on a character boundary, so cutting before it or holding back
        // a prefix of it never splits a character of valid input.
        const std::size_t bad = first_invalid_utf8(stop);
        Q4TP_CHECK(bad == std::string_view::npos,
                   "stop string #" << i << " is not valid UTF-8: bad sequence at byte " << bad);
    }
}

std::size_t StopStringMatcher::hold_start() const {
    const std::size_t size = pending_.size();
    std::size_t start = size;

    // Longest tail that some stop string begins with. pending_ holds no complete stop string, so such a tail
    // is shorter than that stop string.
    std::size_t longest_stop = 0;
    for (const std::string& stop : stop_strings_) {
        longest_stop = std::max(longest_stop, stop.size());
    }
    const std::string_view pending(pending_);
    bool found = false;
    for (std::size_t length = std::min(size, longest_stop); length > 0 && !found; --length) {
        const std::string_view tail = pending.substr(size - length);
        for (const std::string& stop : stop_strings_) {
            if (stop.size() > length && std::string_view(stop).starts_with(tail)) {
                start = size - length;
                found = true;
                break;
            }
        }
    }

    // An incomplete UTF-8 sequence at the end (a multibyte character split between pieces). Invalid bytes are
    // not held: waiting for them to become valid could hold text forever.
    for (std::size_t back = 1; back <= std::min<std::size_t>(size, 4); ++back) {
        const auto byte = static_cast<unsigned char>(pending_[size - back]);
        if (!is_continuation(byte)) {
            const std::size_t length = sequence_length(byte);
            if (length > back) {
                start = std::min(start, size - back);
            }
            break;
        }
    }
    return start;
}

StopStringMatcher::Result StopStringMatcher::push(std::string_view new_text) {
    if (stopped_) {
        return {"", true};
    }
    pending_.append(new_text);

    // First stop string to complete: smallest end, then smallest start (the longest of those ending there).
    // Every match lies inside pending_: emitted text ends before any tail that could start a stop string.
    std::size_t best_start = std::string::npos;
    std::size_t best_end = std::string::npos;
    for (const std::string& stop : stop_strings_) {
        const std::size_t pos = pending_.find(stop);
        if (pos == std::string::npos) {
            continue;
        }
        const std::size_t end = pos + stop.size();
        if (end < best_end || (end == best_end && pos < best_start)) {
            best_start = pos;
            best_end = end;
        }
    }
    if (best_end != std::string::npos) {
        Result result{pending_.substr(0, best_start), true};
        pending_.clear();
        stopped_ = true;
        return result;
    }

    const std::size_t hold = hold_start();
    Result result{pending_.substr(0, hold), false};
    pending_.erase(0, hold);
    return result;
}

std::string StopStringMatcher::flush() {
    std::string rest;
    rest.swap(pending_);
    return rest;
}

void StopStringMatcher::reset() {
    pending_.clear();
    stopped_ = false;
}

}  // namespace q4tp::model
