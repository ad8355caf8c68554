#include "core/base/dtype.h"

#include "core/base/error.h"

namespace q4tp {

std::size_t dtype_size(DType dtype) {
    switch (dtype) {
        case DType::F32: return 4;
        case DType::F16: return 2;
        case DType::BF16: return 2;
        case DType::F64: return 8;
        case DType::I8: return 1;
        case DType::U8: return 1;
        case DType::I16: return 2;
        case DType::U16: return 2;
        case DType::I32: return 4;
        case DType::U32: return 4;
        case DType::I64: return 8;
        case DType::U64: return 8;
        case DType::Bool: return 1;
    }
    Q4TP_THROW("invalid DType value " << static_cast<int>(dtype));
}

const char* to_string(DType dtype) {
    switch (dtype) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::F64: return "F64";
        case DType::I8: return "I8";
        case DType::U8: return "U8";
        case DType::I16: return "I16";
        case DType::U16: return "U16";
        case DType::I32: return "I32";
        case DType::U32: return "U32";
        case DType::I64: return "I64";
        case DType::U64: return "U64";
        case DType::Bool: return "BOOL";
    }
    return "?";
}

bool parse_dtype(std::string_view name, DType* out) {
    for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I8, DType::U8, DType::I16,
                        DType::U16, DType::I32, DType::U32, DType::I64, DType::U64, DType::Bool}) {
        if (name == to_string(dtype)) {
            *out = dtype;
            return true;
        }
    }
    return false;
}

}  // namespace q4tp
