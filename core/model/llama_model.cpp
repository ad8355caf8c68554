#include "core/model/llama_model.h"

#include <chrono>
#include <iomanip>
#include <sstream>
#include <string>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "kernels/cpu/rope.h"
#include "parallel/communicator.h"
#include "parallel/ipc_all_reduce.h"

namespace q4tp::model {

// One decoder layer's weights (names as in the Hugging Face checkpoint, docs/formats.md §2.1).
struct LlamaModel::Layer {
    TensorView input_norm;                     //!< [H] input_layernorm
    TensorView post_norm;                      //!< [H] post_attention_layernorm
    std::unique_ptr<LinearWeights> q_proj;     //!< H -> nh*d
    std::unique_ptr<LinearWeights> k_proj;     //!< H -> nkv*d
    std::unique_ptr<LinearWeights> v_proj;     //!< H -> nkv*d
    std::unique_ptr<LinearWeights> o_proj;     //!< nh*d -> H
    std::unique_ptr<LinearWeights> gate_proj;  //!< H -> I
    std::unique_ptr<LinearWeights> up_proj;    //!< H -> I
    std::unique_ptr<LinearWeights> down_proj;  //!< I -> H
    // q|k|v and gate|up fused side by side (one GEMV each) when their g_idx agree; the parts above are then null.
    std::unique_ptr<LinearWeights> qkv_proj;      //!< H -> nh*d + 2 nkv*d
    std::unique_ptr<LinearWeights> gate_up_proj;  //!< H -> 2 I
};

// Activations for up to max_batch_tokens tokens, allocated once (nothing is allocated per forward).
struct LlamaModel::Workspace {
    TensorView ids;            //!< I32 [M]
    TensorView positions;      //!< I32 [M]
    TensorView x;              //!< [M][H] residual stream
    TensorView h;              //!< [M][H] normed input of a block
    TensorView q;              //!< [M][nh*d]  (q, k, v, attn, gate and up share one region, by phase)
    TensorView k;              //!< [M][nkv*d]
    TensorView v;              //!< [M][nkv*d]
    TensorView attn;           //!< [M][nh*d]
    TensorView proj;           //!< [M][H] a row-parallel layer's partial output before the all-reduce (TP > 1 only)
    TensorView gate;           //!< [M][I]
    TensorView up;             //!< [M][I]
    TensorView act;            //!< [M][I] silu(gate) * up, written over gate
    TensorView qkv;            //!< [M][nh*d + 2 nkv*d] fused q|k|v output
    TensorView gate_up;        //!< [M][2 I] fused gate|up output
    TensorView logits;         //!< F32 [M][V_padded] this rank's vocabulary slice
    TensorView gathered;       //!< F32 [size][M][V_padded] every rank's slice (size > 1 only)
    TensorView selection_row;  //!< F32 [V] the last position's complete logits row, which select_token reads
    std::vector<float> host_gathered;          //!< [size][M][V_padded] reordered into [M][V] on the host
    std::vector<std::int32_t> host_positions;  //!< [M]
};

namespace {

std::string format_gb(std::size_t bytes) {
    std::ostringstream oss;
    oss << std::fixed << std::setprecision(bytes < 100'000'000 ? 4 : 2) << static_cast<double>(bytes) / 1e9 << " GB";
    return oss.str();
}

std::string layer_prefix(std::int64_t i) {
    return "model.layers." + std::to_string(i) + ".";
}

// Ops::run_step keys of the captured single-token steps: one that ends in logits, and one per selection variant
// (TokenSelector::graph_variant) that ends in a selected id.
constexpr int kLogitsStepKey = 1;
constexpr int kSelectStepKey = 2;

void validate_config(const ModelConfig& c) {
    Q4TP_CHECK(c.num_attention_heads % c.num_key_value_heads == 0,
               "num_attention_heads " << c.num_attention_heads << " is not a multiple of num_key_value_heads "
                                      << c.num_key_value_heads);
    Q4TP_CHECK(c.head_dim % 2 == 0, "head_dim " << c.head_dim << " must be even for RoPE");
}

}  // namespace

namespace {
// The split of layer 0's projections fixes every layer's local dimensions (all layers have one shape).
loaders::SplitPlan plan_of(loaders::LinearRole role,
                           const std::string& name,
                           const ModelConfig& config,
                           const QuantConfig& quant,
                           const ParallelContext& par) {
    return loaders::plan_split(name, role, config, quant, par.rank, par.size);
}
}  // namespace

LlamaModel::LlamaModel(const ModelConfig& config,
                       const QuantConfig& quant,
                       WeightSource& weights,
                       Ops& ops,
                       const RuntimeConfig& runtime,
                       const ParallelContext& parallel)
    : config_(config),
      ops_(ops),
      runtime_(runtime),
      parallel_(parallel),
      heads_local_(plan_of(loaders::LinearRole::QueryProj, "model.layers.0.self_attn.q_proj", config, quant, parallel)
                       .heads.size()),
      kv_heads_local_(plan_of(loaders::LinearRole::KeyProj, "model.layers.0.self_attn.k_proj", config, quant, parallel)
                          .heads.size()),
      ffn_local_(
          plan_of(loaders::LinearRole::GateProj, "model.layers.0.mlp.gate_proj", config, quant, parallel).range.size()),
      cache_(ops, config.num_hidden_layers, kv_heads_local_, config.head_dim, runtime.max_context) {
    validate_config(config_);
    Q4TP_CHECK(runtime.max_batch_tokens > 0, "max_batch_tokens must be positive");
    Q4TP_CHECK(parallel_.size == 1 || parallel_.comm != nullptr,
               "tensor parallelism over " << parallel_.size << " ranks needs a communicator");
    const loaders::IndexRange vocab =
        loaders::vocab_range("lm_head.weight", config_.vocab_size, parallel_.rank, parallel_.size);
    vocab_local_ = vocab.size();
    // Equal slices keep the all-gathered logits a plain [size][rows][V / size] block.
    Q4TP_CHECK(config_.vocab_size % parallel_.size == 0,
               "vocab_size " << config_.vocab_size << " does not split evenly over " << parallel_.size << " ranks");
    vocab_padded_ = (config_.vocab_size + parallel_.size - 1) / parallel_.size;
    load_weights(weights, quant);

    const std::int64_t m = runtime_.max_batch_tokens;
    const std::int64_t d = config_.head_dim;
    const DType act = ops_.activation_dtype();
    ws_ = std::make_unique<Workspace>();
    ws_->ids = ops_.allocate(DType::I32, Shape{m});
    ws_->positions = ops_.allocate(DType::I32, Shape{m});
    ws_->x = ops_.allocate(act, Shape{m, config_.hidden_size});
    ws_->h = ops_.allocate(act, Shape{m, config_.hidden_size});
    // The attention block's q, k, v and attention output and the MLP block's gate and up are never alive at
    // the same time (o_proj has consumed attn before gate|up is split), so both sets share one region.
    const std::int64_t q_cols = heads_local_ * d, kv_cols = kv_heads_local_ * d;
    const std::int64_t attention_cols = 2 * q_cols + 2 * kv_cols, mlp_cols = 2 * ffn_local_;
    const TensorView region = ops_.allocate(act, Shape{m * std::max(attention_cols, mlp_cols)});
    std::int64_t offset = 0;
    auto carve = [&](std::int64_t cols) {
        TensorView view = region;
        view.data = static_cast<char*>(region.data) + static_cast<std::size_t>(offset) * dtype_size(act);
        view.shape = Shape{m, cols};
        offset += m * cols;
        return view;
    };
    ws_->q = carve(q_cols);
    ws_->k = carve(kv_cols);
    ws_->v = carve(kv_cols);
    ws_->attn = carve(q_cols);
    offset = 0;
    ws_->gate = carve(ffn_local_);
    ws_->up = carve(ffn_local_);
    ws_->act = ws_->gate;  // silu(gate) * up is computed in place: each element reads only its own inputs
    // Row-parallel partial sums need their own buffer only under TP (at size 1 the residual add is fused).
    if (parallel_.size > 1) ws_->proj = ops_.allocate(act, Shape{m, config_.hidden_size});
    ws_->qkv = ops_.allocate(act, Shape{m, (heads_local_ + 2 * kv_heads_local_) * d});
    ws_->gate_up = ops_.allocate(act, Shape{m, 2 * ffn_local_});
    const std::int64_t logit_rows = runtime_.all_logits ? m : 1;
    ws_->logits = ops_.allocate(DType::F32, Shape{logit_rows, vocab_padded_});
    if (parallel_.size > 1) {
        ws_->gathered = ops_.allocate(DType::F32, Shape{parallel_.size, logit_rows, vocab_padded_});
        ws_->host_gathered.resize(static_cast<std::size_t>(parallel_.size * logit_rows * vocab_padded_));
    }
    // Selection reads one complete row on every rank. The all-gather of a single row is already that row in
    // vocabulary order: rank r's slice [r V/size, (r + 1) V/size) lands at offset r * V_padded, and V_padded is
    // V / size exactly (checked above), so no stitching is needed on the device.
    ws_->selection_row = (parallel_.size > 1 ? ws_->gathered : ws_->logits)
                             .reshaped(Shape{ws_->logits.numel() * parallel_.size})
                             .rows(0, config_.vocab_size);
    // The selection history is the prompt plus one id per forward pass: at most the context plus the id picked
    // from its last position.
    selector_ = ops_.make_token_selector(config_.vocab_size, cache_.capacity() + 1);
    ws_->host_positions.resize(static_cast<std::size_t>(m));
    ops_.plan_attention(AttentionPlan{m, heads_local_, kv_heads_local_, d, cache_.capacity()});
    rope_for(0);
}

LlamaModel::~LlamaModel() = default;

void LlamaModel::load_weights(WeightSource& weights, const QuantConfig& quant) {
    const auto started = std::chrono::steady_clock::now();
    const std::int64_t hidden = config_.hidden_size;
    auto load_dense = [&](const std::string& name, const Shape& shape) {
        TensorView view = weights.dense(name, shape, ops_);
        weight_bytes_ += view.bytes();
        return view;
    };
    auto load_linear = [&](const std::string& name, loaders::LinearRole role) {
        const loaders::SplitPlan plan = loaders::plan_split(name, role, config_, quant, parallel_.rank, parallel_.size);
        auto linear = weights.linear(name, plan, ops_);
        weight_bytes_ += linear->bytes();
        return linear;
    };
    using Role = loaders::LinearRole;
    // Layers that read the same input are fused into one (fewer, larger GEMVs) when their g_idx agree.
    auto load_fused = [&](const std::vector<std::string>& names, const std::vector<Role>& roles) {
        std::vector<loaders::SplitPlan> plans;
        for (std::size_t i = 0; i < names.size(); ++i) {
            plans.push_back(loaders::plan_split(names[i], roles[i], config_, quant, parallel_.rank, parallel_.size));
        }
        auto fused = weights.fused_linear(names, plans, ops_);
        if (fused) weight_bytes_ += fused->bytes();
        return fused;
    };

    embed_tokens_ = load_dense("model.embed_tokens.weight", Shape{config_.vocab_size, hidden});
    const std::int64_t layers = config_.num_hidden_layers;
    layers_.resize(static_cast<std::size_t>(layers));
    double next_report_s = 2.0;
    for (std::int64_t i = 0; i < layers; ++i) {
        const std::string p = layer_prefix(i);
        Layer& layer = layers_[static_cast<std::size_t>(i)];
        layer.input_norm = load_dense(p + "input_layernorm.weight", Shape{hidden});
        layer.post_norm = load_dense(p + "post_attention_layernorm.weight", Shape{hidden});
        layer.qkv_proj = load_fused({p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"},
                                    {Role::QueryProj, Role::KeyProj, Role::ValueProj});
        if (!layer.qkv_proj) {
            layer.q_proj = load_linear(p + "self_attn.q_proj", Role::QueryProj);
            layer.k_proj = load_linear(p + "self_attn.k_proj", Role::KeyProj);
            layer.v_proj = load_linear(p + "self_attn.v_proj", Role::ValueProj);
        }
        layer.o_proj = load_linear(p + "self_attn.o_proj", Role::OutputProj);
        layer.gate_up_proj = load_fused({p + "mlp.gate_proj", p + "mlp.up_proj"}, {Role::GateProj, Role::UpProj});
        if (!layer.gate_up_proj) {
            layer.gate_proj = load_linear(p + "mlp.gate_proj", Role::GateProj);
            layer.up_proj = load_linear(p + "mlp.up_proj", Role::UpProj);
        }
        layer.down_proj = load_linear(p + "mlp.down_proj", Role::DownProj);
        // A progress line at most every two seconds: a 70B checkpoint takes a while, a tiny one should not chatter.
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        if (seconds >= next_report_s && i + 1 < layers) {
            Q4TP_LOG_INFO("loading: layer " << i + 1 << "/" << layers << ", " << format_gb(weight_bytes_) << " in "
                                            << std::fixed << std::setprecision(1) << seconds << " s");
            next_report_s = seconds + 2.0;
        }
    }
    final_norm_ = load_dense("model.norm.weight", Shape{hidden});
    // The lm_head is split by vocabulary rows; tied to the embedding, its rows come from the table.
    const loaders::IndexRange vocab =
        loaders::vocab_range("lm_head.weight", config_.vocab_size, parallel_.rank, parallel_.size);
    const std::string head_name = config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    Q4TP_CHECK(config_.tie_word_embeddings || weights.has("lm_head.weight"),
               "lm_head.weight is missing from the checkpoint and config.json does not set tie_word_embeddings");
    if (config_.tie_word_embeddings && parallel_.size == 1) {
        lm_head_ = embed_tokens_;
    } else {
        lm_head_ = weights.dense_rows(head_name, config_.vocab_size, hidden, vocab, ops_);
        weight_bytes_ += lm_head_.bytes();
    }
    ops_.synchronize();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    Q4TP_LOG_INFO("loaded " << format_gb(weight_bytes_) << " of weights in " << std::fixed << std::setprecision(2)
                            << seconds << " s (" << (seconds > 0 ? weight_bytes_ / 1e9 / seconds : 0.0) << " GB/s) on "
                            << ops_.name());
}

std::size_t LlamaModel::decode_bytes_per_token(std::int64_t context) const {
    const std::size_t row = embed_tokens_.bytes() / static_cast<std::size_t>(config_.vocab_size);
    std::size_t bytes = weight_bytes_ - embed_tokens_.bytes() + row;
    if (lm_head_.data == embed_tokens_.data) bytes += lm_head_.bytes();  // the table is read again as the lm_head
    const std::size_t kv_row =
        static_cast<std::size_t>(kv_heads_local_ * config_.head_dim) * dtype_size(ops_.activation_dtype());
    return bytes + 2 * static_cast<std::size_t>(config_.num_hidden_layers * context) * kv_row;
}

const RopeFrequencies& LlamaModel::rope_for(std::int64_t seq_len) {
    // Only dynamic NTK scaling depends on the sequence length (formats.md R4.9); every other type is
    // computed once.
    const bool dynamic = config_.rope_scaling.type == RopeType::Dynamic;
    const std::int64_t key = dynamic ? std::max(seq_len, config_.max_position_embeddings) : 0;
    if (key == rope_seq_len_) return rope_;
    const kernels::cpu::RopeFrequencies freqs =
        dynamic ? kernels::cpu::rope_inv_freq_dynamic(config_, key) : kernels::cpu::rope_inv_freq(config_);
    if (!rope_.inv_freq.data) rope_.inv_freq = ops_.allocate(DType::F32, Shape{config_.head_dim / 2});
    ops_.upload(freqs.inv_freq.data(), DType::F32, rope_.inv_freq);
    rope_.attention_scaling = freqs.attention_scaling;
    rope_seq_len_ = key;
    return rope_;
}

void LlamaModel::forward(std::span<const std::int32_t> tokens,
                         std::int64_t past_len,
                         LogitsMode mode,
                         std::vector<float>& logits,
                         const HiddenObserver* observer) {
    Q4TP_CHECK(mode == LogitsMode::LastOnly || runtime_.all_logits,
               "logits of every position were requested but the model was planned without room for them");
    const auto vocab = static_cast<std::size_t>(config_.vocab_size);
    logits.resize(mode == LogitsMode::All ? vocab * tokens.size() : vocab);
    run_chunks(tokens, past_len, mode, logits.data(), false, observer);
}

void LlamaModel::begin_selection(const SamplingConfig& config, std::span<const std::int32_t> history) {
    selector_->reset(config, history);
    selection_started_ = true;
}

std::int32_t LlamaModel::forward_select(std::span<const std::int32_t> tokens, std::int64_t past_len) {
    Q4TP_CHECK(selection_started_, "forward_select() needs begin_selection() first (sampling options and history)");
    run_chunks(tokens, past_len, LogitsMode::LastOnly, nullptr, true, nullptr);
    selected_ = ops_.read_id(ws_->ids.rows(0, 1));
    ids_hold_selected_ = true;
    return selected_;
}

void LlamaModel::run_chunks(std::span<const std::int32_t> tokens,
                            std::int64_t past_len,
                            LogitsMode mode,
                            float* logits_out,
                            bool select,
                            const HiddenObserver* observer) {
    const auto total = static_cast<std::int64_t>(tokens.size());
    Q4TP_CHECK(total > 0, "forward() needs at least one token");
    Q4TP_CHECK(
        past_len >= 0 && past_len + total <= cache_.capacity(),
        "sequence of " << past_len + total << " tokens exceeds the context of " << cache_.capacity() << " tokens");
    for (const std::int32_t id : tokens) {
        // Checked here because the GPU embedding gather cannot report a bad id.
        Q4TP_CHECK(id >= 0 && id < config_.vocab_size,
                   "token id " << id << " is outside the vocabulary of " << config_.vocab_size);
    }
    const auto vocab = static_cast<std::size_t>(config_.vocab_size);
    for (std::int64_t begin = 0; begin < total; begin += runtime_.max_batch_tokens) {
        const std::int64_t m = std::min(runtime_.max_batch_tokens, total - begin);
        const bool last_chunk = begin + m == total;
        float* out = nullptr;
        if (logits_out) {
            out = mode == LogitsMode::All ? logits_out + static_cast<std::size_t>(begin) * vocab
                                          : (last_chunk ? logits_out : nullptr);
        }
        forward_chunk(tokens.subspan(static_cast<std::size_t>(begin), static_cast<std::size_t>(m)), past_len + begin,
                      mode, out, select && last_chunk, observer);
    }
    // The one-shot all-reduce cannot raise an error from the device: a call whose peer never delivered gives up
    // after its timeout and marks the group. Surface that here (a 4-byte read; the step has finished anyway).
    if (parallel_.fused_all_reduce) parallel_.fused_all_reduce->check(ops_.stream_handle());
}

void LlamaModel::forward_chunk(std::span<const std::int32_t> tokens,
                               std::int64_t past_len,
                               LogitsMode mode,
                               float* logits_out,
                               bool select,
                               const HiddenObserver* observer) {
    Workspace& ws = *ws_;
    const auto m = static_cast<std::int64_t>(tokens.size());
    for (std::int64_t i = 0; i < m; ++i) {
        ws.host_positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(past_len + i);
    }
    // A decode step fed the id the previous step selected finds it in ws.ids already (select_token wrote it
    // there): only its position crosses from the host.
    if (!(m == 1 && ids_hold_selected_ && tokens[0] == selected_)) ops_.upload_ids(tokens, ws.ids.rows(0, m));
    ids_hold_selected_ = false;
    ops_.upload_ids(std::span<const std::int32_t>(ws.host_positions.data(), static_cast<std::size_t>(m)),
                    ws.positions.rows(0, m));
    rope_for(past_len + m);

    const std::int64_t rows = mode == LogitsMode::All ? m : 1;
    TensorView x = ws.x.rows(0, m);
    TensorView normed = ws.h.rows(0, m);
    TensorView logits = ws.logits.rows(0, rows).reshaped(Shape{rows, vocab_padded_});
    // The step itself: a fixed sequence of ops over fixed buffers. Only the last position's logits are
    // needed to continue a sequence; all of them are for evaluation (perplexity, golden comparisons).
    auto step = [&] {
        ops_.embedding(embed_tokens_, ws.ids.rows(0, m), x);
        if (observer) (*observer)(-1, x);
        // Each block ends with the next block's input norm (the final norm after the last), so that under TP it
        // joins the all-reduce and the residual add (add_row_parallel).
        ops_.rms_norm(x, layers_.empty() ? final_norm_ : layers_.front().input_norm,
                      static_cast<float>(config_.rms_norm_eps), normed);
        for (std::size_t i = 0; i < layers_.size(); ++i) {
            const TensorView next_gain = i + 1 < layers_.size() ? layers_[i + 1].input_norm : final_norm_;
            decoder_layer(layers_[i], static_cast<std::int64_t>(i), m, past_len, next_gain);
            if (observer) (*observer)(static_cast<std::int64_t>(i), x);
        }
        if (observer) (*observer)(config_.num_hidden_layers, normed);
        if (!logits_out && !select) return;
        ops_.lm_head(normed.rows(m - rows, rows), lm_head_, logits);
        if (parallel_.size > 1) {
            TensorView gathered = ws.gathered.reshaped(Shape{parallel_.size * ws.logits.shape[0], vocab_padded_})
                                      .rows(0, parallel_.size * rows);
            parallel_.comm->all_gather(logits, gathered, ops_.stream_handle());
        }
        // The next step's input: embedding reads ws.ids, so a replayed step can consume it without the host.
        if (select) ops_.select_token(*selector_, ws.selection_row, ws.ids.rows(0, 1));
    };
    // Single-token decode steps are replayed from a graph on backends that have them; token id and
    // position were uploaded into device memory above, so the captured step reads each step's values.
    if (runtime_.use_graphs && m == 1 && (logits_out || select) && !observer) {
        ops_.run_step(select ? kSelectStepKey + selector_->graph_variant() : kLogitsStepKey, step);
    } else {
        step();
    }
    if (!logits_out) return;
    const auto vocab = static_cast<std::size_t>(config_.vocab_size);
    const auto padded = static_cast<std::size_t>(vocab_padded_);
    if (parallel_.size == 1) {
        if (padded == vocab) {
            ops_.download(logits, std::span<float>(logits_out, static_cast<std::size_t>(rows) * vocab));
            return;
        }
        Q4TP_THROW("internal: padded vocabulary at size 1");
    }
    // Rank r's slice of row t sits at [r][t][0 .. V_r): stitch the rows back into [rows][V].
    const std::size_t count = static_cast<std::size_t>(parallel_.size * rows) * padded;
    TensorView gathered = ws.gathered.reshaped(Shape{static_cast<std::int64_t>(ws.host_gathered.size())})
                              .rows(0, static_cast<std::int64_t>(count));
    ops_.download(gathered, std::span<float>(ws.host_gathered.data(), count));
    for (std::int64_t t = 0; t < rows; ++t) {
        for (int r = 0; r < parallel_.size; ++r) {
            const std::size_t begin = static_cast<std::size_t>(r) * padded;
            const std::size_t len = std::min(padded, vocab - begin);
            const float* src = ws.host_gathered.data() + (static_cast<std::size_t>(r * rows + t)) * padded;
            std::copy(src, src + len, logits_out + static_cast<std::size_t>(t) * vocab + begin);
        }
    }
}

void LlamaModel::split_columns(TensorView fused, std::initializer_list<TensorView*> parts) {
    std::int64_t column = 0;
    for (TensorView* part : parts) {
        const std::int64_t width = part->shape[1];
        if (fused.shape[0] == 1) {
            // One row: each part is a contiguous piece of it, so point at it instead of copying.
            part->data = static_cast<char*>(fused.data) + static_cast<std::size_t>(column) * dtype_size(fused.dtype);
        } else {
            ops_.copy_columns(fused, column, *part);
        }
        column += width;
    }
}

void LlamaModel::add_row_parallel(
    const LinearWeights& weights, TensorView input, TensorView x, TensorView gain, TensorView h) {
    const auto eps = static_cast<float>(config_.rms_norm_eps);
    if (parallel_.size == 1) {
        ops_.linear_add(weights, input, x);  // the residual add fused into the GEMV epilogue
        ops_.rms_norm(x, gain, eps, h);
        return;
    }
    // Each rank holds a slice of K: its product is partial until summed over the ranks.
    TensorView partial = ws_->proj.rows(0, x.shape[0]);
    ops_.linear(weights, input, partial);
    if (ops_.all_reduce_add_rms_norm(parallel_.fused_all_reduce, partial, x, gain, eps, h)) return;
    parallel_.comm->all_reduce_sum(partial, ops_.stream_handle());
    ops_.add(x, partial);
    ops_.rms_norm(x, gain, eps, h);
}

void LlamaModel::decoder_layer(
    const Layer& layer, std::int64_t index, std::int64_t m, std::int64_t past_len, TensorView next_gain) {
    Workspace& ws = *ws_;
    const std::int64_t nh = heads_local_;
    const std::int64_t nkv = kv_heads_local_;
    const std::int64_t d = config_.head_dim;
    TensorView x = ws.x.rows(0, m);
    TensorView h = ws.h.rows(0, m);
    TensorView positions = ws.positions.rows(0, m);

    // Attention block: x += o_proj(attention(rope(q), rope(k), v)) on h = rms_norm(x) (made by the block before).
    TensorView q = ws.q.rows(0, m);
    TensorView k = ws.k.rows(0, m);
    TensorView v = ws.v.rows(0, m);
    if (layer.qkv_proj) {
        TensorView qkv = ws.qkv.rows(0, m);
        ops_.linear(*layer.qkv_proj, h, qkv);
        split_columns(qkv, {&q, &k, &v});
    } else {
        ops_.linear(*layer.q_proj, h, q);
        ops_.linear(*layer.k_proj, h, k);
        ops_.linear(*layer.v_proj, h, v);
    }
    TensorView q_heads = q.reshaped(Shape{m, nh, d});
    ops_.rope_and_cache(CacheWrite{q_heads, k.reshaped(Shape{m, nkv, d}), v.reshaped(Shape{m, nkv, d}), positions,
                                   &rope_, cache_.keys(index), cache_.values(index), past_len});
    TensorView attn = ws.attn.rows(0, m);
    ops_.attention(AttentionArgs{q_heads, cache_.keys(index), cache_.values(index), past_len, positions,
                                 attn.reshaped(Shape{m, nh, d})});
    add_row_parallel(*layer.o_proj, attn, x, layer.post_norm, h);

    // MLP block: x += down(silu(gate(h)) * up(h)), h = rms_norm(x) (made with the add above); then the next norm.
    TensorView gate = ws.gate.rows(0, m);
    TensorView up = ws.up.rows(0, m);
    TensorView act = ws.act.rows(0, m);
    if (layer.gate_up_proj) {
        TensorView gate_up = ws.gate_up.rows(0, m);
        ops_.linear(*layer.gate_up_proj, h, gate_up);
        split_columns(gate_up, {&gate, &up});
    } else {
        ops_.linear(*layer.gate_proj, h, gate);
        ops_.linear(*layer.up_proj, h, up);
    }
    ops_.silu_mul(gate, up, act);
    add_row_parallel(*layer.down_proj, act, x, next_gain, h);
}

}  // namespace q4tp::model
