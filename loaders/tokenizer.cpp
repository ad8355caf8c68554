//! Tokenizer: a thin, checked layer over sentencepiece::SentencePieceProcessor, plus the streaming decoder.
#include "loaders/tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <system_error>
#include <utility>

#include "core/base/error.h"

namespace q4tp::loaders {

// sentencepiece speaks `int`, the engine's token ids are int32_t: the copies between them must be exact.
static_assert(sizeof(int) == sizeof(std::int32_t));

// ---------------------------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
    std::filesystem::path path;
    sentencepiece::SentencePieceProcessor processor;
    std::int32_t vocab_size = 0;
    std::int32_t bos_id = -1;
    std::int32_t eos_id = -1;
    std::int32_t unk_id = -1;
    std::vector<std::int16_t> byte_of_id;  // [vocab_size]: the byte a BYTE piece stands for, -1 for other pieces
    std::vector<bool> control;             // [vocab_size]: CONTROL pieces (<s>, </s>) decode to ""
    // decode_continuation() decodes [context_id] + ids and drops context_text: a leading piece with visible text
    // switches off sentencepiece's strip-the-first-"▁" rule (§5.3) for everything after it.
    std::int32_t context_id = -1;
    std::string context_text;

    std::string decode_checked(const std::vector<int>& ids) const {
        std::string text;
        const auto status = processor.Decode(ids, &text);
        Q4TP_CHECK(status.ok(),
                   path.string() << ": sentencepiece decode of " << ids.size() << " ids failed: " << status.ToString());
        return text;
    }
};

namespace {

//! "<0x0A>" -> 10. Byte pieces are spelled with upper-case hex (§5.1); anything else is a corrupt model.
std::int16_t parse_byte_piece(const std::filesystem::path& path, std::int32_t id, const std::string& piece) {
    auto hex_digit = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    const bool shaped = piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>';
    const int hi = shaped ? hex_digit(piece[3]) : -1;
    const int lo = shaped ? hex_digit(piece[4]) : -1;
    Q4TP_CHECK(hi >= 0 && lo >= 0, path.string()
                                       << ": BYTE piece " << id << " is '" << piece << "', expected the form '<0xHH>'");
    return static_cast<std::int16_t>(hi * 16 + lo);
}

std::vector<int> to_int_ids(std::span<const std::int32_t> ids) {
    return std::vector<int>(ids.begin(), ids.end());
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&& other) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&& other) noexcept = default;

Tokenizer Tokenizer::load(const std::filesystem::path& model_file) {
    const std::string name = model_file.string();
    std::error_code ec;
    Q4TP_CHECK(std::filesystem::is_regular_file(model_file, ec),
               name << ": no such tokenizer model file (expected a sentencepiece tokenizer.model)");

    auto impl = std::make_unique<Impl>();
    impl->path = model_file;
    const auto status = impl->processor.Load(name);
    Q4TP_CHECK(status.ok(), name << ": not a valid sentencepiece model: " << status.ToString());

    Impl& t = *impl;
    t.vocab_size = t.processor.GetPieceSize();
    t.bos_id = t.processor.bos_id();
    t.eos_id = t.processor.eos_id();
    t.unk_id = t.processor.unk_id();
    Q4TP_CHECK(t.vocab_size > 0, name << ": sentencepiece model has no pieces");
    auto in_range = [&](std::int32_t id) { return id >= 0 && id < t.vocab_size; };
    // A Llama tokenizer always has both (§5.1); an engine that prepends BOS and stops on EOS cannot run without them.
    Q4TP_CHECK(in_range(t.bos_id), name << ": bos_id " << t.bos_id << " is not a piece of the " << t.vocab_size
                                        << "-piece vocabulary; a Llama tokenizer needs a BOS piece");
    Q4TP_CHECK(in_range(t.eos_id), name << ": eos_id " << t.eos_id << " is not a piece of the " << t.vocab_size
                                        << "-piece vocabulary; a Llama tokenizer needs an EOS piece");
    Q4TP_CHECK(in_range(t.unk_id),
               name << ": unk_id " << t.unk_id << " is not a piece of the " << t.vocab_size << "-piece vocabulary");

    t.byte_of_id.assign(static_cast<std::size_t>(t.vocab_size), -1);
    t.control.assign(static_cast<std::size_t>(t.vocab_size), false);
    for (std::int32_t id = 0; id < t.vocab_size; ++id) {
        const auto i = static_cast<std::size_t>(id);
        t.control[i] = t.processor.IsControl(id);
        if (t.processor.IsByte(id)) t.byte_of_id[i] = parse_byte_piece(model_file, id, t.processor.IdToPiece(id));
    }

    // UNK decodes to " ⁇ " in the default model; fall back to the first ordinary piece with visible text.
    auto try_context = [&](std::int32_t id) {
        const auto i = static_cast<std::size_t>(id);
        if (t.control[i] || t.byte_of_id[i] >= 0) return;
        std::string text = t.decode_checked({id});
        if (text.empty()) return;
        t.context_id = id;
        t.context_text = std::move(text);
    };
    try_context(t.unk_id);
    for (std::int32_t id = 0; t.context_id < 0 && id < t.vocab_size; ++id) try_context(id);
    Q4TP_CHECK(t.context_id >= 0, name << ": no piece of the " << t.vocab_size << "-piece vocabulary decodes to "
                                       << "visible text, so the model cannot be a text tokenizer");
    return Tokenizer(std::move(impl));
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_bos) const {
    std::vector<int> pieces;
    const auto status = impl_->processor.Encode(text, &pieces);
    Q4TP_CHECK(status.ok(), impl_->path.string() << ": sentencepiece encode of " << text.size()
                                                 << " bytes of text failed: " << status.ToString());
    std::vector<std::int32_t> ids;
    ids.reserve(pieces.size() + (add_bos ? 1 : 0));
    if (add_bos) ids.push_back(impl_->bos_id);
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    return ids;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids) const {
    for (const std::int32_t id : ids) check_id(id);
    if (ids.empty()) return {};
    return impl_->decode_checked(to_int_ids(ids));
}

std::string Tokenizer::decode_continuation(std::span<const std::int32_t> ids) const {
    for (const std::int32_t id : ids) check_id(id);
    if (ids.empty()) return {};
    std::vector<int> with_context;
    with_context.reserve(ids.size() + 1);
    with_context.push_back(impl_->context_id);
    with_context.insert(with_context.end(), ids.begin(), ids.end());
    std::string text = impl_->decode_checked(with_context);
    // Holds unless the model has a denormalizer that rewrites across piece boundaries (Llama's has none).
    Q4TP_CHECK(text.compare(0, impl_->context_text.size(), impl_->context_text) == 0,
               impl_->path.string() << ": decoded text does not start with the context piece's text '"
                                    << impl_->context_text << "'; this model's decoder is not piece-local");
    return text.substr(impl_->context_text.size());
}

std::int32_t Tokenizer::vocab_size() const noexcept {
    return impl_->vocab_size;
}
std::int32_t Tokenizer::bos_id() const noexcept {
    return impl_->bos_id;
}
std::int32_t Tokenizer::eos_id() const noexcept {
    return impl_->eos_id;
}
std::int32_t Tokenizer::unk_id() const noexcept {
    return impl_->unk_id;
}
const std::filesystem::path& Tokenizer::path() const noexcept {
    return impl_->path;
}

std::string Tokenizer::piece(std::int32_t id) const {
    check_id(id);
    return impl_->processor.IdToPiece(id);
}

bool Tokenizer::is_control(std::int32_t id) const {
    check_id(id);
    return impl_->control[static_cast<std::size_t>(id)];
}

bool Tokenizer::is_byte(std::int32_t id) const {
    return byte_value(id).has_value();
}

std::optional<std::uint8_t> Tokenizer::byte_value(std::int32_t id) const {
    check_id(id);
    const std::int16_t byte = impl_->byte_of_id[static_cast<std::size_t>(id)];
    if (byte < 0) return std::nullopt;
    return static_cast<std::uint8_t>(byte);
}

void Tokenizer::check_id(std::int32_t id) const {
    Q4TP_CHECK(id >= 0 && id < impl_->vocab_size,
               impl_->path.string() << ": token id " << id << " is out of range [0, " << impl_->vocab_size << ")");
}

// ---------------------------------------------------------------------------------------------------------------
// StreamingDecoder
// ---------------------------------------------------------------------------------------------------------------

namespace {

//! Bytes the UTF-8 sequence starting with `lead` claims, exactly as sentencepiece's DecodeUTF8 classifies lead
//! bytes (C0/C1 and F5..F7 included: it rejects those only after reading the whole sequence). 1 means the byte
//! is decided on its own: ASCII, a stray continuation byte, or F8..FF.
std::size_t utf8_claimed_length(std::uint8_t lead) {
    if ((lead & 0xE0) == 0xC0) return 2;
    if ((lead & 0xF0) == 0xE0) return 3;
    if ((lead & 0xF8) == 0xF0) return 4;
    return 1;
}

bool is_utf8_continuation(std::uint8_t byte) {
    return (byte & 0xC0) == 0x80;
}

}  // namespace

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {
    pending_.reserve(4);
}

std::size_t StreamingDecoder::incomplete_tail() const {
    // Only a lead byte followed by fewer continuation bytes than it claims can still change how the bytes
    // decode: every earlier byte is already a finished character or a finished U+FFFD. A continuation byte can
    // never begin a character, so the lead byte is also where decoding of later bytes restarts, which makes
    // "everything before the lead byte" safe to decode and forget.
    const std::size_t n = pending_.size();
    for (std::size_t back = 1; back <= std::min<std::size_t>(3, n); ++back) {
        const auto byte = tokenizer_->byte_value(pending_[n - back]);
        if (!byte) return 0;  // a non-byte piece ends the byte run: nothing after it is pending
        if (is_utf8_continuation(*byte)) continue;
        return utf8_claimed_length(*byte) > back ? back : 0;
    }
    return 0;  // three continuation bytes: either a complete 4-byte character or stray bytes
}

std::string StreamingDecoder::decode_pending(std::span<const std::int32_t> ids) const {
    // While every id so far was CONTROL (they decode to nothing and leave the strip rule armed), decoding from
    // here is decoding from the start; afterwards it is a continuation.
    return only_control_so_far_ ? tokenizer_->decode(ids) : tokenizer_->decode_continuation(ids);
}

std::string StreamingDecoder::push(std::int32_t id) {
    tokenizer_->check_id(id);
    pending_.push_back(id);
    const std::size_t ready = pending_.size() - incomplete_tail();
    if (ready == 0) return {};
    const std::span<const std::int32_t> ready_ids(pending_.data(), ready);
    std::string text = decode_pending(ready_ids);
    only_control_so_far_ = only_control_so_far_ && std::all_of(ready_ids.begin(), ready_ids.end(),
                                                               [&](auto x) { return tokenizer_->is_control(x); });
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(ready));
    return text;
}

std::string StreamingDecoder::flush() {
    std::string text = pending_.empty() ? std::string() : decode_pending(pending_);
    reset();
    return text;
}

void StreamingDecoder::reset() noexcept {
    pending_.clear();
    only_control_so_far_ = true;
}

}  // namespace q4tp::loaders
