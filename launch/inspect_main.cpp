// q4tp-inspect: what a GPTQ checkpoint holds and what it needs, without loading it onto a GPU.
// Reads only headers, configs and g_idx tensors (through mmap), so it is quick even on a 70B model, and
// validates every file and every quantized layer's geometry on the way.

#include <cstdio>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/model/memory_plan.h"
#include "launch/cli.h"
#include "launch/tool_main.h"
#include "loaders/checkpoint.h"
#include "loaders/config_json.h"
#include "loaders/gptq.h"
#include "loaders/quant_config.h"

namespace q4tp::launch {
namespace {

constexpr const char* kProjections[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                        "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                        "mlp.down_proj"};

std::string gigabytes(double bytes) {
    std::ostringstream oss;
    oss << std::fixed << std::setprecision(bytes < 1e9 ? 4 : 2) << bytes / 1e9 << " GB";
    return oss.str();
}

loaders::TensorMeta meta_of(const loaders::TensorRef& ref) { return {ref.info->dtype_name, ref.info->shape}; }

struct LayerSummary {
    std::int64_t group_size = 0;
    bool act_order = false;
    bool has_bias = false;
};

// Checks one quantized projection's headers and reads its g_idx to decide act-order (formats.md R2.19).
LayerSummary inspect_projection(const loaders::Checkpoint& ckpt, const std::string& name, std::int64_t k,
                                std::int64_t n, const QuantConfig& quant) {
    loaders::GptqTensorMetas metas;
    metas.qweight = meta_of(ckpt.require(name + ".qweight"));
    metas.qzeros = meta_of(ckpt.require(name + ".qzeros"));
    metas.scales = meta_of(ckpt.require(name + ".scales"));
    if (auto ref = ckpt.find(name + ".g_idx")) metas.g_idx = meta_of(ref);
    if (auto ref = ckpt.find(name + ".bias")) metas.bias = meta_of(ref);
    const loaders::GptqGeometry geometry = loaders::check_gptq_tensor_metas(name, k, n, quant, metas);
    LayerSummary summary;
    summary.group_size = geometry.group_size;
    summary.has_bias = metas.bias.has_value();
    if (metas.g_idx) {
        const HostBuffer<std::int32_t> g_idx = ckpt.read<std::int32_t>(name + ".g_idx", DType::I32, {k});
        loaders::validate_g_idx(g_idx.span(), geometry.group_size, geometry.num_groups, name + ".g_idx");
        summary.act_order = loaders::is_act_order(g_idx.span(), geometry.group_size);
    }
    return summary;
}

void print_architecture(const ModelConfig& c) {
    std::cout << "architecture: " << c.model_type << ", hidden " << c.hidden_size << ", intermediate "
              << c.intermediate_size << ", layers " << c.num_hidden_layers << ", heads " << c.num_attention_heads
              << ", kv heads " << c.num_key_value_heads;
    if (c.num_key_value_heads < c.num_attention_heads) {
        std::cout << " (GQA " << c.num_attention_heads / c.num_key_value_heads << ":1)";
    }
    std::cout << ", head_dim " << c.head_dim << ", vocab " << c.vocab_size << "\n";
    std::cout << "positions: max_position_embeddings " << c.max_position_embeddings << ", rope_theta "
              << c.rope_theta << ", rope_scaling " << to_string(c.rope_scaling.type);
    if (c.rope_scaling.type != RopeType::Default) std::cout << " (factor " << c.rope_scaling.factor << ")";
    std::cout << ", rms_norm_eps " << c.rms_norm_eps << "\n";
    std::cout << "tokens: bos " << c.bos_token_id << ", eos";
    for (auto id : c.eos_token_ids) std::cout << " " << id;
    std::cout << ", tied embeddings " << (c.tie_word_embeddings ? "yes" : "no") << "\n";
}

int inspect(int argc, char** argv) {
    std::string model_dir;
    std::int64_t context = 4096;
    std::int64_t batch_tokens = 512;
    std::string log_level = "warn";
    ArgParser args("q4tp-inspect", "MODEL_DIR [options]",
                   "Shows what a GPTQ 4-bit Llama checkpoint (Hugging Face layout) holds and the memory each GPU\n"
                   "needs at tensor-parallel sizes 1, 2, 4 and 8. Validates every file and quantized layer.");
    args.add_positional("MODEL_DIR", "directory with config.json, the quantization config and *.safetensors",
                        &model_dir, true);
    args.add_int("context", "N", "context length (tokens) the KV cache is sized for", &context, "c");
    args.add_int("batch-tokens", "N", "tokens per forward pass (sizes the activation workspace)", &batch_tokens);
    args.add_string("log-level", "LEVEL", "debug, info, warn, error or off", &log_level);
    if (!args.parse(argc, argv)) return 0;
    set_log_level(parse_log_level(log_level));
    if (context <= 0) throw UsageError("--context must be positive, got " + std::to_string(context));
    if (batch_tokens <= 0) throw UsageError("--batch-tokens must be positive, got " + std::to_string(batch_tokens));

    const ModelConfig config = loaders::load_model_config(std::filesystem::path(model_dir) / "config.json");
    const QuantConfig quant = loaders::load_quant_config(model_dir);
    const loaders::Checkpoint ckpt = loaders::Checkpoint::open(model_dir, quant.model_file_base_name);

    std::cout << "model: " << model_dir << "\n";
    print_architecture(config);
    std::cout << "quantization: " << quant.bits << "-bit GPTQ, zeros " << to_string(quant.zero_format)
              << ", group size " << quant.group_size << ", " << (quant.sym ? "symmetric" : "asymmetric")
              << (quant.sym_was_specified ? "" : " (sym assumed)") << ", desc_act " << (quant.desc_act ? "true" : "false")
              << " (from " << quant.source_file << ")\n";
    std::cout << "tensors: " << ckpt.tensor_count() << " in " << ckpt.files().size() << " file(s) ("
              << ckpt.source() << "), " << gigabytes(static_cast<double>(ckpt.total_tensor_bytes())) << "\n";

    const std::int64_t h = config.hidden_size;
    const std::int64_t shapes[][2] = {{h, config.q_dim()},
                                      {h, config.kv_dim()},
                                      {h, config.kv_dim()},
                                      {config.q_dim(), h},
                                      {h, config.intermediate_size},
                                      {h, config.intermediate_size},
                                      {config.intermediate_size, h}};
    std::cout << "layers (group size, act-order per projection q k v o gate up down):\n";
    std::int64_t act_order_layers = 0;
    for (std::int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
        std::ostringstream line;
        line << "  " << std::setw(3) << layer << ":";
        bool any_act = false;
        for (std::size_t p = 0; p < std::size(kProjections); ++p) {
            const std::string name = "model.layers." + std::to_string(layer) + "." + kProjections[p];
            const LayerSummary s = inspect_projection(ckpt, name, shapes[p][0], shapes[p][1], quant);
            line << " g" << s.group_size << (s.act_order ? "+act" : "") << (s.has_bias ? "+bias" : "");
            any_act = any_act || s.act_order;
        }
        act_order_layers += any_act ? 1 : 0;
        std::cout << line.str() << "\n";
    }
    std::cout << "act-order: " << act_order_layers << " of " << config.num_hidden_layers << " layers\n";

    std::cout << "memory per GPU for a " << context << "-token context (weights + KV cache + workspace):\n";
    std::cout << "  TP   weights        KV cache       workspace      total\n";
    for (int tp : {1, 2, 4, 8}) {
        const model::MemoryPlan plan = model::plan_memory(config, quant, tp, context, batch_tokens);
        std::cout << "  " << std::left << std::setw(5) << tp;
        if (!plan.supported) {
            std::cout << "cannot split: " << plan.reason << "\n";
            continue;
        }
        std::cout << std::setw(15) << gigabytes(static_cast<double>(plan.quantized_bytes + plan.dense_bytes))
                  << std::setw(15) << gigabytes(static_cast<double>(plan.kv_cache_bytes)) << std::setw(15)
                  << gigabytes(static_cast<double>(plan.workspace_bytes))
                  << gigabytes(static_cast<double>(plan.total())) << std::right << "\n";
    }
    return 0;
}

}  // namespace
}  // namespace q4tp::launch

int main(int argc, char** argv) { return q4tp::launch::run_tool("q4tp-inspect", argc, argv, q4tp::launch::inspect); }
