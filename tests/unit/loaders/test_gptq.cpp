#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/base/half.h"
#include "loaders/checkpoint.h"
#include "loaders/gptq.h"
#include "loaders/safetensors_writer.h"
#include "tests/unit/loaders/st_test_util.h"

namespace q4tp::loaders {
namespace {

using st_test::act_order_g_idx;
using st_test::expect_error;

// ---- helpers ------------------------------------------------------------------------------------

//! A layer in unpacked form: what the quantizer decided, before packing.
struct LogicalLayer {
    std::int64_t k = 0, n = 0, group_size = 0, num_groups = 0;
    std::vector<std::uint8_t> codes;    // [K][N] 0..15
    std::vector<std::uint8_t> zeros;    // [G][N] effective z
    std::vector<std::uint16_t> scales;  // [G][N] fp16 bits
    std::vector<std::int32_t> g_idx;    // [K]
};

LogicalLayer random_logical(std::int64_t k, std::int64_t n, std::int64_t gs, bool act_order, std::mt19937& rng) {
    LogicalLayer l;
    l.k = k;
    l.n = n;
    l.group_size = gs == -1 ? k : gs;
    l.num_groups = (k + l.group_size - 1) / l.group_size;
    std::uniform_int_distribution<int> code(0, 15);
    std::uniform_int_distribution<int> zero(1, 15);  // representable in both v1 and v2
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    l.codes.resize(static_cast<std::size_t>(k * n));
    for (auto& q : l.codes) q = static_cast<std::uint8_t>(code(rng));
    l.zeros.resize(static_cast<std::size_t>(l.num_groups * n));
    for (auto& z : l.zeros) z = static_cast<std::uint8_t>(zero(rng));
    l.scales.resize(static_cast<std::size_t>(l.num_groups * n));
    for (auto& s : l.scales) s = float_to_half(scale(rng));
    l.g_idx = act_order ? act_order_g_idx(k, l.group_size, rng) : sequential_g_idx(k, l.group_size);
    return l;
}

GptqLinear build_layer(const LogicalLayer& l,
                       ZeroFormat format,
                       const std::string& name = "model.layers.0.mlp.up_proj") {
    GptqLinear layer;
    layer.name = name;
    layer.k = l.k;
    layer.n = l.n;
    layer.group_size = l.group_size;
    layer.zero_format = format;
    layer.qweight = pack_qweight(l.codes, l.k, l.n);
    layer.qzeros = pack_qzeros(l.zeros, l.num_groups, l.n, format);
    layer.scales = HostBuffer<std::uint16_t>(l.scales.size());
    std::copy(l.scales.begin(), l.scales.end(), layer.scales.begin());
    layer.g_idx = l.g_idx;
    return layer;
}

//! A symmetric layer with every word given: qweight filled with `qword`, qzeros with `zword`, scales with `scale`.
GptqLinear uniform_layer(std::int64_t k,
                         std::int64_t n,
                         std::int64_t gs,
                         std::uint32_t qword,
                         std::uint32_t zword,
                         std::uint16_t scale,
                         ZeroFormat format = ZeroFormat::GptqV1) {
    GptqLinear layer;
    layer.name = "model.layers.3.mlp.down_proj";
    layer.k = k;
    layer.n = n;
    layer.group_size = gs;
    layer.zero_format = format;
    const std::int64_t g = (k + (gs == -1 ? k : gs) - 1) / (gs == -1 ? k : gs);
    layer.qweight = HostBuffer<std::uint32_t>(static_cast<std::size_t>(k / 8 * n));
    std::fill(layer.qweight.begin(), layer.qweight.end(), qword);
    layer.qzeros = HostBuffer<std::uint32_t>(static_cast<std::size_t>(g * (n / 8)));
    std::fill(layer.qzeros.begin(), layer.qzeros.end(), zword);
    layer.scales = HostBuffer<std::uint16_t>(static_cast<std::size_t>(g * n));
    std::fill(layer.scales.begin(), layer.scales.end(), scale);
    return layer;
}

GptqTensorMetas good_metas(std::int64_t k, std::int64_t n, std::int64_t g) {
    GptqTensorMetas m;
    m.qweight = {"I32", {k / 8, n}};
    m.qzeros = {"I32", {g, n / 8}};
    m.scales = {"F16", {g, n}};
    m.g_idx = TensorMeta{"I32", {k}};
    m.bias = TensorMeta{"F16", {n}};
    return m;
}

QuantConfig quant_with_group(std::int64_t gs) {
    QuantConfig q;
    q.group_size = gs;
    return q;
}

// ---- nibble layout (R2.4, R2.5) -----------------------------------------------------------------

TEST(GptqPackTest, QweightWord_UnpacksLowNibbleFirst) {
    // R2.3 worked example: word 0x76543210 holds codes 0..7 for rows 8r..8r+7.
    GptqLinear layer = uniform_layer(32, 32, 32, 0, 0x77777777u, 0x3C00);
    layer.qweight[1 * 32 + 5] = 0x76543210u;  // word row 1, column 5 -> input rows 8..15
    validate_gptq_linear(layer);
    for (int i = 0; i < 8; ++i) {
        EXPECT_EQ(code_at(layer, 8 + i, 5), i) << "row " << 8 + i;
        EXPECT_EQ(code_at(layer, 8 + i, 4), 0) << "neighbouring column must be untouched";
        EXPECT_EQ(code_at(layer, i, 5), 0) << "neighbouring word row must be untouched";
    }
    const auto codes = unpack_qweight(layer.qweight.span(), 32, 32);
    for (int i = 0; i < 8; ++i) EXPECT_EQ(codes[static_cast<std::size_t>((8 + i) * 32 + 5)], i);
    EXPECT_EQ(nibble(0xF0000000u, 7), 15);
    EXPECT_EQ(nibble(0xF0000000u, 6), 0);
}

TEST(GptqPackTest, QzerosWord_V1AddsOne) {
    // 0x77777777 (int32 2004318071) is every symmetric v1 qzeros word: zs = 7, z = 8.
    const auto word = static_cast<std::uint32_t>(std::int32_t{2004318071});
    ASSERT_EQ(word, 0x77777777u);
    GptqLinear v1 = uniform_layer(64, 64, 32, 0x12345678u, word, 0x3C00, ZeroFormat::GptqV1);
    validate_gptq_linear(v1);
    GptqLinear v2 = uniform_layer(64, 64, 32, 0x12345678u, word, 0x3C00, ZeroFormat::GptqV2);
    validate_gptq_linear(v2);
    for (std::int64_t g = 0; g < 2; ++g) {
        for (std::int64_t n = 0; n < 64; ++n) {
            EXPECT_EQ(stored_zero_at(v1, g, n), 7);
            EXPECT_EQ(zero_point_at(v1, g, n), 8);
            EXPECT_EQ(zero_point_at(v2, g, n), 7);
        }
    }
    EXPECT_TRUE(v1.symmetric);
    EXPECT_FALSE(v2.symmetric);
    // Different nibbles along N: column 8c+i reads nibble i.
    GptqLinear mixed = uniform_layer(32, 32, -1, 0, 0x6543210Eu, 0x3C00, ZeroFormat::GptqV2);
    validate_gptq_linear(mixed);
    EXPECT_EQ(zero_point_at(mixed, 0, 8), 14);
    EXPECT_EQ(zero_point_at(mixed, 0, 9), 0);
    EXPECT_EQ(zero_point_at(mixed, 0, 15), 6);
}

TEST(GptqPackTest, RoundTrip_RandomCodes) {
    std::mt19937 rng(1234);
    const std::vector<std::pair<std::int64_t, std::int64_t>> dims{{8, 8}, {32, 32}, {64, 96}, {128, 256}, {256, 40}};
    for (const auto& [k, n] : dims) {
        std::uniform_int_distribution<int> code(0, 15);
        std::vector<std::uint8_t> codes(static_cast<std::size_t>(k * n));
        for (auto& q : codes) q = static_cast<std::uint8_t>(code(rng));
        const auto words = pack_qweight(codes, k, n);
        ASSERT_EQ(words.size(), static_cast<std::size_t>(k / 8 * n));
        EXPECT_EQ(unpack_qweight(words.span(), k, n), codes) << "K=" << k << " N=" << n;
        // Spot-check R2.4 directly on the packed words.
        for (std::int64_t row = 0; row < k; row += 3) {
            const std::int64_t col = (row * 7) % n;
            EXPECT_EQ((words[static_cast<std::size_t>((row / 8) * n + col)] >> (4 * (row % 8))) & 15u,
                      codes[static_cast<std::size_t>(row * n + col)]);
        }
        const std::int64_t g = k / 8;
        std::uniform_int_distribution<int> zero(1, 15);
        std::vector<std::uint8_t> zeros(static_cast<std::size_t>(g * n));
        for (auto& z : zeros) z = static_cast<std::uint8_t>(zero(rng));
        for (ZeroFormat format : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
            const auto zw = pack_qzeros(zeros, g, n, format);
            ASSERT_EQ(zw.size(), static_cast<std::size_t>(g * n / 8));
            EXPECT_EQ(unpack_qzeros(zw.span(), g, n, format), zeros) << to_string(format) << " K=" << k << " N=" << n;
        }
    }
}

TEST(GptqPackTest, QzerosV2_IsV1PlusOnesPerNibble) {
    // R2.9: converting v1 -> v2 adds 0x11111111 per word (no carries when every zs <= 14).
    std::mt19937 rng(77);
    std::uniform_int_distribution<int> zero(1, 15);
    std::vector<std::uint8_t> zeros(4 * 64);
    for (auto& z : zeros) z = static_cast<std::uint8_t>(zero(rng));
    const auto v1 = pack_qzeros(zeros, 4, 64, ZeroFormat::GptqV1);
    const auto v2 = pack_qzeros(zeros, 4, 64, ZeroFormat::GptqV2);
    for (std::size_t i = 0; i < v1.size(); ++i) EXPECT_EQ(v2[i], v1[i] + 0x11111111u) << "word " << i;
}

TEST(GptqPackTest, PackRefuses_UnrepresentableValues) {
    std::vector<std::uint8_t> codes(8 * 8, 3);
    codes[10] = 16;
    expect_error([&] { pack_qweight(codes, 8, 8); }, {"code", "not 4-bit"});
    std::vector<std::uint8_t> zeros(8, 5);
    zeros[2] = 0;  // v1 would have to store -1 (R2.12)
    expect_error([&] { pack_qzeros(zeros, 1, 8, ZeroFormat::GptqV1); }, {"gptq", "1..15"});
    EXPECT_NO_THROW(pack_qzeros(zeros, 1, 8, ZeroFormat::GptqV2));
    expect_error([&] { pack_qweight(codes, 7, 8); }, {"multiple of 8"});
}

// ---- dequantization (R2.10, R2.11) --------------------------------------------------------------

TEST(GptqDequantizeTest, V1AndV2_SameLogicalZeros_GiveIdenticalW) {
    std::mt19937 rng(42);
    for (std::int64_t gs : {32, 64, -1}) {
        const LogicalLayer l = random_logical(128, 96, gs, gs == 32, rng);
        GptqLinear v1 = build_layer(l, ZeroFormat::GptqV1);
        GptqLinear v2 = build_layer(l, ZeroFormat::GptqV2);
        validate_gptq_linear(v1);
        validate_gptq_linear(v2);
        ASSERT_NE(std::vector<std::uint32_t>(v1.qzeros.begin(), v1.qzeros.end()),
                  std::vector<std::uint32_t>(v2.qzeros.begin(), v2.qzeros.end()));
        const auto w1 = dequantize(v1);
        const auto w2 = dequantize(v2);
        ASSERT_EQ(w1, w2) << "group_size " << gs;
        // Both equal the formula applied to the unpacked values.
        for (std::int64_t k = 0; k < l.k; ++k) {
            const auto g = static_cast<std::size_t>(l.g_idx[static_cast<std::size_t>(k)]);
            for (std::int64_t n = 0; n < l.n; ++n) {
                const int q = l.codes[static_cast<std::size_t>(k * l.n + n)];
                const int z = l.zeros[g * static_cast<std::size_t>(l.n) + static_cast<std::size_t>(n)];
                const float s =
                    half_to_float(l.scales[g * static_cast<std::size_t>(l.n) + static_cast<std::size_t>(n)]);
                ASSERT_EQ(w1[static_cast<std::size_t>(k * l.n + n)], round_to_half(s * static_cast<float>(q - z)))
                    << "k=" << k << " n=" << n;
            }
        }
    }
}

TEST(GptqDequantizeTest, Symmetric_MatchesHandComputedValues) {
    // Sym v1: zs = 7 everywhere, z = 8, W = s * (q - 8). Scale 0.5 (fp16 0x3800), codes 0x76543210 / 0xFEDCBA98.
    GptqLinear layer = uniform_layer(32, 32, 32, 0x76543210u, 0x77777777u, 0x3800);
    for (std::int64_t n = 0; n < 32; ++n) layer.qweight[static_cast<std::size_t>(1 * 32 + n)] = 0xFEDCBA98u;
    validate_gptq_linear(layer);
    EXPECT_TRUE(layer.symmetric);
    const auto w = dequantize(layer);
    auto at = [&](std::int64_t k, std::int64_t n) { return w[static_cast<std::size_t>(k * 32 + n)]; };
    EXPECT_EQ(at(0, 0), -4.0f);   // q=0: 0.5 * -8
    EXPECT_EQ(at(3, 17), -2.5f);  // q=3
    EXPECT_EQ(at(7, 31), -0.5f);  // q=7
    EXPECT_EQ(at(8, 2), 0.0f);    // q=8
    EXPECT_EQ(at(13, 9), 2.5f);   // q=13
    EXPECT_EQ(at(15, 4), 3.5f);   // q=15: the largest value, 7s
    EXPECT_EQ(at(16, 4), -4.0f);  // word row 2 again holds 0x76543210
}

TEST(GptqDequantizeTest, Product_RoundsToFp16) {
    // scale fp16(0.1) = 0x2E66 = 0.0999755859375. 7 * s = 0.6998291015625 needs 13 significant bits; fp16 rounds it
    // to 0.69970703125 (1433 * 2^-11). -3 * s = -0.2999267578125 -> -0.2998046875.
    GptqLinear layer = uniform_layer(32, 32, -1, 0, 0, 0x2E66, ZeroFormat::GptqV2);
    layer.qweight[0] = 0x00000007u;  // row 0, column 0: q = 7, z = 0
    layer.qweight[1] = 0x00000000u;  // row 0, column 1: q = 0
    layer.qzeros[0] = 0x00000030u;   // column 1: z = 3; column 0: z = 0
    validate_gptq_linear(layer);
    const auto w = dequantize(layer);
    ASSERT_NE(0.0999755859375f * 7.0f, 0.69970703125f);
    EXPECT_EQ(w[0], 0.69970703125f);
    EXPECT_EQ(w[1], -0.2998046875f);
    // Another scale: fp16(0.0123) = 0x224C = 0.012298583984375; * -13 = -0.159881591796875 -> -0.159912109375.
    layer.scales[2] = 0x224C;
    layer.qzeros[0] = 0x00000D30u;  // column 2: z = 13, q = 0
    const auto w2 = dequantize(layer);
    EXPECT_EQ(w2[2], -0.159912109375f);
}

TEST(GptqDequantizeTest, RefusesWrongOutputSize) {
    GptqLinear layer = uniform_layer(32, 32, 32, 0, 0x77777777u, 0x3C00);
    validate_gptq_linear(layer);
    std::vector<float> w(32 * 31);
    expect_error([&] { dequantize(layer, w); }, {"down_proj", "[32, 32]"});
    GptqLinear unvalidated = uniform_layer(32, 32, 32, 0, 0x77777777u, 0x3C00);
    expect_error([&] { dequantize(unvalidated); }, {"down_proj", "validate_gptq_linear"});
    unvalidated.num_groups = 1;
    unvalidated.g_idx = sequential_g_idx(32, 32);
    unvalidated.scales = HostBuffer<std::uint16_t>(31);
    expect_error([&] { dequantize(unvalidated); }, {"down_proj", "validate_gptq_linear"});
}

// ---- act-order (R2.14-R2.19, R3.1-R3.3) ---------------------------------------------------------

TEST(GptqActOrderTest, Detection_FromContent) {
    std::mt19937 rng(9);
    EXPECT_FALSE(is_act_order(sequential_g_idx(256, 64), 64));
    // R2.15 desc_act g_idx: non-monotonic.
    const auto permuted = act_order_g_idx(256, 64, rng);
    EXPECT_TRUE(is_act_order(permuted, 64));
    EXPECT_NO_THROW(validate_g_idx(permuted, 64, 4, "g_idx"));
    // R2.16 static_groups: groups in original order, identical to k / gs.
    std::vector<std::int32_t> static_groups(256);
    for (int k = 0; k < 256; ++k) static_groups[static_cast<std::size_t>(k)] = k / 64;
    EXPECT_FALSE(is_act_order(static_groups, 64));
    // R2.17: desc_act with group_size -1: all zero, one group.
    const std::vector<std::int32_t> all_zero(256, 0);
    EXPECT_FALSE(is_act_order(all_zero, -1));
    EXPECT_FALSE(is_act_order(all_zero, 256));
    EXPECT_NO_THROW(validate_g_idx(all_zero, 256, 1, "g_idx"));
    EXPECT_EQ(sequential_g_idx(96, -1), std::vector<std::int32_t>(96, 0));
    // One swapped pair is enough.
    auto swapped = sequential_g_idx(256, 64);
    std::swap(swapped[3], swapped[200]);
    EXPECT_TRUE(is_act_order(swapped, 64));
}

TEST(GptqActOrderTest, LayerFlag_TrustsGIdxNotConfig) {
    std::mt19937 rng(5);
    GptqLinear seq = build_layer(random_logical(128, 64, 32, false, rng), ZeroFormat::GptqV1);
    validate_gptq_linear(seq);
    EXPECT_FALSE(seq.act_order);
    GptqLinear ao = build_layer(random_logical(128, 64, 32, true, rng), ZeroFormat::GptqV1);
    validate_gptq_linear(ao);
    EXPECT_TRUE(ao.act_order);
    GptqLinear absent = build_layer(random_logical(128, 64, 32, false, rng), ZeroFormat::GptqV1);
    absent.g_idx.clear();  // very old files: k / gs (R2.17)
    validate_gptq_linear(absent);
    EXPECT_EQ(absent.g_idx, sequential_g_idx(128, 32));
    EXPECT_FALSE(absent.act_order);
}

TEST(GptqActOrderTest, Permutation_IsStableArgsort) {
    std::mt19937 rng(31);
    for (std::int64_t gs : {32, 64, 128}) {
        const auto g_idx = act_order_g_idx(512, gs, rng);
        const std::int64_t groups = 512 / gs;
        const ActOrderPermutation perm = act_order_permutation(g_idx, groups);
        std::vector<std::int32_t> expected(512);
        std::iota(expected.begin(), expected.end(), 0);
        std::stable_sort(expected.begin(), expected.end(), [&](std::int32_t a, std::int32_t b) {
            return g_idx[static_cast<std::size_t>(a)] < g_idx[static_cast<std::size_t>(b)];
        });
        EXPECT_EQ(perm.x_map, expected) << "gs " << gs;
        for (std::size_t j = 0; j < 512; ++j) {
            ASSERT_EQ(perm.inverse[static_cast<std::size_t>(perm.x_map[j])], static_cast<std::int32_t>(j));
            // After sorting, group g is rows [g*gs, (g+1)*gs) (R3.3).
            ASSERT_EQ(g_idx[static_cast<std::size_t>(perm.x_map[j])],
                      static_cast<std::int32_t>(static_cast<std::int64_t>(j) / gs));
        }
    }
    // Ties keep the original order: g_idx [1, 0, 1, 0] -> rows 1, 3, 0, 2.
    const std::vector<std::int32_t> small{1, 0, 1, 0};
    const ActOrderPermutation p = act_order_permutation(small, 2);
    EXPECT_EQ(p.x_map, (std::vector<std::int32_t>{1, 3, 0, 2}));
    EXPECT_EQ(p.inverse, (std::vector<std::int32_t>{2, 0, 3, 1}));
    expect_error([&] { act_order_permutation(small, 1); }, {"g_idx[0] = 1", "out of range"});
}

TEST(GptqActOrderTest, MakeSequential_RowsAreWAtXMap) {
    std::mt19937 rng(2024);
    for (ZeroFormat format : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
        GptqLinear layer = build_layer(random_logical(256, 64, 64, true, rng), format);
        validate_gptq_linear(layer);
        ASSERT_TRUE(layer.act_order);
        const ActOrderPermutation perm = act_order_permutation(layer.g_idx, layer.num_groups);
        const GptqLinear seq = make_sequential(layer, perm);
        EXPECT_FALSE(seq.act_order);
        EXPECT_EQ(seq.g_idx, sequential_g_idx(256, 64));
        const auto w = dequantize(layer);
        const auto w_seq = dequantize(seq);
        for (std::int64_t j = 0; j < 256; ++j) {
            const auto src = static_cast<std::int64_t>(perm.x_map[static_cast<std::size_t>(j)]);
            for (std::int64_t n = 0; n < 64; ++n) {
                ASSERT_EQ(w_seq[static_cast<std::size_t>(j * 64 + n)], w[static_cast<std::size_t>(src * 64 + n)])
                    << "j=" << j << " n=" << n;
            }
        }
        // x . W == x' . W_seq with x'[j] = x[x_map[j]] (R3.4): the same products summed in another order.
        std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
        std::vector<float> x(256);
        for (auto& v : x) v = dist(rng);
        for (std::int64_t n = 0; n < 64; ++n) {
            double y = 0.0, y_seq = 0.0;
            for (std::int64_t k = 0; k < 256; ++k) {
                y += static_cast<double>(x[static_cast<std::size_t>(k)]) * w[static_cast<std::size_t>(k * 64 + n)];
                y_seq += static_cast<double>(x[static_cast<std::size_t>(perm.x_map[static_cast<std::size_t>(k)])]) *
                         w_seq[static_cast<std::size_t>(k * 64 + n)];
            }
            EXPECT_NEAR(y, y_seq, 1e-9) << "n=" << n;
        }
    }
}

// ---- validation of in-memory layers -------------------------------------------------------------

TEST(GptqValidateTest, GIdx_OutOfRange) {
    auto g_idx = sequential_g_idx(128, 32);
    g_idx[77] = 4;
    expect_error([&] { validate_g_idx(g_idx, 32, 4, "model.layers.0.mlp.up_proj.g_idx"); },
                 {"model.layers.0.mlp.up_proj.g_idx", "g_idx[77] = 4", "out of range"});
    g_idx[77] = -1;
    expect_error([&] { validate_g_idx(g_idx, 32, 4, "x.g_idx"); }, {"g_idx[77] = -1", "out of range"});
    std::mt19937 rng(3);
    GptqLinear layer = build_layer(random_logical(128, 32, 32, false, rng), ZeroFormat::GptqV1);
    layer.g_idx[5] = 9;
    expect_error([&] { validate_gptq_linear(layer); }, {"model.layers.0.mlp.up_proj.g_idx", "out of range"});
}

TEST(GptqValidateTest, GIdx_GroupOverfull) {
    auto g_idx = sequential_g_idx(128, 32);
    g_idx[40] = 0;  // group 0 gets 33 rows, group 1 31
    expect_error([&] { validate_g_idx(g_idx, 32, 4, "q.g_idx"); }, {"q.g_idx", "group 0 holds 33 rows", "overfull"});
    // A short group must be the last one: K=96, gs=64 -> groups of 64 and 32, not 32 and 64.
    std::vector<std::int32_t> short_first(96, 1);
    std::fill(short_first.begin(), short_first.begin() + 32, 0);
    expect_error([&] { validate_g_idx(short_first, 64, 2, "q.g_idx"); }, {"group 0 holds 32 rows", "expected 64"});
    std::vector<std::int32_t> short_last(96, 0);
    std::fill(short_last.begin() + 64, short_last.end(), 1);
    EXPECT_NO_THROW(validate_g_idx(short_last, 64, 2, "q.g_idx"));
    expect_error([&] { validate_g_idx(short_last, 64, 3, "q.g_idx"); }, {"3 groups", "G=2"});
}

TEST(GptqValidateTest, V1ZeroNibbleF_Refused) {
    GptqLinear layer = uniform_layer(64, 64, 32, 0x11111111u, 0x77777777u, 0x3C00);
    layer.qzeros[1 * 8 + 2] = 0x7F777777u;  // group 1, columns 16..23, nibble 6 -> column 22
    expect_error([&] { validate_gptq_linear(layer); },
                 {"model.layers.3.mlp.down_proj.qzeros", "group 1 column 22", "0xF", "R2.12"});
    // v2 stores z directly: z = 15 is an ordinary asymmetric zero point.
    GptqLinear v2 = uniform_layer(64, 64, 32, 0x11111111u, 0x77777777u, 0x3C00, ZeroFormat::GptqV2);
    v2.qzeros[1 * 8 + 2] = 0x7F777777u;
    EXPECT_NO_THROW(validate_gptq_linear(v2));
    EXPECT_EQ(zero_point_at(v2, 1, 22), 15);
}

TEST(GptqValidateTest, InMemory_SizeErrorsNameTheTensor) {
    {
        GptqLinear layer = uniform_layer(48, 32, 16, 0, 0x77777777u, 0x3C00);
        expect_error([&] { validate_gptq_linear(layer); }, {"down_proj", "K=48", "multiple of 32"});
    }
    {
        GptqLinear layer = uniform_layer(64, 32, 32, 0, 0x77777777u, 0x3C00);
        layer.qweight = HostBuffer<std::uint32_t>(64 / 4 * 32);  // 8-bit sized
        expect_error([&] { validate_gptq_linear(layer); }, {"down_proj.qweight", "bits=8", "4-bit"});
    }
    {
        GptqLinear layer = uniform_layer(64, 32, 32, 0, 0x77777777u, 0x3C00);
        layer.qzeros = HostBuffer<std::uint32_t>(3 * 4);  // scales hold 2 groups
        expect_error([&] { validate_gptq_linear(layer); }, {"down_proj.qzeros", "12 words", "[2, 4]"});
    }
    {
        GptqLinear layer = uniform_layer(64, 32, 32, 0, 0x77777777u, 0x3C00);
        layer.scales[5] = 0x7C00;
        expect_error([&] { validate_gptq_linear(layer); }, {"down_proj.scales", "infinite"});
    }
    {
        GptqLinear layer = uniform_layer(64, 32, 32, 0, 0x77777777u, 0x3C00);
        layer.bias = HostBuffer<std::uint16_t>(31);
        layer.bias[0] = 0x3C00;
        expect_error([&] { validate_gptq_linear(layer); }, {"down_proj.bias", "[32]"});
    }
}

TEST(GptqValidateTest, Bias_AllZeroDroppedNonZeroKept) {
    GptqLinear zero = uniform_layer(32, 32, 32, 0, 0x77777777u, 0x3C00);
    zero.bias = HostBuffer<std::uint16_t>(32);
    zero.bias[7] = 0x8000;  // -0.0 is still zero
    validate_gptq_linear(zero);
    EXPECT_TRUE(zero.bias.empty());
    GptqLinear kept = uniform_layer(32, 32, 32, 0, 0x77777777u, 0x3C00);
    kept.bias = HostBuffer<std::uint16_t>(32);
    kept.bias[31] = 0x3555;
    validate_gptq_linear(kept);
    ASSERT_EQ(kept.bias.size(), 32u);
    EXPECT_EQ(kept.bias[31], 0x3555);
}

TEST(GptqValidateTest, Geometry_GroupSizeMinusOneIsOneGroup) {
    std::mt19937 rng(8);
    GptqLinear layer = build_layer(random_logical(256, 64, -1, false, rng), ZeroFormat::GptqV1);
    layer.group_size = -1;
    validate_gptq_linear(layer);
    EXPECT_EQ(layer.group_size, 256);
    EXPECT_EQ(layer.num_groups, 1);
    EXPECT_EQ(num_groups_for(11008, 128), 86);
    EXPECT_EQ(num_groups_for(96, 64), 2);
    EXPECT_EQ(effective_group_size(4096, -1), 4096);
    expect_error([] { effective_group_size(4096, 0); }, {"group_size 0", "-1 or > 0"});
}

// ---- validation of header shapes and dtypes (R2.2, R2.3) ----------------------------------------

TEST(GptqMetaTest, Accepts_Llama2_70B_DownProj) {
    // R2.2: down_proj of Llama-2-70B, K = 28672, N = 8192, gs = 128.
    const GptqGeometry geo = check_gptq_tensor_metas("model.layers.0.mlp.down_proj", 28672, 8192, quant_with_group(128),
                                                     good_metas(28672, 8192, 224));
    EXPECT_EQ(geo.group_size, 128);
    EXPECT_EQ(geo.num_groups, 224);
    GptqTensorMetas no_optional = good_metas(4096, 4096, 1);
    no_optional.g_idx.reset();
    no_optional.bias.reset();
    EXPECT_EQ(check_gptq_tensor_metas("q", 4096, 4096, quant_with_group(-1), no_optional).num_groups, 1);
}

TEST(GptqMetaTest, Bits8Shapes_Refused) {
    GptqTensorMetas m = good_metas(4096, 4096, 32);
    m.qweight.shape = {1024, 4096};  // K/4 rows: 8-bit codes
    expect_error(
        [&] { check_gptq_tensor_metas("model.layers.1.self_attn.q_proj", 4096, 4096, quant_with_group(128), m); },
        {"model.layers.1.self_attn.q_proj.qweight", "[1024, 4096]", "bits=8", "[512, 4096]"});
    QuantConfig q8 = quant_with_group(128);
    q8.bits = 8;
    expect_error([&] { check_gptq_tensor_metas("p", 4096, 4096, q8, good_metas(4096, 4096, 32)); }, {"bits=8"});
}

TEST(GptqMetaTest, KNotMultipleOf32_Refused) {
    expect_error([] { check_gptq_tensor_metas("p", 4080, 4096, quant_with_group(-1), good_metas(4080, 4096, 1)); },
                 {"K=4080", "multiple of 32"});
    expect_error([] { check_gptq_tensor_metas("p", 4096, 4104, quant_with_group(-1), good_metas(4096, 4104, 1)); },
                 {"N=4104", "multiple of 32"});
}

TEST(GptqMetaTest, GroupCountMismatch_Refused) {
    GptqTensorMetas m = good_metas(11008, 4096, 86);
    m.qzeros.shape = {85, 512};
    expect_error(
        [&] { check_gptq_tensor_metas("model.layers.3.mlp.down_proj", 11008, 4096, quant_with_group(128), m); },
        {"down_proj.qzeros", "85 groups", "86", "mismatch"});
    m = good_metas(11008, 4096, 86);
    m.qzeros.shape = {86, 4096};
    expect_error(
        [&] { check_gptq_tensor_metas("model.layers.3.mlp.down_proj", 11008, 4096, quant_with_group(128), m); },
        {"down_proj.qzeros", "[86, 4096]", "[86, 512]"});
    // Consistent with each other but not with group_size.
    expect_error([] { check_gptq_tensor_metas("d", 11008, 4096, quant_with_group(64), good_metas(11008, 4096, 86)); },
                 {"d.scales", "86 groups", "G=172"});
    expect_error([] { check_gptq_tensor_metas("d", 4096, 4096, quant_with_group(-1), good_metas(4096, 4096, 32)); },
                 {"d.scales", "32 groups", "G=1", "one group"});
}

TEST(GptqMetaTest, WrongDtypes_Refused) {
    GptqTensorMetas m = good_metas(4096, 4096, 32);
    m.qweight.dtype = "F16";
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.qweight", "dtype F16", "expected I32"});
    m = good_metas(4096, 4096, 32);
    m.qzeros.dtype = "I64";
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.qzeros", "dtype I64", "expected I32"});
    m = good_metas(4096, 4096, 32);
    m.scales.dtype = "BF16";
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.scales", "dtype BF16", "expected F16"});
    m = good_metas(4096, 4096, 32);
    m.g_idx->dtype = "I64";
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.g_idx", "dtype I64", "expected I32"});
    m = good_metas(4096, 4096, 32);
    m.bias->dtype = "F32";
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.bias", "dtype F32", "expected F16"});
}

TEST(GptqMetaTest, WrongShapes_Refused) {
    GptqTensorMetas m = good_metas(4096, 4096, 32);
    m.g_idx->shape = {4095};
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.g_idx", "[4095]", "[4096]"});
    m = good_metas(4096, 4096, 32);
    m.scales.shape = {32, 4096, 1};
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.scales", "[32, 4096, 1]", "rank 2"});
    m = good_metas(4096, 4096, 32);
    m.qweight.shape = {512, 4000};
    expect_error([&] { check_gptq_tensor_metas("l", 4096, 4096, quant_with_group(128), m); },
                 {"l.qweight", "[512, 4000]", "[512, 4096]"});
}

// ---- loading from a checkpoint ------------------------------------------------------------------

//! A unique model directory under the test temp dir, removed afterwards.
class GptqLoadTest : public ::testing::Test {
   protected:
    st_test::ScopedTempDir temp_;  // created per test, removed with its contents afterwards

    //! The entries of one layer as a GPTQ v1 file stores them (qweight/qzeros as I32).
    static void add_layer(std::vector<SafetensorsEntry>& entries,
                          const std::string& prefix,
                          const LogicalLayer& l,
                          bool with_g_idx,
                          const std::vector<std::uint16_t>* bias) {
        const auto qweight = pack_qweight(l.codes, l.k, l.n);
        const auto qzeros = pack_qzeros(l.zeros, l.num_groups, l.n, ZeroFormat::GptqV1);
        entries.push_back(
            make_safetensors_entry<std::uint32_t>(prefix + ".qweight", DType::I32, {l.k / 8, l.n}, qweight.span()));
        entries.push_back(make_safetensors_entry<std::uint32_t>(prefix + ".qzeros", DType::I32, {l.num_groups, l.n / 8},
                                                                qzeros.span()));
        entries.push_back(make_safetensors_entry<std::uint16_t>(prefix + ".scales", DType::F16, {l.num_groups, l.n},
                                                                std::span<const std::uint16_t>(l.scales)));
        if (with_g_idx) {
            entries.push_back(make_safetensors_entry<std::int32_t>(prefix + ".g_idx", DType::I32, {l.k},
                                                                   std::span<const std::int32_t>(l.g_idx)));
        }
        if (bias) {
            entries.push_back(make_safetensors_entry<std::uint16_t>(prefix + ".bias", DType::F16, {l.n},
                                                                    std::span<const std::uint16_t>(*bias)));
        }
    }

    void write(std::vector<SafetensorsEntry> entries) {
        write_safetensors(dir_ / "model.safetensors", std::move(entries));
    }

    const std::filesystem::path& dir_ = temp_.path();
};

TEST_F(GptqLoadTest, LoadsLayers_ActOrderBiasAndMissingGIdx) {
    std::mt19937 rng(606);
    const LogicalLayer q = random_logical(256, 128, 64, true, rng);
    const LogicalLayer k = random_logical(256, 64, 64, false, rng);
    std::vector<std::uint16_t> bias(128);
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = float_to_half(0.01f * static_cast<float>(i + 1));
    const std::vector<std::uint16_t> zero_bias(64, 0);
    std::vector<SafetensorsEntry> entries;
    add_layer(entries, "model.layers.0.self_attn.q_proj", q, true, &bias);
    add_layer(entries, "model.layers.0.self_attn.k_proj", k, false, &zero_bias);
    write(std::move(entries));

    const Checkpoint ckpt = Checkpoint::open(dir_);
    const QuantConfig quant = quant_with_group(64);
    const GptqLinear lq = load_gptq_linear(ckpt, "model.layers.0.self_attn.q_proj", 256, 128, quant);
    EXPECT_EQ(lq.num_groups, 4);
    EXPECT_TRUE(lq.act_order);
    EXPECT_FALSE(lq.symmetric);
    EXPECT_EQ(lq.g_idx, q.g_idx);
    ASSERT_EQ(lq.bias.size(), 128u);
    EXPECT_TRUE(std::equal(lq.bias.begin(), lq.bias.end(), bias.begin()));
    GptqLinear expected = build_layer(q, ZeroFormat::GptqV1);
    validate_gptq_linear(expected);
    EXPECT_EQ(dequantize(lq), dequantize(expected));

    const GptqLinear lk = load_gptq_linear(ckpt, "model.layers.0.self_attn.k_proj", 256, 64, quant);
    EXPECT_TRUE(lk.bias.empty()) << "an all-zero bias is dropped";
    EXPECT_EQ(lk.g_idx, sequential_g_idx(256, 64)) << "a missing g_idx means k / group_size";
    EXPECT_FALSE(lk.act_order);
    GptqLinear expected_k = build_layer(k, ZeroFormat::GptqV1);
    validate_gptq_linear(expected_k);
    EXPECT_EQ(dequantize(lk), dequantize(expected_k));
}

TEST_F(GptqLoadTest, MissingTensor_IsNamed) {
    std::mt19937 rng(1);
    const LogicalLayer l = random_logical(64, 32, 32, false, rng);
    std::vector<SafetensorsEntry> entries;
    add_layer(entries, "model.layers.2.mlp.gate_proj", l, true, nullptr);
    std::erase_if(entries, [](const SafetensorsEntry& e) { return e.name.ends_with(".qzeros"); });
    write(std::move(entries));
    const Checkpoint ckpt = Checkpoint::open(dir_);
    expect_error([&] { load_gptq_linear(ckpt, "model.layers.2.mlp.gate_proj", 64, 32, quant_with_group(32)); },
                 {"model.layers.2.mlp.gate_proj.qzeros", "missing"});
    expect_error([&] { load_gptq_linear(ckpt, "model.layers.9.mlp.gate_proj", 64, 32, quant_with_group(32)); },
                 {"model.layers.9.mlp.gate_proj.qweight", "missing"});
}

TEST_F(GptqLoadTest, FileErrors_NameTheTensor) {
    std::mt19937 rng(2);
    const LogicalLayer l = random_logical(64, 32, 32, false, rng);
    std::vector<SafetensorsEntry> entries;
    add_layer(entries, "a", l, true, nullptr);
    // Layer "b": scales stored as F32.
    add_layer(entries, "b", l, true, nullptr);
    std::vector<float> f32_scales(l.scales.size(), 0.01f);
    std::erase_if(entries, [](const SafetensorsEntry& e) { return e.name == "b.scales"; });
    entries.push_back(
        make_safetensors_entry<float>("b.scales", DType::F32, {l.num_groups, l.n}, std::span<const float>(f32_scales)));
    // Layer "c": a v1 zero nibble 0xF.
    add_layer(entries, "c", l, true, nullptr);
    for (auto& e : entries) {
        // Little-endian word 0 of group 0: byte 2 holds nibbles 4 (low) and 5 (high), i.e. columns 4 and 5.
        if (e.name == "c.qzeros") e.bytes[2] |= std::byte{0xF0};
    }
    write(std::move(entries));
    const Checkpoint ckpt = Checkpoint::open(dir_);
    EXPECT_NO_THROW(load_gptq_linear(ckpt, "a", 64, 32, quant_with_group(32)));
    expect_error([&] { load_gptq_linear(ckpt, "b", 64, 32, quant_with_group(32)); },
                 {"b.scales", "dtype F32", "expected F16"});
    expect_error([&] { load_gptq_linear(ckpt, "c", 64, 32, quant_with_group(32)); }, {"c.qzeros", "column 5", "0xF"});
    expect_error([&] { load_gptq_linear(ckpt, "a", 64, 32, quant_with_group(16)); }, {"a.scales", "G=4"});
    expect_error([&] { load_gptq_linear(ckpt, "a", 64, 64, quant_with_group(32)); }, {"a.qweight", "[8, 64]"});
}

}  // namespace
}  // namespace q4tp::loaders

namespace q4tp::loaders {
namespace {

// Fusing q|k|v (R2.20: same inputs, same g_idx) gives a layer whose weights are the parts' side by side.
TEST(GptqConcatTest, FusedLayerDequantizesToThePartsSideBySide) {
    std::mt19937 rng(20261126);
    const std::int64_t k = 128, gs = 32;
    const std::vector<std::int64_t> widths = {64, 32, 96};
    LogicalLayer first = random_logical(k, widths[0], gs, true, rng);
    std::vector<GptqLinear> parts;
    for (const std::int64_t n : widths) {
        LogicalLayer l = random_logical(k, n, gs, false, rng);
        l.g_idx = first.g_idx;  // one permutation shared, as GPTQ writes q/k/v
        parts.push_back(build_layer(l, ZeroFormat::GptqV1));
        validate_gptq_linear(parts.back());
    }
    std::vector<const GptqLinear*> pointers;
    for (const auto& p : parts) pointers.push_back(&p);
    ASSERT_TRUE(can_concat_columns(pointers));
    const GptqLinear fused = concat_columns(pointers, "qkv");
    EXPECT_EQ(fused.n, 192);
    EXPECT_TRUE(fused.act_order);
    const std::vector<float> w = dequantize(fused);
    std::int64_t column = 0;
    for (const auto& p : parts) {
        const std::vector<float> part = dequantize(p);
        for (std::int64_t r = 0; r < k; ++r) {
            for (std::int64_t c = 0; c < p.n; ++c) {
                ASSERT_EQ(w[static_cast<std::size_t>(r * fused.n + column + c)], part[static_cast<std::size_t>(r * p.n + c)])
                    << "row " << r << " column " << column + c;
            }
        }
        column += p.n;
    }
}

TEST(GptqConcatTest, RefusesPartsWithDifferentGIdx) {
    std::mt19937 rng(7);
    GptqLinear a = build_layer(random_logical(64, 32, 32, true, rng), ZeroFormat::GptqV1);
    GptqLinear b = build_layer(random_logical(64, 32, 32, true, rng), ZeroFormat::GptqV1);
    validate_gptq_linear(a);
    validate_gptq_linear(b);
    const std::vector<const GptqLinear*> pointers = {&a, &b};
    EXPECT_FALSE(can_concat_columns(pointers));
    EXPECT_THROW(concat_columns(pointers, "qkv"), Error);
}

}  // namespace
}  // namespace q4tp::loaders
