// Tokenizer and StreamingDecoder against the real Llama-1/2 tokenizer.model and its 12 reference cases.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "loaders/tokenizer.h"

namespace q4tp::loaders {
namespace {

const std::filesystem::path kFixtureDir = std::filesystem::path(Q4TP_TEST_DATA_DIR) / "llama2-tokenizer";

const Tokenizer& llama_tokenizer() {
    static const Tokenizer tokenizer = Tokenizer::load(kFixtureDir / "tokenizer.model");
    return tokenizer;
}

struct ReferenceCase {
    std::string text;
    std::vector<std::int32_t> ids;
};

std::vector<ReferenceCase> reference_cases() {
    std::ifstream in(kFixtureDir / "cases.json");
    EXPECT_TRUE(in.good()) << "cannot open cases.json";
    const auto json = nlohmann::json::parse(in);
    std::vector<ReferenceCase> cases;
    for (const auto& entry : json) {
        cases.push_back({entry.at("text").get<std::string>(), entry.at("ids").get<std::vector<std::int32_t>>()});
    }
    return cases;
}

//! Pushes ids one by one and returns every push() result followed by the flush() result.
std::vector<std::string> stream_pieces(const Tokenizer& tokenizer, const std::vector<std::int32_t>& ids) {
    StreamingDecoder decoder(tokenizer);
    std::vector<std::string> out;
    for (const std::int32_t id : ids) out.push_back(decoder.push(id));
    out.push_back(decoder.flush());
    return out;
}

std::string concat(const std::vector<std::string>& parts) {
    std::string all;
    for (const auto& p : parts) all += p;
    return all;
}

//! Strict UTF-8 check (no overlongs, surrogates or code points past U+10FFFF): a chunk that passes holds no half
//! character.
bool is_valid_utf8(const std::string& s) {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        std::size_t len = 0;
        std::uint32_t cp = 0;
        if (c < 0x80) {
            len = 1;
            cp = c;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > s.size()) return false;
        for (std::size_t j = 1; j < len; ++j) {
            const auto cc = static_cast<unsigned char>(s[i + j]);
            if ((cc & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        const std::uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return false;
        i += len;
    }
    return true;
}

const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD

TEST(TokenizerTest, Load_ReportsLlamaVocabularyAndSpecialIds) {
    const Tokenizer& tok = llama_tokenizer();
    EXPECT_EQ(tok.vocab_size(), 32000);
    EXPECT_EQ(tok.bos_id(), 1);
    EXPECT_EQ(tok.eos_id(), 2);
    EXPECT_EQ(tok.unk_id(), 0);
    EXPECT_EQ(tok.piece(1), "<s>");
    EXPECT_EQ(tok.piece(2), "</s>");
    EXPECT_TRUE(tok.is_control(1));
    EXPECT_TRUE(tok.is_control(2));
    EXPECT_FALSE(tok.is_control(0));
    EXPECT_FALSE(tok.is_control(29871));
}

TEST(TokenizerTest, ReferenceCases_EncodeDecodeAndStreamMatch) {
    const Tokenizer& tok = llama_tokenizer();
    const auto cases = reference_cases();
    ASSERT_EQ(cases.size(), 12u);
    for (const auto& c : cases) {
        SCOPED_TRACE("text: " + c.text.substr(0, 40));
        ASSERT_FALSE(c.ids.empty());
        EXPECT_EQ(c.ids.front(), 1);
        EXPECT_EQ(tok.encode(c.text, true), c.ids);
        EXPECT_EQ(tok.decode(c.ids), c.text);
        const auto parts = stream_pieces(tok, c.ids);
        EXPECT_EQ(concat(parts), c.text);
        for (const auto& p : parts) EXPECT_TRUE(is_valid_utf8(p)) << "chunk '" << p << "' splits a character";
    }
}

TEST(TokenizerTest, Encode_WithoutBosDropsOnlyTheBos) {
    const Tokenizer& tok = llama_tokenizer();
    for (const auto& c : reference_cases()) {
        const std::vector<std::int32_t> tail(c.ids.begin() + 1, c.ids.end());
        EXPECT_EQ(tok.encode(c.text, false), tail) << c.text.substr(0, 40);
    }
}

TEST(TokenizerTest, Encode_EmptyTextGivesNoPieces) {
    const Tokenizer& tok = llama_tokenizer();
    EXPECT_TRUE(tok.encode("", false).empty());
    EXPECT_EQ(tok.encode("", true), std::vector<std::int32_t>{1});
}

TEST(TokenizerTest, ByteFallback_IdIsByteValuePlusThree) {
    const Tokenizer& tok = llama_tokenizer();
    EXPECT_EQ(tok.piece(13), "<0x0A>");
    EXPECT_EQ(tok.encode("\n", false), (std::vector<std::int32_t>{29871, 13}));
    for (int b = 0; b < 256; ++b) {
        char expected[8];
        std::snprintf(expected, sizeof expected, "<0x%02X>", b);
        ASSERT_EQ(tok.piece(b + 3), expected);
        ASSERT_TRUE(tok.is_byte(b + 3));
        ASSERT_EQ(tok.byte_value(b + 3), static_cast<std::uint8_t>(b));
    }
    EXPECT_FALSE(tok.is_byte(2));
    EXPECT_FALSE(tok.is_byte(259));
    EXPECT_FALSE(tok.byte_value(29871).has_value());
}

TEST(TokenizerTest, Decode_ControlIdsGiveEmptyText) {
    const Tokenizer& tok = llama_tokenizer();
    EXPECT_EQ(tok.decode(std::vector<std::int32_t>{1}), "");
    EXPECT_EQ(tok.decode(std::vector<std::int32_t>{2}), "");
    EXPECT_EQ(tok.decode(std::vector<std::int32_t>{1, 2, 1}), "");
    // Control ids around text change nothing, not even the leading-space strip of the first piece.
    const auto grabbed = tok.encode("grabbed", false);
    std::vector<std::int32_t> wrapped{1};
    wrapped.insert(wrapped.end(), grabbed.begin(), grabbed.end());
    wrapped.push_back(2);
    EXPECT_EQ(tok.decode(wrapped), "grabbed");
}

TEST(TokenizerTest, Decode_UnknownAndInvalidBytesFollowSentencepiece) {
    const Tokenizer& tok = llama_tokenizer();
    EXPECT_EQ(tok.decode(std::vector<std::int32_t>{0}), " \xE2\x81\x87 ");  // " ⁇ "
    // A lone lead byte 0xF0 (id 243) and a stray continuation 0x80 (id 131) each become U+FFFD.
    EXPECT_EQ(tok.decode(std::vector<std::int32_t>{243, 131}), kReplacement + kReplacement);
}

TEST(TokenizerTest, DecodeContinuation_KeepsTheLeadingSpace) {
    const Tokenizer& tok = llama_tokenizer();
    const auto ids = tok.encode("grabbed it", false);
    EXPECT_EQ(tok.decode(ids), "grabbed it");
    EXPECT_EQ(tok.decode_continuation(ids), " grabbed it");
    EXPECT_EQ(tok.decode_continuation(std::vector<std::int32_t>{}), "");
}

TEST(TokenizerTest, OutOfRangeId_ErrorNamesTheId) {
    const Tokenizer& tok = llama_tokenizer();
    for (const std::int32_t bad : {32000, -1, 1234567}) {
        try {
            (void)tok.decode(std::vector<std::int32_t>{1, 450, bad});
            FAIL() << "decode accepted id " << bad;
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("token id " + std::to_string(bad)), std::string::npos) << e.what();
        }
        EXPECT_THROW((void)tok.piece(bad), Error);
        EXPECT_THROW((void)tok.is_control(bad), Error);
        EXPECT_THROW((void)tok.byte_value(bad), Error);
    }
}

TEST(TokenizerTest, Load_MissingFileErrorNamesTheFile) {
    const auto missing = std::filesystem::temp_directory_path() / "q4tp_no_such_dir_7f3a" / "tokenizer.model";
    try {
        (void)Tokenizer::load(missing);
        FAIL() << "load of a missing file succeeded";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(missing.string()), std::string::npos) << e.what();
    }
}

TEST(TokenizerTest, Load_CorruptFileErrorNamesTheFile) {
    std::random_device entropy;
    const auto dir = std::filesystem::path(::testing::TempDir()) /
                     ("q4tp_tokenizer_" + std::to_string(entropy()) + "_" + std::to_string(entropy()));
    std::filesystem::create_directories(dir);
    const auto bad = dir / "tokenizer.model";
    {
        std::ofstream out(bad, std::ios::binary);
        std::mt19937 rng(1234);
        for (int i = 0; i < 4096; ++i) out.put(static_cast<char>(rng() & 0xFF));
    }
    try {
        (void)Tokenizer::load(bad);
        ADD_FAILURE() << "load of random bytes succeeded";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(bad.string()), std::string::npos) << e.what();
    }
    std::filesystem::remove_all(dir);
}

TEST(StreamingDecoderTest, Emoji_EmitsNothingUntilTheFourthByte) {
    const Tokenizer& tok = llama_tokenizer();
    // "🦙" = F0 9F A6 99 = byte ids 243 162 169 156, after BOS and the dummy-prefix "▁".
    const auto parts = stream_pieces(tok, {1, 29871, 243, 162, 169, 156});
    const std::vector<std::string> expected{"", "", "", "", "", "\xF0\x9F\xA6\x99", ""};
    EXPECT_EQ(parts, expected);
}

TEST(StreamingDecoderTest, MixedCharacters_EachEmittedWhenComplete) {
    const Tokenizer& tok = llama_tokenizer();
    // "Ꙋ🦙": Ꙋ = EA 99 8A (ids 237 156 141) completes on its 3rd byte, 🦙 on its 4th.
    const auto parts = stream_pieces(tok, {1, 29871, 237, 156, 141, 243, 162, 169, 156});
    const std::vector<std::string> expected{"", "", "", "", "\xEA\x99\x8A", "", "", "", "\xF0\x9F\xA6\x99", ""};
    EXPECT_EQ(parts, expected);
}

TEST(StreamingDecoderTest, LeadingSpace_StrippedOnlyForTheFirstPiece) {
    const Tokenizer& tok = llama_tokenizer();
    const auto ids = tok.encode("grabbed it", true);
    const auto parts = stream_pieces(tok, ids);
    EXPECT_EQ(concat(parts), "grabbed it");
    EXPECT_EQ(parts.back(), "") << "nothing should wait for flush after a non-byte piece";
    // Every piece after BOS is emitted as soon as it arrives.
    for (std::size_t i = 1; i + 1 < parts.size(); ++i) EXPECT_FALSE(parts[i].empty()) << "push " << i;
}

TEST(StreamingDecoderTest, IncompleteBytes_BecomeReplacementOnNextPieceOrFlush) {
    const Tokenizer& tok = llama_tokenizer();
    // 0xF0 0x9F then a normal piece: both bytes are invalid, and the piece keeps its space (text came first).
    const auto ids = tok.encode("gra", false);
    std::vector<std::int32_t> seq{1, 243, 162};
    seq.insert(seq.end(), ids.begin(), ids.end());
    const auto parts = stream_pieces(tok, seq);
    EXPECT_EQ(parts[1], "");
    EXPECT_EQ(parts[2], "");
    EXPECT_EQ(concat(parts), tok.decode(seq));
    EXPECT_EQ(concat(parts).substr(0, 6), kReplacement + kReplacement);

    StreamingDecoder decoder(tok);
    EXPECT_EQ(decoder.push(237), "");
    EXPECT_EQ(decoder.push(156), "");
    EXPECT_EQ(decoder.flush(), kReplacement + kReplacement);
}

TEST(StreamingDecoderTest, Reset_DropsHeldBytesAndRestartsTheSequence) {
    const Tokenizer& tok = llama_tokenizer();
    StreamingDecoder decoder(tok);
    const auto grabbed = tok.encode("grabbed", false);
    EXPECT_EQ(decoder.push(grabbed[0]), tok.decode(std::vector<std::int32_t>{grabbed[0]}));
    EXPECT_EQ(decoder.push(243), "");
    decoder.reset();
    // A new sequence: the first piece loses its leading space again and the held byte is gone.
    EXPECT_EQ(decoder.push(grabbed[0]), tok.decode(std::vector<std::int32_t>{grabbed[0]}));
    EXPECT_EQ(decoder.flush(), "");
}

TEST(StreamingDecoderTest, OutOfRangeId_ThrowsAndKeepsState) {
    const Tokenizer& tok = llama_tokenizer();
    StreamingDecoder decoder(tok);
    EXPECT_EQ(decoder.push(243), "");
    EXPECT_THROW((void)decoder.push(32000), Error);
    EXPECT_EQ(decoder.push(162), "");
    EXPECT_EQ(decoder.push(169), "");
    EXPECT_EQ(decoder.push(156), "\xF0\x9F\xA6\x99");
}

//! Random id sequences biased towards the hard parts: byte ids (well-formed, truncated and stray UTF-8), the bare
//! "▁" piece, control ids and UNK at any position.
std::vector<std::int32_t> random_sequence(std::mt19937& rng) {
    std::uniform_int_distribution<int> length(0, 24);
    std::uniform_int_distribution<int> kind(0, 9);
    std::uniform_int_distribution<int> any_byte(0, 255);
    std::uniform_int_distribution<int> continuation(0x80, 0xBF);
    std::uniform_int_distribution<int> normal(259, 31999);
    std::uniform_int_distribution<int> control(0, 2);
    std::vector<std::int32_t> ids;
    const int n = length(rng);
    while (static_cast<int>(ids.size()) < n) {
        switch (kind(rng)) {
            case 0:
            case 1: {  // a UTF-8 sequence, sometimes cut short
                const int leads[] = {0xC3, 0xE2, 0xEA, 0xF0, 0xF4, 0xC0, 0xED, 0xF8};
                const int lead = leads[any_byte(rng) % 8];
                const int claimed = lead >= 0xF0 ? 4 : (lead >= 0xE0 ? 3 : 2);
                const int take = 1 + any_byte(rng) % claimed;
                ids.push_back(lead + 3);
                for (int j = 1; j < take; ++j) ids.push_back(continuation(rng) + 3);
                break;
            }
            case 2:
            case 3:
                ids.push_back(any_byte(rng) + 3);
                break;
            case 4:
                ids.push_back(29871);
                break;  // "▁"
            case 5:
                ids.push_back(control(rng));
                break;
            default:
                ids.push_back(normal(rng));
                break;
        }
    }
    return ids;
}

TEST(StreamingDecoderTest, RandomSequences_ConcatenationEqualsDecode) {
    const Tokenizer& tok = llama_tokenizer();
    std::mt19937 rng(20240611);
    StreamingDecoder decoder(tok);  // one decoder for all sequences: flush() must leave it ready for the next
    for (int trial = 0; trial < 3000; ++trial) {
        const auto ids = random_sequence(rng);
        std::string streamed;
        bool chunks_valid = true;
        for (const std::int32_t id : ids) {
            const std::string chunk = decoder.push(id);
            chunks_valid = chunks_valid && is_valid_utf8(chunk);
            streamed += chunk;
        }
        const std::string tail = decoder.flush();
        chunks_valid = chunks_valid && is_valid_utf8(tail);
        streamed += tail;
        ASSERT_EQ(streamed, tok.decode(ids)) << "trial " << trial << ", " << ids.size() << " ids";
        ASSERT_TRUE(chunks_valid) << "trial " << trial << ": a chunk split a character";
    }
}

TEST(StreamingDecoderTest, ReferenceText_FlushHasNothingLeftAfterCompleteText) {
    const Tokenizer& tok = llama_tokenizer();
    const auto cases = reference_cases();
    const auto parts = stream_pieces(tok, cases.back().ids);
    EXPECT_EQ(parts.back(), "");
    std::size_t nonempty = 0;
    for (const auto& p : parts) nonempty += p.empty() ? 0 : 1;
    // Only BOS, incomplete emoji bytes and the bare "▁" after BOS may emit nothing.
    EXPECT_GT(nonempty, parts.size() * 9 / 10);
}

}  // namespace
}  // namespace q4tp::loaders
