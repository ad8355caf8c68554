// Load-time re-layout of a GPTQ layer for kernels/cuda/gptq_gemv.cu; the layout is drawn in gptq_prepare.h.
#include "kernels/cuda/gptq_prepare.h"

#include <algorithm>
#include <cstddef>

#include "core/base/error.h"
#include "core/base/half.h"

namespace q4tp::kernels::cuda {

namespace {

// ------------------------------------------------------------------------------------------------
// Layout arithmetic shared by the builder and its inverse (the kernel hard-codes the same formulas).

constexpr int kLanes = 32;
constexpr int kWordsPerLane = 4;

//! Word j of lane L (g = L / 4, t = L % 4) in a 32 x 32 block is the A fragment of n16 tile p = j / 2 and k16 step
//! s = j % 2; its nibble i holds column 16 p + g + 8 (i % 2) at block row 16 s + 2t + 8 ((i % 4) / 2) + i / 4.
constexpr int word_column(int j, int g, int nibble) {
    return 16 * (j / 2) + g + 8 * (nibble % 2);
}
constexpr int word_row(int j, int t, int nibble) {
    return 16 * (j % 2) + 2 * t + 8 * ((nibble % 4) / 2) + nibble / 4;
}

//! Position of column c (0..31) of a tile inside the tile-permuted scales and zeros: 4 g + 2 p + h for
//! c = 16 p + 8 h + g, so lane group g finds its 4 columns' scales in one 8-byte load.
constexpr int meta_position(int c) {
    return 4 * (c % 8) + 2 * (c / 16) + (c / 8) % 2;
}

std::string layer_name(const GptqSource& s) {
    return s.name.empty() ? std::string("gptq layer") : s.name;
}

}  // namespace

// ------------------------------------------------------------------------------------------------

std::vector<std::int32_t> gptq_sort_rows(std::span<const std::int32_t> g_idx, std::int64_t num_groups) {
    Q4TP_CHECK(num_groups > 0, "gptq_sort_rows: num_groups is " << num_groups << ", expected > 0");
    std::vector<std::int64_t> start(static_cast<std::size_t>(num_groups) + 1, 0);
    for (std::size_t k = 0; k < g_idx.size(); ++k) {
        const std::int32_t g = g_idx[k];
        Q4TP_CHECK(g >= 0 && g < num_groups,
                   "gptq_sort_rows: g_idx[" << k << "] = " << g << ", expected 0 <= g < " << num_groups);
        ++start[static_cast<std::size_t>(g) + 1];
    }
    for (std::size_t g = 1; g < start.size(); ++g) start[g] += start[g - 1];
    // Counting sort visits rows in increasing order, so rows of one group keep their order (stable, R3.2).
    std::vector<std::int32_t> perm(g_idx.size());
    for (std::size_t k = 0; k < g_idx.size(); ++k) {
        perm[static_cast<std::size_t>(start[static_cast<std::size_t>(g_idx[k])]++)] = static_cast<std::int32_t>(k);
    }
    return perm;
}

GptqRowLayout gptq_row_layout(std::span<const std::int32_t> g_idx, std::int64_t num_groups, std::int64_t group_size) {
    Q4TP_CHECK(group_size > 0 && group_size % kGptqBlockK == 0,
               "gptq_row_layout: group_size " << group_size << ", expected a positive multiple of " << kGptqBlockK);
    const auto k = static_cast<std::int64_t>(g_idx.size());
    std::vector<std::int32_t> sorted = gptq_sort_rows(g_idx, num_groups);
    std::vector<std::int64_t> count(static_cast<std::size_t>(num_groups), 0);
    for (const std::int32_t g : g_idx) ++count[static_cast<std::size_t>(g)];
    bool exact = k % kGptqBlockK == 0;
    bool in_order = true;
    for (std::int64_t g = 0; g < num_groups; ++g) {
        exact =
            exact && count[static_cast<std::size_t>(g)] == std::clamp<std::int64_t>(k - g * group_size, 0, group_size);
    }
    for (std::int64_t j = 0; j < k; ++j) in_order = in_order && sorted[static_cast<std::size_t>(j)] == j;

    GptqRowLayout layout;
    if (exact) {
        layout.k_rows = k;
        if (!in_order) layout.perm = std::move(sorted);
        return layout;
    }
    // Each group present takes whole k-blocks: its rows in order, then filler rows up to the next multiple of 32.
    std::size_t next = 0;  // position in `sorted`
    for (std::int64_t g = 0; g < num_groups; ++g) {
        const std::int64_t rows = count[static_cast<std::size_t>(g)];
        if (rows == 0) continue;
        const std::int64_t blocks = (rows + kGptqBlockK - 1) / kGptqBlockK;
        for (std::int64_t r = 0; r < blocks * kGptqBlockK; ++r) {
            layout.perm.push_back(r < rows ? sorted[next++] : -1);
        }
        for (std::int64_t b = 0; b < blocks; ++b) {
            const auto entry = static_cast<std::int32_t>(g);
            layout.block_groups.push_back(b + 1 == blocks ? (entry | kGptqLastBlockOfGroup) : entry);
        }
    }
    layout.k_rows = static_cast<std::int64_t>(layout.perm.size());
    return layout;
}

GptqPrepared gptq_prepare(const GptqSource& s) {
    const std::string name = layer_name(s);
    const std::int64_t k = s.k;
    const std::int64_t n = s.n;
    Q4TP_CHECK(k > 0 && k % kGptqBlockK == 0,
               name << ": in_features K = " << k << ", expected a positive multiple of " << kGptqBlockK);
    Q4TP_CHECK(k <= (std::int64_t{1} << 30), name << ": in_features K = " << k << " is larger than 2^30");
    Q4TP_CHECK(n > 0 && n % 8 == 0, name << ": out_features N = " << n << ", expected a positive multiple of 8");
    Q4TP_CHECK(s.group_size == -1 || (s.group_size > 0 && s.group_size % kGptqBlockK == 0),
               name << ": group_size " << s.group_size << ", expected -1 or a positive multiple of " << kGptqBlockK);

    GptqPrepared p;
    p.k = k;
    p.n = n;
    p.n_padded = (n + kGptqTileN - 1) / kGptqTileN * kGptqTileN;
    p.group_size = s.group_size == -1 ? k : s.group_size;
    p.num_groups = s.num_groups > 0 ? s.num_groups : (k + p.group_size - 1) / p.group_size;
    p.k_rows = k;
    const std::int64_t gs = p.group_size;
    const std::int64_t groups = p.num_groups;
    const std::int64_t n_pad = p.n_padded;

    const auto expect_size = [&](std::size_t got, std::int64_t want, const char* tensor, const char* shape) {
        Q4TP_CHECK(got == static_cast<std::size_t>(want),
                   name << "." << tensor << " holds " << got << " elements, expected " << shape << " = " << want);
    };
    expect_size(s.qweight.size(), k / 8 * n, "qweight", "[K/8][N]");
    expect_size(s.qzeros.size(), groups * (n / 8), "qzeros", "[G][N/8]");
    expect_size(s.scales.size(), groups * n, "scales", "[G][N]");

    // g_idx: range; groups exactly populated (every whole GPTQ layer, R2.15) keep the unpadded layout in which
    // sorted row j belongs to group j / gs; anything else (act-order row shards) gets padded groups (step 5).
    if (!s.g_idx.empty()) {
        expect_size(s.g_idx.size(), k, "g_idx", "[K]");
        for (std::int64_t row = 0; row < k; ++row) {
            const std::int32_t g = s.g_idx[static_cast<std::size_t>(row)];
            Q4TP_CHECK(g >= 0 && g < groups,
                       name << ".g_idx[" << row << "] = " << g << ", expected 0 <= g < G = " << groups);
        }
        GptqRowLayout layout = gptq_row_layout(s.g_idx, groups, gs);
        p.k_rows = layout.k_rows;
        p.perm = std::move(layout.perm);
        p.block_groups = std::move(layout.block_groups);
    }

    // Zero points and scales, normalized and tile-permuted. Padding columns keep scale 0 and z 0 (W = 0).
    p.scales.assign(static_cast<std::size_t>(groups * n_pad), 0);
    p.zeros.assign(static_cast<std::size_t>(groups * (n_pad / 8)), 0);
    const bool v1 = s.zero_format == ZeroFormat::GptqV1;
    for (std::int64_t g = 0; g < groups; ++g) {
        for (std::int64_t col = 0; col < n; ++col) {
            const std::uint32_t word = s.qzeros[static_cast<std::size_t>(g * (n / 8) + col / 8)];
            const std::uint32_t stored = (word >> (4 * (col % 8))) & 15u;
            // R2.12: readers disagree on what a stored v1 nibble 0xF means, so it is refused, never guessed.
            Q4TP_CHECK(!(v1 && stored == 15u), name << ".qzeros: group " << g << " column " << col
                                                    << " stores nibble 0xF, ambiguous in the gptq (v1) format (R2.12)");
            const std::uint32_t z = v1 ? stored + 1 : stored;
            const std::int64_t pos = col / kGptqTileN * kGptqTileN + meta_position(static_cast<int>(col % kGptqTileN));
            p.zeros[static_cast<std::size_t>(g * (n_pad / 8) + pos / 8)] |= z << (4 * (pos % 8));
            p.scales[static_cast<std::size_t>(g * n_pad + pos)] = s.scales[static_cast<std::size_t>(g * n + col)];
        }
    }

    // Codes: for each 32-row k-block, gather the sorted rows' codes once (sequential reads of the source rows),
    // then emit every lane's 4 words. Filler rows keep code 0: x is 0 there.
    const std::int64_t k_blocks = p.k_rows / kGptqBlockK;
    const std::int64_t tiles = n_pad / kGptqTileN;
    p.qweight.assign(static_cast<std::size_t>(tiles * k_blocks * kLanes * kWordsPerLane), 0);
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(kGptqBlockK * n_pad), 0);
    for (std::int64_t b = 0; b < k_blocks; ++b) {
        for (std::int64_t i = 0; i < kGptqBlockK; ++i) {
            const std::int64_t sorted = b * kGptqBlockK + i;
            const std::int64_t orig = p.perm.empty() ? sorted : p.perm[static_cast<std::size_t>(sorted)];
            std::uint8_t* dst = codes.data() + i * n_pad;
            if (orig < 0) {
                std::fill(dst, dst + n, std::uint8_t{0});
                continue;
            }
            const std::uint32_t* src = s.qweight.data() + (orig / 8) * n;
            const int shift = static_cast<int>(4 * (orig % 8));
            for (std::int64_t col = 0; col < n; ++col) dst[col] = static_cast<std::uint8_t>((src[col] >> shift) & 15u);
        }
        for (std::int64_t tile = 0; tile < tiles; ++tile) {
            std::uint32_t* out = p.qweight.data() + ((tile * k_blocks + b) * kLanes) * kWordsPerLane;
            for (int lane = 0; lane < kLanes; ++lane) {
                for (int j = 0; j < kWordsPerLane; ++j) {
                    std::uint32_t word = 0;
                    for (int nib = 0; nib < 8; ++nib) {
                        const std::int64_t col = tile * kGptqTileN + word_column(j, lane / 4, nib);
                        word |= std::uint32_t{codes[static_cast<std::size_t>(word_row(j, lane % 4, nib) * n_pad + col)]}
                                << (4 * nib);
                    }
                    out[lane * kWordsPerLane + j] = word;
                }
            }
        }
    }
    return p;
}

std::vector<float> gptq_prepared_dequantize(const GptqPrepared& p) {
    Q4TP_CHECK(p.k > 0 && p.k % kGptqBlockK == 0 && p.n > 0 && p.n_padded % kGptqTileN == 0 && p.group_size > 0,
               "gptq_prepared_dequantize: inconsistent prepared layer K "
                   << p.k << " N " << p.n << " N_pad " << p.n_padded << " group_size " << p.group_size);
    Q4TP_CHECK(p.k_rows >= p.k && p.k_rows % kGptqBlockK == 0,
               "gptq_prepared_dequantize: K_rows " << p.k_rows << " for K " << p.k);
    const std::int64_t k_blocks = p.k_rows / kGptqBlockK;
    Q4TP_CHECK(
        p.block_groups.empty() || p.block_groups.size() == static_cast<std::size_t>(k_blocks),
        "gptq_prepared_dequantize: block_groups holds " << p.block_groups.size() << " entries, expected " << k_blocks);
    Q4TP_CHECK(
        p.qweight.size() == static_cast<std::size_t>(p.n_padded / kGptqTileN * k_blocks * kLanes * kWordsPerLane),
        "gptq_prepared_dequantize: qweight holds " << p.qweight.size() << " words, expected "
                                                   << p.n_padded / kGptqTileN * k_blocks * kLanes * kWordsPerLane);
    Q4TP_CHECK(
        p.perm.empty() || p.perm.size() == static_cast<std::size_t>(p.k_rows),
        "gptq_prepared_dequantize: perm holds " << p.perm.size() << " entries, expected 0 or K_rows = " << p.k_rows);
    std::vector<float> w(static_cast<std::size_t>(p.k * p.n));
    for (std::int64_t row = 0; row < p.k_rows; ++row) {  // sorted row
        const std::int64_t b = row / kGptqBlockK;
        const int in_block = static_cast<int>(row % kGptqBlockK);
        // Invert word_row: in_block = 16 s + 2t + 8 ((i % 4) / 2) + i / 4.
        const int step = in_block / 16;
        const int t = (in_block % 8) / 2;
        const int nib_k = 2 * ((in_block % 16) / 8) + 4 * (in_block % 2);  // the nibble bits that select k
        const std::int64_t g = p.block_groups.empty()
                                   ? row / p.group_size
                                   : (p.block_groups[static_cast<std::size_t>(b)] & ~kGptqLastBlockOfGroup);
        const std::int64_t orig = p.perm.empty() ? row : p.perm[static_cast<std::size_t>(row)];
        if (orig < 0) continue;  // filler row
        for (std::int64_t col = 0; col < p.n; ++col) {
            const std::int64_t tile = col / kGptqTileN;
            const int c = static_cast<int>(col % kGptqTileN);
            // Invert word_column: c = 16 p + g + 8 (i % 2).
            const int lane = 4 * (c % 8) + t;
            const int j = 2 * (c / 16) + step;
            const int nib = nib_k + (c / 8) % 2;
            const std::uint32_t word =
                p.qweight[static_cast<std::size_t>(((tile * k_blocks + b) * kLanes + lane) * kWordsPerLane + j)];
            const int q = static_cast<int>((word >> (4 * nib)) & 15u);
            const std::int64_t pos = tile * kGptqTileN + meta_position(c);
            const int z = static_cast<int>(
                (p.zeros[static_cast<std::size_t>(g * (p.n_padded / 8) + pos / 8)] >> (4 * (pos % 8))) & 15u);
            const float scale = half_to_float(p.scales[static_cast<std::size_t>(g * p.n_padded + pos)]);
            w[static_cast<std::size_t>(orig * p.n + col)] = round_to_half(scale * static_cast<float>(q - z));
        }
    }
    return w;
}

}  // namespace q4tp::kernels::cuda
