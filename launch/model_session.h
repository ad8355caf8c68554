//! Everything a tool needs to run a model directory: configs, checkpoint, tokenizer, a backend and the
//! loaded LlamaModel, assembled in one place so every tool validates and reports the same way.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "core/base/model_config.h"
#include "core/model/llama_model.h"
#include "core/model/ops.h"
#include "loaders/checkpoint.h"
#include "launch/job.h"
#include "loaders/tokenizer.h"

namespace q4tp::launch {

struct SessionOptions {
    std::filesystem::path model_dir;
    DeviceChoice device = DeviceChoice::Auto;
    std::int64_t context = 0;       //!< 0 = min(max_position_embeddings, 4096)
    std::int64_t batch_tokens = 512;
    bool all_logits = false;  //!< room for every position's logits (perplexity)
};

//! On a CUDA backend: refuses, before anything is allocated, a model that will not fit this rank's GPU, saying what it
//! needs (core/model/memory_plan.h) and what the GPU has free. Nothing on the CPU backend.
void require_device_memory(const ModelConfig& config, const QuantConfig& quant, int tp_size,
                           const model::RuntimeConfig& runtime, const model::Ops& ops);

class ModelSession {
public:
    //! Loads the model for this process's rank of the job (the whole model at size 1).
    ModelSession(const SessionOptions& options, Job& job);
    ~ModelSession();

    const ModelConfig& config() const { return config_; }
    const QuantConfig& quant() const { return quant_; }
    const loaders::Tokenizer& tokenizer() const { return *tokenizer_; }
    model::LlamaModel& model() { return *model_; }
    model::Ops& ops() { return *ops_; }

private:
    ModelConfig config_;
    QuantConfig quant_;
    std::unique_ptr<loaders::Tokenizer> tokenizer_;
    std::unique_ptr<model::Ops> ops_;
    std::unique_ptr<model::LlamaModel> model_;
};

}  // namespace q4tp::launch
