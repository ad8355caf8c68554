// Tensor-parallel sharding of GPTQ layers (docs/design.md "Sharding rules"); the rules are in loaders/shard.h.
#include "loaders/shard.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/base/dtype.h"
#include "core/base/error.h"
#include "loaders/checkpoint.h"

namespace q4tp::loaders {

// ---- roles --------------------------------------------------------------------------------------

const char* to_string(LinearRole role) {
    switch (role) {
        case LinearRole::QueryProj:
            return "q_proj";
        case LinearRole::KeyProj:
            return "k_proj";
        case LinearRole::ValueProj:
            return "v_proj";
        case LinearRole::GateProj:
            return "gate_proj";
        case LinearRole::UpProj:
            return "up_proj";
        case LinearRole::OutputProj:
            return "o_proj";
        case LinearRole::DownProj:
            return "down_proj";
    }
    Q4TP_THROW("unknown linear role " << static_cast<int>(role));
}

bool is_column_parallel(LinearRole role) {
    switch (role) {
        case LinearRole::QueryProj:
        case LinearRole::KeyProj:
        case LinearRole::ValueProj:
        case LinearRole::GateProj:
        case LinearRole::UpProj:
            return true;
        case LinearRole::OutputProj:
        case LinearRole::DownProj:
            return false;
    }
    Q4TP_THROW("unknown linear role " << static_cast<int>(role));
}

LinearDims linear_dims(LinearRole role, const ModelConfig& config) {
    const std::int64_t h = config.hidden_size;
    switch (role) {
        case LinearRole::QueryProj:
            return {h, config.q_dim()};
        case LinearRole::KeyProj:
        case LinearRole::ValueProj:
            return {h, config.kv_dim()};
        case LinearRole::GateProj:
        case LinearRole::UpProj:
            return {h, config.intermediate_size};
        case LinearRole::OutputProj:
            return {config.q_dim(), h};
        case LinearRole::DownProj:
            return {config.intermediate_size, h};
    }
    Q4TP_THROW("unknown linear role " << static_cast<int>(role));
}

// ---- planning -----------------------------------------------------------------------------------

namespace {

//! Rows per kernel k-block: every row-parallel K_local must be a multiple of it.
constexpr std::int64_t kRowUnit = 32;
//! Columns per packed qzeros word: every column-parallel N_local must be a multiple of it.
constexpr std::int64_t kColumnUnit = 8;

void check_rank(const std::string& layer, int rank, int size) {
    Q4TP_CHECK(size >= 1, layer << ": the tensor-parallel size must be >= 1, got " << size);
    Q4TP_CHECK(rank >= 0 && rank < size, layer << ": rank " << rank << " outside [0, " << size << ")");
}

//! The query heads of a rank: nh / size contiguous heads (design.md: heads stay whole).
IndexRange query_heads(const std::string& layer, const ModelConfig& config, int rank, int size) {
    const std::int64_t nh = config.num_attention_heads;
    Q4TP_CHECK(nh > 0 && config.head_dim > 0,
               layer << ": num_attention_heads " << nh << " and head_dim " << config.head_dim << " must be positive");
    Q4TP_CHECK(nh % size == 0,
               layer << ": " << nh << " attention heads cannot be split evenly over " << size << " ranks");
    const std::int64_t per_rank = nh / size;
    return {rank * per_rank, (rank + 1) * per_rank};
}

//! The KV heads of a rank: a contiguous block when they split, the one replicated head r / (size / nkv) when
//! there are fewer KV heads than ranks. Either way these are the KV heads the rank's query heads read
//! (query head h uses KV head h / (nh / nkv), R4.3).
IndexRange kv_heads(const std::string& layer, const ModelConfig& config, int rank, int size, int* replicas) {
    query_heads(layer, config, rank, size);  // the query split must exist for the KV split to match it
    const std::int64_t nh = config.num_attention_heads;
    const std::int64_t nkv = config.num_key_value_heads;
    Q4TP_CHECK(nkv > 0 && nh % nkv == 0,
               layer << ": " << nkv << " KV heads do not divide " << nh << " attention heads (expected a GQA group)");
    if (nkv % size == 0) {
        *replicas = 1;
        const std::int64_t per_rank = nkv / size;
        return {rank * per_rank, (rank + 1) * per_rank};
    }
    Q4TP_CHECK(size % nkv == 0,
               layer << ": " << nkv << " KV heads can be neither split over nor replicated across " << size
                     << " ranks (expected num_key_value_heads % size == 0 or size % num_key_value_heads == 0)");
    *replicas = static_cast<int>(size / nkv);
    const std::int64_t head = rank / *replicas;
    return {head, head + 1};
}

std::int64_t groups_of(std::int64_t k, std::int64_t group_size) {
    return group_size == -1 ? 1 : num_groups_for(k, effective_group_size(k, group_size));
}

}  // namespace

IndexRange ffn_range(
    const std::string& layer, std::int64_t intermediate_size, std::int64_t group_size, int rank, int size) {
    check_rank(layer, rank, size);
    const std::int64_t ffn = intermediate_size;
    Q4TP_CHECK(ffn > 0 && ffn % kRowUnit == 0,
               layer << ": intermediate_size " << ffn << " is not a positive multiple of " << kRowUnit << " (R2.1)");
    effective_group_size(ffn, group_size);  // rejects 0 and values below -1
    const std::int64_t groups = groups_of(ffn, group_size);
    // With one group the scales are per column only, so any cut in whole k-blocks keeps whole groups; otherwise
    // a cut must fall on a group boundary and on a k-block boundary.
    const std::int64_t unit = groups == 1 ? kRowUnit : std::lcm(group_size, kRowUnit);
    const std::int64_t units = (ffn + unit - 1) / unit;
    if (units < size) {
        if (groups == 1) {
            Q4TP_THROW(layer << ": intermediate_size " << ffn << " gives " << units << " blocks of " << kRowUnit
                             << " rows, fewer than " << size << " ranks");
        }
        Q4TP_THROW(layer << ": down_proj has " << groups << " groups of " << group_size << " rows (intermediate_size "
                         << ffn << "), " << units << " units of " << unit << " rows, fewer than " << size
                         << " ranks (row-parallel layers split whole groups and gate/up follow down_proj)");
    }
    const std::int64_t base = units / size;
    const std::int64_t extra = units % size;
    const std::int64_t first = rank * base + std::min<std::int64_t>(rank, extra);
    const std::int64_t count = base + (rank < extra ? 1 : 0);
    return {first * unit, std::min(ffn, (first + count) * unit)};
}

SplitPlan plan_split(const std::string& layer,
                     LinearRole role,
                     const ModelConfig& config,
                     const QuantConfig& quant,
                     int rank,
                     int size) {
    check_rank(layer, rank, size);
    SplitPlan plan;
    plan.layer = layer;
    plan.role = role;
    plan.rank = rank;
    plan.size = size;
    const LinearDims dims = linear_dims(role, config);
    plan.k = dims.k;
    plan.n = dims.n;
    Q4TP_CHECK(dims.k > 0 && dims.n > 0,
               layer << ": " << to_string(role) << " is [" << dims.k << "][" << dims.n << "], expected positive sizes");
    const std::int64_t d = config.head_dim;
    switch (role) {
        case LinearRole::QueryProj:
            plan.heads = query_heads(layer, config, rank, size);
            plan.range = {plan.heads.begin * d, plan.heads.end * d};
            break;
        case LinearRole::KeyProj:
        case LinearRole::ValueProj:
            plan.heads = kv_heads(layer, config, rank, size, &plan.replicas);
            plan.range = {plan.heads.begin * d, plan.heads.end * d};
            break;
        case LinearRole::OutputProj:
            // Whether these rows may cut a group depends on g_idx (act-order layers may), so row_shard checks it.
            plan.heads = query_heads(layer, config, rank, size);
            plan.range = {plan.heads.begin * d, plan.heads.end * d};
            break;
        case LinearRole::GateProj:
        case LinearRole::UpProj:
        case LinearRole::DownProj:
            plan.range = ffn_range(layer, config.intermediate_size, quant.group_size, rank, size);
            break;
    }
    if (is_column_parallel(role)) {
        Q4TP_CHECK(plan.range.size() % kColumnUnit == 0, layer << ": rank " << rank << " of " << size << " would hold "
                                                               << plan.range.size() << " columns, not a multiple of "
                                                               << kColumnUnit << " (one packed qzeros word)");
    } else {
        Q4TP_CHECK(plan.range.begin % kRowUnit == 0 && plan.range.size() % kRowUnit == 0,
                   layer << ": rank " << rank << " of " << size << " would hold rows [" << plan.range.begin << ", "
                         << plan.range.end << "), not in whole blocks of " << kRowUnit << " rows (K_local must be a "
                         << "multiple of 32)");
    }
    return plan;
}

IndexRange vocab_range(const std::string& layer, std::int64_t vocab_size, int rank, int size) {
    check_rank(layer, rank, size);
    Q4TP_CHECK(vocab_size > 0, layer << ": vocab_size " << vocab_size << " must be positive");
    const std::int64_t chunk = (vocab_size + size - 1) / size;
    Q4TP_CHECK((size - 1) * chunk < vocab_size, layer << ": vocab_size " << vocab_size << " in rows of " << chunk
                                                      << " per rank leaves the last of " << size << " ranks no row");
    return {rank * chunk, std::min(vocab_size, (rank + 1) * chunk)};
}

// ---- slicing ------------------------------------------------------------------------------------

namespace {

//! One full layer's tensors as raw bytes, from a checkpoint's mapping or from an in-memory GptqLinear, with its
//! g_idx (small: K int32) validated whole.
struct FullLayer {
    std::string name;
    std::int64_t k = 0;
    std::int64_t n = 0;
    std::int64_t group_size = 0;  //!< effective
    std::int64_t num_groups = 0;
    ZeroFormat zero_format = ZeroFormat::GptqV1;
    std::span<const std::byte> qweight;  //!< [K/8][N] int32 words
    std::span<const std::byte> qzeros;   //!< [G][N/8] int32 words
    std::span<const std::byte> scales;   //!< [G][N] fp16
    std::span<const std::byte> bias;     //!< [N] fp16; empty when absent
    std::vector<std::int32_t> g_idx;     //!< [K]
    bool act_order = false;
};

//! Copies the block rows x cols of a row-major [*][src_cols] array of T held as raw bytes; memcpy because a
//! mapped tensor need not be aligned to sizeof(T) (R1.7).
template <typename T>
HostBuffer<T> copy_block(
    const std::string& what, std::span<const std::byte> src, std::int64_t src_cols, IndexRange rows, IndexRange cols) {
    Q4TP_CHECK(rows.begin >= 0 && !rows.empty() && cols.begin >= 0 && !cols.empty() && cols.end <= src_cols &&
                   static_cast<std::size_t>(rows.end * src_cols) * sizeof(T) <= src.size(),
               what << ": block rows [" << rows.begin << ", " << rows.end << ") x columns [" << cols.begin << ", "
                    << cols.end << ") lies outside the tensor (" << src.size() << " bytes, " << src_cols
                    << " columns)");
    HostBuffer<T> out(static_cast<std::size_t>(rows.size() * cols.size()));
    const std::size_t row_bytes = static_cast<std::size_t>(cols.size()) * sizeof(T);
    for (std::int64_t r = rows.begin; r < rows.end; ++r) {
        const std::size_t src_offset = static_cast<std::size_t>(r * src_cols + cols.begin) * sizeof(T);
        std::memcpy(static_cast<void*>(out.data() + (r - rows.begin) * cols.size()), src.data() + src_offset,
                    row_bytes);
    }
    return out;
}

//! Element `index` of an array of T held as raw bytes (memcpy: a mapped tensor need not be aligned, R1.7). The
//! caller has checked the index against the tensor's shape.
template <typename T>
T load_at(std::span<const std::byte> src, std::int64_t index) {
    T value;
    std::memcpy(&value, src.data() + static_cast<std::size_t>(index) * sizeof(T), sizeof(T));
    return value;
}

//! Checks that `order` is a permutation of [0, extent) (the `what` dimension of layer `name`).
void check_order(const std::string& name, const char* what, std::span<const std::int32_t> order, std::int64_t extent) {
    Q4TP_CHECK(static_cast<std::int64_t>(order.size()) == extent,
               name << ": an order of its " << what << " has " << order.size() << " entries but expected " << extent);
    std::vector<bool> seen(static_cast<std::size_t>(extent), false);
    for (std::size_t i = 0; i < order.size(); ++i) {
        const std::int32_t v = order[i];
        Q4TP_CHECK(v >= 0 && v < extent && !seen[static_cast<std::size_t>(v)],
                   name << ": order of its " << what << " [" << i << "] = " << v << " is "
                        << (v >= 0 && v < extent ? "repeated" : "out of range") << " (expected a permutation of [0, "
                        << extent << "))");
        seen[static_cast<std::size_t>(v)] = true;
    }
}

void finish_g_idx(FullLayer& full) {
    if (full.g_idx.empty()) full.g_idx = sequential_g_idx(full.k, full.group_size);  // R2.17
    Q4TP_CHECK(static_cast<std::int64_t>(full.g_idx.size()) == full.k,
               full.name << ".g_idx: " << full.g_idx.size() << " entries but expected [" << full.k << "]");
    validate_g_idx(full.g_idx, full.group_size, full.num_groups, full.name + ".g_idx");
    full.act_order = is_act_order(full.g_idx, full.group_size);
}

void check_plan_dims(const std::string& name, const SplitPlan& plan, std::int64_t k, std::int64_t n, bool column) {
    check_rank(plan.layer, plan.rank, plan.size);
    Q4TP_CHECK(is_column_parallel(plan.role) == column,
               name << ": a " << to_string(plan.role) << " plan is " << (column ? "row" : "column")
                    << "-parallel but was given to a " << (column ? "column" : "row") << " shard");
    Q4TP_CHECK(plan.k == k && plan.n == n, name << ": layer is [" << k << "][" << n << "] but the "
                                                << to_string(plan.role) << " plan for " << plan.layer << " expects ["
                                                << plan.k << "][" << plan.n << "]");
}

FullLayer view_of(const GptqLinear& layer) {
    FullLayer full;
    full.name = layer.name;
    full.k = layer.k;
    full.n = layer.n;
    full.group_size = layer.group_size;
    full.num_groups = layer.num_groups;
    full.zero_format = layer.zero_format;
    Q4TP_CHECK(layer.k > 0 && layer.n > 0 && layer.k % 8 == 0 && layer.n % 8 == 0 && layer.group_size > 0 &&
                   layer.num_groups == num_groups_for(layer.k, layer.group_size) &&
                   static_cast<std::int64_t>(layer.qweight.size()) == layer.k / 8 * layer.n &&
                   static_cast<std::int64_t>(layer.qzeros.size()) == layer.num_groups * (layer.n / 8) &&
                   static_cast<std::int64_t>(layer.scales.size()) == layer.num_groups * layer.n &&
                   (layer.bias.empty() || static_cast<std::int64_t>(layer.bias.size()) == layer.n),
               layer.name << ": sharding needs a validated layer (call validate_gptq_linear first)");
    full.qweight = std::as_bytes(layer.qweight.span());
    full.qzeros = std::as_bytes(layer.qzeros.span());
    full.scales = std::as_bytes(layer.scales.span());
    full.bias = std::as_bytes(layer.bias.span());
    full.g_idx = layer.g_idx;
    finish_g_idx(full);
    return full;
}

FullLayer view_of(
    const Checkpoint& ckpt, const std::string& name, const QuantConfig& quant, std::int64_t k, std::int64_t n) {
    const GptqHeaders headers = check_gptq_headers(ckpt, name, k, n, quant);
    const GptqGeometry& geo = headers.geometry;

    FullLayer full;
    full.name = name;
    full.k = k;
    full.n = n;
    full.group_size = geo.group_size;
    full.num_groups = geo.num_groups;
    full.zero_format = quant.zero_format;
    full.qweight = ckpt.checked(name + ".qweight", DType::I32, {k / 8, n});
    full.qzeros = ckpt.checked(name + ".qzeros", DType::I32, {geo.num_groups, n / 8});
    full.scales = ckpt.checked(name + ".scales", DType::F16, {geo.num_groups, n});
    if (headers.has_bias) full.bias = ckpt.checked(name + ".bias", DType::F16, {n});
    if (headers.has_g_idx) {
        const auto values = ckpt.read<std::int32_t>(name + ".g_idx", DType::I32, {k});
        full.g_idx.assign(values.begin(), values.end());
    }
    finish_g_idx(full);
    return full;
}

//! Columns order[cols] of the full layer, for column_shard with an order: every row of qweight, scales and qzeros
//! gathered column by column (qzeros nibble by nibble, repacked 8 per word).
void gather_columns(const FullLayer& full, IndexRange cols, std::span<const std::int32_t> order, GptqLinear& layer) {
    const std::int64_t n = full.n;
    const std::int64_t nl = cols.size();
    const std::span<const std::int32_t> src =
        order.subspan(static_cast<std::size_t>(cols.begin), static_cast<std::size_t>(nl));
    const std::int64_t words = full.k / 8;
    layer.qweight = HostBuffer<std::uint32_t>(static_cast<std::size_t>(words * nl));
    for (std::int64_t r = 0; r < words; ++r)
        for (std::int64_t c = 0; c < nl; ++c)
            layer.qweight[static_cast<std::size_t>(r * nl + c)] =
                load_at<std::uint32_t>(full.qweight, r * n + src[static_cast<std::size_t>(c)]);
    layer.scales = HostBuffer<std::uint16_t>(static_cast<std::size_t>(full.num_groups * nl));
    layer.qzeros = HostBuffer<std::uint32_t>(static_cast<std::size_t>(full.num_groups * (nl / 8)));
    std::fill(layer.qzeros.begin(), layer.qzeros.end(), 0u);
    for (std::int64_t g = 0; g < full.num_groups; ++g) {
        for (std::int64_t c = 0; c < nl; ++c) {
            const std::int32_t col = src[static_cast<std::size_t>(c)];
            layer.scales[static_cast<std::size_t>(g * nl + c)] = load_at<std::uint16_t>(full.scales, g * n + col);
            const std::uint32_t word = load_at<std::uint32_t>(full.qzeros, g * (n / 8) + col / 8);
            layer.qzeros[static_cast<std::size_t>(g * (nl / 8) + c / 8)] |=
                static_cast<std::uint32_t>(nibble(word, col % 8)) << (4 * (c % 8));
        }
    }
    if (!full.bias.empty()) {
        layer.bias = HostBuffer<std::uint16_t>(static_cast<std::size_t>(nl));
        for (std::int64_t c = 0; c < nl; ++c)
            layer.bias[static_cast<std::size_t>(c)] =
                load_at<std::uint16_t>(full.bias, src[static_cast<std::size_t>(c)]);
    }
}

ColumnShard cut_columns(const FullLayer& full, const SplitPlan& plan, std::span<const std::int32_t> order) {
    const IndexRange cols = plan.range;
    Q4TP_CHECK(cols.begin >= 0 && cols.begin < cols.end && cols.end <= full.n && cols.begin % kColumnUnit == 0 &&
                   cols.end % kColumnUnit == 0,
               full.name << ": columns [" << cols.begin << ", " << cols.end << ") are not a non-empty range of whole "
                         << "qzeros words (multiples of 8) inside N=" << full.n);
    if (!order.empty()) check_order(full.name, "columns", order, full.n);
    ColumnShard shard;
    shard.columns = cols;
    shard.heads = plan.heads;
    shard.replicas = plan.replicas;
    GptqLinear& layer = shard.layer;
    layer.name = full.name;
    layer.k = full.k;
    layer.n = cols.size();
    layer.group_size = full.group_size;
    layer.num_groups = full.num_groups;
    layer.zero_format = full.zero_format;
    const IndexRange all_groups{0, full.num_groups};
    if (order.empty()) {
        layer.qweight = copy_block<std::uint32_t>(full.name + ".qweight", full.qweight, full.n, {0, full.k / 8}, cols);
        layer.qzeros = copy_block<std::uint32_t>(full.name + ".qzeros", full.qzeros, full.n / 8, all_groups,
                                                 {cols.begin / 8, cols.end / 8});
        layer.scales = copy_block<std::uint16_t>(full.name + ".scales", full.scales, full.n, all_groups, cols);
        if (!full.bias.empty())
            layer.bias = copy_block<std::uint16_t>(full.name + ".bias", full.bias, full.n, {0, 1}, cols);
    } else {
        gather_columns(full, cols, order, layer);
    }
    layer.g_idx = full.g_idx;
    validate_gptq_shard(layer, false);
    return shard;
}

//! The groups of the full layer that rows order[rows] make up, checking that they are whole groups in group order:
//! position j of the range holds a row of group g0 + j / group_size, and the last group is complete. With one
//! group (scales per column only) any rows are whole.
IndexRange ordered_groups(const FullLayer& full, IndexRange rows, std::span<const std::int32_t> order) {
    const std::int64_t gs = full.group_size;
    const std::int64_t first = full.g_idx[static_cast<std::size_t>(order[static_cast<std::size_t>(rows.begin)])];
    for (std::int64_t j = 0; j < rows.size(); ++j) {
        const std::int32_t row = order[static_cast<std::size_t>(rows.begin + j)];
        const std::int64_t got = full.g_idx[static_cast<std::size_t>(row)];
        const std::int64_t want = first + j / gs;
        Q4TP_CHECK(got == want, full.name << ": rows [" << rows.begin << ", " << rows.end << ") of the given order are "
                                          << "not whole groups in group order: position " << rows.begin + j
                                          << " is row " << row << " of group " << got << ", expected group " << want);
    }
    const std::int64_t end = first + (rows.size() + gs - 1) / gs;
    if (full.num_groups > 1) {
        const std::int64_t population = std::min(end * gs, full.k) - (end - 1) * gs;
        const std::int64_t held = rows.size() - (end - 1 - first) * gs;
        Q4TP_CHECK(held == population, full.name << ": rows [" << rows.begin << ", " << rows.end
                                                 << ") of the given order hold " << held << " of the " << population
                                                 << " rows of group " << end - 1 << " (expected whole groups)");
    }
    return {first, end};
}

//! qweight rows order[rows], repacked 8 per word (R2.4). Each source word row is read once, whatever the order.
HostBuffer<std::uint32_t> gather_rows(const FullLayer& full, IndexRange rows, std::span<const std::int32_t> order) {
    const std::int64_t n = full.n;
    std::vector<std::int64_t> target(static_cast<std::size_t>(full.k), -1);
    for (std::int64_t j = 0; j < rows.size(); ++j)
        target[static_cast<std::size_t>(order[static_cast<std::size_t>(rows.begin + j)])] = j;
    HostBuffer<std::uint32_t> out(static_cast<std::size_t>(rows.size() / 8 * n));
    std::fill(out.begin(), out.end(), 0u);
    std::vector<std::uint32_t> words(static_cast<std::size_t>(n));
    for (std::int64_t w = 0; w < full.k / 8; ++w) {
        const auto* first = target.data() + w * 8;
        if (std::all_of(first, first + 8, [](std::int64_t t) { return t < 0; })) continue;
        std::memcpy(words.data(), full.qweight.data() + static_cast<std::size_t>(w * n) * sizeof(std::uint32_t),
                    static_cast<std::size_t>(n) * sizeof(std::uint32_t));
        for (int i = 0; i < 8; ++i) {
            const std::int64_t t = first[i];
            if (t < 0) continue;
            std::uint32_t* dst = out.data() + (t / 8) * n;
            const int shift = static_cast<int>(4 * (t % 8));
            for (std::int64_t c = 0; c < n; ++c)
                dst[c] |= static_cast<std::uint32_t>(nibble(words[static_cast<std::size_t>(c)], i)) << shift;
        }
    }
    return out;
}

RowShard cut_rows(const FullLayer& full, const SplitPlan& plan, std::span<const std::int32_t> order) {
    const IndexRange rows = plan.range;
    Q4TP_CHECK(rows.begin >= 0 && rows.begin < rows.end && rows.end <= full.k && rows.begin % kRowUnit == 0 &&
                   rows.end % kRowUnit == 0,
               full.name << ": rows [" << rows.begin << ", " << rows.end << ") are not a non-empty range of whole "
                         << kRowUnit << "-row blocks inside K=" << full.k);
    const std::int64_t gs = full.group_size;
    RowShard shard;
    shard.rows = rows;
    shard.heads = plan.heads;
    GptqLinear& layer = shard.layer;
    layer.name = full.name;
    layer.k = rows.size();
    layer.n = full.n;
    layer.zero_format = full.zero_format;
    if (!order.empty()) {
        // Whole groups sorted by group: an in-order layer of its own groups, whatever the full layer's g_idx.
        check_order(full.name, "rows", order, full.k);
        shard.groups = ordered_groups(full, rows, order);
        layer.qweight = gather_rows(full, rows, order);
        layer.group_size = full.num_groups == 1 ? rows.size() : gs;
        layer.num_groups = shard.groups.size();
        layer.g_idx = sequential_g_idx(rows.size(), layer.group_size);
    } else if (full.act_order) {
        // Original-order rows with every group: the local g_idx keeps the full layer's group numbers.
        layer.qweight = copy_block<std::uint32_t>(full.name + ".qweight", full.qweight, full.n,
                                                  {rows.begin / 8, rows.end / 8}, {0, full.n});
        shard.all_groups = true;
        shard.groups = {0, full.num_groups};
        layer.group_size = gs;
        layer.num_groups = full.num_groups;
        layer.g_idx.assign(full.g_idx.begin() + rows.begin, full.g_idx.begin() + rows.end);
    } else {
        layer.qweight = copy_block<std::uint32_t>(full.name + ".qweight", full.qweight, full.n,
                                                  {rows.begin / 8, rows.end / 8}, {0, full.n});
        if (full.num_groups > 1) {
            Q4TP_CHECK(rows.begin % gs == 0 && (rows.end % gs == 0 || rows.end == full.k),
                       full.name << ": rows [" << rows.begin << ", " << rows.end << ") cut a group of group_size " << gs
                                 << " (a layer without act-order splits in whole groups; for o_proj the heads "
                                 << "of a rank must cover whole groups)");
        }
        shard.groups = {rows.begin / gs, (rows.end + gs - 1) / gs};
        // One group over all of K stays one group over the local rows; otherwise group_size carries over and
        // the local groups are the full layer's groups shard.groups, renumbered from 0.
        layer.group_size = full.num_groups == 1 ? rows.size() : gs;
        layer.num_groups = shard.groups.size();
        layer.g_idx.resize(static_cast<std::size_t>(rows.size()));
        for (std::int64_t r = rows.begin; r < rows.end; ++r) {
            layer.g_idx[static_cast<std::size_t>(r - rows.begin)] =
                static_cast<std::int32_t>(full.g_idx[static_cast<std::size_t>(r)] - shard.groups.begin);
        }
    }
    layer.qzeros =
        copy_block<std::uint32_t>(full.name + ".qzeros", full.qzeros, full.n / 8, shard.groups, {0, full.n / 8});
    layer.scales = copy_block<std::uint16_t>(full.name + ".scales", full.scales, full.n, shard.groups, {0, full.n});
    // y = sum_r x_r W_r + bias: the bias is added once, by rank 0, before (or without) the all-reduce.
    if (!full.bias.empty() && plan.rank == 0) {
        layer.bias = copy_block<std::uint16_t>(full.name + ".bias", full.bias, full.n, {0, 1}, {0, full.n});
    }
    validate_gptq_shard(layer, shard.all_groups);
    return shard;
}

}  // namespace

ColumnShard column_shard(const GptqLinear& full, const SplitPlan& plan, std::span<const std::int32_t> order) {
    check_plan_dims(full.name, plan, full.k, full.n, true);
    return cut_columns(view_of(full), plan, order);
}

RowShard row_shard(const GptqLinear& full, const SplitPlan& plan, std::span<const std::int32_t> order) {
    check_plan_dims(full.name, plan, full.k, full.n, false);
    return cut_rows(view_of(full), plan, order);
}

ColumnShard load_column_shard(const Checkpoint& ckpt,
                              const std::string& name,
                              const QuantConfig& quant,
                              const SplitPlan& plan,
                              std::span<const std::int32_t> order) {
    check_plan_dims(name, plan, plan.k, plan.n, true);
    return cut_columns(view_of(ckpt, name, quant, plan.k, plan.n), plan, order);
}

RowShard load_row_shard(const Checkpoint& ckpt,
                        const std::string& name,
                        const QuantConfig& quant,
                        const SplitPlan& plan,
                        std::span<const std::int32_t> order) {
    check_plan_dims(name, plan, plan.k, plan.n, false);
    return cut_rows(view_of(ckpt, name, quant, plan.k, plan.n), plan, order);
}

// ---- the MLP's intermediate order ---------------------------------------------------------------

namespace {

std::vector<std::int32_t> order_of(const FullLayer& down) {
    if (!down.act_order) return {};
    return act_order_permutation(down.g_idx, down.num_groups).x_map;
}

}  // namespace

std::vector<std::int32_t> ffn_order(const GptqLinear& down) {
    return order_of(view_of(down));
}

std::vector<std::int32_t> load_ffn_order(
    const Checkpoint& ckpt, const std::string& down_name, const QuantConfig& quant, std::int64_t k, std::int64_t n) {
    // view_of maps the tensors (nothing read) and reads only g_idx.
    return order_of(view_of(ckpt, down_name, quant, k, n));
}

// ---- validation ---------------------------------------------------------------------------------

void validate_gptq_shard(GptqLinear& layer, bool all_groups) {
    const std::string& name = layer.name;
    const std::int64_t k = layer.k;
    const std::int64_t n = layer.n;
    Q4TP_CHECK(k > 0 && n > 0, name << ": shard K=" << k << ", N=" << n << " must be positive");
    Q4TP_CHECK(k % kRowUnit == 0,
               name << ": shard K=" << k << " is not a multiple of " << kRowUnit << " (whole kernel k-blocks, R2.1)");
    Q4TP_CHECK(n % kColumnUnit == 0,
               name << ": shard N=" << n << " is not a multiple of " << kColumnUnit << " (one packed qzeros word)");
    Q4TP_CHECK(k <= std::numeric_limits<std::int32_t>::max() && n <= std::numeric_limits<std::int32_t>::max(),
               name << ": shard K=" << k << ", N=" << n << " exceed the int32 range");
    const std::int64_t gs = effective_group_size(k, layer.group_size);
    std::int64_t groups = 0;
    if (all_groups) {
        groups = layer.num_groups;
        Q4TP_CHECK(groups > 0 && groups <= std::numeric_limits<std::int32_t>::max(),
                   name << ": an act-order row shard needs the full layer's group count, got num_groups=" << groups);
    } else {
        groups = num_groups_for(k, gs);
        Q4TP_CHECK(layer.num_groups == 0 || layer.num_groups == groups, name << ": num_groups=" << layer.num_groups
                                                                             << " but K=" << k << ", group_size=" << gs
                                                                             << " give G=" << groups);
    }
    layer.group_size = gs;
    layer.num_groups = groups;

    Q4TP_CHECK(static_cast<std::int64_t>(layer.qweight.size()) == k / 8 * n,
               name << ".qweight: " << layer.qweight.size() << " words but expected [" << k / 8 << ", " << n << "]");
    Q4TP_CHECK(static_cast<std::int64_t>(layer.scales.size()) == groups * n,
               name << ".scales: " << layer.scales.size() << " values but expected [" << groups << ", " << n << "]");
    Q4TP_CHECK(static_cast<std::int64_t>(layer.qzeros.size()) == groups * (n / 8),
               name << ".qzeros: " << layer.qzeros.size() << " words but expected [" << groups << ", " << n / 8 << "]");

    if (layer.g_idx.empty() && !all_groups) layer.g_idx = sequential_g_idx(k, gs);  // R2.17
    Q4TP_CHECK(static_cast<std::int64_t>(layer.g_idx.size()) == k,
               name << ".g_idx: " << layer.g_idx.size() << " entries but expected [" << k << "] for K=" << k);
    if (all_groups) {
        // The full g_idx passed R2.18; a contiguous slice of it can only under-populate groups.
        std::vector<std::int64_t> count(static_cast<std::size_t>(groups), 0);
        for (std::int64_t row = 0; row < k; ++row) {
            const std::int32_t g = layer.g_idx[static_cast<std::size_t>(row)];
            Q4TP_CHECK(g >= 0 && g < groups, name << ".g_idx: [" << row << "] = " << g
                                                  << " is out of range (expected 0 <= g < G=" << groups << ")");
            const std::int64_t got = ++count[static_cast<std::size_t>(g)];
            Q4TP_CHECK(got <= gs, name << ".g_idx: group " << g << " holds more than group_size=" << gs << " rows");
        }
    } else {
        validate_g_idx(layer.g_idx, gs, groups, name + ".g_idx");
    }

    for (std::size_t i = 0; i < layer.scales.size(); ++i) {
        const std::uint16_t s = layer.scales[i];
        Q4TP_CHECK((s & 0x7C00u) != 0x7C00u,
                   name << ".scales: [" << static_cast<std::int64_t>(i) / n << ", " << static_cast<std::int64_t>(i) % n
                        << "] is " << ((s & 0x03FFu) ? "NaN" : "infinite") << ", expected a finite scale");
    }
    bool symmetric = true;
    for (std::int64_t g = 0; g < groups; ++g) {
        for (std::int64_t col = 0; col < n; ++col) {
            const int zs =
                nibble(layer.qzeros[static_cast<std::size_t>(g * (n / 8) + col / 8)], static_cast<int>(col % 8));
            Q4TP_CHECK(layer.zero_format != ZeroFormat::GptqV1 || zs != 15,
                       name << ".qzeros: group " << g << " column " << col
                            << " stores zero nibble 0xF in gptq (v1) format, which readers disagree on (formats.md "
                               "R2.12); expected nibbles 0x0..0xE");
            const int z = layer.zero_format == ZeroFormat::GptqV1 ? zs + 1 : zs;
            if (z != 8) symmetric = false;
        }
    }
    layer.symmetric = symmetric;

    if (!layer.bias.empty()) {
        Q4TP_CHECK(static_cast<std::int64_t>(layer.bias.size()) == n,
                   name << ".bias: " << layer.bias.size() << " values but expected [" << n << "]");
        const bool all_zero =
            std::all_of(layer.bias.begin(), layer.bias.end(), [](std::uint16_t b) { return (b & 0x7FFFu) == 0; });
        if (all_zero) layer.bias = HostBuffer<std::uint16_t>();
    }
    layer.act_order = all_groups || is_act_order(layer.g_idx, gs);
}

// ---- dense tensors ------------------------------------------------------------------------------

namespace {

DenseShard cut_dense_rows(
    const std::string& name, std::span<const std::byte> bytes, std::int64_t rows, std::int64_t cols, IndexRange range) {
    Q4TP_CHECK(rows > 0 && cols > 0, name << ": dense shape [" << rows << ", " << cols << "] must be positive");
    Q4TP_CHECK(range.begin >= 0 && range.begin < range.end && range.end <= rows,
               name << ": rows [" << range.begin << ", " << range.end << ") are not a non-empty range inside [0, "
                    << rows << ")");
    DenseShard shard;
    shard.rows = range;
    shard.cols = cols;
    shard.data = copy_block<std::uint16_t>(name, bytes, cols, range, {0, cols});
    return shard;
}

}  // namespace

DenseShard dense_rows_shard(const std::string& name,
                            std::span<const std::uint16_t> full,
                            std::int64_t rows,
                            std::int64_t cols,
                            IndexRange range) {
    Q4TP_CHECK(rows >= 0 && cols >= 0 && static_cast<std::int64_t>(full.size()) == rows * cols,
               name << ": " << full.size() << " values but expected [" << rows << ", " << cols << "]");
    return cut_dense_rows(name, std::as_bytes(full), rows, cols, range);
}

DenseShard dense_rows_shard(
    const Checkpoint& ckpt, const std::string& name, std::int64_t rows, std::int64_t cols, IndexRange range) {
    return cut_dense_rows(name, ckpt.checked(name, DType::F16, {rows, cols}), rows, cols, range);
}

}  // namespace q4tp::loaders
