// Hdf5File: round trips through real files, groups, attributes, and the errors for bad paths, types and files.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "loaders/hdf5_file.h"

namespace q4tp::loaders {
namespace {

class Hdf5FileTest : public ::testing::Test {
   protected:
    void SetUp() override {
        std::random_device entropy;
        dir_ = std::filesystem::path(::testing::TempDir()) /
               ("q4tp_hdf5_" + std::to_string(entropy()) + "_" + std::to_string(entropy()));
        std::filesystem::create_directories(dir_);
    }
    void TearDown() override {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }

    std::filesystem::path file(const std::string& name) const { return dir_ / name; }

    std::filesystem::path dir_;
};

std::vector<float> random_floats(std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-100.0f, 100.0f);
    std::vector<float> v(n);
    for (auto& x : v) {
        do x = dist(rng);
        while (x == 0.0f);
    }
    return v;
}

std::vector<std::int32_t> random_ints(std::size_t n, std::uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<std::int32_t> dist(std::numeric_limits<std::int32_t>::min(),
                                                     std::numeric_limits<std::int32_t>::max());
    std::vector<std::int32_t> v(n);
    for (auto& x : v) {
        do x = dist(rng);
        while (x == 0);
    }
    return v;
}

//! Runs fn, requires a q4tp::Error, and checks that its message contains every piece.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> pieces) {
    try {
        fn();
        ADD_FAILURE() << "no q4tp::Error was thrown";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_EQ(what.find('\n'), std::string::npos) << "message is not one line: " << what;
        for (const auto& piece : pieces) {
            EXPECT_NE(what.find(piece), std::string::npos) << "'" << piece << "' not in: " << what;
        }
    }
}

TEST_F(Hdf5FileTest, RoundTrip_FloatAndIntDataOfSeveralShapes) {
    const auto path = file("round_trip.h5");
    const std::vector<std::int64_t> shape2{3, 5};
    const std::vector<std::int64_t> shape3{2, 3, 4};
    const auto f2 = random_floats(15, 1);
    const auto f3 = random_floats(24, 2);
    const auto i2 = random_ints(15, 3);
    const auto i3 = random_ints(24, 4);
    {
        Hdf5File out = Hdf5File::create(path);
        out.write_float("f2", f2, shape2);
        out.write_float("f3", f3, shape3);
        out.write_int32("i2", i2, shape2);
        out.write_int32("i3", i3, shape3);
        out.close();
    }
    const Hdf5File in = Hdf5File::open_read(path);
    const auto rf2 = in.read_float("f2");
    const auto rf3 = in.read_float("/f3");
    EXPECT_EQ(rf2.shape, shape2);
    EXPECT_EQ(rf2.data, f2);
    EXPECT_EQ(rf3.shape, shape3);
    EXPECT_EQ(rf3.data, f3);
    const auto ri2 = in.read_int("i2");
    const auto ri3 = in.read_int("i3");
    EXPECT_EQ(ri2.shape, shape2);
    EXPECT_EQ(ri3.shape, shape3);
    EXPECT_EQ(ri2.data, std::vector<std::int64_t>(i2.begin(), i2.end()));
    EXPECT_EQ(ri3.data, std::vector<std::int64_t>(i3.begin(), i3.end()));
}

TEST_F(Hdf5FileTest, RoundTrip_ScalarAndEmptyDatasets) {
    const auto path = file("edge.h5");
    const std::vector<float> one{3.25f};
    const std::vector<std::int64_t> empty_shape{0, 4};
    {
        Hdf5File out = Hdf5File::create(path);
        out.write_float("scalar", one, {});
        out.write_int32("empty", {}, empty_shape);
    }  // the destructor closes the file
    const Hdf5File in = Hdf5File::open_read(path);
    const auto scalar = in.read_float("scalar");
    EXPECT_TRUE(scalar.shape.empty());
    EXPECT_EQ(scalar.data, one);
    const auto empty = in.read_int("empty");
    EXPECT_EQ(empty.shape, empty_shape);
    EXPECT_TRUE(empty.data.empty());
}

TEST_F(Hdf5FileTest, NestedGroups_CreatedAsNeededAndFoundByHas) {
    const auto path = file("nested.h5");
    const auto data = random_floats(6, 5);
    {
        Hdf5File out = Hdf5File::create(path);
        out.write_float("layers/0/attn/out", data, std::vector<std::int64_t>{2, 3});
        out.write_float("/layers/1/mlp", data, std::vector<std::int64_t>{6});
        out.close();
    }
    const Hdf5File in = Hdf5File::open_read(path);
    EXPECT_TRUE(in.has("/"));
    EXPECT_TRUE(in.has("layers"));
    EXPECT_TRUE(in.has("layers/0"));
    EXPECT_TRUE(in.has("/layers/0/attn"));
    EXPECT_TRUE(in.has("layers/0/attn/out"));
    EXPECT_TRUE(in.has("layers/1/mlp"));
    EXPECT_FALSE(in.has("layers/2"));
    EXPECT_FALSE(in.has("layers/2/attn/out"));
    EXPECT_FALSE(in.has("layers/0/attn/out/deeper"));  // through a dataset
    EXPECT_EQ(in.read_float("layers/0/attn/out").data, data);
    EXPECT_EQ(in.read_float("layers/1/mlp").shape, std::vector<std::int64_t>{6});
    expect_error([&] { (void)in.read_float("layers/0"); }, {path.string(), "'layers/0'", "group"});
    expect_error([&] { (void)in.has("layers//0"); }, {path.string(), "layers//0"});
}

TEST_F(Hdf5FileTest, Attributes_WrittenReplacedAndReadOnGroupsAndDatasets) {
    const auto path = file("attrs.h5");
    const std::string unicode = "Llama 🦙 Ꙋ, \"quoted\"";
    {
        Hdf5File out = Hdf5File::create(path);
        out.write_int32("golden/ids", random_ints(4, 6), std::vector<std::int64_t>{4});
        out.write_string_attribute("/", "model", "TheBloke/Llama-2-7B-GPTQ");
        out.write_string_attribute("golden", "transformers", "4.48.0");
        out.write_string_attribute("golden/ids", "prompt", unicode);
        out.write_string_attribute("golden", "transformers", "5.17.0");  // replaces
        out.write_string_attribute("golden", "empty", "");
        out.close();
    }
    const Hdf5File in = Hdf5File::open_read(path);
    EXPECT_EQ(in.read_string_attribute("/", "model"), "TheBloke/Llama-2-7B-GPTQ");
    EXPECT_EQ(in.read_string_attribute("golden", "transformers"), "5.17.0");
    EXPECT_EQ(in.read_string_attribute("/golden/ids", "prompt"), unicode);
    EXPECT_EQ(in.read_string_attribute("golden", "empty"), "");
    expect_error([&] { (void)in.read_string_attribute("golden", "missing"); },
                 {path.string(), "'missing'", "'golden'"});
    expect_error([&] { (void)in.read_string_attribute("nowhere", "model"); }, {path.string(), "'nowhere'"});
}

TEST_F(Hdf5FileTest, MissingDataset_ErrorNamesFileAndDataset) {
    const auto path = file("missing_dataset.h5");
    {
        Hdf5File out = Hdf5File::create(path);
        out.write_float("present", random_floats(2, 7), std::vector<std::int64_t>{2});
    }
    const Hdf5File in = Hdf5File::open_read(path);
    expect_error([&] { (void)in.read_float("absent"); }, {path.string(), "'absent'"});
    expect_error([&] { (void)in.read_int("group/absent"); }, {path.string(), "'group/absent'"});
}

TEST_F(Hdf5FileTest, MissingFile_ErrorNamesTheFile) {
    const auto path = file("no_such_file.h5");
    expect_error([&] { (void)Hdf5File::open_read(path); }, {path.string(), "no such"});
    const auto in_missing_dir = file("no_dir") / "out.h5";
    expect_error([&] { (void)Hdf5File::create(in_missing_dir); }, {in_missing_dir.string(), "cannot create"});
}

TEST_F(Hdf5FileTest, NotHdf5_ErrorNamesTheFile) {
    const auto path = file("garbage.h5");
    {
        std::ofstream out(path, std::ios::binary);
        std::mt19937 rng(8);
        for (int i = 0; i < 2048; ++i) out.put(static_cast<char>(rng() & 0xFF));
    }
    expect_error([&] { (void)Hdf5File::open_read(path); }, {path.string(), "not an HDF5 file"});
}

TEST_F(Hdf5FileTest, WrongType_ErrorNamesTheStoredType) {
    const auto path = file("types.h5");
    {
        Hdf5File out = Hdf5File::create(path);
        out.write_int32("ids", random_ints(3, 9), std::vector<std::int64_t>{3});
        out.write_float("logits", random_floats(3, 10), std::vector<std::int64_t>{3});
    }
    const Hdf5File in = Hdf5File::open_read(path);
    expect_error([&] { (void)in.read_float("ids"); }, {path.string(), "'ids'", "32-bit signed integer", "read_float"});
    expect_error([&] { (void)in.read_int("logits"); }, {path.string(), "'logits'", "32-bit float", "read_int"});
}

TEST_F(Hdf5FileTest, BadWrites_AreRejectedWithTheDatasetNamed) {
    const auto path = file("bad_writes.h5");
    Hdf5File out = Hdf5File::create(path);
    const auto data = random_floats(6, 11);
    const std::vector<std::int64_t> wrong{4, 2};
    const std::vector<std::int64_t> negative{-2, -3};
    const std::vector<std::int64_t> right{6};
    expect_error([&] { out.write_float("x", data, wrong); }, {path.string(), "'x'", "[4, 2]", "needs 8", "6 were"});
    expect_error([&] { out.write_float("x", data, negative); }, {path.string(), "'x'", "negative"});
    expect_error([&] { out.write_float("/", data, right); }, {path.string(), "root"});
    out.write_float("x", data, right);
    expect_error([&] { out.write_float("x", data, right); }, {path.string(), "'x'", "already exists"});
    expect_error([&] { out.write_float("x/y", data, right); }, {path.string(), "x/y"});
    expect_error([&] { out.write_string_attribute("nowhere", "a", "b"); }, {path.string(), "'nowhere'"});
    expect_error([&] { out.write_string_attribute("x", "a", std::string("b\0c", 3)); }, {path.string(), "NUL"});
    out.close();
    expect_error([&] { out.write_float("y", data, right); }, {path.string(), "closed"});
    expect_error([&] { out.close(); }, {path.string(), "closed"});

    Hdf5File in = Hdf5File::open_read(path);
    EXPECT_EQ(in.read_float("x").data, data);
    expect_error([&] { in.write_float("z", data, right); }, {path.string(), "read-only"});
}

TEST_F(Hdf5FileTest, Move_TransfersTheOpenFile) {
    const auto path = file("moved.h5");
    const auto data = random_floats(4, 12);
    Hdf5File first = Hdf5File::create(path);
    Hdf5File second = std::move(first);
    second.write_float("d", data, std::vector<std::int64_t>{2, 2});
    Hdf5File third = Hdf5File::create(file("other.h5"));
    third = std::move(second);  // closes other.h5, takes moved.h5
    third.close();
    EXPECT_EQ(Hdf5File::open_read(path).read_float("d").data, data);
    EXPECT_TRUE(Hdf5File::open_read(file("other.h5")).has("/"));
}

}  // namespace
}  // namespace q4tp::loaders
