//! LlamaModel: a Llama decoder (docs/formats.md §4.2) run through an Ops backend. Holds the weights in the
//! backend's representation, one sequence's KV cache and a workspace planned once for max_batch_tokens
//! tokens per pass, so forward() allocates nothing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <vector>

#include "core/base/model_config.h"
#include "core/base/tensor_view.h"
#include "core/model/kv_cache.h"
#include "core/model/ops.h"
#include "core/model/weight_source.h"
#include "loaders/shard.h"

namespace q4tp::model {

//! Runtime sizes (not hyperparameters): how long a context the cache holds and how many tokens one
//! forward pass processes (longer prompts are split into chunks of this size).
struct RuntimeConfig {
    std::int64_t max_context = 2048;
    std::int64_t max_batch_tokens = 512;
    bool use_graphs = true;  //!< replay single-token decode steps from a captured graph (CUDA)
    //! Keep room for the logits of every position of a pass (LogitsMode::All: perplexity, evaluation);
    //! generation needs only the last row, which saves max_batch_tokens x vocab floats of device memory.
    bool all_logits = true;
};

enum class LogitsMode { LastOnly, All };

}  // namespace q4tp::model

namespace q4tp::parallel {
class Communicator;
class IpcAllReduce;
}

namespace q4tp::model {

//! Where this process sits in a tensor-parallel job (docs/design.md): rank r of size holds 1/size of every
//! layer and sums partial results through comm (nullptr at size 1).
struct ParallelContext {
    int rank = 0;
    int size = 1;
    parallel::Communicator* comm = nullptr;
    //! Optional (CUDA ranks of one node): the one-shot all-reduce that Ops::all_reduce_add_rms_norm fuses with the
    //! residual add and the next RMSNorm for decode-sized steps; everything else goes through comm.
    parallel::IpcAllReduce* fused_all_reduce = nullptr;
};

//! Called during forward() with each stage's hidden state [m][H] in backend memory: stage -1 is the
//! embedding output, 0..L-1 the output of each decoder layer, L the final RMSNorm output.
using HiddenObserver = std::function<void(std::int64_t stage, TensorView hidden)>;

class LlamaModel {
public:
    //! Loads and validates every weight against the config (shapes, dtypes, GPTQ geometry), placing each
    //! in backend memory; plans the cache and workspace.
    LlamaModel(const ModelConfig& config, const QuantConfig& quant, WeightSource& weights, Ops& ops,
               const RuntimeConfig& runtime, const ParallelContext& parallel = {});
    ~LlamaModel();
    LlamaModel(const LlamaModel&) = delete;
    LlamaModel& operator=(const LlamaModel&) = delete;

    //! Runs tokens at absolute positions past_len .. past_len + size - 1 through the model, appending to
    //! the KV cache. Writes logits into `logits`: [V] for the last token (LastOnly) or [size][V] (All).
    void forward(std::span<const std::int32_t> tokens, std::int64_t past_len, LogitsMode mode,
                 std::vector<float>& logits, const HiddenObserver* observer = nullptr);

    //! Starts a sequence of forward_select() calls: sampling options and seed (under tensor parallelism every
    //! rank must pass the same, so that all ranks pick the same token), and the ids seen so far (the prompt)
    //! for the repetition penalty. Copies into backend memory; allocates nothing.
    void begin_selection(const SamplingConfig& config, std::span<const std::int32_t> history);
    //! forward(tokens, past_len, LastOnly) that picks the next token from the last position's logits where they
    //! are (Ops::select_token: on the GPU only the 4-byte id comes back) and adds it to the selection history.
    //! The id is also left in the backend's input buffer, so passing it back as the next call's single token
    //! uploads nothing. A single-token call runs as one captured step, selection included.
    std::int32_t forward_select(std::span<const std::int32_t> tokens, std::int64_t past_len);

    const ModelConfig& config() const noexcept { return config_; }
    std::int64_t context_capacity() const noexcept { return cache_.capacity(); }
    std::size_t weight_bytes() const noexcept { return weight_bytes_; }
    std::size_t kv_cache_bytes() const noexcept { return cache_.bytes(); }
    //! Bytes one decode step must read at a context of `context` tokens: every linear layer, the norms, the
    //! lm_head, one embedding row and the cached keys and values (the roofline's numerator).
    std::size_t decode_bytes_per_token(std::int64_t context) const;
    Ops& ops() noexcept { return ops_; }

private:
    struct Layer;
    struct Workspace;

    void load_weights(WeightSource& weights, const QuantConfig& quant);
    //! x += input . W for a row-parallel layer (o_proj, down): fused at size 1, all-reduced across ranks.
    //! x += input . W (summed over the ranks), then h = rms_norm(x) * gain: the end of each decoder block, where the
    //! norm is the next block's (or the final norm), so that under TP the all-reduce, the add and the norm can run
    //! as one kernel.
    void add_row_parallel(const LinearWeights& weights, TensorView input, TensorView x, TensorView gain,
                          TensorView h);
    //! Gives each part (views of [m][width]) its columns of a fused layer's output [m][sum of widths].
    void split_columns(TensorView fused, std::initializer_list<TensorView*> parts);
    //! Checks tokens and positions, then runs them in chunks of max_batch_tokens; the last chunk writes logits
    //! (when logits_out) or selects a token (when select).
    void run_chunks(std::span<const std::int32_t> tokens, std::int64_t past_len, LogitsMode mode, float* logits_out,
                    bool select, const HiddenObserver* observer);
    void forward_chunk(std::span<const std::int32_t> tokens, std::int64_t past_len, LogitsMode mode,
                       float* logits_out, bool select, const HiddenObserver* observer);
    //! Expects ws.h = rms_norm(x, layer.input_norm); leaves ws.h = rms_norm(x_out, next_gain).
    void decoder_layer(const Layer& layer, std::int64_t index, std::int64_t m, std::int64_t past_len,
                       TensorView next_gain);
    const RopeFrequencies& rope_for(std::int64_t seq_len);

    ModelConfig config_;
    Ops& ops_;
    RuntimeConfig runtime_;
    ParallelContext parallel_;
    // This rank's share of each dimension (the whole at size 1).
    std::int64_t heads_local_ = 0;     //!< query heads
    std::int64_t kv_heads_local_ = 0;  //!< KV heads (replicated when size exceeds their count)
    std::int64_t ffn_local_ = 0;       //!< intermediate columns
    std::int64_t vocab_local_ = 0;     //!< lm_head rows, ceil(V / size) on every rank but possibly the last
    std::int64_t vocab_padded_ = 0;    //!< ceil(V / size): the all-gathered row stride
    TensorView embed_tokens_;   //!< [V][H]
    TensorView final_norm_;     //!< [H]
    TensorView lm_head_;        //!< [V_local][H]; the embedding table when tied at size 1
    std::vector<Layer> layers_;
    KvCache cache_;
    std::unique_ptr<Workspace> ws_;
    std::unique_ptr<TokenSelector> selector_;  //!< forward_select()'s options, RNG and history in backend memory
    bool selection_started_ = false;           //!< begin_selection() was called
    //! ws.ids[0] holds selected_, written there by the last forward_select() (and not overwritten since).
    bool ids_hold_selected_ = false;
    std::int32_t selected_ = -1;
    RopeFrequencies rope_;
    std::int64_t rope_seq_len_ = -1;  //!< sequence length rope_ was computed for (dynamic NTK only)
    std::size_t weight_bytes_ = 0;
};

}  // namespace q4tp::model
