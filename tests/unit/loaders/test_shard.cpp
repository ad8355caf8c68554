#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <numeric>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/base/half.h"
#include "loaders/checkpoint.h"
#include "loaders/config_json.h"
#include "loaders/gptq.h"
#include "loaders/quant_config.h"
#include "loaders/safetensors_writer.h"
#include "loaders/shard.h"
#include "tests/unit/loaders/st_test_util.h"

namespace q4tp::loaders {
namespace {

using st_test::act_order_g_idx;
using st_test::expect_error;

// ---- helpers ------------------------------------------------------------------------------------

struct LayerSpec {
    std::string name = "model.layers.0.mlp.down_proj";
    std::int64_t k = 0;
    std::int64_t n = 0;
    std::int64_t group_size = 128;  // as configured, -1 allowed
    bool act_order = false;
    ZeroFormat format = ZeroFormat::GptqV1;
    bool bias = false;
};

//! A validated layer with random codes, zero points, scales (and bias); act-order g_idx from a random permutation.
GptqLinear random_layer(const LayerSpec& spec, std::mt19937& rng) {
    const std::int64_t gs = spec.group_size == -1 ? spec.k : spec.group_size;
    const std::int64_t groups = (spec.k + gs - 1) / gs;
    std::uniform_int_distribution<int> code(0, 15);
    std::uniform_int_distribution<int> zero(spec.format == ZeroFormat::GptqV1 ? 1 : 0, 15);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    std::uniform_real_distribution<float> bias(-1.0f, 1.0f);
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(spec.k * spec.n));
    for (auto& q : codes) q = static_cast<std::uint8_t>(code(rng));
    std::vector<std::uint8_t> zeros(static_cast<std::size_t>(groups * spec.n));
    for (auto& z : zeros) z = static_cast<std::uint8_t>(zero(rng));

    GptqLinear layer;
    layer.name = spec.name;
    layer.k = spec.k;
    layer.n = spec.n;
    layer.group_size = spec.group_size;
    layer.zero_format = spec.format;
    layer.qweight = pack_qweight(codes, spec.k, spec.n);
    layer.qzeros = pack_qzeros(zeros, groups, spec.n, spec.format);
    layer.scales = HostBuffer<std::uint16_t>(static_cast<std::size_t>(groups * spec.n));
    for (auto& s : layer.scales) s = float_to_half(scale(rng));
    layer.g_idx = spec.act_order ? act_order_g_idx(spec.k, gs, rng) : sequential_g_idx(spec.k, gs);
    if (spec.bias) {
        layer.bias = HostBuffer<std::uint16_t>(static_cast<std::size_t>(spec.n));
        for (auto& b : layer.bias) b = float_to_half(bias(rng));
    }
    validate_gptq_linear(layer);
    return layer;
}

ModelConfig make_config(
    std::int64_t hidden, std::int64_t ffn, std::int64_t heads, std::int64_t kv_heads, std::int64_t head_dim) {
    ModelConfig c;
    c.hidden_size = hidden;
    c.intermediate_size = ffn;
    c.num_attention_heads = heads;
    c.num_key_value_heads = kv_heads;
    c.head_dim = head_dim;
    return c;
}

QuantConfig make_quant(std::int64_t group_size, ZeroFormat format = ZeroFormat::GptqV1) {
    QuantConfig q;
    q.group_size = group_size;
    q.zero_format = format;
    return q;
}

std::string role_name(LinearRole role, int layer_index = 0) {
    const std::string prefix = "model.layers." + std::to_string(layer_index);
    switch (role) {
        case LinearRole::QueryProj:
        case LinearRole::KeyProj:
        case LinearRole::ValueProj:
        case LinearRole::OutputProj:
            return prefix + ".self_attn." + to_string(role);
        case LinearRole::GateProj:
        case LinearRole::UpProj:
        case LinearRole::DownProj:
            return prefix + ".mlp." + to_string(role);
    }
    return "";
}

//! A random layer of the shape the config gives the role.
GptqLinear random_role_layer(LinearRole role,
                             const ModelConfig& config,
                             const QuantConfig& quant,
                             bool act_order,
                             std::mt19937& rng,
                             bool bias = false) {
    const LinearDims dims = linear_dims(role, config);
    return random_layer({role_name(role), dims.k, dims.n, quant.group_size, act_order, quant.zero_format, bias}, rng);
}

//! Columns `cols` of a row-major [k][n] matrix.
std::vector<float> column_block(const std::vector<float>& w, std::int64_t k, std::int64_t n, IndexRange cols) {
    std::vector<float> out;
    out.reserve(static_cast<std::size_t>(k * cols.size()));
    for (std::int64_t r = 0; r < k; ++r)
        for (std::int64_t c = cols.begin; c < cols.end; ++c) out.push_back(w[static_cast<std::size_t>(r * n + c)]);
    return out;
}

//! Rows `rows` of a row-major [*][n] matrix.
std::vector<float> row_block(const std::vector<float>& w, std::int64_t n, IndexRange rows) {
    return {w.begin() + rows.begin * n, w.begin() + rows.end * n};
}

//! The position -> index map `order` (empty = the identity) read at `range`.
std::vector<std::int64_t> ordered(std::span<const std::int32_t> order, IndexRange range) {
    std::vector<std::int64_t> out;
    for (std::int64_t i = range.begin; i < range.end; ++i)
        out.push_back(order.empty() ? i : order[static_cast<std::size_t>(i)]);
    return out;
}

//! Columns order[cols] of a row-major [k][n] matrix.
std::vector<float> column_gather(
    const std::vector<float>& w, std::int64_t k, std::int64_t n, std::span<const std::int32_t> order, IndexRange cols) {
    const std::vector<std::int64_t> picked = ordered(order, cols);
    std::vector<float> out;
    for (std::int64_t r = 0; r < k; ++r)
        for (const std::int64_t c : picked) out.push_back(w[static_cast<std::size_t>(r * n + c)]);
    return out;
}

//! Rows order[rows] of a row-major [*][n] matrix.
std::vector<float> row_gather(const std::vector<float>& w,
                              std::int64_t n,
                              std::span<const std::int32_t> order,
                              IndexRange rows) {
    std::vector<float> out;
    for (const std::int64_t r : ordered(order, rows)) out.insert(out.end(), w.begin() + r * n, w.begin() + (r + 1) * n);
    return out;
}

std::vector<std::int32_t> random_permutation(std::int64_t n, std::mt19937& rng) {
    std::vector<std::int32_t> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    return order;
}

std::vector<double> random_x(std::int64_t m, std::int64_t k, std::mt19937& rng) {
    std::uniform_real_distribution<double> dist(-1.0, 1.0);
    std::vector<double> x(static_cast<std::size_t>(m * k));
    for (auto& v : x) v = dist(rng);
    return x;
}

//! y[m][n] += x[m][cols of x] . w[k_local][n] in float64, x read at columns [x_begin, x_begin + k_local).
void accumulate(const std::vector<double>& x,
                std::int64_t m,
                std::int64_t ldx,
                std::int64_t x_begin,
                const std::vector<float>& w,
                std::int64_t k_local,
                std::int64_t n,
                std::vector<double>& y) {
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t kk = 0; kk < k_local; ++kk) {
            const double xv = x[static_cast<std::size_t>(i * ldx + x_begin + kk)];
            for (std::int64_t c = 0; c < n; ++c)
                y[static_cast<std::size_t>(i * n + c)] += xv * w[static_cast<std::size_t>(kk * n + c)];
        }
}

void add_bias(const HostBuffer<std::uint16_t>& bias, std::int64_t m, std::int64_t n, std::vector<double>& y) {
    if (bias.empty()) return;
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t c = 0; c < n; ++c)
            y[static_cast<std::size_t>(i * n + c)] += half_to_float(bias[static_cast<std::size_t>(c)]);
}

//! The Llama MLP in float64: y [m][H] = (silu(x . G + bg) * (x . U + bu)) . D + bd for x [m][H], from the
//! dequantized layers (gate/up [H][I], down [I][H], any I).
std::vector<double> mlp(const std::vector<double>& x,
                        std::int64_t m,
                        const GptqLinear& gate,
                        const GptqLinear& up,
                        const GptqLinear& down) {
    const std::int64_t h = gate.k;
    const std::int64_t ffn = gate.n;
    std::vector<double> g(static_cast<std::size_t>(m * ffn), 0.0);
    std::vector<double> u(g.size(), 0.0);
    accumulate(x, m, h, 0, dequantize(gate), h, ffn, g);
    add_bias(gate.bias, m, ffn, g);
    accumulate(x, m, h, 0, dequantize(up), h, ffn, u);
    add_bias(up.bias, m, ffn, u);
    for (std::size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    std::vector<double> y(static_cast<std::size_t>(m * down.n), 0.0);
    accumulate(g, m, ffn, 0, dequantize(down), ffn, down.n, y);
    add_bias(down.bias, m, down.n, y);
    return y;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double rtol) {
    ASSERT_EQ(got.size(), want.size());
    int reported = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(std::isfinite(got[i])) << "index " << i;
        if (std::abs(got[i] - want[i]) > 1e-9 + rtol * std::abs(want[i]) && reported++ < 5) {
            ADD_FAILURE() << "index " << i << ": sum of rank partials " << got[i] << " vs unsharded " << want[i];
        }
    }
}

template <typename T>
std::vector<T> to_vector(const HostBuffer<T>& b) {
    return {b.begin(), b.end()};
}

void expect_same_layer(const GptqLinear& a, const GptqLinear& b) {
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.k, b.k);
    EXPECT_EQ(a.n, b.n);
    EXPECT_EQ(a.group_size, b.group_size);
    EXPECT_EQ(a.num_groups, b.num_groups);
    EXPECT_EQ(a.zero_format, b.zero_format);
    EXPECT_EQ(a.act_order, b.act_order);
    EXPECT_EQ(a.symmetric, b.symmetric);
    EXPECT_EQ(to_vector(a.qweight), to_vector(b.qweight)) << a.name << ".qweight";
    EXPECT_EQ(to_vector(a.qzeros), to_vector(b.qzeros)) << a.name << ".qzeros";
    EXPECT_EQ(to_vector(a.scales), to_vector(b.scales)) << a.name << ".scales";
    EXPECT_EQ(a.g_idx, b.g_idx) << a.name << ".g_idx";
    EXPECT_EQ(to_vector(a.bias), to_vector(b.bias)) << a.name << ".bias";
}

//! Every rank's column shard of `full`: each dequantizes to exactly its column slice of the whole, g_idx is
//! replicated, and the distinct ranges tile [0, N) in rank order.
void check_column_shards(
    const GptqLinear& full, LinearRole role, const ModelConfig& config, const QuantConfig& quant, int size) {
    SCOPED_TRACE(std::string(to_string(role)) + " at size " + std::to_string(size));
    const std::vector<float> w = dequantize(full);
    std::vector<float> concatenated_per_row(static_cast<std::size_t>(full.k * full.n));
    std::int64_t covered = 0;
    for (int rank = 0; rank < size; ++rank) {
        const SplitPlan plan = plan_split(full.name, role, config, quant, rank, size);
        const ColumnShard shard = column_shard(full, plan);
        ASSERT_EQ(shard.columns, plan.range);
        ASSERT_EQ(shard.layer.n, plan.range.size());
        EXPECT_EQ(shard.layer.k, full.k);
        EXPECT_EQ(shard.layer.g_idx, full.g_idx);
        EXPECT_EQ(shard.layer.act_order, full.act_order);
        const std::vector<float> w_shard = dequantize(shard.layer);
        EXPECT_EQ(w_shard, column_block(w, full.k, full.n, plan.range)) << "rank " << rank;
        if (!full.bias.empty()) {
            ASSERT_EQ(shard.layer.bias.size(), static_cast<std::size_t>(plan.range.size()));
            for (std::int64_t c = 0; c < plan.range.size(); ++c)
                EXPECT_EQ(shard.layer.bias[static_cast<std::size_t>(c)],
                          full.bias[static_cast<std::size_t>(plan.range.begin + c)]);
        }
        if (plan.range.begin == covered) {  // replicated ranks repeat the range; copy each range once
            for (std::int64_t r = 0; r < full.k; ++r)
                for (std::int64_t c = 0; c < plan.range.size(); ++c)
                    concatenated_per_row[static_cast<std::size_t>(r * full.n + plan.range.begin + c)] =
                        w_shard[static_cast<std::size_t>(r * plan.range.size() + c)];
            covered = plan.range.end;
        } else {
            EXPECT_GT(shard.replicas, 1) << "rank " << rank << " range does not continue the previous one";
            EXPECT_LT(plan.range.begin, covered);
        }
    }
    EXPECT_EQ(covered, full.n);
    EXPECT_EQ(concatenated_per_row, w);
}

//! Every rank's row shard of `full`: each dequantizes to exactly its rows of the whole, the ranges tile [0, K),
//! and the sum over ranks of x_r . W_r (+ bias on rank 0) equals x . W + bias in float64.
std::vector<RowShard> check_row_shards(const GptqLinear& full,
                                       LinearRole role,
                                       const ModelConfig& config,
                                       const QuantConfig& quant,
                                       int size,
                                       std::mt19937& rng) {
    SCOPED_TRACE(std::string(to_string(role)) + " at size " + std::to_string(size));
    const std::vector<float> w = dequantize(full);
    const std::int64_t m = 3;
    const std::vector<double> x = random_x(m, full.k, rng);
    std::vector<double> want(static_cast<std::size_t>(m * full.n), 0.0);
    accumulate(x, m, full.k, 0, w, full.k, full.n, want);
    add_bias(full.bias, m, full.n, want);

    std::vector<double> sum(want.size(), 0.0);
    std::vector<RowShard> shards;
    std::int64_t next = 0;
    for (int rank = 0; rank < size; ++rank) {
        const SplitPlan plan = plan_split(full.name, role, config, quant, rank, size);
        RowShard shard = row_shard(full, plan);
        EXPECT_EQ(shard.rows, plan.range);
        EXPECT_EQ(shard.rows.begin, next) << "rank " << rank;
        next = shard.rows.end;
        EXPECT_EQ(shard.layer.k, plan.range.size());
        EXPECT_EQ(shard.layer.n, full.n);
        EXPECT_EQ(shard.all_groups, full.act_order);
        const std::vector<float> w_shard = dequantize(shard.layer);
        EXPECT_EQ(w_shard, row_block(w, full.n, plan.range)) << "rank " << rank;
        std::vector<double> partial(want.size(), 0.0);
        accumulate(x, m, full.k, plan.range.begin, w_shard, shard.layer.k, full.n, partial);
        add_bias(shard.layer.bias, m, full.n, partial);
        for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += partial[i];
        shards.push_back(std::move(shard));
    }
    EXPECT_EQ(next, full.k);
    expect_close(sum, want, 1e-5);
    return shards;
}

//! The MLP cut in its intermediate order P = ffn_order(down) for every rank of `size`, as CheckpointWeights loads
//! it: gate/up shards are exactly the columns P[range] of the whole, down shards exactly the rows P[range] and an
//! in-order layer (sequential g_idx, its own groups), gate|up still fuse, and the sum over ranks of
//! down_r(silu(gate_r x) * up_r x) equals the unsharded MLP.
void check_mlp_by_order(const GptqLinear& gate,
                        const GptqLinear& up,
                        const GptqLinear& down,
                        const ModelConfig& config,
                        const QuantConfig& quant,
                        int size,
                        std::mt19937& rng) {
    SCOPED_TRACE("MLP at size " + std::to_string(size));
    const std::vector<std::int32_t> order = ffn_order(down);
    EXPECT_EQ(order.empty(), !down.act_order);
    const std::int64_t m = 2;
    const std::int64_t h = config.hidden_size;
    const std::int64_t ffn = config.intermediate_size;
    const std::vector<double> x = random_x(m, h, rng);
    const std::vector<double> want = mlp(x, m, gate, up, down);
    const std::vector<float> w_gate = dequantize(gate);
    const std::vector<float> w_down = dequantize(down);
    std::vector<double> sum(want.size(), 0.0);
    std::int64_t next = 0;
    for (int rank = 0; rank < size; ++rank) {
        SCOPED_TRACE("rank " + std::to_string(rank));
        const SplitPlan gate_plan = plan_split(gate.name, LinearRole::GateProj, config, quant, rank, size);
        const SplitPlan up_plan = plan_split(up.name, LinearRole::UpProj, config, quant, rank, size);
        const SplitPlan down_plan = plan_split(down.name, LinearRole::DownProj, config, quant, rank, size);
        const ColumnShard gate_shard = column_shard(gate, gate_plan, order);
        const ColumnShard up_shard = column_shard(up, up_plan, order);
        const RowShard down_shard = row_shard(down, down_plan, order);
        EXPECT_EQ(down_shard.rows.begin, next);
        next = down_shard.rows.end;
        EXPECT_EQ(gate_shard.columns, down_shard.rows);
        EXPECT_EQ(gate_shard.layer.g_idx, gate.g_idx) << "gate's g_idx is over the hidden size: unchanged";
        EXPECT_EQ(dequantize(gate_shard.layer), column_gather(w_gate, h, ffn, order, gate_plan.range));
        EXPECT_EQ(dequantize(down_shard.layer), row_gather(w_down, h, order, down_plan.range));

        const GptqLinear& local = down_shard.layer;
        EXPECT_FALSE(local.act_order);
        EXPECT_FALSE(down_shard.all_groups);
        EXPECT_EQ(local.g_idx, sequential_g_idx(local.k, local.group_size));
        const std::int64_t gs = down.group_size;
        EXPECT_EQ(down_shard.groups, (IndexRange{down_plan.range.begin / gs, (down_plan.range.end + gs - 1) / gs}));
        EXPECT_EQ(local.num_groups, down_shard.groups.size());
        EXPECT_EQ(local.scales.size(), static_cast<std::size_t>(down_shard.groups.size() * down.n));
        EXPECT_EQ(local.bias.empty(), rank != 0 || down.bias.empty());
        if (gate.bias.empty() && up.bias.empty() && gate.g_idx == up.g_idx) {
            const GptqLinear* parts[] = {&gate_shard.layer, &up_shard.layer};
            EXPECT_TRUE(can_concat_columns(parts)) << "gate|up shards cut by one order must still fuse";
        }

        const std::vector<double> partial = mlp(x, m, gate_shard.layer, up_shard.layer, local);
        for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += partial[i];
    }
    EXPECT_EQ(next, ffn);
    expect_close(sum, want, 1e-9);
}

//! A unique directory under the test temp dir, removed afterwards.
class TempDirTest : public ::testing::Test {
   protected:
    st_test::ScopedTempDir temp_;  // created per test, removed with its contents afterwards

    //! Appends one layer's tensors as a GPTQ file stores them (qweight / qzeros as I32, scales F16).
    static void add_layer(std::vector<SafetensorsEntry>& entries, const GptqLinear& layer, ZeroFormat written_as) {
        ASSERT_EQ(layer.zero_format, written_as);
        const std::int64_t g = layer.num_groups;
        entries.push_back(make_safetensors_entry<std::uint32_t>(layer.name + ".qweight", DType::I32,
                                                                {layer.k / 8, layer.n}, layer.qweight.span()));
        entries.push_back(make_safetensors_entry<std::uint32_t>(layer.name + ".qzeros", DType::I32, {g, layer.n / 8},
                                                                layer.qzeros.span()));
        entries.push_back(make_safetensors_entry<std::uint16_t>(layer.name + ".scales", DType::F16, {g, layer.n},
                                                                layer.scales.span()));
        entries.push_back(make_safetensors_entry<std::int32_t>(layer.name + ".g_idx", DType::I32, {layer.k},
                                                               std::span<const std::int32_t>(layer.g_idx)));
        if (!layer.bias.empty()) {
            entries.push_back(
                make_safetensors_entry<std::uint16_t>(layer.name + ".bias", DType::F16, {layer.n}, layer.bias.span()));
        }
    }

    const std::filesystem::path& dir_ = temp_.path();
};

// ---- planning -----------------------------------------------------------------------------------

TEST(ShardPlanTest, QueryHeads_ContiguousBlocks) {
    const ModelConfig config = make_config(128, 256, 8, 8, 16);
    for (int rank = 0; rank < 4; ++rank) {
        const SplitPlan q = plan_split("q", LinearRole::QueryProj, config, make_quant(64), rank, 4);
        EXPECT_EQ(q.heads, (IndexRange{2 * rank, 2 * rank + 2}));
        EXPECT_EQ(q.range, (IndexRange{32 * rank, 32 * rank + 32}));
        EXPECT_EQ(q.k, 128);
        EXPECT_EQ(q.n, 128);
        const SplitPlan o = plan_split("o", LinearRole::OutputProj, config, make_quant(32), rank, 4);
        EXPECT_EQ(o.heads, q.heads);
        EXPECT_EQ(o.range, q.range) << "o_proj rows must be the query columns of the same rank";
    }
}

TEST(ShardPlanTest, KvHeads_ReplicatedWhenSizeExceedsKvHeads) {
    const ModelConfig config = make_config(128, 256, 8, 2, 16);
    const std::vector<std::int64_t> expected_head{0, 0, 1, 1};
    for (int rank = 0; rank < 4; ++rank) {
        const SplitPlan k = plan_split("k", LinearRole::KeyProj, config, make_quant(64), rank, 4);
        const SplitPlan v = plan_split("v", LinearRole::ValueProj, config, make_quant(64), rank, 4);
        const std::int64_t head = expected_head[static_cast<std::size_t>(rank)];
        EXPECT_EQ(k.heads, (IndexRange{head, head + 1})) << "rank " << rank;
        EXPECT_EQ(k.range, (IndexRange{16 * head, 16 * head + 16}));
        EXPECT_EQ(k.replicas, 2);
        EXPECT_EQ(v.range, k.range);
        // Every query head of the rank reads a KV head the rank holds (R4.3: kv = h / (nh / nkv)).
        const SplitPlan q = plan_split("q", LinearRole::QueryProj, config, make_quant(64), rank, 4);
        for (std::int64_t h = q.heads.begin; h < q.heads.end; ++h) EXPECT_EQ(h / 4, head);
    }
    for (int rank = 0; rank < 2; ++rank) {
        const SplitPlan k = plan_split("k", LinearRole::KeyProj, config, make_quant(64), rank, 2);
        EXPECT_EQ(k.heads, (IndexRange{rank, rank + 1}));
        EXPECT_EQ(k.replicas, 1);
    }
    const SplitPlan whole = plan_split("k", LinearRole::KeyProj, config, make_quant(64), 0, 1);
    EXPECT_EQ(whole.heads, (IndexRange{0, 2}));
    EXPECT_EQ(whole.range, (IndexRange{0, 32}));
}

TEST(ShardPlanTest, FfnRange_UnevenWholeGroups_Llama2_7B) {
    // down_proj K = 11008 at group 128: 86 groups.
    const std::vector<std::int64_t> at4{22, 22, 21, 21};
    const std::vector<std::int64_t> at8{11, 11, 11, 11, 11, 11, 10, 10};
    for (const auto& [size, groups] : {std::pair{4, at4}, std::pair{8, at8}}) {
        std::int64_t next = 0;
        for (int rank = 0; rank < size; ++rank) {
            const IndexRange r = ffn_range("down", 11008, 128, rank, size);
            EXPECT_EQ(r.begin, next);
            EXPECT_EQ(r.size(), groups[static_cast<std::size_t>(rank)] * 128) << "size " << size << " rank " << rank;
            next = r.end;
        }
        EXPECT_EQ(next, 11008);
    }
    // gate/up columns follow the same cut as down's rows.
    const ModelConfig config = make_config(4096, 11008, 32, 32, 128);
    for (int rank = 0; rank < 4; ++rank) {
        const SplitPlan gate = plan_split("gate", LinearRole::GateProj, config, make_quant(128), rank, 4);
        const SplitPlan up = plan_split("up", LinearRole::UpProj, config, make_quant(128), rank, 4);
        const SplitPlan down = plan_split("down", LinearRole::DownProj, config, make_quant(128), rank, 4);
        EXPECT_EQ(gate.range, down.range);
        EXPECT_EQ(up.range, down.range);
        EXPECT_TRUE(gate.heads.empty());
    }
}

TEST(ShardPlanTest, FfnRange_PartialLastGroupAndGroupSizeMinusOne) {
    // K = 320 at group 128: groups of 128, 128, 64.
    EXPECT_EQ(ffn_range("down", 320, 128, 0, 2), (IndexRange{0, 256}));
    EXPECT_EQ(ffn_range("down", 320, 128, 1, 2), (IndexRange{256, 320}));
    // One group: cut in blocks of 32 rows; 8 blocks over 3 ranks give 3, 3, 2.
    EXPECT_EQ(ffn_range("down", 256, -1, 0, 3), (IndexRange{0, 96}));
    EXPECT_EQ(ffn_range("down", 256, -1, 1, 3), (IndexRange{96, 192}));
    EXPECT_EQ(ffn_range("down", 256, -1, 2, 3), (IndexRange{192, 256}));
    // A group larger than K is one group too.
    EXPECT_EQ(ffn_range("down", 256, 1024, 1, 2), (IndexRange{128, 256}));
}

TEST(ShardPlanTest, VocabRange_CeilRowsPerRank) {
    EXPECT_EQ(vocab_range("lm_head", 32000, 0, 3), (IndexRange{0, 10667}));
    EXPECT_EQ(vocab_range("lm_head", 32000, 1, 3), (IndexRange{10667, 21334}));
    EXPECT_EQ(vocab_range("lm_head", 32000, 2, 3), (IndexRange{21334, 32000}));
    EXPECT_EQ(vocab_range("lm_head", 384, 3, 4), (IndexRange{288, 384}));
}

TEST(ShardPlanTest, Errors_NameLayerAndReason) {
    const std::string q = "model.layers.3.self_attn.q_proj";
    expect_error([&] { plan_split(q, LinearRole::QueryProj, make_config(128, 256, 8, 8, 16), make_quant(64), 0, 3); },
                 {q, "8 attention heads", "3 ranks"});
    const std::string k = "model.layers.3.self_attn.k_proj";
    expect_error([&] { plan_split(k, LinearRole::KeyProj, make_config(192, 512, 6, 3, 32), make_quant(64), 0, 2); },
                 {k, "3 KV heads", "neither split", "replicated"});
    const std::string down = "model.layers.1.mlp.down_proj";
    expect_error([&] { plan_split(down, LinearRole::DownProj, make_config(64, 256, 4, 4, 16), make_quant(128), 0, 4); },
                 {down, "2 groups", "fewer than 4 ranks"});
    const std::string up = "model.layers.1.mlp.up_proj";
    expect_error([&] { plan_split(up, LinearRole::UpProj, make_config(64, 64, 4, 4, 16), make_quant(-1), 0, 4); },
                 {up, "intermediate_size 64", "fewer than 4 ranks"});
    expect_error([&] { ffn_range(up, 100, 32, 0, 2); }, {up, "intermediate_size 100", "multiple of 32"});
    // head_dim 4: a rank's q columns would be 4, less than one packed zeros word.
    expect_error([&] { plan_split(q, LinearRole::QueryProj, make_config(32, 256, 8, 8, 4), make_quant(32), 0, 8); },
                 {q, "4 columns", "multiple of 8"});
    // head_dim 16: a rank's o_proj rows would be 16, less than one 32-row block.
    const std::string o = "model.layers.0.self_attn.o_proj";
    expect_error([&] { plan_split(o, LinearRole::OutputProj, make_config(128, 256, 8, 8, 16), make_quant(-1), 0, 8); },
                 {o, "rows [0, 16)", "multiple of 32"});
    expect_error([&] { plan_split(q, LinearRole::QueryProj, make_config(128, 256, 8, 8, 16), make_quant(64), 4, 4); },
                 {q, "rank 4", "[0, 4)"});
    expect_error([&] { plan_split(q, LinearRole::QueryProj, make_config(128, 256, 8, 8, 16), make_quant(64), 0, 0); },
                 {q, "size must be >= 1"});
    expect_error([&] { vocab_range("lm_head.weight", 5, 0, 4); }, {"lm_head.weight", "vocab_size 5", "no row"});
}

// ---- column shards ------------------------------------------------------------------------------

TEST(ColumnShardTest, DequantizedShardsEqualColumnSlices_AllColumnRoles) {
    std::mt19937 rng(1234);
    const ModelConfig config = make_config(128, 768, 8, 2, 32);
    for (const bool act_order : {false, true}) {
        for (const ZeroFormat format : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
            SCOPED_TRACE(std::string(act_order ? "act-order " : "sequential ") + to_string(format));
            const QuantConfig quant = make_quant(64, format);
            for (const LinearRole role : {LinearRole::QueryProj, LinearRole::KeyProj, LinearRole::ValueProj,
                                          LinearRole::GateProj, LinearRole::UpProj}) {
                const GptqLinear full = random_role_layer(role, config, quant, act_order, rng);
                for (const int size : {1, 2, 4, 8}) check_column_shards(full, role, config, quant, size);
            }
        }
    }
}

TEST(ColumnShardTest, GqaKvReplication_RanksShareTheirKvHead) {
    std::mt19937 rng(77);
    const ModelConfig config = make_config(128, 256, 8, 2, 16);
    const QuantConfig quant = make_quant(64);
    const GptqLinear full = random_role_layer(LinearRole::KeyProj, config, quant, true, rng);
    check_column_shards(full, LinearRole::KeyProj, config, quant, 4);
    std::vector<ColumnShard> shards;
    for (int rank = 0; rank < 4; ++rank)
        shards.push_back(column_shard(full, plan_split(full.name, LinearRole::KeyProj, config, quant, rank, 4)));
    EXPECT_EQ(shards[0].heads, (IndexRange{0, 1}));
    EXPECT_EQ(shards[2].heads, (IndexRange{1, 2}));
    EXPECT_EQ(shards[0].layer.n, 16);  // one head: not a multiple of 32, still whole qzeros words
    expect_same_layer(shards[0].layer, shards[1].layer);
    expect_same_layer(shards[2].layer, shards[3].layer);
    EXPECT_NE(to_vector(shards[0].layer.qweight), to_vector(shards[2].layer.qweight));
}

TEST(ColumnShardTest, GroupSizeMinusOneAndBias_Sliced) {
    std::mt19937 rng(5);
    const ModelConfig config = make_config(256, 512, 4, 4, 64);
    const QuantConfig quant = make_quant(-1);
    const GptqLinear full = random_role_layer(LinearRole::UpProj, config, quant, false, rng, true);
    ASSERT_EQ(full.num_groups, 1);
    ASSERT_FALSE(full.bias.empty());
    for (const int size : {2, 3, 4}) check_column_shards(full, LinearRole::UpProj, config, quant, size);
}

TEST(ColumnShardTest, Errors_PlanMismatch) {
    std::mt19937 rng(9);
    const ModelConfig config = make_config(128, 256, 4, 4, 32);
    const QuantConfig quant = make_quant(32);
    const GptqLinear up = random_role_layer(LinearRole::UpProj, config, quant, false, rng);
    const SplitPlan down_plan = plan_split("down", LinearRole::DownProj, config, quant, 0, 2);
    expect_error([&] { column_shard(up, down_plan); }, {up.name, "down_proj plan", "row-parallel"});
    const SplitPlan q_plan = plan_split("q", LinearRole::QueryProj, config, quant, 0, 2);
    expect_error([&] { column_shard(up, q_plan); }, {up.name, "[128][256]", "expects [128][128]"});
    SplitPlan odd = plan_split(up.name, LinearRole::UpProj, config, quant, 0, 2);
    odd.range = {4, 36};
    expect_error([&] { column_shard(up, odd); }, {up.name, "columns [4, 36)", "multiples of 8"});
    GptqLinear unvalidated;
    unvalidated.name = "raw";
    unvalidated.k = 128;
    unvalidated.n = 256;
    expect_error([&] { column_shard(unvalidated, plan_split("raw", LinearRole::UpProj, config, quant, 0, 2)); },
                 {"raw", "validated layer"});
}

// ---- row shards ---------------------------------------------------------------------------------

TEST(RowShardTest, PartialProductsSumToFull_Sizes2348) {
    std::mt19937 rng(42);
    // o_proj K = 24 heads x 32 = 768 and down K = 768, group 64: 12 groups.
    const ModelConfig config = make_config(64, 768, 24, 24, 32);
    for (const ZeroFormat format : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
        const QuantConfig quant = make_quant(64, format);
        const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, false, rng, true);
        for (const int size : {2, 3, 4, 8}) {
            const auto shards = check_row_shards(down, LinearRole::DownProj, config, quant, size, rng);
            for (std::size_t r = 0; r < shards.size(); ++r) {
                EXPECT_EQ(shards[r].groups.size(), shards[r].layer.num_groups);
                EXPECT_EQ(shards[r].groups.begin * 64, shards[r].rows.begin);
                EXPECT_EQ(shards[r].layer.bias.empty(), r != 0) << "bias stays on rank 0 only";
            }
        }
        const GptqLinear o = random_role_layer(LinearRole::OutputProj, config, quant, false, rng);
        // size 8 would give 3 heads = 96 rows, cutting a group of 64: see Errors_SequentialCutGroup.
        for (const int size : {2, 3, 4}) check_row_shards(o, LinearRole::OutputProj, config, quant, size, rng);
    }
}

TEST(RowShardTest, Llama2_7BDownProj_UnevenGroups) {
    std::mt19937 rng(7);
    const ModelConfig config = make_config(32, 11008, 32, 32, 128);
    const QuantConfig quant = make_quant(128);
    const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, false, rng);
    ASSERT_EQ(down.num_groups, 86);
    const std::vector<std::int64_t> at4{22, 22, 21, 21};
    const std::vector<std::int64_t> at8{11, 11, 11, 11, 11, 11, 10, 10};
    for (const auto& [size, groups] : {std::pair{4, at4}, std::pair{8, at8}}) {
        const auto shards = check_row_shards(down, LinearRole::DownProj, config, quant, size, rng);
        std::int64_t next_group = 0;
        for (std::size_t r = 0; r < shards.size(); ++r) {
            EXPECT_EQ(shards[r].layer.num_groups, groups[r]);
            EXPECT_EQ(shards[r].groups, (IndexRange{next_group, next_group + groups[r]}));
            EXPECT_EQ(shards[r].layer.scales.size(), static_cast<std::size_t>(groups[r] * 32));
            EXPECT_EQ(shards[r].layer.qzeros.size(), static_cast<std::size_t>(groups[r] * 4));
            EXPECT_FALSE(shards[r].all_groups);
            EXPECT_FALSE(shards[r].layer.act_order);
            next_group += groups[r];
        }
    }
}

TEST(RowShardTest, ActOrder_KeepsAllGroupsAndSequentialMachineryWorks) {
    std::mt19937 rng(2024);
    const ModelConfig config = make_config(64, 11008, 24, 24, 32);
    const QuantConfig quant = make_quant(128);
    const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, true, rng);
    ASSERT_TRUE(down.act_order);
    for (const int size : {2, 4, 8}) {
        const auto shards = check_row_shards(down, LinearRole::DownProj, config, quant, size, rng);
        for (const RowShard& shard : shards) {
            EXPECT_TRUE(shard.all_groups);
            EXPECT_TRUE(shard.layer.act_order);
            EXPECT_EQ(shard.groups, (IndexRange{0, 86}));
            EXPECT_EQ(to_vector(shard.layer.scales), to_vector(down.scales));
            EXPECT_EQ(to_vector(shard.layer.qzeros), to_vector(down.qzeros));
            const std::vector<std::int32_t> slice(down.g_idx.begin() + shard.rows.begin,
                                                  down.g_idx.begin() + shard.rows.end);
            EXPECT_EQ(shard.layer.g_idx, slice) << "g_idx values keep indexing the full G";
        }
    }
    // The load-time act-order path on one rank: stable sort of the local g_idx, rows repacked, the local
    // activation slice gathered through x_map; the partial product is unchanged.
    const auto shards = check_row_shards(down, LinearRole::DownProj, config, quant, 4, rng);
    const RowShard& shard = shards[2];
    const ActOrderPermutation perm = act_order_permutation(shard.layer.g_idx, shard.layer.num_groups);
    const GptqLinear seq = make_sequential(shard.layer, perm);
    EXPECT_TRUE(std::is_sorted(seq.g_idx.begin(), seq.g_idx.end()));
    const std::int64_t m = 2;
    const std::int64_t k_local = shard.layer.k;
    const std::vector<double> x = random_x(m, k_local, rng);
    std::vector<double> x_gathered(x.size());
    for (std::int64_t i = 0; i < m; ++i)
        for (std::int64_t j = 0; j < k_local; ++j)
            x_gathered[static_cast<std::size_t>(i * k_local + j)] =
                x[static_cast<std::size_t>(i * k_local + perm.x_map[static_cast<std::size_t>(j)])];
    std::vector<double> direct(static_cast<std::size_t>(m * down.n), 0.0);
    std::vector<double> via_sort(direct.size(), 0.0);
    accumulate(x, m, k_local, 0, dequantize(shard.layer), k_local, down.n, direct);
    accumulate(x_gathered, m, k_local, 0, dequantize(seq), k_local, down.n, via_sort);
    expect_close(via_sort, direct, 1e-12);
}

TEST(RowShardTest, ActOrderOutputProj_HeadsNeedNotAlignWithGroups) {
    std::mt19937 rng(11);
    // 3 heads of 32 = 96 rows per rank at size 8, group 64: only act-order layers can be cut there.
    const ModelConfig config = make_config(64, 768, 24, 24, 32);
    const QuantConfig quant = make_quant(64);
    const GptqLinear o = random_role_layer(LinearRole::OutputProj, config, quant, true, rng);
    const auto shards = check_row_shards(o, LinearRole::OutputProj, config, quant, 8, rng);
    EXPECT_EQ(shards[1].heads, (IndexRange{3, 6}));
    EXPECT_EQ(shards[1].rows, (IndexRange{96, 192}));
}

TEST(RowShardTest, GroupSizeMinusOne_SplitsInBlocksOf32) {
    std::mt19937 rng(3);
    const ModelConfig config = make_config(96, 256, 4, 4, 32);
    const QuantConfig quant = make_quant(-1, ZeroFormat::GptqV2);
    const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, false, rng, true);
    for (const int size : {2, 3, 4, 8}) {
        const auto shards = check_row_shards(down, LinearRole::DownProj, config, quant, size, rng);
        for (const RowShard& shard : shards) {
            EXPECT_EQ(shard.layer.num_groups, 1);
            EXPECT_EQ(shard.layer.group_size, shard.layer.k);
            EXPECT_EQ(shard.groups, (IndexRange{0, 1}));
            EXPECT_EQ(to_vector(shard.layer.scales), to_vector(down.scales)) << "per-column scales are replicated";
        }
    }
    const GptqLinear o = random_role_layer(LinearRole::OutputProj, config, quant, false, rng);
    for (const int size : {2, 4}) check_row_shards(o, LinearRole::OutputProj, config, quant, size, rng);
}

TEST(RowShardTest, PartialLastGroup_OnLastRank) {
    std::mt19937 rng(8);
    const ModelConfig config = make_config(64, 320, 4, 4, 16);
    const QuantConfig quant = make_quant(128);
    const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, false, rng);
    const auto shards = check_row_shards(down, LinearRole::DownProj, config, quant, 2, rng);
    EXPECT_EQ(shards[1].rows, (IndexRange{256, 320}));
    EXPECT_EQ(shards[1].groups, (IndexRange{2, 3}));
    EXPECT_EQ(shards[1].layer.group_size, 128);
    EXPECT_EQ(shards[1].layer.num_groups, 1);
}

TEST(RowShardTest, Errors_SequentialCutGroup) {
    std::mt19937 rng(13);
    const ModelConfig config = make_config(64, 768, 24, 24, 32);
    const QuantConfig quant = make_quant(64);
    const GptqLinear o = random_role_layer(LinearRole::OutputProj, config, quant, false, rng);
    const SplitPlan plan = plan_split(o.name, LinearRole::OutputProj, config, quant, 1, 8);
    expect_error([&] { row_shard(o, plan); }, {o.name, "rows [96, 192)", "cut a group of group_size 64"});
    SplitPlan odd = plan;
    odd.range = {64, 80};
    expect_error([&] { row_shard(o, odd); }, {o.name, "rows [64, 80)", "32-row blocks"});
    const SplitPlan q_plan = plan_split("q", LinearRole::QueryProj, config, quant, 0, 2);
    expect_error([&] { row_shard(o, q_plan); }, {o.name, "q_proj plan", "column-parallel"});
}

TEST(ShardValidationTest, RejectsBadShards) {
    std::mt19937 rng(21);
    const GptqLinear full = random_layer({"L", 256, 64, 64, true, ZeroFormat::GptqV1, false}, rng);
    const ModelConfig config = make_config(64, 256, 4, 4, 16);
    RowShard shard = row_shard(full, plan_split("L", LinearRole::DownProj, config, make_quant(64), 1, 2));
    GptqLinear& layer = shard.layer;
    layer.g_idx[3] = 4;  // only 4 groups
    expect_error([&] { validate_gptq_shard(layer, true); }, {"L.g_idx", "[3] = 4", "G=4"});
    layer.g_idx.assign(layer.g_idx.size(), 0);  // 128 rows into one group of 64
    expect_error([&] { validate_gptq_shard(layer, true); }, {"L.g_idx", "group 0", "group_size=64"});

    GptqLinear col =
        column_shard(full, plan_split("L", LinearRole::UpProj, make_config(256, 64, 4, 4, 16), make_quant(64), 0, 2))
            .layer;
    col.scales[5] = 0x7E00;  // NaN
    expect_error([&] { validate_gptq_shard(col, false); }, {"L.scales", "[0, 5]", "NaN"});
    col.scales[5] = 0x3C00;
    col.qzeros[1] |= 0xF0u;  // v1 zero nibble 0xF at column 9
    expect_error([&] { validate_gptq_shard(col, false); }, {"L.qzeros", "column 9", "0xF"});
}

// ---- shards by an order --------------------------------------------------------------------------

TEST(ColumnShardTest, ByOrder_DequantizesToTheSelectedColumns) {
    std::mt19937 rng(31);
    const ModelConfig config = make_config(128, 768, 8, 2, 32);
    for (const bool act_order : {false, true}) {
        for (const ZeroFormat format : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
            SCOPED_TRACE(std::string(act_order ? "act-order " : "sequential ") + to_string(format));
            const QuantConfig quant = make_quant(64, format);
            for (const LinearRole role : {LinearRole::QueryProj, LinearRole::ValueProj, LinearRole::GateProj}) {
                const GptqLinear full = random_role_layer(role, config, quant, act_order, rng, true);
                const std::vector<float> w = dequantize(full);
                const std::vector<std::int32_t> order = random_permutation(full.n, rng);
                for (const int size : {1, 2, 4}) {
                    for (int rank = 0; rank < size; ++rank) {
                        SCOPED_TRACE(std::string(to_string(role)) + " rank " + std::to_string(rank) + " of " +
                                     std::to_string(size));
                        const SplitPlan plan = plan_split(full.name, role, config, quant, rank, size);
                        const ColumnShard shard = column_shard(full, plan, order);
                        EXPECT_EQ(shard.columns, plan.range);
                        ASSERT_EQ(shard.layer.n, plan.range.size());
                        EXPECT_EQ(shard.layer.g_idx, full.g_idx);
                        EXPECT_EQ(shard.layer.act_order, full.act_order);
                        EXPECT_EQ(dequantize(shard.layer), column_gather(w, full.k, full.n, order, plan.range));
                        const std::vector<std::int64_t> picked = ordered(order, plan.range);
                        for (std::int64_t g = 0; g < full.num_groups; ++g)
                            for (std::size_t c = 0; c < picked.size(); ++c)
                                ASSERT_EQ(stored_zero_at(shard.layer, g, static_cast<std::int64_t>(c)),
                                          stored_zero_at(full, g, picked[c]));
                        ASSERT_EQ(shard.layer.bias.size(), picked.size());
                        for (std::size_t c = 0; c < picked.size(); ++c)
                            EXPECT_EQ(shard.layer.bias[c], full.bias[static_cast<std::size_t>(picked[c])]);
                    }
                }
            }
        }
    }
}

TEST(ColumnShardTest, ByOrder_IdentityEqualsTheRangeCut) {
    std::mt19937 rng(32);
    const ModelConfig config = make_config(128, 384, 8, 8, 16);
    const QuantConfig quant = make_quant(32);
    const GptqLinear up = random_role_layer(LinearRole::UpProj, config, quant, true, rng);
    std::vector<std::int32_t> identity(static_cast<std::size_t>(up.n));
    std::iota(identity.begin(), identity.end(), 0);
    for (int rank = 0; rank < 4; ++rank) {
        const SplitPlan plan = plan_split(up.name, LinearRole::UpProj, config, quant, rank, 4);
        expect_same_layer(column_shard(up, plan, identity).layer, column_shard(up, plan).layer);
    }
}

TEST(RowShardTest, ByOrder_WholeGroupsGiveAnInOrderLayer) {
    std::mt19937 rng(33);
    for (const ZeroFormat format : {ZeroFormat::GptqV1, ZeroFormat::GptqV2}) {
        // 7B-like: 86 groups of 128, uneven over 4 ranks.
        const ModelConfig config = make_config(64, 11008, 4, 4, 16);
        const QuantConfig quant = make_quant(128, format);
        const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, true, rng, true);
        const std::vector<std::int32_t> order = ffn_order(down);
        ASSERT_EQ(order.size(), static_cast<std::size_t>(down.k));
        const std::vector<float> w = dequantize(down);
        const std::vector<std::int64_t> groups_at4{22, 22, 21, 21};
        for (int rank = 0; rank < 4; ++rank) {
            SCOPED_TRACE("rank " + std::to_string(rank));
            const SplitPlan plan = plan_split(down.name, LinearRole::DownProj, config, quant, rank, 4);
            const RowShard shard = row_shard(down, plan, order);
            EXPECT_EQ(shard.rows, plan.range);
            EXPECT_FALSE(shard.all_groups);
            EXPECT_FALSE(shard.layer.act_order);
            EXPECT_EQ(shard.layer.num_groups, groups_at4[static_cast<std::size_t>(rank)]);
            EXPECT_EQ(shard.layer.g_idx, sequential_g_idx(shard.layer.k, 128));
            EXPECT_EQ(dequantize(shard.layer), row_gather(w, down.n, order, plan.range));
            // Only the rank's groups' scales and zeros, as stored.
            for (std::int64_t g = 0; g < shard.layer.num_groups; ++g)
                for (std::int64_t c = 0; c < down.n; ++c) {
                    ASSERT_EQ(stored_zero_at(shard.layer, g, c), stored_zero_at(down, shard.groups.begin + g, c));
                    ASSERT_EQ(scale_at(shard.layer, g, c), scale_at(down, shard.groups.begin + g, c));
                }
            EXPECT_EQ(shard.layer.bias.empty(), rank != 0);
        }
    }
    // A sequential layer: the identity order cuts exactly what the range cut does.
    const ModelConfig config = make_config(64, 768, 24, 24, 32);
    const QuantConfig quant = make_quant(64);
    const GptqLinear seq = random_role_layer(LinearRole::DownProj, config, quant, false, rng);
    EXPECT_TRUE(ffn_order(seq).empty());
    std::vector<std::int32_t> identity(static_cast<std::size_t>(seq.k));
    std::iota(identity.begin(), identity.end(), 0);
    for (int rank = 0; rank < 3; ++rank) {
        const SplitPlan plan = plan_split(seq.name, LinearRole::DownProj, config, quant, rank, 3);
        const RowShard by_order = row_shard(seq, plan, identity);
        const RowShard by_range = row_shard(seq, plan);
        expect_same_layer(by_order.layer, by_range.layer);
        EXPECT_EQ(by_order.groups, by_range.groups);
    }
}

TEST(RowShardTest, ByOrder_OneGroupTakesAnyRows) {
    std::mt19937 rng(34);
    const ModelConfig config = make_config(96, 256, 4, 4, 32);
    const QuantConfig quant = make_quant(-1, ZeroFormat::GptqV2);
    const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, false, rng);
    const std::vector<std::int32_t> order = random_permutation(down.k, rng);
    const std::vector<float> w = dequantize(down);
    for (int rank = 0; rank < 3; ++rank) {
        const SplitPlan plan = plan_split(down.name, LinearRole::DownProj, config, quant, rank, 3);
        const RowShard shard = row_shard(down, plan, order);
        EXPECT_EQ(shard.layer.num_groups, 1);
        EXPECT_EQ(shard.layer.group_size, plan.range.size());
        EXPECT_EQ(dequantize(shard.layer), row_gather(w, down.n, order, plan.range));
    }
}

TEST(RowShardTest, ByOrder_Errors) {
    std::mt19937 rng(35);
    const ModelConfig config = make_config(64, 256, 4, 4, 16);
    const QuantConfig quant = make_quant(64);
    const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, true, rng);
    const SplitPlan plan = plan_split(down.name, LinearRole::DownProj, config, quant, 0, 2);
    const std::vector<std::int32_t> order = ffn_order(down);
    ASSERT_EQ(order.size(), 256u);

    const std::vector<std::int32_t> short_order(order.begin(), order.begin() + 10);
    expect_error([&] { row_shard(down, plan, short_order); }, {down.name, "10 entries", "expected 256"});
    std::vector<std::int32_t> repeated = order;
    repeated[7] = repeated[3];
    expect_error([&] { row_shard(down, plan, repeated); }, {down.name, "[7]", "repeated", "permutation of [0, 256)"});
    std::vector<std::int32_t> outside = order;
    outside[5] = 256;
    expect_error([&] { row_shard(down, plan, outside); }, {down.name, "[5] = 256", "out of range"});

    // The original order of an act-order layer is not whole groups.
    std::vector<std::int32_t> identity(256);
    std::iota(identity.begin(), identity.end(), 0);
    expect_error([&] { row_shard(down, plan, identity); }, {down.name, "rows [0, 128)", "not whole groups"});
    // Rows of groups 0 and 1 swapped: group order broken at position 1.
    std::vector<std::int32_t> swapped = order;
    std::swap(swapped[1], swapped[64]);
    expect_error([&] { row_shard(down, plan, swapped); }, {down.name, "position 1", "of group 1, expected group 0"});
    // Half of group 1.
    SplitPlan half = plan;
    half.range = {0, 96};
    expect_error([&] { row_shard(down, half, order); }, {down.name, "32 of the 64 rows of group 1"});

    const GptqLinear gate = random_role_layer(LinearRole::GateProj, config, quant, true, rng);
    const SplitPlan gate_plan = plan_split(gate.name, LinearRole::GateProj, config, quant, 1, 2);
    expect_error([&] { column_shard(gate, gate_plan, short_order); }, {gate.name, "columns", "10 entries"});
}

TEST(FfnOrderTest, StableArgsortOfAnActOrderDownProj) {
    std::mt19937 rng(36);
    const ModelConfig config = make_config(64, 320, 4, 4, 16);
    for (const std::int64_t gs : {32, 64, 128}) {
        SCOPED_TRACE("group_size " + std::to_string(gs));
        const GptqLinear down = random_role_layer(LinearRole::DownProj, config, make_quant(gs), true, rng);
        ASSERT_TRUE(down.act_order);
        const std::vector<std::int32_t> order = ffn_order(down);
        ASSERT_EQ(order.size(), 320u);
        for (std::size_t j = 0; j < order.size(); ++j) {
            EXPECT_EQ(down.g_idx[static_cast<std::size_t>(order[j])], static_cast<std::int64_t>(j) / gs) << j;
            // Stable: the rows of one group keep their original order.
            if (j > 0 && static_cast<std::int64_t>(j) % gs != 0) {
                EXPECT_LT(order[j - 1], order[j]) << j;
            }
        }
        EXPECT_TRUE(ffn_order(random_role_layer(LinearRole::DownProj, config, make_quant(gs), false, rng)).empty());
    }
    EXPECT_TRUE(ffn_order(random_role_layer(LinearRole::DownProj, config, make_quant(-1), false, rng)).empty());
}

TEST(MlpShardTest, ActOrderMlpByOrder_SumOverRanksEqualsUnsharded) {
    struct Case {
        std::int64_t group_size;
        std::int64_t ffn;
        std::vector<int> sizes;
        ZeroFormat format;
        bool bias;
    };
    const std::vector<Case> cases{
        {32, 352, {1, 2, 4}, ZeroFormat::GptqV1, false},     // 11 groups: 3, 3, 3, 2 at 4
        {64, 320, {1, 2, 4}, ZeroFormat::GptqV2, true},      // 5 groups: 2, 1, 1, 1 at 4
        {128, 320, {1, 2}, ZeroFormat::GptqV1, false},       // a short last group (64 rows) on the last rank
        {128, 11008, {1, 2, 4}, ZeroFormat::GptqV2, false},  // Llama-2-7B: 86 groups, 22, 22, 21, 21 at 4
    };
    std::mt19937 rng(37);
    for (const Case& c : cases) {
        SCOPED_TRACE("group_size " + std::to_string(c.group_size) + ", intermediate " + std::to_string(c.ffn));
        const ModelConfig config = make_config(64, c.ffn, 4, 4, 16);
        const QuantConfig quant = make_quant(c.group_size, c.format);
        const GptqLinear gate = random_role_layer(LinearRole::GateProj, config, quant, true, rng, c.bias);
        GptqLinear up = random_role_layer(LinearRole::UpProj, config, quant, true, rng);
        up.g_idx = gate.g_idx;  // one input, one g_idx (R2.20), so gate|up fuse
        validate_gptq_linear(up);
        const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, true, rng, c.bias);
        ASSERT_TRUE(down.act_order);
        for (const int size : c.sizes) check_mlp_by_order(gate, up, down, config, quant, size, rng);
    }
    // A sequential down_proj has no order: the MLP is cut by ranges, as before.
    const ModelConfig config = make_config(64, 352, 4, 4, 16);
    const QuantConfig quant = make_quant(32);
    const GptqLinear gate = random_role_layer(LinearRole::GateProj, config, quant, true, rng);
    const GptqLinear up = random_role_layer(LinearRole::UpProj, config, quant, true, rng);
    const GptqLinear down = random_role_layer(LinearRole::DownProj, config, quant, false, rng);
    for (const int size : {1, 2, 4}) check_mlp_by_order(gate, up, down, config, quant, size, rng);
}

// ---- checkpoints --------------------------------------------------------------------------------

class CheckpointShardTest : public TempDirTest {};

TEST_F(CheckpointShardTest, ReadFromMappingEqualsSlicingTheLoadedLayer) {
    std::mt19937 rng(99);
    const ModelConfig config = make_config(128, 384, 8, 2, 16);
    for (const bool act_order : {false, true}) {
        SCOPED_TRACE(act_order ? "act-order" : "sequential");
        const QuantConfig quant = make_quant(64, ZeroFormat::GptqV2);
        const std::vector<LinearRole> roles{LinearRole::QueryProj,  LinearRole::KeyProj,  LinearRole::ValueProj,
                                            LinearRole::OutputProj, LinearRole::GateProj, LinearRole::UpProj,
                                            LinearRole::DownProj};
        std::vector<SafetensorsEntry> entries;
        for (const LinearRole role : roles) {
            const GptqLinear layer =
                random_role_layer(role, config, quant, act_order, rng, role == LinearRole::DownProj);
            add_layer(entries, layer, quant.zero_format);
        }
        const auto file = dir_ / (act_order ? "act" : "seq") / "model.safetensors";
        std::filesystem::create_directories(file.parent_path());
        write_safetensors(file, std::move(entries));
        const Checkpoint ckpt = Checkpoint::open(file.parent_path());
        for (const LinearRole role : roles) {
            const std::string name = role_name(role);
            const LinearDims dims = linear_dims(role, config);
            const GptqLinear full = load_gptq_linear(ckpt, name, dims.k, dims.n, quant);
            for (const int size : {2, 4}) {
                for (int rank = 0; rank < size; ++rank) {
                    SCOPED_TRACE(name + " rank " + std::to_string(rank) + " of " + std::to_string(size));
                    const SplitPlan plan = plan_split(name, role, config, quant, rank, size);
                    if (is_column_parallel(role)) {
                        const ColumnShard got = load_column_shard(ckpt, name, quant, plan);
                        const ColumnShard want = column_shard(full, plan);
                        expect_same_layer(got.layer, want.layer);
                        EXPECT_EQ(got.columns, want.columns);
                        EXPECT_EQ(got.heads, want.heads);
                        EXPECT_EQ(got.replicas, want.replicas);
                    } else if (act_order || role != LinearRole::OutputProj || size != 4) {
                        const RowShard got = load_row_shard(ckpt, name, quant, plan);
                        const RowShard want = row_shard(full, plan);
                        expect_same_layer(got.layer, want.layer);
                        EXPECT_EQ(got.rows, want.rows);
                        EXPECT_EQ(got.groups, want.groups);
                        EXPECT_EQ(got.all_groups, want.all_groups);
                    } else {
                        // 2 heads of 16 = 32 rows cut the groups of 64 of a sequential o_proj.
                        expect_error([&] { load_row_shard(ckpt, name, quant, plan); }, {name, "cut a group"});
                    }
                }
            }
        }
    }
}

TEST_F(CheckpointShardTest, ByOrder_ReadFromMappingEqualsSlicingTheLoadedLayer) {
    std::mt19937 rng(38);
    const ModelConfig config = make_config(128, 384, 8, 2, 16);
    const QuantConfig quant = make_quant(64, ZeroFormat::GptqV1);
    const std::vector<LinearRole> roles{LinearRole::GateProj, LinearRole::UpProj, LinearRole::DownProj};
    std::vector<SafetensorsEntry> entries;
    for (const LinearRole role : roles) {
        add_layer(entries, random_role_layer(role, config, quant, true, rng, role != LinearRole::UpProj),
                  quant.zero_format);
    }
    write_safetensors(dir_ / "model.safetensors", std::move(entries));
    const Checkpoint ckpt = Checkpoint::open(dir_);
    const std::string down_name = role_name(LinearRole::DownProj);
    const GptqLinear down = load_gptq_linear(ckpt, down_name, 384, 128, quant);
    const std::vector<std::int32_t> order = load_ffn_order(ckpt, down_name, quant, 384, 128);
    ASSERT_FALSE(order.empty());
    EXPECT_EQ(order, ffn_order(down));
    for (const LinearRole role : roles) {
        const std::string name = role_name(role);
        const LinearDims dims = linear_dims(role, config);
        const GptqLinear full = load_gptq_linear(ckpt, name, dims.k, dims.n, quant);
        for (const int size : {1, 2, 4}) {
            for (int rank = 0; rank < size; ++rank) {
                SCOPED_TRACE(name + " rank " + std::to_string(rank) + " of " + std::to_string(size));
                const SplitPlan plan = plan_split(name, role, config, quant, rank, size);
                if (is_column_parallel(role)) {
                    expect_same_layer(load_column_shard(ckpt, name, quant, plan, order).layer,
                                      column_shard(full, plan, order).layer);
                } else {
                    const RowShard got = load_row_shard(ckpt, name, quant, plan, order);
                    const RowShard want = row_shard(full, plan, order);
                    expect_same_layer(got.layer, want.layer);
                    EXPECT_EQ(got.groups, want.groups);
                    EXPECT_FALSE(got.layer.act_order);
                }
            }
        }
    }
    // The order comes from down_proj's headers and g_idx: a wrong shape names its tensor.
    expect_error([&] { load_ffn_order(ckpt, down_name, quant, 352, 128); }, {down_name + ".qweight", "[44, 128]"});
}

TEST_F(CheckpointShardTest, Errors_NameTheTensor) {
    std::mt19937 rng(4);
    const ModelConfig config = make_config(128, 256, 4, 4, 32);
    const QuantConfig quant = make_quant(32);
    GptqLinear up = random_role_layer(LinearRole::UpProj, config, quant, false, rng);
    std::vector<SafetensorsEntry> entries;
    add_layer(entries, up, quant.zero_format);
    entries.erase(std::remove_if(entries.begin(), entries.end(),
                                 [](const SafetensorsEntry& e) { return e.name.ends_with(".scales"); }),
                  entries.end());
    write_safetensors(dir_ / "model.safetensors", std::move(entries));
    const Checkpoint ckpt = Checkpoint::open(dir_);
    const SplitPlan plan = plan_split(up.name, LinearRole::UpProj, config, quant, 0, 2);
    expect_error([&] { load_column_shard(ckpt, up.name, quant, plan); }, {up.name + ".scales", "missing"});
    const SplitPlan gate = plan_split("g", LinearRole::GateProj, config, make_quant(64), 0, 2);
    expect_error([&] { load_column_shard(ckpt, "model.layers.0.mlp.gate_proj", quant, gate); },
                 {"model.layers.0.mlp.gate_proj.qweight", "missing"});
    expect_error([&] { dense_rows_shard(ckpt, up.name + ".qweight", 16, 256, {0, 8}); }, {up.name + ".qweight", "F16"});
}

TEST(DenseShardTest, RowsOfMatrix) {
    std::mt19937 rng(6);
    std::uniform_int_distribution<int> bits(0, 0x7BFF);
    const std::int64_t rows = 37;
    const std::int64_t cols = 24;
    std::vector<std::uint16_t> full(static_cast<std::size_t>(rows * cols));
    for (auto& v : full) v = static_cast<std::uint16_t>(bits(rng));
    std::vector<std::uint16_t> joined;
    for (int rank = 0; rank < 4; ++rank) {
        const IndexRange range = vocab_range("lm_head.weight", rows, rank, 4);
        const DenseShard shard = dense_rows_shard("lm_head.weight", full, rows, cols, range);
        EXPECT_EQ(shard.rows, range);
        EXPECT_EQ(shard.cols, cols);
        ASSERT_EQ(shard.data.size(), static_cast<std::size_t>(range.size() * cols));
        joined.insert(joined.end(), shard.data.begin(), shard.data.end());
    }
    EXPECT_EQ(joined, full);
    expect_error(
        [&] {
            dense_rows_shard("lm_head.weight", full, rows, cols, {30, 40});
        },
        {"lm_head.weight", "rows [30, 40)", "[0, 37)"});
    expect_error(
        [&] {
            dense_rows_shard("lm_head.weight", full, rows, cols + 1, {0, 4});
        },
        {"lm_head.weight", "888 values", "[37, 25]"});
}

// ---- fixtures -----------------------------------------------------------------------------------

struct FixtureCase {
    const char* fixture;
    int size;
};

void PrintTo(const FixtureCase& c, std::ostream* os) {
    *os << c.fixture << " at size " << c.size;
}

class FixtureShardTest : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(FixtureShardTest, ReadingShardsEqualsSlicingTheLoadedLayer) {
    const FixtureCase c = GetParam();
    const std::filesystem::path dir = std::filesystem::path(Q4TP_TEST_DATA_DIR) / "fixtures" / c.fixture;
    const ModelConfig config = load_model_config(dir / "config.json");
    const QuantConfig quant = load_quant_config(dir);
    const Checkpoint ckpt = Checkpoint::open(dir, quant.model_file_base_name);
    const std::vector<LinearRole> roles{LinearRole::QueryProj,  LinearRole::KeyProj,  LinearRole::ValueProj,
                                        LinearRole::OutputProj, LinearRole::GateProj, LinearRole::UpProj,
                                        LinearRole::DownProj};
    for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
        for (const LinearRole role : roles) {
            const std::string name = role_name(role, static_cast<int>(i));
            const LinearDims dims = linear_dims(role, config);
            const GptqLinear full = load_gptq_linear(ckpt, name, dims.k, dims.n, quant);
            const std::vector<float> w = dequantize(full);
            std::int64_t covered = 0;
            for (int rank = 0; rank < c.size; ++rank) {
                SCOPED_TRACE(name + " rank " + std::to_string(rank));
                const SplitPlan plan = plan_split(name, role, config, quant, rank, c.size);
                if (is_column_parallel(role)) {
                    const ColumnShard got = load_column_shard(ckpt, name, quant, plan);
                    expect_same_layer(got.layer, column_shard(full, plan).layer);
                    EXPECT_EQ(dequantize(got.layer), column_block(w, dims.k, dims.n, plan.range));
                } else {
                    const RowShard got = load_row_shard(ckpt, name, quant, plan);
                    expect_same_layer(got.layer, row_shard(full, plan).layer);
                    EXPECT_EQ(dequantize(got.layer), row_block(w, dims.n, plan.range));
                    EXPECT_EQ(got.all_groups, full.act_order);
                }
                covered = std::max(covered, plan.range.end);
            }
            EXPECT_EQ(covered, is_column_parallel(role) ? dims.n : dims.k);
        }
    }
    // lm_head by vocabulary rows (the embedding when tied).
    const std::string head = config.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    const auto full_head = ckpt.read<std::uint16_t>(head, DType::F16, {config.vocab_size, config.hidden_size});
    std::vector<std::uint16_t> joined;
    for (int rank = 0; rank < c.size; ++rank) {
        const IndexRange range = vocab_range(head, config.vocab_size, rank, c.size);
        const DenseShard shard = dense_rows_shard(ckpt, head, config.vocab_size, config.hidden_size, range);
        joined.insert(joined.end(), shard.data.begin(), shard.data.end());
    }
    EXPECT_EQ(joined, to_vector(full_head));
}

TEST_P(FixtureShardTest, MlpByOrderSumsToTheUnshardedMlp) {
    const FixtureCase c = GetParam();
    const std::filesystem::path dir = std::filesystem::path(Q4TP_TEST_DATA_DIR) / "fixtures" / c.fixture;
    const ModelConfig config = load_model_config(dir / "config.json");
    const QuantConfig quant = load_quant_config(dir);
    const Checkpoint ckpt = Checkpoint::open(dir, quant.model_file_base_name);
    std::mt19937 rng(39);
    for (std::int64_t i = 0; i < config.num_hidden_layers; ++i) {
        std::vector<GptqLinear> layers;
        for (const LinearRole role : {LinearRole::GateProj, LinearRole::UpProj, LinearRole::DownProj}) {
            const LinearDims dims = linear_dims(role, config);
            layers.push_back(load_gptq_linear(ckpt, role_name(role, static_cast<int>(i)), dims.k, dims.n, quant));
        }
        const GptqLinear& down = layers[2];
        const std::vector<std::int32_t> order =
            load_ffn_order(ckpt, down.name, quant, config.intermediate_size, config.hidden_size);
        EXPECT_EQ(order, ffn_order(down));
        for (int rank = 0; rank < c.size; ++rank) {
            const SplitPlan plan = plan_split(down.name, LinearRole::DownProj, config, quant, rank, c.size);
            expect_same_layer(load_row_shard(ckpt, down.name, quant, plan, order).layer,
                              row_shard(down, plan, order).layer);
        }
        check_mlp_by_order(layers[0], layers[1], down, config, quant, c.size, rng);
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures,
                         FixtureShardTest,
                         ::testing::Values(FixtureCase{"tiny-g64-gqa-v2", 2},
                                           FixtureCase{"tiny-g64-gqa-v2", 4},
                                           FixtureCase{"tiny-g128-sym", 2},
                                           FixtureCase{"tiny-g32-act-asym", 2},
                                           FixtureCase{"tiny-g32-act-asym", 4},
                                           FixtureCase{"tiny-gall-rope", 2},
                                           FixtureCase{"tiny-gall-rope", 4},
                                           FixtureCase{"tiny-linear-rope", 3},
                                           FixtureCase{"tiny-llama2-vocab", 2}),
                         [](const ::testing::TestParamInfo<FixtureCase>& param_info) {
                             std::string name = std::string(param_info.param.fixture) + "_size" +
                                                std::to_string(param_info.param.size);
                             std::replace(name.begin(), name.end(), '-', '_');
                             return name;
                         });

TEST(FixtureShardErrorTest, TinyLinearRopeAtSize2_KvHeadsNeitherSplitNorReplicated) {
    const std::filesystem::path dir = std::filesystem::path(Q4TP_TEST_DATA_DIR) / "fixtures" / "tiny-linear-rope";
    const ModelConfig config = load_model_config(dir / "config.json");
    const QuantConfig quant = load_quant_config(dir);
    const std::string name = "model.layers.0.self_attn.v_proj";
    expect_error([&] { plan_split(name, LinearRole::ValueProj, config, quant, 0, 2); }, {name, "3 KV heads"});
}

}  // namespace
}  // namespace q4tp::loaders
