#include "launch/model_session.h"

#include <algorithm>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/model/memory_plan.h"
#include "kernels/cuda/device_info.h"
#include "launch/cli.h"
#include "loaders/config_json.h"
#include "loaders/quant_config.h"

namespace q4tp::launch {

void require_device_memory(const ModelConfig& config, const QuantConfig& quant, int tp_size,
                           const model::RuntimeConfig& runtime, const model::Ops& ops) {
    if (ops.device() != Device::Cuda) return;
    const model::MemoryPlan plan =
        model::plan_memory(config, quant, tp_size, runtime.max_context, runtime.max_batch_tokens);
    if (!plan.supported) return;  // the model refuses the split itself, with the reason
    const std::string shortfall =
        model::memory_shortfall(plan, kernels::cuda::free_device_memory(), runtime.max_context, ops.name());
    Q4TP_CHECK(shortfall.empty(), shortfall);
}

ModelSession::ModelSession(const SessionOptions& options, Job& job) {
    const std::filesystem::path& dir = options.model_dir;
    Q4TP_CHECK(std::filesystem::is_directory(dir), "model directory '" << dir.string() << "' does not exist");
    config_ = loaders::load_model_config(dir / "config.json");
    quant_ = loaders::load_quant_config(dir);
    const std::filesystem::path tokenizer_path = dir / "tokenizer.model";
    Q4TP_CHECK(std::filesystem::exists(tokenizer_path),
               tokenizer_path.string() << " is missing: q4tp needs the sentencepiece tokenizer.model");
    tokenizer_ = std::make_unique<loaders::Tokenizer>(loaders::Tokenizer::load(tokenizer_path));
    Q4TP_CHECK(tokenizer_->vocab_size() <= config_.vocab_size,
               tokenizer_path.string() << " has " << tokenizer_->vocab_size()
                                       << " pieces but config.json's vocab_size is " << config_.vocab_size);
    const loaders::Checkpoint checkpoint = loaders::Checkpoint::open(dir, quant_.model_file_base_name);

    model::RuntimeConfig runtime;
    runtime.max_context =
        options.context > 0 ? options.context : std::min<std::int64_t>(config_.max_position_embeddings, 4096);
    runtime.max_batch_tokens = options.batch_tokens;
    runtime.all_logits = options.all_logits;
    Q4TP_CHECK(runtime.max_batch_tokens > 0, "--batch-tokens must be positive, got " << runtime.max_batch_tokens);
    ops_ = job.make_backend(options.device);
    require_device_memory(config_, quant_, job.size(), runtime, *ops_);
    Q4TP_LOG_INFO("loading " << dir.string() << " (" << checkpoint.source() << ") on " << ops_->name() << ", context "
                             << runtime.max_context << " tokens"
                             << (job.size() > 1 ? ", tensor-parallel over " + std::to_string(job.size()) + " ranks"
                                                : std::string()));
    model::CheckpointWeights weights(checkpoint, quant_);
    model_ = std::make_unique<model::LlamaModel>(config_, quant_, weights, *ops_, runtime,
                                                 job.parallel(config_.hidden_size));
}

ModelSession::~ModelSession() = default;

}  // namespace q4tp::launch
