// GPTQ layer tensors: packing, validation, act-order and the reference dequantizer (docs/formats.md §2, §3).
#include "loaders/gptq.h"

#include <algorithm>
#include <limits>
#include <sstream>

#include "core/base/dtype.h"
#include "core/base/error.h"
#include "core/base/half.h"
#include "loaders/checkpoint.h"

namespace q4tp::loaders {

// ---- unchecked accessors ------------------------------------------------------------------------
// The dequantizer and make_sequential call these per element after the layer has been validated; the public
// accessors add bounds checks on top.
namespace {

int code_unchecked(const GptqLinear& layer, std::int64_t k, std::int64_t n) {
    return nibble(layer.qweight[static_cast<std::size_t>((k / 8) * layer.n + n)], static_cast<int>(k % 8));
}

int stored_zero_unchecked(const GptqLinear& layer, std::int64_t g, std::int64_t n) {
    return nibble(layer.qzeros[static_cast<std::size_t>(g * (layer.n / 8) + n / 8)], static_cast<int>(n % 8));
}

int effective_zero(int stored, ZeroFormat format) {
    switch (format) {
        case ZeroFormat::GptqV1:
            return stored + 1;
        case ZeroFormat::GptqV2:
            return stored;
    }
    Q4TP_THROW("unknown zero format " << static_cast<int>(format));
}

int zero_unchecked(const GptqLinear& layer, std::int64_t g, std::int64_t n) {
    return effective_zero(stored_zero_unchecked(layer, g, n), layer.zero_format);
}

float scale_unchecked(const GptqLinear& layer, std::int64_t g, std::int64_t n) {
    return half_to_float(layer.scales[static_cast<std::size_t>(g * layer.n + n)]);
}

void check_index(const GptqLinear& layer, const char* what, std::int64_t row, std::int64_t rows, std::int64_t col) {
    Q4TP_CHECK(row >= 0 && row < rows && col >= 0 && col < layer.n, layer.name << ": " << what << " index (" << row
                                                                               << ", " << col << ") outside [" << rows
                                                                               << ", " << layer.n << "]");
}

void check_packed_dims(const char* what,
                       std::int64_t rows,
                       std::int64_t cols,
                       std::int64_t packed_rows,
                       std::int64_t packed_cols,
                       std::size_t values,
                       std::size_t words) {
    Q4TP_CHECK(rows >= 0 && cols >= 0, what << ": negative dimensions [" << rows << ", " << cols << "]");
    Q4TP_CHECK(static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols) == values,
               what << ": " << values << " values but expected [" << rows << ", " << cols << "] = " << rows * cols);
    Q4TP_CHECK(static_cast<std::size_t>(packed_rows) * static_cast<std::size_t>(packed_cols) == words,
               what << ": " << words << " words but expected [" << packed_rows << ", " << packed_cols
                    << "] = " << packed_rows * packed_cols);
}

//! Buffer sizes the unchecked accessors rely on; a layer that went through validate_gptq_linear has them.
void check_filled(const GptqLinear& layer, const char* caller) {
    const std::int64_t k = layer.k;
    const std::int64_t n = layer.n;
    const std::int64_t g = layer.num_groups;
    Q4TP_CHECK(k > 0 && n > 0 && k % 8 == 0 && n % 8 == 0 && g > 0 &&
                   static_cast<std::int64_t>(layer.g_idx.size()) == k &&
                   static_cast<std::int64_t>(layer.qweight.size()) == k / 8 * n &&
                   static_cast<std::int64_t>(layer.qzeros.size()) == g * (n / 8) &&
                   static_cast<std::int64_t>(layer.scales.size()) == g * n,
               layer.name << ": " << caller << " needs a validated layer (call validate_gptq_linear first)");
}

//! "[512, 4096]", as safetensors headers spell shapes.
std::string shape_str(const std::vector<std::int64_t>& shape) {
    std::ostringstream out;
    out << "[";
    for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << "]";
    return out.str();
}

}  // namespace

// ---- nibble access ------------------------------------------------------------------------------

int code_at(const GptqLinear& layer, std::int64_t k, std::int64_t n) {
    check_index(layer, "qweight code", k, layer.k, n);
    return code_unchecked(layer, k, n);
}

int stored_zero_at(const GptqLinear& layer, std::int64_t g, std::int64_t n) {
    check_index(layer, "zero point", g, layer.num_groups, n);
    return stored_zero_unchecked(layer, g, n);
}

int zero_point_at(const GptqLinear& layer, std::int64_t g, std::int64_t n) {
    check_index(layer, "zero point", g, layer.num_groups, n);
    return zero_unchecked(layer, g, n);
}

float scale_at(const GptqLinear& layer, std::int64_t g, std::int64_t n) {
    check_index(layer, "scale", g, layer.num_groups, n);
    return scale_unchecked(layer, g, n);
}

// ---- packing ------------------------------------------------------------------------------------

HostBuffer<std::uint32_t> pack_qweight(std::span<const std::uint8_t> codes, std::int64_t k, std::int64_t n) {
    Q4TP_CHECK(k % 8 == 0, "pack_qweight: K=" << k << " is not a multiple of 8 (8 codes per int32 word)");
    check_packed_dims("pack_qweight codes", k, n, k / 8, n, codes.size(), static_cast<std::size_t>(k / 8 * n));
    HostBuffer<std::uint32_t> words(static_cast<std::size_t>(k / 8 * n));
    for (std::int64_t row = 0; row < k; ++row) {
        for (std::int64_t col = 0; col < n; ++col) {
            const std::uint8_t q = codes[static_cast<std::size_t>(row * n + col)];
            Q4TP_CHECK(q <= 15, "pack_qweight: code [" << row << ", " << col << "] = " << int{q} << " is not 4-bit");
            words[static_cast<std::size_t>((row / 8) * n + col)] |= std::uint32_t{q} << (4 * (row % 8));
        }
    }
    return words;
}

std::vector<std::uint8_t> unpack_qweight(std::span<const std::uint32_t> qweight, std::int64_t k, std::int64_t n) {
    Q4TP_CHECK(k % 8 == 0, "unpack_qweight: K=" << k << " is not a multiple of 8 (8 codes per int32 word)");
    check_packed_dims("unpack_qweight", k, n, k / 8, n, static_cast<std::size_t>(k * n), qweight.size());
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(k * n));
    for (std::int64_t row = 0; row < k; ++row) {
        for (std::int64_t col = 0; col < n; ++col) {
            codes[static_cast<std::size_t>(row * n + col)] = static_cast<std::uint8_t>(
                nibble(qweight[static_cast<std::size_t>((row / 8) * n + col)], static_cast<int>(row % 8)));
        }
    }
    return codes;
}

HostBuffer<std::uint32_t> pack_qzeros(std::span<const std::uint8_t> zeros,
                                      std::int64_t num_groups,
                                      std::int64_t n,
                                      ZeroFormat format) {
    Q4TP_CHECK(n % 8 == 0, "pack_qzeros: N=" << n << " is not a multiple of 8 (8 zero points per int32 word)");
    check_packed_dims("pack_qzeros zeros", num_groups, n, num_groups, n / 8, zeros.size(),
                      static_cast<std::size_t>(num_groups * (n / 8)));
    const int lo = format == ZeroFormat::GptqV1 ? 1 : 0;
    HostBuffer<std::uint32_t> words(static_cast<std::size_t>(num_groups * (n / 8)));
    for (std::int64_t g = 0; g < num_groups; ++g) {
        for (std::int64_t col = 0; col < n; ++col) {
            const int z = zeros[static_cast<std::size_t>(g * n + col)];
            Q4TP_CHECK(z >= lo && z <= 15, "pack_qzeros: zero point [" << g << ", " << col << "] = " << z
                                                                       << " cannot be stored in " << to_string(format)
                                                                       << " (expected " << lo << "..15)");
            const auto stored = static_cast<std::uint32_t>(z - lo);
            words[static_cast<std::size_t>(g * (n / 8) + col / 8)] |= stored << (4 * (col % 8));
        }
    }
    return words;
}

std::vector<std::uint8_t> unpack_qzeros(std::span<const std::uint32_t> qzeros,
                                        std::int64_t num_groups,
                                        std::int64_t n,
                                        ZeroFormat format) {
    Q4TP_CHECK(n % 8 == 0, "unpack_qzeros: N=" << n << " is not a multiple of 8 (8 zero points per int32 word)");
    check_packed_dims("unpack_qzeros", num_groups, n, num_groups, n / 8, static_cast<std::size_t>(num_groups * n),
                      qzeros.size());
    std::vector<std::uint8_t> zeros(static_cast<std::size_t>(num_groups * n));
    for (std::int64_t g = 0; g < num_groups; ++g) {
        for (std::int64_t col = 0; col < n; ++col) {
            const int stored =
                nibble(qzeros[static_cast<std::size_t>(g * (n / 8) + col / 8)], static_cast<int>(col % 8));
            zeros[static_cast<std::size_t>(g * n + col)] = static_cast<std::uint8_t>(effective_zero(stored, format));
        }
    }
    return zeros;
}

// ---- g_idx and act-order ------------------------------------------------------------------------

std::int64_t effective_group_size(std::int64_t k, std::int64_t group_size) {
    Q4TP_CHECK(group_size == -1 || group_size > 0, "group_size " << group_size << " is invalid (expected -1 or > 0)");
    return group_size == -1 ? k : group_size;
}

std::int64_t num_groups_for(std::int64_t k, std::int64_t group_size) {
    Q4TP_CHECK(group_size > 0, "effective group_size " << group_size << " must be > 0");
    return (k + group_size - 1) / group_size;
}

std::vector<std::int32_t> sequential_g_idx(std::int64_t k, std::int64_t group_size) {
    Q4TP_CHECK(k >= 0 && k <= std::numeric_limits<std::int32_t>::max(), "K=" << k << " does not fit an int32 g_idx");
    const std::int64_t gs = effective_group_size(k, group_size);
    std::vector<std::int32_t> g_idx(static_cast<std::size_t>(k));
    for (std::int64_t row = 0; row < k; ++row)
        g_idx[static_cast<std::size_t>(row)] = static_cast<std::int32_t>(row / gs);
    return g_idx;
}

bool is_act_order(std::span<const std::int32_t> g_idx, std::int64_t group_size) {
    const auto k = static_cast<std::int64_t>(g_idx.size());
    const std::int64_t gs = effective_group_size(k, group_size);
    for (std::int64_t row = 0; row < k; ++row) {
        if (g_idx[static_cast<std::size_t>(row)] != row / gs) return true;
    }
    return false;
}

void validate_g_idx(std::span<const std::int32_t> g_idx,
                    std::int64_t group_size,
                    std::int64_t num_groups,
                    const std::string& what) {
    const auto k = static_cast<std::int64_t>(g_idx.size());
    Q4TP_CHECK(group_size > 0, what << ": effective group_size " << group_size << " must be > 0");
    Q4TP_CHECK(num_groups == num_groups_for(k, group_size), what << ": " << num_groups << " groups but K=" << k
                                                                 << " and group_size=" << group_size
                                                                 << " give G=" << num_groups_for(k, group_size));
    std::vector<std::int64_t> count(static_cast<std::size_t>(num_groups), 0);
    for (std::int64_t row = 0; row < k; ++row) {
        const std::int32_t g = g_idx[static_cast<std::size_t>(row)];
        Q4TP_CHECK(g >= 0 && g < num_groups, what << ": g_idx[" << row << "] = " << g
                                                  << " is out of range (expected 0 <= g < G=" << num_groups << ")");
        ++count[static_cast<std::size_t>(g)];
    }
    // R2.18 allows one short group; it must be the last one, because after the R3.3 sort the kernels take group g
    // to be rows [g*gs, (g+1)*gs), which holds only when every group before the last is full.
    // An overfull group is the root cause when some other group comes up short, so report it first.
    for (std::int64_t g = 0; g < num_groups; ++g) {
        const std::int64_t got = count[static_cast<std::size_t>(g)];
        Q4TP_CHECK(got <= group_size, what << ": group " << g << " holds " << got << " rows but group_size is "
                                           << group_size << " (group overfull)");
    }
    for (std::int64_t g = 0; g < num_groups; ++g) {
        const std::int64_t expected = g + 1 < num_groups ? group_size : k - (num_groups - 1) * group_size;
        const std::int64_t got = count[static_cast<std::size_t>(g)];
        Q4TP_CHECK(got == expected, what << ": group " << g << " holds " << got << " rows but expected " << expected
                                         << " (every group but the last holds group_size=" << group_size
                                         << " rows, the last the remaining K - (G-1)*group_size)");
    }
}

ActOrderPermutation act_order_permutation(std::span<const std::int32_t> g_idx, std::int64_t num_groups) {
    const auto k = static_cast<std::int64_t>(g_idx.size());
    Q4TP_CHECK(num_groups > 0 && num_groups <= std::max<std::int64_t>(k, 1),
               "act_order_permutation: num_groups " << num_groups << " outside [1, K=" << k << "]");
    // Counting sort: start[g] is where group g begins in sorted order; rows of a group keep their original
    // order, which makes this the stable argsort of g_idx (E2/X2 make_sequential).
    std::vector<std::int64_t> start(static_cast<std::size_t>(num_groups) + 1, 0);
    for (std::int64_t row = 0; row < k; ++row) {
        const std::int32_t g = g_idx[static_cast<std::size_t>(row)];
        Q4TP_CHECK(g >= 0 && g < num_groups, "act_order_permutation: g_idx[" << row << "] = " << g
                                                                             << " is out of range (expected 0 <= g < "
                                                                             << num_groups << ")");
        ++start[static_cast<std::size_t>(g) + 1];
    }
    for (std::size_t g = 1; g < start.size(); ++g) start[g] += start[g - 1];
    ActOrderPermutation perm;
    perm.x_map.resize(static_cast<std::size_t>(k));
    perm.inverse.resize(static_cast<std::size_t>(k));
    for (std::int64_t row = 0; row < k; ++row) {
        const std::int64_t j = start[static_cast<std::size_t>(g_idx[static_cast<std::size_t>(row)])]++;
        perm.inverse[static_cast<std::size_t>(row)] = static_cast<std::int32_t>(j);
        perm.x_map[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(row);
    }
    return perm;
}

GptqLinear make_sequential(const GptqLinear& layer, const ActOrderPermutation& perm) {
    check_filled(layer, "make_sequential");
    const auto k = static_cast<std::size_t>(layer.k);
    Q4TP_CHECK(perm.x_map.size() == k && perm.inverse.size() == k && layer.g_idx.size() == k,
               layer.name << ": permutation of " << perm.x_map.size() << " rows but K=" << layer.k);
    GptqLinear out;
    out.name = layer.name;
    out.k = layer.k;
    out.n = layer.n;
    out.group_size = layer.group_size;
    out.num_groups = layer.num_groups;
    out.zero_format = layer.zero_format;
    out.symmetric = layer.symmetric;
    out.qweight = HostBuffer<std::uint32_t>(layer.qweight.size());
    out.g_idx.resize(k);
    for (std::int64_t j = 0; j < layer.k; ++j) {
        const std::int32_t src = perm.x_map[static_cast<std::size_t>(j)];
        Q4TP_CHECK(src >= 0 && src < layer.k,
                   layer.name << ": x_map[" << j << "] = " << src << " outside [0, " << layer.k << ")");
        out.g_idx[static_cast<std::size_t>(j)] = layer.g_idx[static_cast<std::size_t>(src)];
        for (std::int64_t col = 0; col < layer.n; ++col) {
            out.qweight[static_cast<std::size_t>((j / 8) * layer.n + col)] |=
                static_cast<std::uint32_t>(code_unchecked(layer, src, col)) << (4 * (j % 8));
        }
    }
    out.qzeros = HostBuffer<std::uint32_t>(layer.qzeros.size());
    std::copy(layer.qzeros.begin(), layer.qzeros.end(), out.qzeros.begin());
    out.scales = HostBuffer<std::uint16_t>(layer.scales.size());
    std::copy(layer.scales.begin(), layer.scales.end(), out.scales.begin());
    out.bias = HostBuffer<std::uint16_t>(layer.bias.size());
    std::copy(layer.bias.begin(), layer.bias.end(), out.bias.begin());
    out.act_order = is_act_order(out.g_idx, out.group_size);
    return out;
}

// ---- validation ---------------------------------------------------------------------------------

namespace {

void check_dims(const std::string& name, std::int64_t k, std::int64_t n) {
    Q4TP_CHECK(k > 0 && n > 0, name << ": K=" << k << ", N=" << n << " must be positive");
    Q4TP_CHECK(k % 32 == 0, name << ": K=" << k << " (in_features) is not a multiple of 32 (R2.1)");
    Q4TP_CHECK(n % 32 == 0, name << ": N=" << n << " (out_features) is not a multiple of 32 (R2.1)");
    // g_idx is int32 and K*N must not overflow an index.
    Q4TP_CHECK(k <= std::numeric_limits<std::int32_t>::max() && n <= std::numeric_limits<std::int32_t>::max(),
               name << ": K=" << k << ", N=" << n << " exceed the int32 range");
}

void check_dtype(const std::string& tensor, const TensorMeta& meta, DType expected, const char* why) {
    Q4TP_CHECK(meta.dtype == to_string(expected),
               tensor << ": dtype " << meta.dtype << " but expected " << to_string(expected) << " (" << why << ")");
}

void check_rank(const std::string& tensor, const TensorMeta& meta, std::size_t rank, const std::string& expected) {
    Q4TP_CHECK(meta.shape.size() == rank, tensor << ": shape " << shape_str(meta.shape) << " but expected " << expected
                                                 << " (rank " << rank << ")");
}

}  // namespace

GptqGeometry check_gptq_tensor_metas(
    const std::string& name, std::int64_t k, std::int64_t n, const QuantConfig& quant, const GptqTensorMetas& metas) {
    check_dims(name, k, n);
    Q4TP_CHECK(quant.bits == 4, name << ": quantization config" << (quant.source_file.empty() ? "" : " ")
                                     << quant.source_file << " says bits=" << quant.bits << " but only 4 is supported");
    GptqGeometry geo;
    geo.group_size = effective_group_size(k, quant.group_size);
    geo.num_groups = num_groups_for(k, geo.group_size);

    // qweight: bits = 32 * rows / K (R2.3); anything but 4 is refused with the bits it implies.
    const std::string qweight = name + ".qweight";
    check_dtype(qweight, metas.qweight, DType::I32, "GPTQ packs codes in int32 words");
    std::ostringstream qw_expected;
    qw_expected << "[" << k / 8 << ", " << n << "] for K=" << k << ", N=" << n;
    check_rank(qweight, metas.qweight, 2, qw_expected.str());
    const std::int64_t qw_rows = metas.qweight.shape[0];
    if (qw_rows != k / 8 && qw_rows > 0 && (qw_rows * 32) % k == 0) {
        Q4TP_THROW(qweight << ": shape " << shape_str(metas.qweight.shape) << " implies bits=" << qw_rows * 32 / k
                           << " (32*rows/K) but only 4-bit is supported; expected " << qw_expected.str());
    }
    Q4TP_CHECK(qw_rows == k / 8 && metas.qweight.shape[1] == n,
               qweight << ": shape " << shape_str(metas.qweight.shape) << " but expected " << qw_expected.str());

    // scales fix G; qzeros must agree with it and both with group_size.
    const std::string scales = name + ".scales";
    check_dtype(scales, metas.scales, DType::F16, "fp16 scales");
    check_rank(scales, metas.scales, 2, "[G, " + std::to_string(n) + "]");
    Q4TP_CHECK(metas.scales.shape[1] == n,
               scales << ": shape " << shape_str(metas.scales.shape) << " but expected [G, " << n << "] for N=" << n);
    const std::int64_t g_scales = metas.scales.shape[0];

    const std::string qzeros = name + ".qzeros";
    check_dtype(qzeros, metas.qzeros, DType::I32, "GPTQ packs zero points in int32 words");
    check_rank(qzeros, metas.qzeros, 2, "[G, " + std::to_string(n / 8) + "]");
    Q4TP_CHECK(metas.qzeros.shape[1] == n / 8, qzeros << ": shape " << shape_str(metas.qzeros.shape)
                                                      << " but expected [" << metas.qzeros.shape[0] << ", " << n / 8
                                                      << "] for N=" << n << " (8 zero points per word)");
    Q4TP_CHECK(metas.qzeros.shape[0] == g_scales, qzeros << ": " << metas.qzeros.shape[0] << " groups but " << scales
                                                         << " has " << g_scales
                                                         << " (group count mismatch between scales and qzeros)");
    Q4TP_CHECK(g_scales == geo.num_groups, scales
                                               << ": " << g_scales << " groups but group_size=" << quant.group_size
                                               << " with K=" << k << " needs G=" << geo.num_groups
                                               << (quant.group_size == -1 ? " (group_size -1 means one group)" : ""));

    if (metas.g_idx) {
        const std::string g_idx = name + ".g_idx";
        check_dtype(g_idx, *metas.g_idx, DType::I32, "one int32 group index per input row");
        Q4TP_CHECK(metas.g_idx->shape.size() == 1 && metas.g_idx->shape[0] == k,
                   g_idx << ": shape " << shape_str(metas.g_idx->shape) << " but expected [" << k << "] for K=" << k);
    }
    if (metas.bias) {
        const std::string bias = name + ".bias";
        check_dtype(bias, *metas.bias, DType::F16, "fp16 bias");
        Q4TP_CHECK(metas.bias->shape.size() == 1 && metas.bias->shape[0] == n,
                   bias << ": shape " << shape_str(metas.bias->shape) << " but expected [" << n << "] for N=" << n);
    }
    return geo;
}

bool can_concat_columns(std::span<const GptqLinear* const> parts) {
    if (parts.empty()) return false;
    const GptqLinear& first = *parts[0];
    for (const GptqLinear* part : parts) {
        if (part->k != first.k || part->group_size != first.group_size || part->num_groups != first.num_groups ||
            part->zero_format != first.zero_format || part->g_idx != first.g_idx || !part->bias.empty() ||
            part->n % 8 != 0) {
            return false;
        }
    }
    return true;
}

GptqLinear concat_columns(std::span<const GptqLinear* const> parts, const std::string& name) {
    Q4TP_CHECK(can_concat_columns(parts),
               name << ": layers to fuse must share K, group size, zero format and g_idx (R2.20) and have no bias");
    const GptqLinear& first = *parts[0];
    GptqLinear fused;
    fused.name = name;
    fused.k = first.k;
    fused.group_size = first.group_size;
    fused.num_groups = first.num_groups;
    fused.zero_format = first.zero_format;
    fused.g_idx = first.g_idx;
    fused.act_order = first.act_order;
    fused.symmetric = true;
    for (const GptqLinear* part : parts) {
        fused.n += part->n;
        fused.symmetric = fused.symmetric && part->symmetric;
    }
    const auto n = static_cast<std::size_t>(fused.n);
    const auto groups = static_cast<std::size_t>(fused.num_groups);
    fused.qweight = HostBuffer<std::uint32_t>(static_cast<std::size_t>(fused.k / 8) * n);
    fused.qzeros = HostBuffer<std::uint32_t>(groups * n / 8);
    fused.scales = HostBuffer<std::uint16_t>(groups * n);
    // Row-major tensors side by side: each row of the result is the parts' rows one after another.
    std::size_t column = 0;
    for (const GptqLinear* part : parts) {
        const auto pn = static_cast<std::size_t>(part->n);
        for (std::size_t r = 0; r < static_cast<std::size_t>(fused.k / 8); ++r) {
            std::copy_n(part->qweight.data() + r * pn, pn, fused.qweight.data() + r * n + column);
        }
        for (std::size_t g = 0; g < groups; ++g) {
            std::copy_n(part->scales.data() + g * pn, pn, fused.scales.data() + g * n + column);
            std::copy_n(part->qzeros.data() + g * pn / 8, pn / 8, fused.qzeros.data() + g * n / 8 + column / 8);
        }
        column += pn;
    }
    return fused;
}

void validate_gptq_linear(GptqLinear& layer) {
    const std::string& name = layer.name;
    check_dims(name, layer.k, layer.n);
    const std::int64_t k = layer.k;
    const std::int64_t n = layer.n;
    layer.group_size = effective_group_size(k, layer.group_size);
    const std::int64_t gs = layer.group_size;
    const std::int64_t g_count = num_groups_for(k, gs);
    Q4TP_CHECK(layer.num_groups == 0 || layer.num_groups == g_count, name << ": num_groups=" << layer.num_groups
                                                                          << " but K=" << k << ", group_size=" << gs
                                                                          << " give G=" << g_count);
    layer.num_groups = g_count;

    const auto qw_words = static_cast<std::int64_t>(layer.qweight.size());
    if (qw_words != k / 8 * n && qw_words > 0 && (qw_words * 32) % (k * n) == 0) {
        Q4TP_THROW(name << ".qweight: " << qw_words << " words imply bits=" << qw_words * 32 / (k * n)
                        << " but only 4-bit is supported; expected [" << k / 8 << ", " << n << "]");
    }
    Q4TP_CHECK(qw_words == k / 8 * n, name << ".qweight: " << qw_words << " words but expected [" << k / 8 << ", " << n
                                           << "] = " << k / 8 * n << " for K=" << k << ", N=" << n);
    const auto qz_words = static_cast<std::int64_t>(layer.qzeros.size());
    const auto sc_count = static_cast<std::int64_t>(layer.scales.size());
    Q4TP_CHECK(sc_count == g_count * n, name << ".scales: " << sc_count << " values but expected [" << g_count << ", "
                                             << n << "] = " << g_count * n << " (G=" << g_count << ", N=" << n << ")");
    Q4TP_CHECK(qz_words == g_count * (n / 8), name << ".qzeros: " << qz_words << " words but expected [" << g_count
                                                   << ", " << n / 8 << "] = " << g_count * (n / 8) << " (G=" << g_count
                                                   << " as in scales, N/8=" << n / 8 << ")");

    if (layer.g_idx.empty()) {
        layer.g_idx = sequential_g_idx(k, gs);  // R2.17: very old files have no g_idx
    }
    Q4TP_CHECK(static_cast<std::int64_t>(layer.g_idx.size()) == k,
               name << ".g_idx: " << layer.g_idx.size() << " entries but expected [" << k << "] for K=" << k);
    validate_g_idx(layer.g_idx, gs, g_count, name + ".g_idx");

    for (std::int64_t g = 0; g < g_count; ++g) {
        for (std::int64_t col = 0; col < n; ++col) {
            const std::uint16_t s = layer.scales[static_cast<std::size_t>(g * n + col)];
            Q4TP_CHECK((s & 0x7C00u) != 0x7C00u, name << ".scales: [" << g << ", " << col << "] is "
                                                      << ((s & 0x03FFu) ? "NaN" : "infinite") << " (fp16 bits 0x"
                                                      << std::hex << s << std::dec << "), expected a finite scale");
        }
    }

    bool symmetric = true;
    for (std::int64_t g = 0; g < g_count; ++g) {
        for (std::int64_t col = 0; col < n; ++col) {
            const int zs = stored_zero_unchecked(layer, g, col);
            if (layer.zero_format == ZeroFormat::GptqV1 && zs == 15) {
                Q4TP_THROW(name << ".qzeros: group " << g << " column " << col
                                << " stores zero nibble 0xF in gptq (v1) format; readers disagree on it "
                                   "(AutoGPTQ cuda_old reads z=0, exllama and AutoGPTQ cuda read z=16, GPTQModel "
                                   "carries into the next nibble), usually an asymmetric z=0 packed as -1, so the "
                                   "layer is refused (formats.md R2.12); expected nibbles 0x0..0xE");
            }
            if (effective_zero(zs, layer.zero_format) != 8) symmetric = false;
        }
    }
    layer.symmetric = symmetric;

    if (!layer.bias.empty()) {
        Q4TP_CHECK(static_cast<std::int64_t>(layer.bias.size()) == n,
                   name << ".bias: " << layer.bias.size() << " values but expected [" << n << "] for N=" << n);
        // GPTQ-for-LLaMa / AutoGPTQ store all-zero bias buffers (R2.1); +0 and -0 both count as zero.
        const bool all_zero =
            std::all_of(layer.bias.begin(), layer.bias.end(), [](std::uint16_t b) { return (b & 0x7FFFu) == 0; });
        if (all_zero) layer.bias = HostBuffer<std::uint16_t>();
    }
    layer.act_order = is_act_order(layer.g_idx, gs);
}

// ---- loading ------------------------------------------------------------------------------------

GptqHeaders check_gptq_headers(const Checkpoint& ckpt, const std::string& name, std::int64_t k, std::int64_t n,
                               const QuantConfig& quant) {
    auto required = [&](const char* suffix) {
        const TensorRef ref = ckpt.find(name + suffix);
        Q4TP_CHECK(ref, name << suffix << ": tensor missing from checkpoint " << ckpt.directory().string() << " ("
                             << ckpt.source() << "); a GPTQ layer needs .qweight, .qzeros and .scales");
        return ref;
    };
    auto meta_of = [](const TensorRef& ref) { return TensorMeta{ref.info->dtype_name, ref.info->shape}; };
    const TensorRef qweight = required(".qweight");
    const TensorRef qzeros = required(".qzeros");
    const TensorRef scales = required(".scales");
    const TensorRef g_idx = ckpt.find(name + ".g_idx");
    const TensorRef bias = ckpt.find(name + ".bias");
    GptqTensorMetas metas{meta_of(qweight), meta_of(qzeros), meta_of(scales), std::nullopt, std::nullopt};
    if (g_idx) metas.g_idx = meta_of(g_idx);
    if (bias) metas.bias = meta_of(bias);
    return GptqHeaders{check_gptq_tensor_metas(name, k, n, quant, metas), static_cast<bool>(g_idx),
                       static_cast<bool>(bias)};
}

GptqLinear load_gptq_linear(
    const Checkpoint& ckpt, const std::string& name, std::int64_t k, std::int64_t n, const QuantConfig& quant) {
    const GptqHeaders headers = check_gptq_headers(ckpt, name, k, n, quant);
    const GptqGeometry& geo = headers.geometry;

    GptqLinear layer;
    layer.name = name;
    layer.k = k;
    layer.n = n;
    layer.group_size = geo.group_size;
    layer.num_groups = geo.num_groups;
    layer.zero_format = quant.zero_format;
    // I32 words are read as uint32: the nibbles are extracted with logical shifts (R2.3).
    layer.qweight = ckpt.read<std::uint32_t>(name + ".qweight", DType::I32, {k / 8, n});
    layer.qzeros = ckpt.read<std::uint32_t>(name + ".qzeros", DType::I32, {geo.num_groups, n / 8});
    layer.scales = ckpt.read<std::uint16_t>(name + ".scales", DType::F16, {geo.num_groups, n});
    if (headers.has_g_idx) {
        const auto values = ckpt.read<std::int32_t>(name + ".g_idx", DType::I32, {k});
        layer.g_idx.assign(values.begin(), values.end());
    }
    if (headers.has_bias) layer.bias = ckpt.read<std::uint16_t>(name + ".bias", DType::F16, {n});
    validate_gptq_linear(layer);
    return layer;
}

// ---- the reference dequantizer ------------------------------------------------------------------

// W[k][n] = fp16( scales[g][n] * (q[k][n] - z[g][n]) ),  g = g_idx[k]
//   q  = (qweight[k/8][n] >> 4*(k%8)) & 15                       (R2.4)
//   zs = (qzeros[g][n/8] >> 4*(n%8)) & 15;  z = zs + 1 (v1), zs (v2)  (R2.5, R2.8-R2.10)
// The result is written as float but every value is exactly an fp16 number, as the GPU's dequantized tile is.
void dequantize(const GptqLinear& layer, std::span<float> w) {
    const std::int64_t k = layer.k;
    const std::int64_t n = layer.n;
    Q4TP_CHECK(static_cast<std::int64_t>(w.size()) == k * n,
               layer.name << ": dequantize output holds " << w.size() << " floats but W is [" << k << ", " << n << "]");
    check_filled(layer, "dequantize");
    for (std::int64_t row = 0; row < k; ++row) {
        const std::int64_t g = layer.g_idx[static_cast<std::size_t>(row)];
        Q4TP_CHECK(g >= 0 && g < layer.num_groups,
                   layer.name << ".g_idx[" << row << "] = " << g << " outside [0, " << layer.num_groups << ")");
        for (std::int64_t col = 0; col < n; ++col) {
            const int q = code_unchecked(layer, row, col);
            const int z = zero_unchecked(layer, g, col);
            const float s = scale_unchecked(layer, g, col);
            // R2.11: (q - z) in [-16, 15] and an fp16 scale (11-bit significand) multiply exactly in fp32, so rounding
            // the fp32 product to fp16 once gives the correctly rounded fp16 product, as __hmul does on the GPU.
            w[static_cast<std::size_t>(row * n + col)] = round_to_half(s * static_cast<float>(q - z));
        }
    }
}

std::vector<float> dequantize(const GptqLinear& layer) {
    std::vector<float> w(static_cast<std::size_t>(layer.k * layer.n));
    dequantize(layer, w);
    return w;
}

}  // namespace q4tp::loaders
