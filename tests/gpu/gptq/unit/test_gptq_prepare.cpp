// CPU tests of the GEMV's load-time preparation and launch checks (label unit: no GPU needed, so CI runs them).
// They live beside the GPU suite because they test the same layout the kernels read.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "core/base/error.h"
#include "core/base/half.h"
#include "kernels/cuda/gptq_gemv.h"
#include "kernels/cuda/gptq_prepare.h"
#include "tests/gpu/common/gpu_test_util.h"
#include "tests/gpu/gptq/gptq_test_support.h"

namespace q4tp {
namespace {

namespace kc = kernels::cuda;
using gptq_test::LayerSpec;

kc::GptqSource source_of(const gptq_test::GptqLayer& layer) {
    return gptq_test::source_of(layer, "model.layers.0.mlp.up_proj");
}

// ---- the prepared layout holds exactly the reference weights -------------------------------------

TEST(GptqPrepareTest, DequantizeMatchesReference_Sweep) {
    std::mt19937_64 rng(test::test_seed());
    const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{32, 32}, {96, 8 * 37}, {256, 520}, {384, 64}};
    int checked = 0;
    for (const auto& [k, n] : shapes) {
        for (const std::int64_t gs : {32, 64, 128, -1, 96}) {
            for (const bool act : {false, true}) {
                for (const ZeroFormat fmt : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
                    for (const bool sym : {true, false}) {
                        const LayerSpec spec{k, n, gs, fmt, act, sym};
                        SCOPED_TRACE(spec.str());
                        const auto layer = gptq_test::make_random_layer(spec, rng);
                        const kc::GptqPrepared p = kc::gptq_prepare(source_of(layer));
                        EXPECT_EQ(p.n_padded % 32, 0);
                        EXPECT_GE(p.n_padded, n);
                        const std::vector<float> got = kc::gptq_prepared_dequantize(p);
                        const std::vector<float> want = gptq_test::reference_dequantize(layer, true);
                        ASSERT_EQ(got.size(), want.size());
                        std::size_t bad = 0;
                        for (std::size_t i = 0; i < got.size(); ++i) bad += got[i] != want[i] ? 1 : 0;
                        ASSERT_EQ(bad, 0u) << "first element: got " << got[0] << " want " << want[0];
                        ++checked;
                    }
                }
            }
        }
    }
    EXPECT_EQ(checked, 4 * 5 * 8);
}

// ---- the bit layout the kernel hard-codes --------------------------------------------------------

TEST(GptqPrepareTest, NibbleOrder_KnownWords) {
    // Codes q[k][0] = k % 16, all other columns 0; sym v1 zeros, one group.
    const std::int64_t k = 32, n = 32;
    std::vector<std::uint32_t> qweight(static_cast<std::size_t>(k / 8 * n), 0u);
    for (std::int64_t row = 0; row < k; ++row) {
        qweight[static_cast<std::size_t>((row / 8) * n)] |= static_cast<std::uint32_t>(row % 16) << (4 * (row % 8));
    }
    EXPECT_EQ(qweight[0], 0x76543210u);  // formats.md §2.3 test vector
    std::vector<std::uint32_t> qzeros(n / 8, 0x77777777u);
    std::vector<std::uint16_t> scales(n, float_to_half(1.0f));
    kc::GptqSource s;
    s.k = k;
    s.n = n;
    s.group_size = 32;
    s.qweight = qweight;
    s.qzeros = qzeros;
    s.scales = scales;
    const kc::GptqPrepared p = kc::gptq_prepare(s);
    ASSERT_EQ(p.qweight.size(), 128u);
    // Lane 0 (g = 0, t = 0), word 0 (n16 tile 0, k16 step 0): even nibbles are column 0 at rows 0, 8, 1, 9
    // (codes 0, 8, 1, 9), odd nibbles column 8 (all codes 0).
    EXPECT_EQ(p.qweight[0], 0x09010800u);
    // Word 1 (k16 step 1): rows 16, 24, 17, 25 -> codes 0, 8, 1, 9 again.
    EXPECT_EQ(p.qweight[1], 0x09010800u);
    // Lane 1 (t = 1), word 0: rows 2, 10, 3, 11 -> codes 2, 10, 3, 11.
    EXPECT_EQ(p.qweight[4], 0x0B030A02u);
    // Lane 4 (g = 1) holds columns 1 and 9: all codes zero.
    EXPECT_EQ(p.qweight[16], 0u);
    EXPECT_TRUE(p.perm.empty());
    // Zero points: v1 stored 7 -> effective 8 in every nibble; scales permuted but all equal.
    for (const std::uint32_t z : p.zeros) {
        EXPECT_EQ(z, 0x88888888u);
    }
}

TEST(GptqPrepareTest, ScalesAndZeros_TilePermuted) {
    // Column c = 16 p + 8 h + g of a 32-column tile lands at position 4 g + 2 p + h.
    const std::int64_t k = 32, n = 64;
    std::vector<std::uint32_t> qweight(static_cast<std::size_t>(k / 8 * n), 0u);
    std::vector<std::uint32_t> qzeros(n / 8, 0u);
    std::vector<std::uint16_t> scales(n);
    for (std::int64_t col = 0; col < n; ++col) {
        scales[static_cast<std::size_t>(col)] = float_to_half(static_cast<float>(col + 1));
        qzeros[static_cast<std::size_t>(col / 8)] |= static_cast<std::uint32_t>(col % 15) << (4 * (col % 8));
    }
    kc::GptqSource s;
    s.k = k;
    s.n = n;
    s.group_size = -1;
    s.zero_format = ZeroFormat::GptqV2;
    s.qweight = qweight;
    s.qzeros = qzeros;
    s.scales = scales;
    const kc::GptqPrepared p = kc::gptq_prepare(s);
    for (std::int64_t col = 0; col < n; ++col) {
        const std::int64_t c = col % 32;
        const std::int64_t pos = col / 32 * 32 + 4 * (c % 8) + 2 * (c / 16) + (c / 8) % 2;
        EXPECT_EQ(half_to_float(p.scales[static_cast<std::size_t>(pos)]), static_cast<float>(col + 1)) << col;
        EXPECT_EQ((p.zeros[static_cast<std::size_t>(pos / 8)] >> (4 * (pos % 8))) & 15u,
                  static_cast<std::uint32_t>(col % 15))
            << col;
    }
}

// ---- act-order ------------------------------------------------------------------------------------

TEST(GptqPrepareTest, SortRows_StableArgsort) {
    const std::vector<std::int32_t> g_idx = {2, 0, 1, 0, 2, 1, 0, 2};
    const std::vector<std::int32_t> perm = kc::gptq_sort_rows(g_idx, 3);
    EXPECT_EQ(perm, (std::vector<std::int32_t>{1, 3, 6, 2, 5, 0, 4, 7}));
}

TEST(GptqPrepareTest, Perm_GroupsBecomeContiguous_ActOrder) {
    std::mt19937_64 rng(test::test_seed() + 1);
    const LayerSpec spec{512, 64, 64, ZeroFormat::GptqV1, true, false};
    const auto layer = gptq_test::make_random_layer(spec, rng);
    const kc::GptqPrepared p = kc::gptq_prepare(source_of(layer));
    ASSERT_EQ(p.perm.size(), 512u);
    std::vector<std::int32_t> sorted = p.perm;
    std::sort(sorted.begin(), sorted.end());
    for (std::size_t i = 0; i < sorted.size(); ++i) {
        ASSERT_EQ(sorted[i], static_cast<std::int32_t>(i));
    }
    for (std::size_t j = 0; j < p.perm.size(); ++j) {
        ASSERT_EQ(layer.g_idx[static_cast<std::size_t>(p.perm[j])], static_cast<std::int32_t>(j / 64)) << j;
        if (j % 64 != 0) {
            ASSERT_LT(p.perm[j - 1], p.perm[j]) << "not stable at " << j;
        }
    }
}

TEST(GptqPrepareTest, PermEmpty_SequentialGidx) {
    std::mt19937_64 rng(test::test_seed() + 2);
    auto layer = gptq_test::make_random_layer(LayerSpec{256, 32, 64, ZeroFormat::GptqV1, false, true}, rng);
    EXPECT_TRUE(kc::gptq_prepare(source_of(layer)).perm.empty());
    layer.g_idx.clear();  // an absent g_idx means k / group_size (R2.17)
    EXPECT_TRUE(kc::gptq_prepare(source_of(layer)).perm.empty());
}

// ---- bad input is refused with a message naming the tensor ---------------------------------------

void expect_error(const kc::GptqSource& s, const std::string& fragment) {
    try {
        (void)kc::gptq_prepare(s);
        ADD_FAILURE() << "no error; expected one mentioning '" << fragment << "'";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find(fragment), std::string::npos) << e.message();
        EXPECT_NE(e.message().find("model.layers.0.mlp.up_proj"), std::string::npos) << e.message();
    }
}

TEST(GptqPrepareTest, Throws_BadInput) {
    std::mt19937_64 rng(test::test_seed() + 3);
    const auto layer = gptq_test::make_random_layer(LayerSpec{128, 64, 32, ZeroFormat::GptqV1, true, false}, rng);
    {
        auto s = source_of(layer);
        s.k = 120;
        expect_error(s, "K = 120");
    }
    {
        auto s = source_of(layer);
        s.n = 60;
        expect_error(s, "N = 60");
    }
    {
        auto s = source_of(layer);
        s.group_size = 48;
        expect_error(s, "group_size 48");
    }
    {
        auto s = source_of(layer);
        s.qweight = s.qweight.subspan(1);
        expect_error(s, "qweight holds");
    }
    {
        auto s = source_of(layer);
        s.scales = s.scales.subspan(0, s.scales.size() - 1);
        expect_error(s, "scales holds");
    }
    {
        auto g_idx = layer.g_idx;
        g_idx[5] = 4;  // G = 4
        auto s = source_of(layer);
        s.g_idx = g_idx;
        expect_error(s, "g_idx[5] = 4");
    }
    {
        auto qzeros = layer.qzeros;
        qzeros[3] |= 0xF0u;  // column 25 of group 0 (v1): the ambiguous stored nibble 0xF
        auto s = source_of(layer);
        s.qzeros = qzeros;
        expect_error(s, "0xF");
    }
}

// ---- row shards of act-order layers (tensor parallelism): groups padded to whole k-blocks ------------

TEST(GptqRowLayoutTest, ExactGroups_NoPaddingNoTable) {
    std::mt19937_64 rng(test::test_seed() + 20);
    const auto layer = gptq_test::make_random_layer(LayerSpec{512, 64, 128, ZeroFormat::GptqV1, true, false}, rng);
    const kc::GptqRowLayout l = kc::gptq_row_layout(layer.g_idx, layer.num_groups, 128);
    EXPECT_EQ(l.k_rows, 512);
    EXPECT_TRUE(l.block_groups.empty());
    EXPECT_EQ(l.perm, kc::gptq_sort_rows(layer.g_idx, layer.num_groups));
    std::vector<std::int32_t> seq(64);
    for (std::size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<std::int32_t>(i / 32);
    const kc::GptqRowLayout s = kc::gptq_row_layout(seq, 2, 32);
    EXPECT_TRUE(s.perm.empty()) << "sequential g_idx needs no permutation";
    EXPECT_TRUE(s.block_groups.empty());
}

TEST(GptqRowLayoutTest, ShardOfActOrder_GroupsPaddedToBlocks) {
    std::mt19937_64 rng(test::test_seed() + 21);
    const auto full = gptq_test::make_random_layer(LayerSpec{2048, 64, 128, ZeroFormat::GptqV1, true, false}, rng);
    const auto shard = gptq_test::row_shard(full, 1024, 2048);
    const kc::GptqRowLayout l = kc::gptq_row_layout(shard.g_idx, full.num_groups, 128);
    ASSERT_GT(l.k_rows, 1024);
    ASSERT_EQ(l.k_rows % 32, 0);
    ASSERT_EQ(l.perm.size(), static_cast<std::size_t>(l.k_rows));
    ASSERT_EQ(l.block_groups.size(), static_cast<std::size_t>(l.k_rows / 32));
    // Every local row appears once; filler rows are -1; each block's real rows belong to the block's group, the
    // groups come in increasing order, rows of a group keep their order, and the last block of a group is flagged.
    std::vector<int> seen(1024, 0);
    int previous_group = -1;
    for (std::int64_t b = 0; b < l.k_rows / 32; ++b) {
        const std::int32_t entry = l.block_groups[static_cast<std::size_t>(b)];
        const std::int32_t group = entry & ~kc::kGptqLastBlockOfGroup;
        const bool last = entry < 0;
        ASSERT_GE(group, previous_group);
        const bool next_differs = b + 1 == l.k_rows / 32 || (l.block_groups[static_cast<std::size_t>(b + 1)] &
                                                             ~kc::kGptqLastBlockOfGroup) != group;
        EXPECT_EQ(last, next_differs) << "block " << b;
        previous_group = group;
        std::int32_t previous_row = -1;
        for (std::int64_t i = 0; i < 32; ++i) {
            const std::int32_t row = l.perm[static_cast<std::size_t>(b * 32 + i)];
            if (row < 0) continue;
            ASSERT_LT(row, 1024);
            EXPECT_EQ(shard.g_idx[static_cast<std::size_t>(row)], group);
            EXPECT_GT(row, previous_row);
            previous_row = row;
            ++seen[static_cast<std::size_t>(row)];
        }
    }
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 1024);
}

TEST(GptqPrepareTest, DequantizeMatchesReference_RowShards) {
    std::mt19937_64 rng(test::test_seed() + 22);
    int padded = 0;
    for (const std::int64_t gs : {32, 64, 128}) {
        for (const bool act : {true, false}) {
            for (const auto& [begin, end] :
                 std::vector<std::pair<std::int64_t, std::int64_t>>{{0, 512}, {512, 1024}, {224, 800}, {992, 1024}}) {
                const LayerSpec spec{1024, 8 * 37, gs, ZeroFormat::GptqV2, act, false};
                SCOPED_TRACE(spec.str() + " rows [" + std::to_string(begin) + ", " + std::to_string(end) + ")");
                const auto shard = gptq_test::row_shard(gptq_test::make_random_layer(spec, rng), begin, end);
                const kc::GptqPrepared p = kc::gptq_prepare(source_of(shard));
                padded += p.k_rows > p.k ? 1 : 0;
                EXPECT_EQ(p.num_groups, 1024 / gs) << "a shard keeps every group's scales";
                ASSERT_EQ(kc::gptq_prepared_dequantize(p), gptq_test::reference_dequantize(shard, true));
            }
        }
    }
    EXPECT_GE(padded, 9) << "act-order shards must exercise the padded layout";
}

// ---- launch plan and launcher preconditions (checked before any CUDA call) ------------------------

TEST(GptqGemvPlanTest, SlicesCoverK_AndFitWorkspace) {
    const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {
        {32, 32},      {96, 296},     {4096, 4096},  {4096, 12288}, {11008, 4096}, {4096, 22016},
        {13824, 5120}, {8192, 57344}, {28672, 8192}, {8192, 1024},  {1 << 20, 32}};
    for (const auto& [k, n] : shapes) {
        for (int m = 1; m <= kc::kGptqGemvMaxM; ++m) {
            const kc::GptqGemvPlan plan = kc::gptq_gemv_plan(m, k, n);
            SCOPED_TRACE("m=" + std::to_string(m) + " K=" + std::to_string(k) + " N=" + std::to_string(n));
            EXPECT_EQ(plan.n_tiles, (n + 255) / 256);
            EXPECT_EQ(plan.blocks_per_split % 8, 0);
            EXPECT_GE(static_cast<std::int64_t>(plan.splits) * plan.blocks_per_split * 32, k);
            EXPECT_LT(static_cast<std::int64_t>(plan.splits - 1) * plan.blocks_per_split * 32, k);
            EXPECT_LE(plan.smem_bytes, 48 * 1024);
            const std::size_t partials =
                plan.splits > 1 ? static_cast<std::size_t>(plan.splits) * m * ((n + 31) / 32 * 32) * 4 : 0;
            EXPECT_LE(partials, kc::gptq_gemv_workspace_bytes(m, k, n));
            EXPECT_LE(kc::gptq_gemv_workspace_bytes(m, k, n), kc::gptq_gemv_workspace_bytes(kc::kGptqGemvMaxM, k, n));
            EXPECT_LE(kc::gptq_gemv_workspace_bytes(kc::kGptqGemvMaxM, k, n), kc::gptq_gemv_workspace_bytes());
        }
    }
    // A small-N layer is split along K so that the GPU has enough CTAs.
    EXPECT_GT(kc::gptq_gemv_plan(1, 4096, 4096).splits, 1);
}

// The split-K plan runs whole waves of 264 resident CTAs (2 per SM x 132): on the Llama-2 decode shapes (whole layers
// and one rank's share at TP=2) that is a single wave at least 70% full. A partial second wave (the former
// "4 CTAs per SM" plan gave 320 CTAs for 70B q|k|v at TP=2) cost 4-20% of decode speed.
TEST(GptqGemvPlanTest, LlamaShapesRunOneWellFilledWave) {
    const std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {
        {4096, 12288}, {4096, 4096},  {4096, 22016}, {11008, 4096},  // 7B q|k|v, o, gate|up, down
        {5120, 15360}, {5120, 5120},  {5120, 27648}, {13824, 5120},  // 13B
        {8192, 10240}, {8192, 8192},  {8192, 57344}, {28672, 8192},  // 70B
        {8192, 5120},  {4096, 8192},  {5120, 8192},  {8192, 28672},  {14336, 8192}};  // 70B TP=2 (o padded or not)
    for (const auto& [k, n] : shapes) {
        const kc::GptqGemvPlan plan = kc::gptq_gemv_plan(1, k, n);
        const int ctas = plan.n_tiles * plan.splits;
        EXPECT_LE(ctas, 264) << "K=" << k << " N=" << n << ": " << plan.splits << " slices";
        EXPECT_GE(ctas, 185) << "K=" << k << " N=" << n << ": " << plan.splits << " slices";
    }
}

TEST(GptqGemvArgsTest, Throws_BadArguments) {
    // Fake but aligned device addresses: every check below fires before anything touches the GPU.
    alignas(16) static std::uint32_t words[64];
    alignas(16) static std::uint16_t halves[16384];
    kc::GptqGemvParams good;
    good.weights.qweight = words;
    good.weights.scales = reinterpret_cast<const __half*>(halves);
    good.weights.zeros = words;
    good.weights.k = 4096;
    good.weights.n = 4096;
    good.weights.group_size = 128;
    good.m = 1;
    good.x = reinterpret_cast<const __half*>(halves);
    good.y = reinterpret_cast<__half*>(halves + 8192);  // after x's 4096 halves, never dereferenced
    good.workspace = words;
    good.workspace_bytes = 0;  // too small: the last check, so each case below fails earlier for its own reason

    const auto expect_throw = [](kc::GptqGemvParams p, const std::string& fragment) {
        try {
            kc::gptq_gemv(p, nullptr);
            ADD_FAILURE() << "no error; expected '" << fragment << "'";
        } catch (const Error& e) {
            EXPECT_NE(e.message().find(fragment), std::string::npos) << e.message();
        }
    };
    expect_throw(good, "workspace");
    auto p = good;
    p.m = 0;
    expect_throw(p, "m = 0");
    p.m = 9;
    expect_throw(p, "m = 9");
    p = good;
    p.weights.k = 4008;
    expect_throw(p, "K = 4008");
    p = good;
    p.weights.n = 4092;
    expect_throw(p, "N = 4092");
    p = good;
    p.weights.group_size = -1;
    expect_throw(p, "group_size = -1");
    p = good;
    p.weights.qweight = words + 1;
    expect_throw(p, "16-byte aligned");
    p = good;
    p.weights.scales = reinterpret_cast<const __half*>(halves + 1);
    expect_throw(p, "8-byte aligned");
    p = good;
    p.weights.k_rows = 4128;  // filler rows without a block-group table
    expect_throw(p, "filler rows need a block-group table");
    p.weights.k_rows = 4100;
    expect_throw(p, "K_rows = 4100");
    p = good;
    static const std::int32_t table[128] = {};
    p.weights.block_groups = table;  // a table without the permutation that places the rows
    expect_throw(p, "a table needs the row permutation");
    p = good;
    p.x = nullptr;
    expect_throw(p, "x ");
    p = good;
    p.ldy = 100;
    expect_throw(p, "ldy");
    p = good;
    p.y = const_cast<__half*>(p.x) + 10;
    expect_throw(p, "overlap");
    p = good;
    p.workspace = reinterpret_cast<char*>(words) + 4;
    p.workspace_bytes = kc::gptq_gemv_workspace_bytes();
    expect_throw(p, "16-byte aligned");

    kc::GptqDequantParams d;
    d.weights = good.weights;
    d.w = nullptr;
    d.ldw = 4096;
    try {
        kc::gptq_dequantize(d, nullptr);
        ADD_FAILURE() << "no error for a null output";
    } catch (const Error& e) {
        EXPECT_NE(e.message().find("output"), std::string::npos) << e.message();
    }
}

TEST(GptqDequantArgsTest, Throws_BadColumnSlices) {
    // Fake but aligned device addresses: the slice checks fire before anything touches the GPU.
    alignas(16) static std::uint32_t words[64];
    alignas(16) static std::uint16_t halves[64];
    kc::GptqDequantParams p;
    p.weights.qweight = words;
    p.weights.scales = reinterpret_cast<const __half*>(halves);
    p.weights.zeros = words;
    p.weights.k = 4096;
    p.weights.n = 1024;
    p.weights.group_size = 128;
    p.w = reinterpret_cast<__half*>(halves);
    p.ldw = 1024;
    const auto expect_throw = [](const kc::GptqDequantParams& params, const std::string& fragment) {
        try {
            kc::gptq_dequantize(params, nullptr);
            ADD_FAILURE() << "no error; expected '" << fragment << "'";
        } catch (const Error& e) {
            EXPECT_NE(e.message().find(fragment), std::string::npos) << e.message();
        }
    };
    auto q = p;
    q.column_begin = 128;  // not a multiple of kGptqDequantColumnStep
    expect_throw(q, "columns [128, 1024) of N = 1024");
    q = p;
    q.column_begin = 768;
    q.columns = 512;  // past N
    expect_throw(q, "columns [768, 1280) of N = 1024");
    q = p;
    q.column_begin = 256;
    q.columns = 256;
    q.ldw = 200;  // narrower than the slice
    expect_throw(q, "ldw >= 256 columns");
}

}  // namespace
}  // namespace q4tp
