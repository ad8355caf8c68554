#include "core/base/model_config.h"

namespace q4tp {

const char* to_string(RopeType type) {
    switch (type) {
        case RopeType::Default: return "default";
        case RopeType::Linear: return "linear";
        case RopeType::Dynamic: return "dynamic";
        case RopeType::Llama3: return "llama3";
        case RopeType::Yarn: return "yarn";
    }
    return "?";
}

const char* to_string(ZeroFormat format) {
    switch (format) {
        case ZeroFormat::GptqV1: return "gptq";
        case ZeroFormat::GptqV2: return "gptq_v2";
    }
    return "?";
}

}  // namespace q4tp
