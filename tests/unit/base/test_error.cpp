#include <gtest/gtest.h>

#include <string>

#include "core/base/dtype.h"
#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/base/tensor_view.h"

namespace q4tp {
namespace {

TEST(ErrorTest, CheckThrowsWithMessageFileAndRank) {
    set_process_rank(3);
    try {
        const int heads = 7;
        Q4TP_CHECK(heads % 2 == 0, "heads " << heads << " is odd");
        FAIL() << "no throw";
    } catch (const Error& e) {
        EXPECT_EQ(e.message(), "heads 7 is odd");
        const std::string what = e.what();
        EXPECT_NE(what.find("test_error.cpp:"), std::string::npos) << what;
        EXPECT_NE(what.find("rank 3"), std::string::npos) << what;
    }
    set_process_rank(0);
}

TEST(ErrorTest, CheckGenReportsStatus) {
    auto to_text = [](int status) { return std::string("status ") + std::to_string(status); };
    EXPECT_THROW(Q4TP_CHECK_GEN(5, 0, to_text), Error);
    EXPECT_NO_THROW(Q4TP_CHECK_GEN(0, 0, to_text));
}

TEST(ErrorTest, LogLevelParsing) {
    EXPECT_EQ(parse_log_level("WARN"), LogLevel::Warn);
    EXPECT_THROW(parse_log_level("loud"), Error);
}

TEST(DTypeTest, SizesAndNames) {
    DType d;
    ASSERT_TRUE(parse_dtype("F16", &d));
    EXPECT_EQ(d, DType::F16);
    EXPECT_EQ(dtype_size(d), 2u);
    EXPECT_FALSE(parse_dtype("F8_E4M3", &d));
    EXPECT_EQ(dtype_size(DType::I32), 4u);
}

TEST(ShapeTest, NumelAndString) {
    Shape s{1024, 8192};
    EXPECT_EQ(s.numel(), 1024 * 8192);
    EXPECT_EQ(s.str(), "[1024, 8192]");
    EXPECT_THROW((Shape{1, 2, 3, 4, 5}), Error);
}

}  // namespace
}  // namespace q4tp
