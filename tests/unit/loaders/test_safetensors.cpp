// Tests for the safetensors reader (every rule of docs/formats.md §1.2), the writer (R1.7) and
// checkpoint discovery (R1.11-R1.13). Every file is written by the test into its own temp directory.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/base/dtype.h"
#include "core/base/error.h"
#include "loaders/checkpoint.h"
#include "loaders/safetensors.h"
#include "loaders/safetensors_writer.h"
#include "tests/unit/loaders/st_test_util.h"

namespace q4tp::loaders {
namespace {

namespace fs = std::filesystem;
using st_test::random_bytes;
using st_test::random_floats;
using st_test::random_ints;
using st_test::safetensors_bytes;
using st_test::ScopedTempDir;
using st_test::u64_le;
using st_test::write_file;

// Runs fn and expects a q4tp::Error whose one-line message contains every keyword; returns the message.
std::string expect_error(const std::function<void()>& fn, std::initializer_list<std::string_view> keywords) {
    try {
        fn();
    } catch (const Error& e) {
        const std::string& message = e.message();
        for (std::string_view keyword : keywords) {
            EXPECT_NE(message.find(keyword), std::string::npos) << "'" << keyword << "' missing from: " << message;
        }
        EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "multi-line message: " << e.what();
        return message;
    }
    ADD_FAILURE() << "expected a q4tp::Error";
    return {};
}

// Host order is little-endian on every platform q4tp targets, as is safetensors data.
template <typename T>
std::string as_bytes(const std::vector<T>& values) {
    std::string out(values.size() * sizeof(T), '\0');
    if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
    return out;
}

std::vector<std::byte> to_vector(std::span<const std::byte> bytes) {
    return {bytes.begin(), bytes.end()};
}

// -------------------------------------------------------------------------------------------------
// R1.8: the official reader's doc-test vector

constexpr std::string_view kSpecHeader = R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}})";

TEST(SafetensorsTest, Reads_SpecTestVector) {
    ASSERT_EQ(kSpecHeader.size(), 60u);
    ScopedTempDir dir;
    const std::vector<std::int32_t> values = random_ints(4, 11);
    const std::string bytes = safetensors_bytes(kSpecHeader, as_bytes(values));
    ASSERT_EQ(bytes.size(), 84u);
    EXPECT_EQ(bytes.substr(0, 8), std::string("\x3C\0\0\0\0\0\0\0", 8));
    write_file(dir / "spec.safetensors", bytes);

    const SafetensorsFile file = SafetensorsFile::open(dir / "spec.safetensors");
    EXPECT_EQ(file.file_size(), 84u);
    EXPECT_EQ(file.data_offset(), 68u);
    EXPECT_TRUE(file.metadata().empty());
    ASSERT_EQ(file.tensors().size(), 1u);
    const TensorInfo& info = file.tensors()[0];
    EXPECT_EQ(info.name, "test");
    EXPECT_EQ(info.dtype_name, "I32");
    EXPECT_EQ(info.dtype, DType::I32);
    EXPECT_EQ(info.shape, (std::vector<std::int64_t>{2, 2}));
    EXPECT_EQ(info.begin, 0u);
    EXPECT_EQ(info.end, 16u);
    EXPECT_EQ(info.numel(), 4);
    EXPECT_EQ(file.find("test"), &info);
    EXPECT_EQ(file.find("missing"), nullptr);

    const HostBuffer<std::int32_t> read = file.read<std::int32_t>("test", DType::I32, {2, 2});
    ASSERT_EQ(read.size(), 4u);
    for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(read[i], values[i]) << i;
}

TEST(SafetensorsTest, Rejects_SpecVectorMissingLastByte) {
    ScopedTempDir dir;
    const std::string bytes = safetensors_bytes(kSpecHeader, 16);
    write_file(dir / "short.safetensors", bytes.substr(0, 83));
    expect_error([&] { SafetensorsFile::open(dir / "short.safetensors"); },
                 {"short.safetensors", "'test'", "incomplete buffer"});
}

TEST(SafetensorsTest, Rejects_SpecVectorWithOffsetsZeroFifteen) {
    ScopedTempDir dir;
    const std::string header = R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,15]}})";
    write_file(dir / "info.safetensors", safetensors_bytes(header, 15));
    expect_error([&] { SafetensorsFile::open(dir / "info.safetensors"); },
                 {"'test'", "data_offsets [0, 15] hold 15 bytes but dtype I32 shape [2, 2] needs 16"});
}

// -------------------------------------------------------------------------------------------------
// Malformed files: one case per rule, each asserting the keyword that names the problem

struct MalformedCase {
    std::string name;
    std::string bytes;
    std::string keyword;
};

void PrintTo(const MalformedCase& c, std::ostream* os) {
    *os << c.name;
}

std::string entry(std::string_view name, std::string_view dtype, std::string_view shape, std::string_view offsets) {
    // Appends rather than "literal" + std::string: GCC 12 raises a false -Wrestrict on the latter.
    std::string out = "\"";
    out.append(name).append(R"(":{"dtype":")").append(dtype).append(R"(","shape":)").append(shape);
    out.append(R"(,"data_offsets":)").append(offsets).append("}");
    return out;
}

std::string file_of(std::initializer_list<std::string> entries, std::size_t data_size) {
    std::string header = "{";
    for (const std::string& e : entries) header += (header.size() > 1 ? "," : "") + e;
    return safetensors_bytes(header + "}", data_size);
}

std::vector<MalformedCase> malformed_cases() {
    const std::string a8 = entry("a", "U8", "[8]", "[0,8]");
    const std::string shape_rule = "shape must be an array of non-negative integers";
    const std::string offsets_rule = "data_offsets must be exactly 2 non-negative integers";
    return {
        {"EmptyFile", "", "header too small"},
        {"SevenBytes", std::string(7, '\x01'), "header too small"},
        {"HeaderLengthAboveCap", u64_le(100'000'001) + "{}", "header too large"},
        {"HeaderLengthPastEndOfFile", u64_le(64) + "{}      ", "invalid header length"},
        {"HeaderNotUtf8", file_of({entry("a\xff", "U8", "[1]", "[0,1]")}, 1), "not valid UTF-8"},
        {"HeaderOverlongUtf8", file_of({entry("a\xc0\xaf", "U8", "[1]", "[0,1]")}, 1), "not valid UTF-8"},
        {"HeaderNotJson", safetensors_bytes(R"({"a": )", 0), "not valid JSON"},
        {"HeaderNotObject", safetensors_bytes("[1, 2]", 0), "header is a JSON array, expected an object"},
        {"EntryNotObject", safetensors_bytes(R"({"a": 5})", 0), "expected an object with dtype"},
        {"DtypeMissing", safetensors_bytes(R"({"a":{"shape":[1],"data_offsets":[0,1]}})", 1), "missing 'dtype'"},
        {"DtypeUnknown", file_of({entry("a", "F17", "[1]", "[0,1]")}, 1), "unknown dtype 'F17'"},
        {"DtypeNotString", safetensors_bytes(R"({"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}})", 4),
         "dtype must be a string"},
        {"ShapeNegative", file_of({entry("a", "U8", "[-1,2]", "[0,2]")}, 2), shape_rule},
        {"ShapeNotIntegers", file_of({entry("a", "U8", "[2.5]", "[0,2]")}, 2), shape_rule},
        {"ShapeNotArray", file_of({entry("a", "U8", R"("2x2")", "[0,4]")}, 4), shape_rule},
        {"ShapeDimensionBeyondInt64", file_of({entry("a", "U8", "[9223372036854775808,0]", "[0,0]")}, 0),
         "does not fit int64"},
        {"ShapeNestedMillionDeep",
         file_of({entry("a", "U8", std::string(1'000'000, '[') + "1" + std::string(1'000'000, ']'), "[0,1]")}, 1),
         shape_rule},
        {"HeaderNestedMillionDeep", safetensors_bytes(std::string(1'000'000, '['), 0), "not valid JSON"},
        {"DataOffsetsWrongArity", file_of({entry("a", "U8", "[1]", "[0]")}, 1), offsets_rule},
        {"DataOffsetsNegative", file_of({entry("a", "U8", "[1]", "[-1,0]")}, 1), offsets_rule},
        {"OffsetsOverlap", file_of({a8, entry("b", "U8", "[8]", "[4,12]")}, 12), "overlap tensor 'a'"},
        {"GapBetweenTensors", file_of({a8, entry("b", "U8", "[8]", "[12,20]")}, 20), "gap of 4 bytes"},
        {"FirstOffsetNotZero", file_of({entry("a", "U8", "[8]", "[4,12]")}, 12), "must begin at 0"},
        {"EndBeforeBegin", file_of({a8, entry("b", "U8", "[0]", "[8,4]")}, 8), "end before begin"},
        {"OffsetsPastEndOfData", file_of({entry("a", "U8", "[16]", "[0,16]")}, 8), "incomplete buffer"},
        {"ByteLengthDisagreesWithShape", file_of({entry("a", "F32", "[2,2]", "[0,12]")}, 12), "needs 16"},
        {"ShapeProductOverflows", file_of({entry("a", "U8", "[1099511627776,1099511627776]", "[0,0]")}, 0),
         "overflows 64 bits"},
        {"F4OddElementCount", file_of({entry("a", "F4", "[3]", "[0,2]")}, 2), "misaligned"},
        {"DuplicateTensorNames", file_of({a8, a8}, 8), "'a' appears twice in the header (duplicate name)"},
        {"DuplicateKeyInEntry",
         safetensors_bytes(R"({"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})", 1),
         "duplicate key"},
        {"TrailingBytesAfterLastTensor", file_of({a8}, 9), "1 trailing bytes after the last tensor 'a'"},
        {"MetadataNonStringValue", file_of({R"("__metadata__":{"bits":4})", a8}, 8),
         "__metadata__ value for key 'bits' must be a string"},
        {"MetadataNotObject", file_of({R"("__metadata__":"pt")", a8}, 8), "__metadata__ is a JSON string"},
    };
}

class SafetensorsMalformedTest : public ::testing::TestWithParam<MalformedCase> {};

TEST_P(SafetensorsMalformedTest, OpenThrows_NamingFileAndProblem) {
    ScopedTempDir dir;
    const fs::path path = dir / "bad.safetensors";
    write_file(path, GetParam().bytes);
    const std::string message = expect_error([&] { SafetensorsFile::open(path); }, {GetParam().keyword});
    EXPECT_EQ(message.rfind(path.string() + ": ", 0), 0u) << "message must start with the path: " << message;
}

INSTANTIATE_TEST_SUITE_P(AllRules,
                         SafetensorsMalformedTest,
                         ::testing::ValuesIn(malformed_cases()),
                         [](const ::testing::TestParamInfo<MalformedCase>& p) { return p.param.name; });

TEST(SafetensorsTest, Rejects_MissingFileAndDirectory) {
    ScopedTempDir dir;
    expect_error([&] { SafetensorsFile::open(dir / "absent.safetensors"); }, {"absent.safetensors", "cannot open"});
    expect_error([&] { SafetensorsFile::open(dir.path()); }, {"not a regular file"});
}

// -------------------------------------------------------------------------------------------------
// Valid but unusual files

TEST(SafetensorsTest, Accepts_TrailingSpacesAndAnyKeyOrder) {
    ScopedTempDir dir;
    // JSON lists "z" (second in the data) before "a"; the header ends in padding spaces (not a multiple of 8).
    const std::string header = std::string("{") + entry("z", "U8", "[3]", "[2,5]") + "," +
                               entry("a", "I8", "[2]", "[0,2]") + R"(,"__metadata__":{"format":"pt"}}   )";
    write_file(dir / "ok.safetensors", safetensors_bytes(header, "\x01\x02\x03\x04\x05"));
    const SafetensorsFile file = SafetensorsFile::open(dir / "ok.safetensors");
    ASSERT_EQ(file.tensors().size(), 2u);
    EXPECT_EQ(file.tensors()[0].name, "a");
    EXPECT_EQ(file.tensors()[1].name, "z");
    EXPECT_EQ(file.metadata().at("format"), "pt");
    const std::span<const std::byte> z = file.data(*file.find("z"));
    ASSERT_EQ(z.size(), 3u);
    EXPECT_EQ(z[0], std::byte{3});
    EXPECT_EQ(z[2], std::byte{5});
}

TEST(SafetensorsTest, Accepts_EmptyHeaderAndSubByteDtype) {
    ScopedTempDir dir;
    write_file(dir / "empty.safetensors", safetensors_bytes("{}", 0));
    EXPECT_TRUE(SafetensorsFile::open(dir / "empty.safetensors").tensors().empty());

    // F4 with an even element count is a whole number of bytes; q4tp validates it but will not type it.
    write_file(dir / "f4.safetensors", file_of({entry("f4", "F4", "[2,3]", "[0,3]")}, 3));
    const SafetensorsFile file = SafetensorsFile::open(dir / "f4.safetensors");
    ASSERT_NE(file.find("f4"), nullptr);
    EXPECT_FALSE(file.find("f4")->dtype.has_value());
    EXPECT_EQ(file.find("f4")->numel(), 6);
    expect_error([&] { file.checked("f4", DType::U8, {2, 3}); }, {"'f4'", "F4", "does not support"});
}

TEST(SafetensorsTest, ReadsUnalignedTensor_ByCopy) {
    ScopedTempDir dir;
    const std::vector<std::int32_t> values = random_ints(3, 5);
    std::string header =
        std::string("{") + entry("b", "U8", "[1]", "[0,1]") + "," + entry("a", "I32", "[3]", "[1,13]") + "}";
    // Old writers did not pad: choose the header length so that tensor 'a' starts at an odd file offset.
    if ((8 + header.size() + 1) % 2 == 0) header += ' ';
    write_file(dir / "unaligned.safetensors", safetensors_bytes(header, std::string("\x7f") + as_bytes(values)));

    const SafetensorsFile file = SafetensorsFile::open(dir / "unaligned.safetensors");
    const TensorInfo& info = file.require("a");
    ASSERT_NE(reinterpret_cast<std::uintptr_t>(file.data(info).data()) % alignof(std::int32_t), 0u)
        << "the test must exercise an unaligned source";
    const HostBuffer<std::int32_t> read = file.read<std::int32_t>("a", DType::I32, {3});
    ASSERT_EQ(read.size(), 3u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(read.data()) % alignof(std::int32_t), 0u);
    for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(read[i], values[i]) << i;
}

TEST(SafetensorsTest, MoveKeepsMappingAndLookupValid) {
    ScopedTempDir dir;
    const std::vector<float> values = random_floats(6, 21);
    write_safetensors(dir / "m.safetensors", {make_safetensors_entry<float>("w", DType::F32, {2, 3}, values)});
    write_safetensors(dir / "n.safetensors", {make_safetensors_entry<float>("v", DType::F32, {6}, values)});

    SafetensorsFile first = SafetensorsFile::open(dir / "m.safetensors");
    const TensorInfo* info = first.find("w");
    SafetensorsFile moved = std::move(first);
    EXPECT_EQ(moved.find("w"), info);
    SafetensorsFile other = SafetensorsFile::open(dir / "n.safetensors");
    other = std::move(moved);
    EXPECT_EQ(other.find("v"), nullptr);
    EXPECT_EQ(other.path(), dir / "m.safetensors");
    const HostBuffer<float> read = other.read<float>("w", DType::F32, {2, 3});
    for (std::size_t i = 0; i < values.size(); ++i) EXPECT_EQ(read[i], values[i]) << i;
}

// -------------------------------------------------------------------------------------------------
// Typed lookup

class SafetensorsLookupTest : public ::testing::Test {
protected:
    void SetUp() override {
        path_ = dir_ / "typed.safetensors";
        write_safetensors(
            path_,
            {make_safetensors_entry<std::uint16_t>("layer.scales", DType::F16, {4, 8}, to_u16(random_ints(32, 3))),
             make_safetensors_entry<std::int32_t>("layer.g_idx", DType::I32, {8}, random_ints(8, 4))});
    }
    static std::vector<std::uint16_t> to_u16(const std::vector<std::int32_t>& v) {
        return {v.begin(), v.end()};  // keeps the low 16 bits of each random value
    }

    ScopedTempDir dir_;
    fs::path path_;
};

TEST_F(SafetensorsLookupTest, Throws_OnWrongDtype) {
    const SafetensorsFile file = SafetensorsFile::open(path_);
    expect_error(
        [&] {
            file.checked("layer.scales", DType::I32, {4, 8});
        },
        {path_.string(), "'layer.scales'", "has dtype F16, expected I32"});
}

TEST_F(SafetensorsLookupTest, Throws_OnWrongShape) {
    const SafetensorsFile file = SafetensorsFile::open(path_);
    expect_error(
        [&] {
            file.read<std::uint16_t>("layer.scales", DType::F16, {8, 4});
        },
        {path_.string(), "'layer.scales'", "has shape [4, 8], expected [8, 4]"});
}

TEST_F(SafetensorsLookupTest, Throws_OnMissingName) {
    const SafetensorsFile file = SafetensorsFile::open(path_);
    expect_error(
        [&] {
            file.read<std::int32_t>("layer.qweight", DType::I32, {1, 8});
        },
        {path_.string(), "'layer.qweight'", "not found"});
}

TEST_F(SafetensorsLookupTest, Throws_OnElementTypeOfWrongSize) {
    const SafetensorsFile file = SafetensorsFile::open(path_);
    expect_error([&] { file.read<std::int16_t>("layer.g_idx", DType::I32, {8}); }, {"'layer.g_idx'", "cannot read"});
}

TEST_F(SafetensorsLookupTest, Returns_BytesOfRequestedTensor) {
    const SafetensorsFile file = SafetensorsFile::open(path_);
    const std::vector<std::int32_t> expected = random_ints(8, 4);
    const HostBuffer<std::int32_t> g_idx = file.read<std::int32_t>("layer.g_idx", DType::I32, {8});
    ASSERT_EQ(g_idx.size(), 8u);
    for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(g_idx[i], expected[i]) << i;
    EXPECT_EQ(file.checked("layer.scales", DType::F16, {4, 8}).size(), 64u);
}

// -------------------------------------------------------------------------------------------------
// Writer

TEST(SafetensorsWriterTest, RoundTrip_AllDtypesScalarAndEmpty) {
    ScopedTempDir dir;
    const std::vector<std::int32_t> ints = random_ints(64, 7);
    const std::vector<float> floats = random_floats(16, 8);
    std::vector<SafetensorsEntry> entries;
    entries.push_back(make_safetensors_entry<float>("f32", DType::F32, {3, 5}, std::span(floats).first(15)));
    entries.push_back(make_safetensors_entry<float>("scalar", DType::F32, {}, std::span(floats).subspan(15, 1)));
    const std::vector<std::uint16_t> halves(ints.begin(), ints.begin() + 7);
    entries.push_back(make_safetensors_entry<std::uint16_t>("f16", DType::F16, {7}, halves));
    entries.push_back(make_safetensors_entry<std::uint16_t>("bf16", DType::BF16, {2, 3}, std::span(halves).first(6)));
    entries.push_back(make_safetensors_entry<std::uint16_t>("empty", DType::F16, {0, 4}, {}));
    entries.push_back(make_safetensors_entry<std::int32_t>("i32", DType::I32, {4, 4}, std::span(ints).first(16)));
    const std::vector<std::int8_t> bytes(ints.begin() + 16, ints.begin() + 25);
    entries.push_back(make_safetensors_entry<std::int8_t>("i8", DType::I8, {9}, bytes));
    const std::vector<std::uint8_t> flags{1, 0, 1};
    entries.push_back(make_safetensors_entry<std::uint8_t>("bool", DType::Bool, {3}, flags));
    const std::vector<double> doubles{0.25, -3.5};
    entries.push_back(make_safetensors_entry<double>("f64", DType::F64, {2}, doubles));
    const std::vector<std::int64_t> longs(ints.begin() + 25, ints.begin() + 28);
    entries.push_back(make_safetensors_entry<std::int64_t>("i64", DType::I64, {3}, longs));
    entries.push_back({"f8", "F8_E4M3", {6}, random_bytes(6, 9)});
    entries.push_back({"f4", "F4", {2, 2}, random_bytes(2, 10)});
    const std::map<std::string, std::string> metadata{{"format", "pt"}, {"gptq_bits", "4"}};
    write_safetensors(dir / "rt.safetensors", entries, metadata);

    const SafetensorsFile file = SafetensorsFile::open(dir / "rt.safetensors");
    EXPECT_EQ(file.metadata(), metadata);
    EXPECT_EQ(file.data_offset() % 8, 0u) << "header must be padded to a multiple of 8";
    ASSERT_EQ(file.tensors().size(), entries.size());
    for (const SafetensorsEntry& written : entries) {
        const TensorInfo* info = file.find(written.name);
        ASSERT_NE(info, nullptr) << written.name;
        EXPECT_EQ(info->dtype_name, written.dtype_name) << written.name;
        EXPECT_EQ(info->shape, written.shape) << written.name;
        EXPECT_EQ(to_vector(file.data(*info)), written.bytes) << written.name;
    }
    EXPECT_FALSE(file.find("f8")->dtype.has_value());
    EXPECT_EQ(file.find("bf16")->dtype, DType::BF16);
    EXPECT_EQ(file.find("bool")->dtype, DType::Bool);
    EXPECT_EQ(file.find("empty")->nbytes(), 0u);
    EXPECT_EQ(file.find("scalar")->numel(), 1);
    EXPECT_EQ(file.read<float>("scalar", DType::F32, {})[0], floats[15]);
    EXPECT_TRUE(file.read<std::uint16_t>("empty", DType::F16, {0, 4}).empty());

    // R1.7: descending element size, then name; every tensor aligned to its element size.
    const std::vector<TensorInfo>& order = file.tensors();
    for (std::size_t i = 0; i < order.size(); ++i) {
        const int bits = safetensors_dtype_bits(order[i].dtype_name);
        const std::uint64_t element_bytes = bits >= 8 ? static_cast<std::uint64_t>(bits / 8) : 1;
        EXPECT_EQ((file.data_offset() + order[i].begin) % element_bytes, 0u) << order[i].name;
        if (i == 0) continue;
        const int previous_bits = safetensors_dtype_bits(order[i - 1].dtype_name);
        EXPECT_TRUE(previous_bits > bits || (previous_bits == bits && order[i - 1].name < order[i].name))
            << order[i - 1].name << " before " << order[i].name;
    }
    EXPECT_EQ(order.front().dtype_name, "F64");
    EXPECT_EQ(order.back().name, "f4");
}

TEST(SafetensorsWriterTest, Rejects_InconsistentEntries) {
    ScopedTempDir dir;
    const fs::path path = dir / "w.safetensors";
    expect_error(
        [&] {
            write_safetensors(path, {{"a", "F32", {2, 2}, random_bytes(15, 1)}});
        },
        {"'a'", "has 15 bytes", "needs 16"});
    expect_error(
        [&] {
            write_safetensors(path, {{"a", "U8", {1}, random_bytes(1, 1)}, {"a", "U8", {1}, random_bytes(1, 2)}});
        },
        {"'a'", "given twice"});
    expect_error([&] { write_safetensors(path, {{"a", "F17", {1}, random_bytes(4, 1)}}); }, {"unknown dtype 'F17'"});
    expect_error([&] { write_safetensors(path, {{"__metadata__", "U8", {1}, random_bytes(1, 1)}}); }, {"reserved"});
    expect_error([&] { write_safetensors(path, {{"a", "F4", {3}, random_bytes(2, 1)}}); }, {"misaligned"});
    EXPECT_FALSE(fs::exists(path));
    const std::vector<float> three = random_floats(3, 1);
    expect_error([&] { make_safetensors_entry<float>("a", DType::F32, {2, 2}, three); }, {"'a'", "3 values"});
    expect_error([&] { make_safetensors_entry<float>("a", DType::F16, {3}, three); }, {"'a'", "F16"});
}

// -------------------------------------------------------------------------------------------------
// Checkpoint discovery

// A deterministic [2, 3] F32 tensor per name, so a read from the wrong shard shows up.
std::vector<float> values_for(const std::string& name) {
    std::uint32_t seed = 17;
    for (char c : name) seed = seed * 31 + static_cast<unsigned char>(c);
    return random_floats(6, seed);
}

void write_shard(const fs::path& path, const std::vector<std::string>& names) {
    std::vector<SafetensorsEntry> entries;
    entries.reserve(names.size());
    for (const std::string& name : names) {
        entries.push_back(make_safetensors_entry<float>(name, DType::F32, {2, 3}, values_for(name)));
    }
    write_safetensors(path, std::move(entries), {{"format", "pt"}});
}

void write_index(const fs::path& path, const std::vector<std::pair<std::string, std::string>>& weight_map) {
    std::string text = R"({"metadata": {"total_size": 0}, "weight_map": {)";
    for (std::size_t i = 0; i < weight_map.size(); ++i) {
        text += (i ? ", " : "") + ("\"" + weight_map[i].first + "\": \"" + weight_map[i].second + "\"");
    }
    write_file(path, text + "}}");
}

void expect_tensor(const Checkpoint& ckpt, const std::string& name, const std::string& shard) {
    const TensorRef ref = ckpt.find(name);
    ASSERT_TRUE(ref) << name;
    EXPECT_EQ(ref.file->path().filename(), shard) << name;
    EXPECT_EQ(ref.info->name, name);
    const HostBuffer<float> read = ckpt.read<float>(name, DType::F32, {2, 3});
    const std::vector<float> expected = values_for(name);
    for (std::size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(read[i], expected[i]) << name << " " << i;
}

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

TEST(CheckpointTest, Opens_SingleFile) {
    ScopedTempDir dir;
    write_shard(dir / "model.safetensors", {"model.norm.weight", "lm_head.weight"});
    const Checkpoint ckpt = Checkpoint::open(dir.path());
    EXPECT_EQ(ckpt.source(), "model.safetensors");
    EXPECT_EQ(ckpt.files().size(), 1u);
    EXPECT_EQ(ckpt.tensor_names(), (std::vector<std::string>{"lm_head.weight", "model.norm.weight"}));
    EXPECT_EQ(ckpt.tensor_count(), 2u);
    EXPECT_EQ(ckpt.total_tensor_bytes(), 48u);
    expect_tensor(ckpt, "lm_head.weight", "model.safetensors");
    EXPECT_FALSE(ckpt.find("model.embed_tokens.weight"));
    expect_error(
        [&] {
            ckpt.checked("model.embed_tokens.weight", DType::F16, {2, 3});
        },
        {dir.path().string(), "'model.embed_tokens.weight'", "not found"});
}

TEST(CheckpointTest, Opens_IndexWithTwoShards) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a.weight", "b.weight"});
    write_shard(dir / kShard2, {"c.weight"});
    write_index(dir / "model.safetensors.index.json",
                {{"a.weight", kShard1}, {"c.weight", kShard2}, {"b.weight", kShard1}});
    const Checkpoint ckpt = Checkpoint::open(dir.path());
    EXPECT_EQ(ckpt.source(), "model.safetensors.index.json");
    ASSERT_EQ(ckpt.files().size(), 2u);
    EXPECT_EQ(ckpt.files()[0].path().filename(), kShard1);
    EXPECT_EQ(ckpt.tensor_names(), (std::vector<std::string>{"a.weight", "b.weight", "c.weight"}));
    EXPECT_EQ(ckpt.total_tensor_bytes(), 72u);
    expect_tensor(ckpt, "a.weight", kShard1);
    expect_tensor(ckpt, "c.weight", kShard2);
    // Typed errors name the shard that holds the tensor.
    expect_error(
        [&] {
            ckpt.checked("c.weight", DType::F16, {2, 3});
        },
        {(dir / kShard2).string(), "'c.weight'", "expected F16"});
}

TEST(CheckpointTest, Opens_PlainDirectoryOfShards) {
    ScopedTempDir dir;
    write_shard(dir / "b.safetensors", {"y"});
    write_shard(dir / "a.safetensors", {"x", "z"});
    const Checkpoint ckpt = Checkpoint::open(dir.path());
    EXPECT_EQ(ckpt.source(), "*.safetensors (2 files)");
    ASSERT_EQ(ckpt.files().size(), 2u);
    EXPECT_EQ(ckpt.files()[0].path().filename(), "a.safetensors");
    expect_tensor(ckpt, "y", "b.safetensors");
    expect_tensor(ckpt, "z", "a.safetensors");
}

TEST(CheckpointTest, Opens_NamedBaseBeforeModel) {
    ScopedTempDir dir;
    write_shard(dir / "gptq_model-4bit-128g.safetensors", {"q"});
    write_shard(dir / "model.safetensors", {"m"});
    const Checkpoint named = Checkpoint::open(dir.path(), "gptq_model-4bit-128g");
    EXPECT_EQ(named.source(), "gptq_model-4bit-128g.safetensors");
    expect_tensor(named, "q", "gptq_model-4bit-128g.safetensors");
    EXPECT_FALSE(named.find("m"));
    expect_tensor(Checkpoint::open(dir.path()), "m", "model.safetensors");

    // A named base that is absent falls back to model.safetensors, with a warning.
    ::testing::internal::CaptureStderr();
    const Checkpoint fallback = Checkpoint::open(dir.path(), "gptq_model-4bit-32g");
    const std::string log = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(log.find("no gptq_model-4bit-32g.safetensors"), std::string::npos) << log;
    expect_tensor(fallback, "m", "model.safetensors");
}

TEST(CheckpointTest, Rejects_IndexNamingMissingShard) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a"});
    write_index(dir / "model.safetensors.index.json", {{"a", kShard1}, {"b", kShard2}});
    expect_error([&] { Checkpoint::open(dir.path()); },
                 {"model.safetensors.index.json", std::string("shard '") + kShard2 + "'", "'b'", "does not exist"});
}

TEST(CheckpointTest, Rejects_IndexNamingTensorNotInShard) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a"});
    write_index(dir / "model.safetensors.index.json", {{"a", kShard1}, {"ghost", kShard1}});
    expect_error([&] { Checkpoint::open(dir.path()); }, {"'ghost'", kShard1, "no such tensor"});
}

TEST(CheckpointTest, Rejects_IndexNamingWrongShard) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a", "c"});
    write_shard(dir / kShard2, {"b"});
    write_index(dir / "model.safetensors.index.json", {{"a", kShard2}, {"b", kShard2}, {"c", kShard1}});
    expect_error([&] { Checkpoint::open(dir.path()); }, {"'a'", std::string("but it is in '") + kShard1 + "'"});
}

TEST(CheckpointTest, Rejects_SameTensorInTwoShards) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a", "dup"});
    write_shard(dir / kShard2, {"dup", "b"});
    write_index(dir / "model.safetensors.index.json", {{"a", kShard1}, {"b", kShard2}, {"dup", kShard1}});
    expect_error([&] { Checkpoint::open(dir.path()); }, {"'dup'", "two shards", kShard1, kShard2});
}

TEST(CheckpointTest, Rejects_SameTensorInTwoShardsWithoutIndex) {
    ScopedTempDir dir;
    write_shard(dir / "one.safetensors", {"dup"});
    write_shard(dir / "two.safetensors", {"dup"});
    expect_error([&] { Checkpoint::open(dir.path()); }, {"'dup'", "two shards", "one.safetensors", "two.safetensors"});
}

TEST(CheckpointTest, Rejects_MalformedIndex) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a"});
    write_file(dir / "model.safetensors.index.json", R"({"weight_map": {"a": )");
    expect_error([&] { Checkpoint::open(dir.path()); }, {"model.safetensors.index.json", "malformed JSON"});
    write_file(dir / "model.safetensors.index.json", R"({"metadata": {}})");
    expect_error([&] { Checkpoint::open(dir.path()); }, {"model.safetensors.index.json", "weight_map"});
    write_file(dir / "model.safetensors.index.json", R"({"weight_map": {}})");
    expect_error([&] { Checkpoint::open(dir.path()); }, {"model.safetensors.index.json", "weight_map is empty"});
    write_file(dir / "model.safetensors.index.json", R"({"weight_map": {"a": 3}})");
    expect_error([&] { Checkpoint::open(dir.path()); }, {"'a'", "shard file name string"});
    write_index(dir / "model.safetensors.index.json", {{"a", kShard1}, {"a", kShard1}});
    expect_error([&] { Checkpoint::open(dir.path()); }, {"'a'", "listed twice"});
    write_index(dir / "model.safetensors.index.json", {{"a", std::string("../") + kShard1}});
    expect_error([&] { Checkpoint::open(dir.path()); }, {"'a'", "inside the model directory"});
}

TEST(CheckpointTest, Warns_OnTensorMissingFromWeightMap) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a", "stray"});
    write_index(dir / "model.safetensors.index.json", {{"a", kShard1}});
    ::testing::internal::CaptureStderr();
    const Checkpoint ckpt = Checkpoint::open(dir.path());
    const std::string log = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(log.find("missing from weight_map"), std::string::npos) << log;
    EXPECT_NE(log.find("'stray'"), std::string::npos) << log;
    expect_tensor(ckpt, "stray", kShard1);
}

TEST(CheckpointTest, Rejects_MissingOrEmptyDirectory) {
    ScopedTempDir dir;
    const fs::path missing = dir / "no-such-model";
    expect_error([&] { Checkpoint::open(missing); }, {missing.string(), "does not exist"});
    write_file(dir / "config.json", "{}");
    expect_error([&] { Checkpoint::open(dir.path()); },
                 {dir.path().string(), "no safetensors checkpoint found", "model.safetensors"});
    expect_error([&] { Checkpoint::open(dir / "config.json"); }, {"not a directory"});
}

TEST(CheckpointTest, Rejects_TwoCandidateIndexes) {
    ScopedTempDir dir;
    write_shard(dir / "x.safetensors", {"a"});
    write_index(dir / "first.safetensors.index.json", {{"a", "x.safetensors"}});
    write_index(dir / "second.safetensors.index.json", {{"a", "x.safetensors"}});
    expect_error([&] { Checkpoint::open(dir.path()); },
                 {"2 checkpoint indexes", "first.safetensors.index.json", "second.safetensors.index.json"});
    // Naming one resolves the ambiguity.
    expect_tensor(Checkpoint::open(dir.path(), "first"), "a", "x.safetensors");
}

TEST(CheckpointTest, Rejects_InvalidShard_NamingIt) {
    ScopedTempDir dir;
    write_shard(dir / kShard1, {"a"});
    write_file(dir / kShard2, safetensors_bytes(kSpecHeader, 15));
    write_index(dir / "model.safetensors.index.json", {{"a", kShard1}, {"test", kShard2}});
    expect_error([&] { Checkpoint::open(dir.path()); }, {kShard2, "'test'", "incomplete buffer"});
}

// The fixtures come from the Python safetensors library: real writer output must pass every check.
TEST(CheckpointTest, Opens_PythonWrittenFixtures) {
    const fs::path root = fs::path(Q4TP_TEST_DATA_DIR) / "fixtures";
    if (!fs::is_directory(root)) GTEST_SKIP() << "no fixtures under " << root;
    int opened = 0;
    for (const fs::directory_entry& entry : fs::directory_iterator(root)) {
        if (!entry.is_directory()) continue;
        SCOPED_TRACE(entry.path().string());
        const Checkpoint ckpt = Checkpoint::open(entry.path());
        ++opened;
        EXPECT_GT(ckpt.tensor_count(), 0u);
        for (const SafetensorsFile& file : ckpt.files()) {
            EXPECT_EQ(file.data_offset() % 8, 0u) << file.path();
            const auto format = file.metadata().find("format");
            EXPECT_TRUE(format != file.metadata().end() && format->second == "pt") << file.path();
        }
        const TensorRef norm = ckpt.find("model.norm.weight");
        ASSERT_TRUE(norm);
        EXPECT_EQ(ckpt.checked("model.norm.weight", DType::F16, norm.info->shape).size(), norm.info->nbytes());
        if (fs::exists(entry.path() / "model.safetensors.index.json")) {
            EXPECT_EQ(ckpt.source(), "model.safetensors.index.json");
            EXPECT_GT(ckpt.files().size(), 1u);
        }
    }
    EXPECT_GT(opened, 0);
}

}  // namespace
}  // namespace q4tp::loaders
