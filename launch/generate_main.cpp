// q4tp-generate: a model directory and a prompt in, streamed text out (stdout), speed on stderr.

#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/model/generator.h"
#include "launch/cli.h"
#include "launch/model_session.h"
#include "launch/tool_main.h"
#include "loaders/hdf5_file.h"

namespace q4tp::launch {
namespace {

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    Q4TP_CHECK(in, "cannot read prompt file '" << path << "'");
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

void write_logits(const std::string& path,
                  const std::vector<float>& rows,
                  std::int64_t vocab,
                  const std::vector<std::int32_t>& tokens,
                  std::int64_t prompt_tokens) {
    loaders::Hdf5File file = loaders::Hdf5File::create(path);
    const auto count = static_cast<std::int64_t>(rows.size()) / vocab;
    const std::vector<std::int64_t> logits_shape{count, vocab};
    const std::vector<std::int64_t> tokens_shape{static_cast<std::int64_t>(tokens.size())};
    file.write_float("logits", rows, logits_shape);
    file.write_int32("tokens", tokens, tokens_shape);
    file.write_string_attribute("/", "description",
                                "logits: row 0 = the prompt's last position, row i = after generated token i; "
                                "tokens: prompt (with BOS) then generated ids; prompt_tokens = " +
                                    std::to_string(prompt_tokens));
}

int generate(int argc, char** argv) {
    SessionOptions session;
    std::string model_dir, prompt, prompt_file, device = "auto", logits_out, log_level = "info";
    std::int64_t max_new_tokens = 128, seed = -1;
    model::SamplingConfig sampling;
    double temperature = sampling.temperature, top_p = sampling.top_p, min_p = sampling.min_p;
    double repeat_penalty = sampling.repetition_penalty;
    std::int64_t top_k = sampling.top_k, repeat_last_n = sampling.repetition_last_n;
    std::vector<std::string> stop_strings;
    bool ignore_eos = false, no_bos = false, no_display_prompt = false;

    ArgParser args("q4tp-generate", "--model DIR --prompt TEXT [options]",
                   "Generates text from a GPTQ 4-bit Llama checkpoint. The continuation streams to stdout;\n"
                   "loading progress and speed go to stderr.");
    args.add_string("model", "DIR",
                    "model directory (config.json, quantization config, *.safetensors, tokenizer.model)", &model_dir,
                    "m");
    args.add_string("prompt", "TEXT", "the prompt", &prompt, "p");
    args.add_string("file", "FILE", "read the prompt from a file instead", &prompt_file, "f");
    args.add_int("max-new-tokens", "N", "tokens to generate at most", &max_new_tokens, "n");
    args.add_double("temperature", "T", "sampling temperature; 0 = greedy", &temperature, "t");
    args.add_int("top-k", "K", "keep the K most likely tokens; 0 = off", &top_k);
    args.add_double("top-p", "P", "nucleus sampling mass; 1 = off", &top_p);
    args.add_double("min-p", "P", "drop tokens below P times the most likely one; 0 = off", &min_p);
    args.add_double("repeat-penalty", "X", "repetition penalty (Hugging Face semantics); 1 = off", &repeat_penalty);
    args.add_int("repeat-last-n", "N", "tokens of history the penalty looks at; 0 = all", &repeat_last_n);
    args.add_int("seed", "S", "sampling seed; -1 = random (printed)", &seed, "s");
    args.add_list("stop", "TEXT", "stop when this text appears (not printed)", &stop_strings);
    args.add_flag("ignore-eos", "keep generating past end-of-sequence tokens", &ignore_eos);
    args.add_flag("no-bos", "do not prepend the BOS token to the prompt", &no_bos);
    args.add_flag("no-display-prompt", "print only the continuation, not the prompt", &no_display_prompt);
    args.add_string("device", "DEV", "auto, cpu or cuda (auto: cuda when a GPU is present)", &device);
    args.add_int("ctx-size", "N", "context length in tokens; 0 = min(max_position_embeddings, 4096)", &session.context,
                 "c");
    args.add_int("batch-tokens", "N", "prompt tokens per forward pass", &session.batch_tokens);
    args.add_string("logits-out", "FILE.h5", "write the logits of every step and the tokens to an HDF5 file",
                    &logits_out);
    args.add_string("log-level", "LEVEL", "debug, info, warn, error or off", &log_level);
    args.set_epilog(
        "examples:\n"
        "  q4tp-generate -m models/tiny -p \"Once upon a time\" -n 64\n"
        "  q4tp-generate -m MODEL -p \"2 + 2 =\" --temperature 0 --logits-out run.h5");
    if (!args.parse(argc, argv)) return 0;
    set_log_level(parse_log_level(log_level));
    if (model_dir.empty()) throw UsageError("--model is required (see --help)");
    if (prompt.empty() == prompt_file.empty()) throw UsageError("give exactly one of --prompt and --file");
    if (!prompt_file.empty()) prompt = read_text_file(prompt_file);

    sampling.temperature = temperature;
    sampling.top_k = static_cast<std::int32_t>(top_k);
    sampling.top_p = top_p;
    sampling.min_p = min_p;
    sampling.repetition_penalty = repeat_penalty;
    sampling.repetition_last_n = static_cast<std::int32_t>(repeat_last_n);
    session.model_dir = model_dir;
    session.device = parse_device(device);
    Job& job = Job::start();
    // Under mpirun every rank samples for itself, so a random seed is drawn once (rank 0) and shared.
    sampling.seed = job.root_value(seed >= 0 ? static_cast<std::uint64_t>(seed) : std::random_device{}());
    sampling.validate();
    if (seed < 0 && !sampling.greedy() && job.is_root()) Q4TP_LOG_INFO("seed " << sampling.seed);
    ModelSession run(session, job);
    // Every rank runs the same generation (same logits, same seeded sampler); rank 0 prints it.
    const bool print = job.is_root();

    const std::vector<std::int32_t> prompt_ids = run.tokenizer().encode(prompt, !no_bos);
    if (prompt_ids.empty()) throw UsageError("the prompt encodes to no tokens (empty prompt with --no-bos)");

    model::GenerationConfig generation;
    generation.max_new_tokens = max_new_tokens;
    generation.stop_strings = stop_strings;
    generation.ignore_eos = ignore_eos;
    generation.sampling = sampling;

    std::vector<float> logits_rows;
    const std::int64_t vocab = run.config().vocab_size;
    model::LogitsCallback record = [&](std::span<const float> row) {
        logits_rows.insert(logits_rows.end(), row.begin(), row.end());
    };

    if (print && !no_display_prompt) {
        std::fputs(prompt.c_str(), stdout);
        std::fflush(stdout);
    }
    const model::GenerationResult result = model::generate(
        run.model(), run.tokenizer(), prompt_ids, generation,
        [print](std::string_view text) {
            if (!print) return;
            std::fwrite(text.data(), 1, text.size(), stdout);
            std::fflush(stdout);
        },
        logits_out.empty() ? nullptr : &record);
    if (!print) return 0;
    std::fputs("\n", stdout);
    std::fflush(stdout);

    const auto generated = static_cast<double>(result.tokens.size());
    std::fprintf(stderr,
                 "prompt: %lld tokens in %.1f ms (%.1f tokens/s); generated: %lld tokens in %.1f ms (%.1f tokens/s); "
                 "stop: %s\n",
                 static_cast<long long>(result.prompt_tokens), result.prompt_seconds * 1e3,
                 result.prompt_seconds > 0 ? static_cast<double>(result.prompt_tokens) / result.prompt_seconds : 0.0,
                 static_cast<long long>(result.tokens.size()), result.generate_seconds * 1e3,
                 result.generate_seconds > 0 ? generated / result.generate_seconds : 0.0,
                 model::to_string(result.stop_reason));

    if (!logits_out.empty()) {
        std::vector<std::int32_t> all_tokens(prompt_ids);
        all_tokens.insert(all_tokens.end(), result.tokens.begin(), result.tokens.end());
        write_logits(logits_out, logits_rows, vocab, all_tokens, static_cast<std::int64_t>(prompt_ids.size()));
        Q4TP_LOG_INFO("wrote " << logits_rows.size() / static_cast<std::size_t>(vocab) << " logits rows to "
                               << logits_out);
    }
    return 0;
}

}  // namespace
}  // namespace q4tp::launch

int main(int argc, char** argv) {
    return q4tp::launch::run_tool("q4tp-generate", argc, argv, q4tp::launch::generate);
}
