//! Llama-1/2 tokenizer over libsentencepiece (formats.md §5) and an incremental decoder for streamed output.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace q4tp::loaders {

//! A loaded sentencepiece model. Move-only; a moved-from Tokenizer may only be destroyed or assigned to.
class Tokenizer {
   public:
    //! Loads a tokenizer.model file; a missing or unparsable file throws q4tp::Error naming it.
    static Tokenizer load(const std::filesystem::path& model_file);

    ~Tokenizer();
    Tokenizer(Tokenizer&& other) noexcept;
    Tokenizer& operator=(Tokenizer&& other) noexcept;
    Tokenizer(const Tokenizer&) = delete;
    Tokenizer& operator=(const Tokenizer&) = delete;

    //! Hugging Face convention (§5.2): BOS first when add_bos, never EOS; empty text gives no pieces.
    std::vector<std::int32_t> encode(std::string_view text, bool add_bos) const;
    //! sentencepiece's Decode (§5.3): CONTROL ids give "", byte runs are UTF-8 decoded (invalid bytes -> U+FFFD),
    //! and the first piece loses one leading "▁".
    std::string decode(std::span<const std::int32_t> ids) const;
    //! Decodes ids as the continuation of a sequence that already produced text, so no leading space is stripped:
    //! decode(a + b) == decode(a) + decode_continuation(b) whenever a holds a non-CONTROL id and does not end
    //! inside a run of byte ids that b continues.
    std::string decode_continuation(std::span<const std::int32_t> ids) const;

    std::int32_t vocab_size() const noexcept;
    std::int32_t bos_id() const noexcept;
    std::int32_t eos_id() const noexcept;
    std::int32_t unk_id() const noexcept;
    //! The raw piece text, e.g. "▁the" or "<0x0A>".
    std::string piece(std::int32_t id) const;
    bool is_control(std::int32_t id) const;
    bool is_byte(std::int32_t id) const;
    //! The byte a byte-fallback piece stands for ("<0x0A>" -> 0x0A); nullopt for other pieces.
    std::optional<std::uint8_t> byte_value(std::int32_t id) const;
    //! Throws q4tp::Error naming the id unless 0 <= id < vocab_size().
    void check_id(std::int32_t id) const;
    const std::filesystem::path& path() const noexcept;

   private:
    struct Impl;
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

//! Turns ids arriving one at a time into text, emitting only complete UTF-8 characters.
//!
//! Invariant: for any id sequence, the concatenation of every push() and the final flush() equals
//! tokenizer.decode(all ids). It holds because sentencepiece decodes left to right and a piece's text depends on
//! nothing after it, except that a run of byte ids is UTF-8 decoded as a whole. So the decoder holds back only the
//! trailing byte ids that could still become part of one character (a lead byte plus fewer continuation bytes than
//! it announces, at most 3 ids), emits the decoded text of everything before them and forgets those ids. The only
//! state decode carries across that cut is "has anything visible been produced yet" (the first piece loses its
//! leading "▁"), which is kept as a flag. Each push() therefore decodes at most 4 ids: O(1) per id.
//! The tokenizer must outlive the decoder and must not be moved from while it is in use.
class StreamingDecoder {
   public:
    explicit StreamingDecoder(const Tokenizer& tokenizer);

    //! Adds one id and returns the text it completes (often "", e.g. for BOS or the first bytes of an emoji).
    //! An id out of range throws q4tp::Error naming it and leaves the decoder unchanged.
    std::string push(std::int32_t id);
    //! Ends the sequence: returns the text of any held-back bytes (U+FFFD for each incomplete byte, as decode
    //! gives) and resets the decoder for a new sequence.
    std::string flush();
    //! Drops held-back bytes without emitting them and starts a new sequence.
    void reset() noexcept;

   private:
    //! Number of trailing ids in pending_ that form an incomplete UTF-8 character and must wait for more bytes.
    std::size_t incomplete_tail() const;
    std::string decode_pending(std::span<const std::int32_t> ids) const;

    const Tokenizer* tokenizer_;
    std::vector<std::int32_t> pending_;  // ids not yet emitted: [0, 4] ids, held bytes plus the newest id
    bool only_control_so_far_ = true;    // every emitted id was CONTROL: the next piece still loses its "▁"
};

}  // namespace q4tp::loaders
