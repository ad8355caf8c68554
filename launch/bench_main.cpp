// q4tp-bench: the exllama protocol (docs/performance.md). Prompt speed over a 1920-token prompt; generation
// speed over 128 tokens after a 4-token prompt ("best") and after a 1920-token prompt ("worst"); memory per
// GPU; load time. On a model directory or on random weights of a real Llama-2 shape (--synthetic), which the
// backend generates in place so real-shape numbers need no checkpoint. Prints a table; --json appends JSON lines.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/base/cuda_check.h"
#include "core/base/cuda_stream.h"
#include "core/base/device_buffer.h"
#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/model/llama_model.h"
#include "core/model/presets.h"
#include "core/model/sampling.h"
#include "core/model/weight_source.h"
#include "kernels/cuda/device_info.h"
#include "launch/cli.h"
#include "launch/job.h"
#include "launch/model_session.h"
#include "launch/tool_main.h"
#include "loaders/checkpoint.h"
#include "loaders/config_json.h"
#include "loaders/quant_config.h"
#include "parallel/communicator.h"

namespace q4tp::launch {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

struct BenchResult {
    double load_s = 0, prompt_tps = 0, best_tps = 0, worst_tps = 0, allreduce_us_per_token = 0;
    double weights_gb = 0, kv_gb = 0, device_used_gb = 0, engine_gb = 0;
    double best_gbps = 0, worst_gbps = 0;
};

// Random prompt ids (never the special ids 0-2) from a fixed seed.
std::vector<std::int32_t> random_tokens(std::int64_t count, std::int64_t vocab, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<std::int32_t> dist(3, static_cast<std::int32_t>(vocab - 1));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(count));
    for (auto& id : ids) id = dist(rng);
    return ids;
}

// Tokens per second of `steps` greedy decode steps after prefilling `prompt`.
// Greedy decoding the way q4tp-generate runs it: the token is chosen on the backend inside the captured step and
// fed to the next one; the host reads back only the id.
double decode_speed(model::LlamaModel& llama, const std::vector<std::int32_t>& prompt, std::int64_t steps) {
    model::SamplingConfig greedy;
    greedy.temperature = 0.0;
    llama.begin_selection(greedy, prompt);
    auto position = static_cast<std::int64_t>(prompt.size());
    std::int32_t token = llama.forward_select(prompt, 0);
    const auto start = Clock::now();
    for (std::int64_t i = 0; i < steps; ++i)
        token = llama.forward_select(std::span<const std::int32_t>(&token, 1), position++);
    return static_cast<double>(steps) / seconds_since(start);
}

// Time per token spent in all-reduce: a decode step makes two all-reduces of one hidden vector (fp16) per layer.
// Measured alone, captured in a CUDA graph and replayed, as the decode graph replays them: NCCL's, or the one-shot
// all-reduce fused with the residual add and RMSNorm when the job has it (then the figure includes those two ops).
double allreduce_us_per_token(const model::ParallelContext& parallel,
                              model::Ops& ops,
                              std::int64_t hidden,
                              std::int64_t layers) {
    cudaStream_t stream = ops.stream_handle();
    DeviceBuffer<std::uint16_t> buffer(static_cast<std::size_t>(4 * hidden));
    Q4TP_CUDA_CHECK(cudaMemsetAsync(buffer.data(), 0, buffer.bytes(), stream));
    const auto row = [&](std::int64_t i) {
        return TensorView{buffer.data() + i * hidden, DType::F16, Shape{1, hidden}, Device::Cuda};
    };
    const TensorView partial = row(0), x = row(1), gain = row(2).reshaped(Shape{hidden}), out = row(3);
    const auto one_call = [&] {
        if (!ops.all_reduce_add_rms_norm(parallel.fused_all_reduce, partial, x, gain, 1e-5f, out)) {
            parallel.comm->all_reduce_sum(partial, stream);
        }
    };
    one_call();  // outside capture: lets a first-call setup happen before the graph
    Q4TP_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    Q4TP_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (std::int64_t i = 0; i < 2 * layers; ++i) one_call();
    Q4TP_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    Q4TP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));  // warm-up
    CudaEvent start, stop;
    constexpr int kReplays = 20;
    start.record(stream);
    for (int i = 0; i < kReplays; ++i) Q4TP_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    stop.record(stream);
    stop.synchronize();
    const double us = 1000.0 * stop.elapsed_ms_since(start) / kReplays;
    (void)cudaGraphExecDestroy(exec);
    (void)cudaGraphDestroy(graph);
    return us;
}

// The TP=1 figures a multi-GPU run is compared with: the last row of the same model on the same card with tp 1 in
// the JSON lines file, as an earlier `q4tp-bench --json FILE` on one GPU wrote it. Lines that are not JSON objects
// are skipped (the file may hold other tools' rows).
struct Tp1Baseline {
    double best_tps = 0;
    double prompt_tps = 0;
};
std::optional<Tp1Baseline> tp1_baseline(const std::string& path, const std::string& model, const std::string& card) {
    std::ifstream in(path);
    std::optional<Tp1Baseline> found;
    for (std::string line; std::getline(in, line);) {
        const nlohmann::json row = nlohmann::json::parse(line, nullptr, false);
        if (!row.is_object() || row.value("model", "") != model || row.value("device", "") != card ||
            row.value("tp", 0) != 1) {
            continue;
        }
        const Tp1Baseline b{row.value("best_tps", 0.0), row.value("prompt_tps", 0.0)};
        if (b.best_tps > 0 && b.prompt_tps > 0) found = b;
    }
    return found;
}

double device_used_gb() {
    std::size_t free_bytes = 0, total_bytes = 0;
    Q4TP_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return static_cast<double>(total_bytes - free_bytes) / 1e9;
}

int bench(int argc, char** argv) {
    std::string model_dir, synthetic, json_path, device = "auto", log_level = "info";
    std::int64_t prompt_tokens = 1920, gen_tokens = 128, context = 0, batch_tokens = 2048, repeats = 3;
    bool act_order = false;
    ArgParser args("q4tp-bench", "(--model DIR | --synthetic llama2-7b|llama2-13b|llama2-70b) [options]",
                   "Measures prompt and generation speed the way exllama's benchmark does, and memory per GPU.");
    args.add_string("model", "DIR", "a GPTQ model directory", &model_dir, "m");
    args.add_string("synthetic", "NAME", "random GPTQ weights of a real shape (group 128), built on the device",
                    &synthetic);
    args.add_flag("act-order", "synthetic weights with act-order (rows read through a permutation)", &act_order);
    args.add_int("prompt-tokens", "N", "prompt length for the prompt-speed and worst-case runs", &prompt_tokens);
    args.add_int("gen-tokens", "N", "tokens generated per generation run", &gen_tokens);
    args.add_int("context", "N", "KV cache size in tokens; 0 = just enough for the runs", &context, "c");
    args.add_int("batch-tokens", "N", "prompt tokens per forward pass", &batch_tokens);
    args.add_int("repeats", "N", "runs of each measurement; the median is reported", &repeats);
    args.add_string("device", "DEV", "auto, cpu or cuda", &device);
    args.add_string("json", "FILE", "append one JSON line with the results", &json_path);
    args.add_string("log-level", "LEVEL", "debug, info, warn, error or off", &log_level);
    if (!args.parse(argc, argv)) return 0;
    set_log_level(parse_log_level(log_level));
    if (model_dir.empty() == synthetic.empty()) throw UsageError("give exactly one of --model and --synthetic");
    if (prompt_tokens < 4 || gen_tokens < 1 || repeats < 1) {
        throw UsageError("--prompt-tokens must be >= 4, --gen-tokens and --repeats >= 1");
    }
    if (context == 0) context = (prompt_tokens + gen_tokens + 1 + 255) / 256 * 256;
    if (context < prompt_tokens + gen_tokens + 1) {
        throw UsageError("--context " + std::to_string(context) + " cannot hold " + std::to_string(prompt_tokens) +
                         " prompt tokens plus " + std::to_string(gen_tokens) + " generated");
    }

    Job& job = Job::start();
    std::unique_ptr<model::Ops> ops = job.make_backend(parse_device(device));
    const bool use_cuda = ops->device() == Device::Cuda;
    std::string card = "cpu";
    if (use_cuda) {
        int current = 0;
        Q4TP_CUDA_CHECK(cudaGetDevice(&current));
        card = kernels::cuda::device_info(current).name;
    }

    ModelConfig config;
    QuantConfig quant;
    std::unique_ptr<loaders::Checkpoint> checkpoint;
    std::unique_ptr<model::WeightSource> weights;
    if (!synthetic.empty()) {
        config = model::llama2_preset(synthetic);
        quant.group_size = 128;
        quant.desc_act = act_order;  // what a real act-order checkpoint declares (the memory plan reads it)
        weights = std::make_unique<model::SyntheticWeights>(quant, act_order, 1234);
    } else {
        config = loaders::load_model_config(std::filesystem::path(model_dir) / "config.json");
        quant = loaders::load_quant_config(model_dir);
        checkpoint =
            std::make_unique<loaders::Checkpoint>(loaders::Checkpoint::open(model_dir, quant.model_file_base_name));
        weights = std::make_unique<model::CheckpointWeights>(*checkpoint, quant);
    }
    model::RuntimeConfig runtime;
    runtime.max_context = context;
    runtime.max_batch_tokens = batch_tokens;
    runtime.all_logits = false;

    BenchResult r;
    // Device memory in use before the model: the CUDA context, cuBLAS and the backend's fixed scratch.
    const double before_model_gb = use_cuda ? device_used_gb() : 0.0;
    auto start = Clock::now();
    require_device_memory(config, quant, job.size(), runtime, *ops);
    const model::ParallelContext parallel = job.parallel(config.hidden_size);
    model::LlamaModel llama(config, quant, *weights, *ops, runtime, parallel);
    ops->synchronize();
    r.load_s = seconds_since(start);
    r.weights_gb = static_cast<double>(llama.weight_bytes()) / 1e9;
    r.kv_gb = static_cast<double>(llama.kv_cache_bytes()) / 1e9;
    if (use_cuda) {
        r.device_used_gb = device_used_gb();
        r.engine_gb = r.device_used_gb - before_model_gb;
    }

    const auto long_prompt = random_tokens(prompt_tokens, config.vocab_size, 1);
    const auto short_prompt = random_tokens(4, config.vocab_size, 2);
    std::vector<float> logits;
    std::vector<double> prompt_runs, best_runs, worst_runs;
    // Warm-up: module loading, cuBLAS heuristics and the decode graph capture stay out of the timings.
    (void)decode_speed(llama, short_prompt, 2);
    for (std::int64_t i = 0; i < repeats; ++i) {
        start = Clock::now();
        llama.forward(long_prompt, 0, model::LogitsMode::LastOnly, logits);
        prompt_runs.push_back(static_cast<double>(prompt_tokens) / seconds_since(start));
        best_runs.push_back(decode_speed(llama, short_prompt, gen_tokens));
        worst_runs.push_back(decode_speed(llama, long_prompt, gen_tokens));
    }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    r.prompt_tps = median(prompt_runs);
    r.best_tps = median(best_runs);
    r.worst_tps = median(worst_runs);
    if (job.size() > 1 && use_cuda) {
        r.allreduce_us_per_token = allreduce_us_per_token(parallel, *ops, config.hidden_size, config.num_hidden_layers);
    }
    // Average context over a run: the prompt plus half the generated tokens.
    r.best_gbps = r.best_tps * static_cast<double>(llama.decode_bytes_per_token(4 + gen_tokens / 2)) / 1e9;
    r.worst_gbps =
        r.worst_tps * static_cast<double>(llama.decode_bytes_per_token(prompt_tokens + gen_tokens / 2)) / 1e9;

    if (!job.is_root()) return 0;
    // Roofline references (docs/performance.md): H100 SXM spec 3.35 TB/s; measured device copy 3.02 TB/s.
    constexpr double kSpecGbps = 3350.0, kCopyGbps = 3020.0;
    const std::string name = synthetic.empty() ? model_dir : synthetic + (act_order ? " act-order" : "");
    std::cout << std::fixed << std::setprecision(1);
    std::cout << "device: " << card << (job.size() > 1 ? " x " + std::to_string(job.size()) + " (tensor parallel)" : "")
              << "\nmodel: " << name << " (" << r.weights_gb << " GB weights, load " << std::setprecision(2) << r.load_s
              << " s)\n"
              << std::setprecision(1);
    std::cout << "| measure | tokens/s | GB/s | of 3.35 TB/s | of 3.02 TB/s copy |\n|---|---|---|---|---|\n";
    std::cout << "| prompt (" << prompt_tokens << " tokens) | " << r.prompt_tps << " | - | - | - |\n";
    std::cout << "| gen best (after 4) | " << r.best_tps << " | " << r.best_gbps << " | "
              << 100 * r.best_gbps / kSpecGbps << "% | " << 100 * r.best_gbps / kCopyGbps << "% |\n";
    std::cout << "| gen worst (after " << prompt_tokens << ") | " << r.worst_tps << " | " << r.worst_gbps << " | "
              << 100 * r.worst_gbps / kSpecGbps << "% | " << 100 * r.worst_gbps / kCopyGbps << "% |\n";
    if (r.allreduce_us_per_token > 0) {
        std::cout << "all-reduce: " << r.allreduce_us_per_token << " us per token (" << 2 * config.num_hidden_layers
                  << " all-reduces of " << config.hidden_size << " fp16 values, graphed, "
                  << (parallel.fused_all_reduce ? "one-shot fused with add + RMSNorm" : "NCCL")
                  << ") = " << 100.0 * r.allreduce_us_per_token * 1e-6 * r.best_tps << "% of a best-case step\n";
    }
    std::cout << std::setprecision(2) << "memory: weights " << r.weights_gb << " GB + KV cache " << r.kv_gb << " GB";
    if (use_cuda) {
        std::cout << "; the model allocated " << r.engine_gb << " GB ("
                  << (r.weights_gb + r.kv_gb > 0 ? 100.0 * (r.engine_gb / (r.weights_gb + r.kv_gb) - 1.0) : 0.0)
                  << "% over weights + cache); device in use " << r.device_used_gb << " GB with the CUDA context";
    }
    std::cout << "\n";

    // Speedup and efficiency against one GPU, from the TP=1 row an earlier run appended to the same JSON file.
    std::optional<Tp1Baseline> base;
    if (job.size() > 1 && !json_path.empty()) base = tp1_baseline(json_path, name, card);
    if (base) {
        std::cout << std::setprecision(2) << "speedup over 1 GPU (TP=1 row of " << json_path << "): best "
                  << r.best_tps / base->best_tps << "x (" << std::setprecision(0)
                  << 100.0 * r.best_tps / base->best_tps / job.size() << "% efficiency), prompt "
                  << std::setprecision(2) << r.prompt_tps / base->prompt_tps << "x\n";
    } else if (job.size() > 1) {
        std::cout << "speedup over 1 GPU: no TP=1 row of this model and card"
                  << (json_path.empty() ? " (give --json FILE, written by a run on one GPU first)" : " in " + json_path)
                  << "\n";
    }

    if (!json_path.empty()) {
        std::ofstream json(json_path, std::ios::app);
        Q4TP_CHECK(json, "cannot write " << json_path);
        json << std::fixed << std::setprecision(3) << "{\"model\":\"" << name << "\",\"device\":\"" << card
             << "\",\"tp\":" << job.size() << ",\"prompt_tokens\":" << prompt_tokens << ",\"gen_tokens\":" << gen_tokens
             << ",\"prompt_tps\":" << r.prompt_tps << ",\"best_tps\":" << r.best_tps << ",\"worst_tps\":" << r.worst_tps
             << ",\"best_gbps\":" << r.best_gbps << ",\"worst_gbps\":" << r.worst_gbps
             << ",\"weights_gb\":" << r.weights_gb << ",\"kv_gb\":" << r.kv_gb
             << ",\"device_used_gb\":" << r.device_used_gb << ",\"engine_gb\":" << r.engine_gb
             << ",\"load_s\":" << r.load_s << ",\"allreduce_us_per_token\":" << r.allreduce_us_per_token
             << ",\"allreduce\":\""
             << (job.size() == 1             ? "none"
                 : parallel.fused_all_reduce ? "one-shot"
                                             : "nccl")
             << "\"";
        if (base) {
            json << ",\"speedup_best\":" << r.best_tps / base->best_tps
                 << ",\"efficiency\":" << r.best_tps / base->best_tps / job.size()
                 << ",\"speedup_prompt\":" << r.prompt_tps / base->prompt_tps;
        }
        json << "}\n";
    }
    return 0;
}

}  // namespace
}  // namespace q4tp::launch

int main(int argc, char** argv) {
    return q4tp::launch::run_tool("q4tp-bench", argc, argv, q4tp::launch::bench);
}
