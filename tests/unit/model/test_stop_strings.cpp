#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "core/base/error.h"
#include "core/model/stop_strings.h"

namespace q4tp::model {
namespace {

struct Streamed {
    std::vector<std::string> emits;  //!< one per push, then the flush when not stopped
    std::string text;                //!< everything emitted, concatenated
    bool stopped = false;
};

Streamed stream(StopStringMatcher& matcher, const std::vector<std::string>& pieces) {
    Streamed out;
    for (const std::string& piece : pieces) {
        const StopStringMatcher::Result r = matcher.push(piece);
        out.emits.push_back(r.emit);
        out.text += r.emit;
        if (r.stopped) {
            out.stopped = true;
            break;
        }
    }
    if (!out.stopped) {
        out.emits.push_back(matcher.flush());
        out.text += out.emits.back();
    }
    return out;
}

//! Whole-text reference: cut before the stop string whose last byte comes first (the longest if several end
//! there), found by checking every end position in turn.
Streamed reference(const std::string& text, const std::vector<std::string>& stops) {
    for (std::size_t end = 1; end <= text.size(); ++end) {
        std::size_t best_length = 0;
        for (const std::string& stop : stops) {
            if (stop.size() <= end && stop.size() > best_length &&
                std::string_view(text).substr(end - stop.size(), stop.size()) == stop) {
                best_length = stop.size();
            }
        }
        if (best_length > 0) {
            return {{}, text.substr(0, end - best_length), true};
        }
    }
    return {{}, text, false};
}

//! True when text is a sequence of complete UTF-8 characters (structure only; the inputs here are valid).
bool complete_utf8(std::string_view text) {
    std::size_t i = 0;
    while (i < text.size()) {
        const auto lead = static_cast<unsigned char>(text[i]);
        std::size_t length = 0;
        if (lead < 0x80U) {
            length = 1;
        } else if ((lead & 0xE0U) == 0xC0U) {
            length = 2;
        } else if ((lead & 0xF0U) == 0xE0U) {
            length = 3;
        } else if ((lead & 0xF8U) == 0xF0U) {
            length = 4;
        } else {
            return false;
        }
        if (text.size() - i < length) {
            return false;
        }
        for (std::size_t j = 1; j < length; ++j) {
            if ((static_cast<unsigned char>(text[i + j]) & 0xC0U) != 0x80U) {
                return false;
            }
        }
        i += length;
    }
    return true;
}

TEST(StopStringMatcherTest, SinglePiece_EmitsTextBeforeStop) {
    StopStringMatcher matcher({"STOP"});
    const auto r = matcher.push("Hello world. STOP and more");
    EXPECT_EQ(r.emit, "Hello world. ");
    EXPECT_TRUE(r.stopped);
    EXPECT_TRUE(matcher.stopped());
}

TEST(StopStringMatcherTest, NoStopInText_EmitsEverythingNotAmbiguous) {
    StopStringMatcher matcher({"STOP"});
    const auto r = matcher.push("nothing to see");
    EXPECT_EQ(r.emit, "nothing to see");
    EXPECT_FALSE(r.stopped);
    EXPECT_EQ(matcher.flush(), "");
}

TEST(StopStringMatcherTest, SplitAcrossPieces_HeldThenStopped) {
    StopStringMatcher matcher({"STOP"});
    const Streamed s = stream(matcher, {"abc S", "TO", "P def"});
    EXPECT_EQ(s.emits, (std::vector<std::string>{"abc ", "", ""}));
    EXPECT_EQ(s.text, "abc ");
    EXPECT_TRUE(s.stopped);
}

TEST(StopStringMatcherTest, FalseStart_ReleasesHeldText) {
    StopStringMatcher matcher({"Hello"});
    const auto first = matcher.push("Hel");
    EXPECT_EQ(first.emit, "");
    EXPECT_FALSE(first.stopped);
    const auto second = matcher.push("p");
    EXPECT_EQ(second.emit, "Help");
    EXPECT_FALSE(second.stopped);
    EXPECT_EQ(matcher.flush(), "");
}

TEST(StopStringMatcherTest, SelfOverlappingStop_HoldsOnlyPossiblePrefix) {
    StopStringMatcher matcher({"aab"});
    const Streamed s = stream(matcher, {"a", "a", "a", "b", "tail"});
    EXPECT_EQ(s.emits, (std::vector<std::string>{"", "", "a", ""}));
    EXPECT_TRUE(s.stopped);
}

TEST(StopStringMatcherTest, TwoStopStrings_FirstToCompleteWins) {
    {
        StopStringMatcher matcher({"###", "User:"});
        const Streamed s = stream(matcher, {"Answer: 42\nUs", "er: hi ###"});
        EXPECT_EQ(s.text, "Answer: 42\n");
        EXPECT_TRUE(s.stopped);
    }
    {
        StopStringMatcher matcher({"###", "User:"});
        const Streamed s = stream(matcher, {"Answer: 42 #", "## User: hi"});
        EXPECT_EQ(s.text, "Answer: 42 ");
        EXPECT_TRUE(s.stopped);
    }
    // "bc" completes before "abcd" does, however the text is split.
    for (const auto& pieces : std::vector<std::vector<std::string>>{{"abcd"}, {"a", "b", "c", "d"}, {"ab", "cd"}}) {
        StopStringMatcher matcher({"abcd", "bc"});
        const Streamed s = stream(matcher, pieces);
        EXPECT_EQ(s.text, "a");
        EXPECT_TRUE(s.stopped);
    }
}

TEST(StopStringMatcherTest, StopsEndingTogether_LongestWins) {
    StopStringMatcher matcher({"b", "ab"});
    const Streamed s = stream(matcher, {"xa", "b"});
    EXPECT_EQ(s.text, "x");
    EXPECT_TRUE(s.stopped);
}

TEST(StopStringMatcherTest, Flush_ReturnsHeldTextAtEnd) {
    StopStringMatcher matcher({"User:"});
    const auto r = matcher.push("some text Us");
    EXPECT_EQ(r.emit, "some text ");
    EXPECT_FALSE(r.stopped);
    EXPECT_EQ(matcher.flush(), "Us");
    EXPECT_EQ(matcher.flush(), "");
}

TEST(StopStringMatcherTest, AfterStop_IgnoresTextUntilReset) {
    StopStringMatcher matcher({"</s>"});
    EXPECT_TRUE(matcher.push("done</s>").stopped);
    const auto more = matcher.push("ignored");
    EXPECT_EQ(more.emit, "");
    EXPECT_TRUE(more.stopped);
    EXPECT_EQ(matcher.flush(), "");

    matcher.reset();
    EXPECT_FALSE(matcher.stopped());
    const auto fresh = matcher.push("again<");
    EXPECT_EQ(fresh.emit, "again");
    EXPECT_FALSE(fresh.stopped);
}

TEST(StopStringMatcherTest, NoStopStrings_PassesTextThrough) {
    StopStringMatcher matcher({});
    EXPECT_EQ(matcher.push("abc").emit, "abc");
    EXPECT_EQ(matcher.push("").emit, "");
    EXPECT_EQ(matcher.flush(), "");
}

TEST(StopStringMatcherTest, Utf8_MultibyteTextIntact) {
    StopStringMatcher matcher({"。"});
    const Streamed s = stream(matcher, {"日本", "語。次の文"});
    EXPECT_EQ(s.text, "日本語");
    EXPECT_TRUE(s.stopped);

    // The stop string's bytes arrive one at a time.
    StopStringMatcher arrow({"→"});
    const std::string arrow_bytes = "→";
    ASSERT_EQ(arrow_bytes.size(), 3U);
    const Streamed a =
        stream(arrow, {"é ", arrow_bytes.substr(0, 1), arrow_bytes.substr(1, 1), arrow_bytes.substr(2, 1), "x"});
    EXPECT_EQ(a.text, "é ");
    EXPECT_TRUE(a.stopped);
}

TEST(StopStringMatcherTest, Utf8_SplitCharacterHeldUntilComplete) {
    StopStringMatcher matcher({});
    const std::string e_acute = "é";  // C3 A9
    EXPECT_EQ(matcher.push("caf" + e_acute.substr(0, 1)).emit, "caf");
    EXPECT_EQ(matcher.push(e_acute.substr(1) + "!").emit, e_acute + "!");

    // A character sharing its lead byte with the stop string is released once its second byte shows.
    StopStringMatcher enye({"ñ"});
    const std::string o_acute = "ó";  // C3 B3; "ñ" is C3 B1
    EXPECT_EQ(enye.push(o_acute.substr(0, 1)).emit, "");
    const auto r = enye.push(o_acute.substr(1));
    EXPECT_EQ(r.emit, o_acute);
    EXPECT_FALSE(r.stopped);
}

TEST(StopStringMatcherTest, InvalidStopStrings_Refused) {
    const auto message_of = [](std::vector<std::string> stops) {
        try {
            StopStringMatcher matcher(std::move(stops));
        } catch (const Error& e) {
            return e.message();
        }
        return std::string("<no q4tp::Error thrown>");
    };
    EXPECT_NE(message_of({"ok", ""}).find("stop string #1 is empty"), std::string::npos);
    EXPECT_NE(message_of({"\xFF"}).find("stop string #0 is not valid UTF-8"), std::string::npos);
    EXPECT_NE(message_of({"a\xC3"}).find("at byte 1"), std::string::npos);               // truncated
    EXPECT_NE(message_of({"\xC0\xAF"}).find("not valid UTF-8"), std::string::npos);      // overlong '/'
    EXPECT_NE(message_of({"\xED\xA0\x80"}).find("not valid UTF-8"), std::string::npos);  // surrogate
    EXPECT_NO_THROW(StopStringMatcher({"\xF0\x9F\x98\x80", "x"}));                       // U+1F600
}

TEST(StopStringMatcherTest, RandomSplits_MatchWholeTextReference) {
    // Multibyte characters mixed in so that random byte-level splits cut characters too.
    const std::vector<std::string> alphabet = {"a", "b", "c", " ", "é", "日", "\xF0\x9F\x98\x80"};
    std::mt19937 rng(20240601);
    const auto random_text = [&](std::size_t length) {
        std::string out;
        for (std::size_t i = 0; i < length; ++i) {
            out += alphabet[rng() % alphabet.size()];
        }
        return out;
    };
    int stopped_runs = 0;
    for (int run = 0; run < 2000; ++run) {
        std::vector<std::string> stops;
        const std::size_t stop_count = rng() % 3;
        for (std::size_t i = 0; i < stop_count; ++i) {
            stops.push_back(random_text(1 + rng() % 3));
        }
        const std::string text = random_text(rng() % 40);
        std::vector<std::string> pieces;
        for (std::size_t pos = 0; pos < text.size();) {
            const std::size_t length = std::min<std::size_t>(1 + rng() % 6, text.size() - pos);
            pieces.push_back(text.substr(pos, length));
            pos += length;
        }

        StopStringMatcher matcher(stops);
        const Streamed got = stream(matcher, pieces);
        const Streamed want = reference(text, stops);
        ASSERT_EQ(got.text, want.text) << "run " << run << " text '" << text << "'";
        ASSERT_EQ(got.stopped, want.stopped) << "run " << run;
        for (const std::string& emit : got.emits) {
            ASSERT_TRUE(complete_utf8(emit)) << "run " << run << " emitted a split character";
        }
        stopped_runs += got.stopped ? 1 : 0;
    }
    // Both outcomes must be exercised for the comparison to mean anything.
    EXPECT_GT(stopped_runs, 200);
    EXPECT_LT(stopped_runs, 1800);
}

}  // namespace
}  // namespace q4tp::model
