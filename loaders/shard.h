//! Tensor-parallel sharding of GPTQ layers: pure functions that give rank r of N its slice of a layer, read
//! straight from the safetensors mapping (docs/design.md "Sharding rules" and "Act-order", formats.md §2-§3).
//! No NCCL, no GPU: every rule here is checked on the CPU by tests/unit/loaders/test_shard.cpp.
//!
//! Two steps. plan_split() decides from the configs alone which columns or rows a rank holds; column_shard() /
//! row_shard() (in memory) and load_column_shard() / load_row_shard() (from a checkpoint) cut the tensors.
//!
//!   S = tp size, r = rank, nh / nkv = query / KV heads, d = head_dim, I = intermediate_size, V = vocab_size
//!   role              split  rank r holds                                          local layer
//!   q_proj            N      query heads [r nh/S, (r+1) nh/S)                      [K][heads d]
//!   k_proj, v_proj    N      KV heads [r nkv/S, (r+1) nkv/S), or when S > nkv the  [K][heads d]
//!                            replicated head r / (S / nkv)
//!   gate/up_proj      N      ffn_range: columns [i0, i1) of I (of P, see below)    [K][i1 - i0]
//!   o_proj            K      the rows of its query heads [r nh/S d, (r+1) nh/S d)  [rows][N]
//!   down_proj         K      rows [i0, i1): the same ffn_range as gate/up (of P)   [i1 - i0][N]
//!   lm_head (fp16)    V      vocabulary rows, ceil(V / S) per rank                 [rows][H]
//!   embedding, norms  -      everything (replicated)
//!
//! The ffn range is shared by gate/up (columns) and down (rows) because down's input on rank r is exactly
//! silu(gate) * up of rank r's columns. It is cut in whole groups of down_proj, in units of lcm(group_size, 32)
//! rows (32 = one kernel k-block; group_size -1 cuts in units of 32), unevenly when the units do not divide:
//! Llama-2-7B's 86 groups of 128 give 22, 22, 21, 21 groups at S = 4. So gate/up are NOT split in I / S columns
//! but in those same uneven group-aligned units, which are multiples of 8 (one packed zeros word). The cut is the
//! same for an act-order down_proj, whose rows it cuts in P order (below), so that it follows from the configs alone.
//!
//! Row shards of a sequential layer keep only their groups' scales and qzeros, with g_idx rebased to them; the
//! local layer is an ordinary GPTQ layer. A row shard's bias stays on rank 0 only, so the all-reduce adds it once.
//!
//! An act-order down_proj is made in order by reordering the MLP's intermediate dimension, which is free: down's
//! input on a rank is silu(gate) * up of that rank's columns, and the sum over the intermediate index does not
//! depend on its order. With P = ffn_order(down) (the stable argsort of down's g_idx, the same on every rank), the
//! MLP is loaded as if the checkpoint stored its intermediate dimension in P order: gate/up take the columns
//! P[i0..i1) (column_shard with an order; their g_idx, over the hidden size, is unchanged) and down the rows
//! P[i0..i1) (row_shard with an order). In P order the rows of group g are positions [g gs, (g + 1) gs), and the
//! ffn range is cut in whole groups, so down's local rows are whole groups sorted by group: an ordinary in-order
//! layer with only those groups' scales and qzeros, no permutation and no padding. At size 1 (the whole range)
//! down loses its permutation just the same.
//!
//! o_proj's rows are tied to attention heads, so it is cut without an order. A row shard of an act-order layer
//! (g_idx not k / group_size) cut without an order keeps the rows [k_begin, k_end) of the ORIGINAL order, their
//! g_idx slice (values still index the full G), and the FULL scales and qzeros: sorting the local g_idx and
//! gathering the local activation slice through that order (act_order_permutation, make_sequential) then computes
//! x[:, k_begin:k_end] . W[k_begin:k_end, :]. Such a layer is not one validate_gptq_linear accepts (its groups are
//! partly populated), so shards go through validate_gptq_shard instead; the CUDA layout pads each of its groups to
//! whole 32-row blocks.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/base/host_buffer.h"
#include "core/base/model_config.h"
#include "loaders/gptq.h"

namespace q4tp::loaders {

class Checkpoint;

//! A half-open range [begin, end) of rows, columns or heads.
struct IndexRange {
    std::int64_t begin = 0;
    std::int64_t end = 0;
    std::int64_t size() const noexcept { return end - begin; }
    bool empty() const noexcept { return end <= begin; }
    bool operator==(const IndexRange&) const = default;
};

//! The GPTQ linear layers of a Llama decoder layer, by how tensor parallelism splits them.
enum class LinearRole {
    QueryProj,   //!< q_proj: column-parallel by query heads
    KeyProj,     //!< k_proj: column-parallel by KV heads (replicated when size > num_kv_heads)
    ValueProj,   //!< v_proj: as k_proj
    GateProj,    //!< gate_proj: column-parallel by the ffn range
    UpProj,      //!< up_proj: as gate_proj
    OutputProj,  //!< o_proj: row-parallel by query heads
    DownProj,    //!< down_proj: row-parallel by the ffn range
};
const char* to_string(LinearRole role);
//! True for q, k, v, gate and up (split N); false for o_proj and down (split K).
bool is_column_parallel(LinearRole role);

//! Where rank `rank` of `size` cuts one layer; built by plan_split from the configs alone.
struct SplitPlan {
    std::string layer;  //!< tensor prefix, for messages
    LinearRole role = LinearRole::QueryProj;
    int rank = 0;
    int size = 1;
    std::int64_t k = 0;  //!< K of the full layer
    std::int64_t n = 0;  //!< N of the full layer
    IndexRange range;    //!< columns [n_begin, n_end) (column roles) or rows [k_begin, k_end) (row roles)
    IndexRange heads;    //!< query heads (q, o) or KV heads (k, v) behind `range`; empty for the MLP
    int replicas = 1;    //!< ranks holding this same range: size / num_kv_heads for replicated KV heads
};

//! K and N of a role's layer: q [H][nh d], k/v [H][nkv d], o [nh d][H], gate/up [H][I], down [I][H].
struct LinearDims {
    std::int64_t k = 0;
    std::int64_t n = 0;
};
LinearDims linear_dims(LinearRole role, const ModelConfig& config);

//! The rank's slice of the MLP intermediate dimension (gate/up columns == down rows), cut in whole groups of
//! down_proj as the file comment describes; `group_size` as configured (-1 = one group). Throws naming
//! `layer` when there are fewer units than ranks.
IndexRange ffn_range(
    const std::string& layer, std::int64_t intermediate_size, std::int64_t group_size, int rank, int size);

//! The split of one layer for rank `rank` of `size`. Checks what model::tp_unsupported_reason checks (heads
//! divisible, KV heads divisible or replicable, enough down_proj groups) plus what the kernels need of a shard
//! (N_local a multiple of 8, K_local a multiple of 32); throws q4tp::Error naming `layer` and the reason. Whether
//! o_proj's head rows fall on group boundaries depends on g_idx (act-order layers need not), so row_shard checks
//! that.
SplitPlan plan_split(
    const std::string& layer, LinearRole role, const ModelConfig& config, const QuantConfig& quant, int rank, int size);

//! The vocabulary rows of lm_head rank `rank` holds: ceil(V / size) per rank, the last rank the rest, so the
//! logits all-gather uses one padded count. Every rank must get at least one row.
IndexRange vocab_range(const std::string& layer, std::int64_t vocab_size, int rank, int size);

// ---- shards ------------------------------------------------------------------------------------

//! A column-parallel shard: every input row, the rank's output columns, every group.
struct ColumnShard {
    GptqLinear layer;    //!< [K][N_local]; g_idx replicated; validated by validate_gptq_shard
    IndexRange columns;  //!< [n_begin, n_end) of the full N (positions in the order the shard was cut by)
    IndexRange heads;    //!< as SplitPlan::heads
    int replicas = 1;    //!< as SplitPlan::replicas
};

//! A row-parallel shard: the rank's input rows [k_begin, k_end) of the original order, every output column.
//! The rank's partial product x[:, k_begin:k_end] . W_local is summed over ranks by one all-reduce.
struct RowShard {
    GptqLinear layer;         //!< [K_local][N]; validated by validate_gptq_shard
    IndexRange rows;          //!< [k_begin, k_end) of the full K (positions in the order the shard was cut by)
    IndexRange groups;        //!< groups of the full layer held in layer.scales / layer.qzeros
    IndexRange heads;         //!< o_proj: the query heads whose outputs these rows take; empty for down
    bool all_groups = false;  //!< act-order: every group kept, layer.g_idx holds the full layer's group numbers
};

//! Cuts a validated full layer (in memory) by a column plan. With an `order` (a permutation of [0, N); empty =
//! the identity) the plan's range is read through it: local column c is full column order[n_begin + c] (qweight
//! and scales columns gathered, qzeros nibbles repacked, bias gathered; g_idx unchanged).
ColumnShard column_shard(const GptqLinear& full, const SplitPlan& plan, std::span<const std::int32_t> order = {});
//! Cuts a validated full layer (in memory) by a row plan; a sequential layer (more than one group) needs the
//! rows to start and end on group boundaries. With an `order` (a permutation of [0, K); empty = the identity)
//! local row j is full row order[k_begin + j], and those rows must be whole groups in group order (P of
//! ffn_order cut by ffn_range): the shard is then an in-order layer of its own groups (qweight rows repacked 8 per
//! word, g_idx sequential, only those groups' scales and qzeros), whatever the full layer's g_idx.
RowShard row_shard(const GptqLinear& full, const SplitPlan& plan, std::span<const std::int32_t> order = {});

//! Reads only the rank's part of `<name>.qweight/.qzeros/.scales[/.g_idx][/.bias]` from the checkpoint's
//! mapping, after the header checks of check_gptq_tensor_metas for the full K and N of the plan. g_idx is read
//! whole (K int32): whether the layer is act-order is a property of all of it (R2.19). `order` as column_shard.
ColumnShard load_column_shard(const Checkpoint& ckpt,
                              const std::string& name,
                              const QuantConfig& quant,
                              const SplitPlan& plan,
                              std::span<const std::int32_t> order = {});
//! As load_column_shard, for a row plan; `order` as row_shard.
RowShard load_row_shard(const Checkpoint& ckpt,
                        const std::string& name,
                        const QuantConfig& quant,
                        const SplitPlan& plan,
                        std::span<const std::int32_t> order = {});

//! The MLP's intermediate order P (file comment): the stable argsort of down_proj's g_idx (position j of the
//! reordered dimension is original row P[j], R3.2) when down_proj is act-order (decided from g_idx content,
//! R2.19); empty (the identity) when it is in order. `down` must be validated.
std::vector<std::int32_t> ffn_order(const GptqLinear& down);
//! As ffn_order for the down_proj `down_name` ([k][n] = [intermediate_size][hidden_size]) of a checkpoint:
//! checks its headers and reads only its g_idx (K int32) from the mapping.
std::vector<std::int32_t> load_ffn_order(
    const Checkpoint& ckpt, const std::string& down_name, const QuantConfig& quant, std::int64_t k, std::int64_t n);

//! validate_gptq_linear for shards: the same checks (buffer sizes, g_idx, finite scales, v1 zero nibble 0xF,
//! R2.12) with N a multiple of 8 instead of 32 (a KV-head or ffn shard need not be a multiple of 32). With
//! `all_groups` the layer is an act-order row shard: layer.num_groups is the full layer's G (set by the caller),
//! g_idx values must lie in [0, G) and populate no group beyond group_size, and act_order is set. Otherwise the
//! g_idx rules of R2.18 apply to the local K. Completes group_size, num_groups, act_order and symmetric and
//! empties an all-zero bias.
void validate_gptq_shard(GptqLinear& layer, bool all_groups);

// ---- dense (fp16) tensors ----------------------------------------------------------------------

//! Rows [begin, end) of a dense fp16 [rows][cols] matrix (lm_head by vocabulary rows).
struct DenseShard {
    HostBuffer<std::uint16_t> data;  //!< [rows.size()][cols] fp16 bits
    IndexRange rows;
    std::int64_t cols = 0;
};
//! Copies rows `range` of an in-memory fp16 [rows][cols] matrix; `name` is used in messages.
DenseShard dense_rows_shard(const std::string& name,
                            std::span<const std::uint16_t> full,
                            std::int64_t rows,
                            std::int64_t cols,
                            IndexRange range);
//! Reads rows `range` of the F16 tensor `name` ([rows][cols]) straight from the checkpoint's mapping.
DenseShard dense_rows_shard(
    const Checkpoint& ckpt, const std::string& name, std::int64_t rows, std::int64_t cols, IndexRange range);

}  // namespace q4tp::loaders
