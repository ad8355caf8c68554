// The per-GPU memory plan (core/model/memory_plan.h) and the refusal a tool gives before loading a model that will
// not fit: what it needs, of what, what the GPU has free.
#include <gtest/gtest.h>

#include <string>

#include "core/model/memory_plan.h"
#include "core/model/presets.h"

namespace q4tp::model {
namespace {

QuantConfig group128(bool act_order) {
    QuantConfig quant;
    quant.group_size = 128;
    quant.desc_act = act_order;
    return quant;
}

TEST(MemoryPlanTest, Llama7B_WeightsAndCacheHaveTheirKnownSizes) {
    const ModelConfig config = llama2_preset("llama2-7b");
    const MemoryPlan plan = plan_memory(config, group128(false), 1, 2048, 512);
    ASSERT_TRUE(plan.supported) << plan.reason;
    // 6.48e9 quantized weights at 4 bits plus group-128 scales and zeros: ~3.4 GB; fp16 embedding and lm_head
    // 2 x 32000 x 4096 x 2 B = 0.52 GB; K and V for 2048 tokens: 2 x 32 layers x 4096 x 2048 x 2 B = 1.07 GB.
    EXPECT_NEAR(static_cast<double>(plan.quantized_bytes) / 1e9, 3.4, 0.15);
    EXPECT_NEAR(static_cast<double>(plan.dense_bytes) / 1e9, 0.52, 0.01);
    EXPECT_EQ(plan.kv_cache_bytes, std::size_t{2} * 32 * 4096 * 2048 * 2);
    // The prefill dequantization scratch is a K x 4096 slice, not the widest layer.
    EXPECT_LT(plan.workspace_bytes, std::size_t{200} << 20);
}

TEST(MemoryPlanTest, ActOrderRowShardsCountTheirPaddingBound) {
    const ModelConfig config = llama2_preset("llama2-70b");
    const MemoryPlan in_order = plan_memory(config, group128(false), 2, 4096, 512);
    const MemoryPlan act_order = plan_memory(config, group128(true), 2, 4096, 512);
    ASSERT_TRUE(in_order.supported && act_order.supported);
    EXPECT_GT(act_order.quantized_bytes, in_order.quantized_bytes);
    // Only o_proj pads (at most 31 rows per group): 80 layers x 64 groups x 31 rows x 8192 columns / 2 B = 0.65 GB.
    EXPECT_LE(act_order.quantized_bytes - in_order.quantized_bytes, std::size_t{700} << 20);
    const MemoryPlan tp1 = plan_memory(config, group128(false), 1, 4096, 512);
    EXPECT_LT(in_order.total(), tp1.total()) << "each of two GPUs holds about half";
}

TEST(MemoryShortfallTest, EmptyWhenItFits_ReasonWhenNot) {
    MemoryPlan plan;
    plan.tp_size = 2;
    plan.quantized_bytes = 18'000'000'000;
    plan.dense_bytes = 1'000'000'000;
    plan.kv_cache_bytes = 2'000'000'000;
    plan.workspace_bytes = 500'000'000;
    EXPECT_EQ(memory_shortfall(plan, plan.total() + kMemoryReserveBytes, 4096, "cuda:0 (H100)"), "");
    const std::string why = memory_shortfall(plan, 20'000'000'000, 4096, "cuda:1 (NVIDIA H100 80GB HBM3)");
    EXPECT_NE(why.find("needs 21.77 GB per GPU at TP=2"), std::string::npos) << why;
    EXPECT_NE(why.find("weights 19.00 GB, KV cache 2.00 GB for 4096 tokens, workspace 0.50 GB"), std::string::npos)
        << why;
    EXPECT_NE(why.find("cuda:1 (NVIDIA H100 80GB HBM3) has 20.00 GB free"), std::string::npos) << why;
    EXPECT_NE(why.find("--context"), std::string::npos) << why;
    EXPECT_EQ(why.find('\n'), std::string::npos) << "one line";
}

}  // namespace
}  // namespace q4tp::model
