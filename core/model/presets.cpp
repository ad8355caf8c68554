#include "core/model/presets.h"

#include "core/base/error.h"

namespace q4tp::model {

std::vector<std::string> llama2_preset_names() { return {"llama2-7b", "llama2-13b", "llama2-70b"}; }

ModelConfig llama2_preset(const std::string& name) {
    ModelConfig c;
    c.vocab_size = 32000;
    c.max_position_embeddings = 4096;
    c.rms_norm_eps = 1e-5;
    c.rope_theta = 10000.0;
    c.head_dim = 128;
    if (name == "llama2-7b") {
        c.hidden_size = 4096;
        c.intermediate_size = 11008;
        c.num_hidden_layers = 32;
        c.num_attention_heads = 32;
        c.num_key_value_heads = 32;
    } else if (name == "llama2-13b") {
        c.hidden_size = 5120;
        c.intermediate_size = 13824;
        c.num_hidden_layers = 40;
        c.num_attention_heads = 40;
        c.num_key_value_heads = 40;
    } else if (name == "llama2-70b") {
        c.hidden_size = 8192;
        c.intermediate_size = 28672;
        c.num_hidden_layers = 80;
        c.num_attention_heads = 64;
        c.num_key_value_heads = 8;
    } else {
        Q4TP_THROW("unknown synthetic model '" << name << "' (choose llama2-7b, llama2-13b or llama2-70b)");
    }
    return c;
}

}  // namespace q4tp::model
