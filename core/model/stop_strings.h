//! Stop strings on streamed text: holds back what could still become a stop string, cuts at the first one.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace q4tp::model {

//! Fed the decoded text piece by piece, returns what may be shown now.
//!
//! Generation stops at the first stop string to complete (the one whose last byte arrives first; among those
//! ending at the same byte, the longest). The text before it is emitted, the stop string itself is not (like
//! llama.cpp's server). Because the rule is stated on the whole text, the concatenated output does not depend
//! on how the text was split into pieces.
//!
//! Held back, never emitted early: the longest tail that is a proper prefix of some stop string, and an
//! incomplete UTF-8 sequence at the very end, so every emitted string ends on a character boundary.
class StopStringMatcher {
   public:
    struct Result {
        std::string emit;      //!< text that can be shown now (may be empty)
        bool stopped = false;  //!< a stop string completed; emit holds the last text before it
    };

    //! Throws q4tp::Error on an empty stop string or one that is not valid UTF-8. No stop strings is allowed:
    //! the matcher then only holds back incomplete UTF-8.
    explicit StopStringMatcher(std::vector<std::string> stop_strings);

    //! Appends new_text. Once stopped, further text is ignored and {"", true} is returned.
    Result push(std::string_view new_text);
    //! Generation ended without a stop string: returns everything held back and clears it. "" once stopped.
    std::string flush();
    //! Forgets held text and the stopped state, for the next request with the same stop strings.
    void reset();

    bool stopped() const { return stopped_; }
    const std::vector<std::string>& stop_strings() const { return stop_strings_; }

   private:
    //! Start of the tail of pending_ that must be held back.
    std::size_t hold_start() const;

    std::vector<std::string> stop_strings_;
    std::string pending_;  //!< text received but not yet emitted; never contains a complete stop string
    bool stopped_ = false;
};

}  // namespace q4tp::model
