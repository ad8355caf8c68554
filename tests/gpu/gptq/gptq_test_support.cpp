#include "tests/gpu/gptq/gptq_test_support.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <utility>

#include "core/base/cuda_check.h"
#include "core/base/error.h"
#include "core/base/half.h"
#include "kernels/cuda/gptq_prepare.h"

namespace q4tp::gptq_test {

std::string LayerSpec::str() const {
    std::ostringstream os;
    os << "K=" << k << " N=" << n << " group_size=" << group_size << " " << to_string(format)
       << (act_order ? " act-order" : " in-order") << (symmetric ? " sym" : " asym");
    return os.str();
}

GptqLayer make_random_layer(const LayerSpec& spec, std::mt19937_64& rng) {
    Q4TP_CHECK(spec.k % 32 == 0 && spec.n % 8 == 0, "make_random_layer: bad shape " << spec.str());
    GptqLayer layer;
    layer.spec = spec;
    layer.group_size = spec.group_size == -1 ? spec.k : spec.group_size;
    layer.num_groups = (spec.k + layer.group_size - 1) / layer.group_size;
    const std::int64_t k = spec.k;
    const std::int64_t n = spec.n;
    const std::int64_t groups = layer.num_groups;

    layer.qweight.resize(static_cast<std::size_t>(k / 8 * n));
    for (auto& w : layer.qweight) w = static_cast<std::uint32_t>(rng());

    std::uniform_real_distribution<float> scale_dist(0.001f, 0.03f);
    layer.scales.resize(static_cast<std::size_t>(groups * n));
    for (auto& s : layer.scales) s = float_to_half(scale_dist(rng));

    // Effective zero points, stored in the spec's convention (v1 keeps z - 1; z = 16 is never produced, R2.12).
    const bool v1 = spec.format == ZeroFormat::GptqV1;
    std::uniform_int_distribution<int> zero_dist(v1 ? 1 : 0, 15);
    layer.qzeros.assign(static_cast<std::size_t>(groups * (n / 8)), 0u);
    for (std::int64_t g = 0; g < groups; ++g) {
        for (std::int64_t col = 0; col < n; ++col) {
            const int z = spec.symmetric ? 8 : zero_dist(rng);
            const auto stored = static_cast<std::uint32_t>(v1 ? z - 1 : z);
            layer.qzeros[static_cast<std::size_t>(g * (n / 8) + col / 8)] |= stored << (4 * (col % 8));
        }
    }

    // g_idx: desc_act assigns group j / gs to the j-th row of a Hessian-order permutation (R2.15).
    layer.g_idx.resize(static_cast<std::size_t>(k));
    if (spec.act_order) {
        std::vector<std::int32_t> order(static_cast<std::size_t>(k));
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng);
        for (std::int64_t j = 0; j < k; ++j) {
            layer.g_idx[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] =
                static_cast<std::int32_t>(j / layer.group_size);
        }
    } else {
        for (std::int64_t row = 0; row < k; ++row) {
            layer.g_idx[static_cast<std::size_t>(row)] = static_cast<std::int32_t>(row / layer.group_size);
        }
    }
    return layer;
}

GptqLayer row_shard(const GptqLayer& layer, std::int64_t begin, std::int64_t end) {
    Q4TP_CHECK(begin >= 0 && begin < end && end <= layer.spec.k && begin % 32 == 0 && end % 32 == 0,
               "row_shard: rows [" << begin << ", " << end << ") of K = " << layer.spec.k);
    GptqLayer shard = layer;
    shard.spec.k = end - begin;
    const std::int64_t n = layer.spec.n;
    shard.qweight.assign(layer.qweight.begin() + (begin / 8) * n, layer.qweight.begin() + (end / 8) * n);
    shard.g_idx.assign(layer.g_idx.begin() + begin, layer.g_idx.begin() + end);
    return shard;
}

std::vector<float> reference_dequantize_row(const GptqLayer& layer, std::int64_t k, bool round_to_fp16) {
    const std::int64_t n = layer.spec.n;
    const std::int64_t g = layer.g_idx[static_cast<std::size_t>(k)];
    const bool v1 = layer.spec.format == ZeroFormat::GptqV1;
    std::vector<float> row(static_cast<std::size_t>(n));
    for (std::int64_t col = 0; col < n; ++col) {
        const int q =
            static_cast<int>((layer.qweight[static_cast<std::size_t>((k / 8) * n + col)] >> (4 * (k % 8))) & 15u);
        const int zs =
            static_cast<int>((layer.qzeros[static_cast<std::size_t>(g * (n / 8) + col / 8)] >> (4 * (col % 8))) & 15u);
        const int z = v1 ? zs + 1 : zs;
        const float s = half_to_float(layer.scales[static_cast<std::size_t>(g * n + col)]);
        const float w = s * static_cast<float>(q - z);
        row[static_cast<std::size_t>(col)] = round_to_fp16 ? round_to_half(w) : w;
    }
    return row;
}

float reference_weight(const GptqLayer& layer, std::int64_t k, std::int64_t col) {
    const std::int64_t n = layer.spec.n;
    const std::int64_t g = layer.g_idx[static_cast<std::size_t>(k)];
    const int q = static_cast<int>((layer.qweight[static_cast<std::size_t>((k / 8) * n + col)] >> (4 * (k % 8))) & 15u);
    const int zs =
        static_cast<int>((layer.qzeros[static_cast<std::size_t>(g * (n / 8) + col / 8)] >> (4 * (col % 8))) & 15u);
    const int z = layer.spec.format == ZeroFormat::GptqV1 ? zs + 1 : zs;
    return half_to_float(layer.scales[static_cast<std::size_t>(g * n + col)]) * static_cast<float>(q - z);
}

std::vector<float> reference_dequantize(const GptqLayer& layer, bool round_to_fp16) {
    const std::int64_t n = layer.spec.n;
    std::vector<float> w(static_cast<std::size_t>(layer.spec.k * n));
    for (std::int64_t k = 0; k < layer.spec.k; ++k) {
        const std::vector<float> row = reference_dequantize_row(layer, k, round_to_fp16);
        std::copy(row.begin(), row.end(), w.begin() + k * n);
    }
    return w;
}

kernels::cuda::GptqSource source_of(const GptqLayer& layer, std::string name) {
    kernels::cuda::GptqSource source;
    source.name = std::move(name);
    source.k = layer.spec.k;
    source.n = layer.spec.n;
    source.group_size = layer.spec.group_size;
    source.num_groups = layer.num_groups;
    source.zero_format = layer.spec.format;
    source.qweight = layer.qweight;
    source.qzeros = layer.qzeros;
    source.scales = layer.scales;
    source.g_idx = layer.g_idx;
    return source;
}

PreparedHost prepare(const GptqLayer& layer) {
    kernels::cuda::GptqPrepared p = kernels::cuda::gptq_prepare(source_of(layer, "test." + layer.spec.str()));
    PreparedHost h;
    h.k = p.k;
    h.k_rows = p.k_rows;
    h.n = p.n;
    h.n_padded = p.n_padded;
    h.group_size = p.group_size;
    h.qweight = std::move(p.qweight);
    h.scales = std::move(p.scales);
    h.zeros = std::move(p.zeros);
    h.perm = std::move(p.perm);
    h.block_groups = std::move(p.block_groups);
    return h;
}

namespace {
template <typename T>
DeviceBuffer<T> upload_vector(const std::vector<T>& host) {
    DeviceBuffer<T> d(host.size());
    if (!host.empty()) Q4TP_CUDA_CHECK(cudaMemcpy(d.data(), host.data(), d.bytes(), cudaMemcpyHostToDevice));
    return d;
}
}  // namespace

kernels::cuda::GptqWeights DeviceLayer::view() const {
    kernels::cuda::GptqWeights w;
    w.qweight = qweight.data();
    w.scales = reinterpret_cast<const __half*>(scales.data());
    w.zeros = zeros.data();
    w.perm = perm.empty() ? nullptr : perm.data();
    w.block_groups = block_groups.empty() ? nullptr : block_groups.data();
    w.k = k;
    w.k_rows = k_rows;
    w.n = n;
    w.group_size = group_size;
    return w;
}

DeviceLayer upload(const PreparedHost& p) {
    DeviceLayer d;
    d.k = p.k;
    d.k_rows = p.k_rows;
    d.n = p.n;
    d.group_size = p.group_size;
    d.qweight = upload_vector(p.qweight);
    d.scales = upload_vector(p.scales);
    d.zeros = upload_vector(p.zeros);
    d.perm = upload_vector(p.perm);
    d.block_groups = upload_vector(p.block_groups);
    return d;
}

void reference_gemv(const std::vector<float>& w,
                    std::int64_t k,
                    std::int64_t n,
                    const std::vector<float>& x,
                    int m,
                    std::vector<double>& y,
                    std::vector<double>& abs) {
    y.assign(static_cast<std::size_t>(m * n), 0.0);
    abs.assign(static_cast<std::size_t>(m * n), 0.0);
    for (int row = 0; row < m; ++row) {
        double* yr = y.data() + row * n;
        double* ar = abs.data() + row * n;
        for (std::int64_t kk = 0; kk < k; ++kk) {
            const double xv = x[static_cast<std::size_t>(row * k + kk)];
            const double xa = std::fabs(xv);
            const float* wr = w.data() + kk * n;
            for (std::int64_t col = 0; col < n; ++col) {
                yr[col] += xv * wr[col];
                ar[col] += xa * std::fabs(static_cast<double>(wr[col]));
            }
        }
    }
}

}  // namespace q4tp::gptq_test
