//! Value types describing a checkpoint: the Llama architecture (config.json) and its GPTQ
//! quantization. Built and validated by loaders/config_json and loaders/quant_config
//! (docs/formats.md §2.6 and §4.1), then passed down by const&.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace q4tp {

enum class RopeType { Default, Linear, Dynamic, Llama3, Yarn };
const char* to_string(RopeType type);

//! rope_scaling / rope_parameters (docs/formats.md §4.3). Fields unused by a type keep their defaults.
struct RopeScaling {
    RopeType type = RopeType::Default;
    double factor = 1.0;                          //!< linear, dynamic, llama3, yarn
    double low_freq_factor = 1.0;                 //!< llama3
    double high_freq_factor = 4.0;                //!< llama3
    std::int64_t original_max_position_embeddings = 0;  //!< llama3 (required), yarn (optional)
    double attention_factor = 0.0;                //!< yarn; 0 = derive as 0.1 ln(factor) + 1
    double beta_fast = 32.0;                      //!< yarn
    double beta_slow = 1.0;                       //!< yarn
};

//! The Llama architecture from config.json (docs/formats.md §4.1).
struct ModelConfig {
    std::string model_type = "llama";
    std::int64_t hidden_size = 4096;              //!< H
    std::int64_t intermediate_size = 11008;       //!< I (ffn)
    std::int64_t num_hidden_layers = 32;
    std::int64_t num_attention_heads = 32;        //!< nh
    std::int64_t num_key_value_heads = 32;        //!< nkv (GQA when < nh)
    std::int64_t head_dim = 128;                  //!< d; H / nh unless config.json says otherwise
    double rms_norm_eps = 1e-6;
    double rope_theta = 10000.0;
    RopeScaling rope_scaling;
    std::int64_t max_position_embeddings = 2048;
    std::int64_t vocab_size = 32000;              //!< V
    bool tie_word_embeddings = false;
    std::int64_t bos_token_id = 1;
    std::vector<std::int64_t> eos_token_ids{2};   //!< config eos may be an int or a list; all count
    bool attention_bias = false;
    bool mlp_bias = false;
    std::string hidden_act = "silu";
    std::string torch_dtype = "float16";

    std::int64_t q_dim() const { return num_attention_heads * head_dim; }
    std::int64_t kv_dim() const { return num_key_value_heads * head_dim; }
};

//! GPTQ zero-point storage convention (docs/formats.md R2.8-R2.9).
enum class ZeroFormat {
    GptqV1,  //!< "gptq": stored zs = z - 1, readers use z = zs + 1
    GptqV2,  //!< "gptq_v2": stored z directly
};
const char* to_string(ZeroFormat format);

//! The quantization config (quantize_config.json, quant_config.json or config.json's
//! quantization_config), normalized (docs/formats.md §2.6).
struct QuantConfig {
    int bits = 4;
    std::int64_t group_size = 128;                //!< -1 = one group over all of K
    bool desc_act = false;                        //!< a hint only: act-order is decided from g_idx
    bool sym = true;
    bool sym_was_specified = true;                //!< false when the file omitted "sym" (assumed true)
    ZeroFormat zero_format = ZeroFormat::GptqV1;
    std::string model_file_base_name;             //!< empty = default discovery
    std::string source_file;                      //!< where it was read from, for messages
};

}  // namespace q4tp
