// q4tp-perplexity: perplexity of a text file under a model, windowed like Hugging Face's perplexity guide and
// exllama's tool (core/model/perplexity.h). Prints perplexity and tokens/s.

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "core/base/error.h"
#include "core/base/logging.h"
#include "core/model/perplexity.h"
#include "launch/cli.h"
#include "launch/model_session.h"
#include "launch/tool_main.h"

namespace q4tp::launch {
namespace {

int perplexity(int argc, char** argv) {
    SessionOptions session;
    std::string model_dir, text_file, device = "auto", log_level = "info";
    model::PerplexityConfig config;
    bool add_bos = false;
    ArgParser args("q4tp-perplexity", "--model DIR --text FILE [options]",
                   "Perplexity of a text file: windows of --window tokens every --stride tokens; each token after the\n"
                   "first is scored once, with the context its window gives it.");
    args.add_string("model", "DIR", "model directory", &model_dir, "m");
    args.add_string("text", "FILE", "UTF-8 text to score", &text_file, "f");
    args.add_int("window", "N", "tokens per window (the model's context for scoring)", &config.window);
    args.add_int("stride", "N", "tokens between window starts", &config.stride);
    args.add_flag("add-bos", "prepend BOS to every window (context only, never scored)", &add_bos);
    args.add_string("device", "DEV", "auto, cpu or cuda", &device);
    args.add_int("batch-tokens", "N", "tokens per forward pass", &session.batch_tokens);
    args.add_string("log-level", "LEVEL", "debug, info, warn, error or off", &log_level);
    if (!args.parse(argc, argv)) return 0;
    set_log_level(parse_log_level(log_level));
    if (model_dir.empty()) throw UsageError("--model is required (see --help)");
    if (text_file.empty()) throw UsageError("--text is required (see --help)");
    if (config.window < 2 || config.stride < 1) throw UsageError("--window must be >= 2 and --stride >= 1");

    std::ifstream in(text_file, std::ios::binary);
    Q4TP_CHECK(in, "cannot read text file '" << text_file << "'");
    std::ostringstream text;
    text << in.rdbuf();

    session.model_dir = model_dir;
    session.device = parse_device(device);
    session.context = config.window;
    session.all_logits = true;
    if (session.batch_tokens < config.window) session.batch_tokens = config.window;
    Job& job = Job::start();
    ModelSession run(session, job);
    config.add_bos = add_bos;
    config.bos_id = static_cast<std::int32_t>(run.tokenizer().bos_id());
    const std::vector<std::int32_t> tokens = run.tokenizer().encode(text.str(), false);
    Q4TP_LOG_INFO(text_file << ": " << tokens.size() << " tokens");

    const model::PerplexityResult result = model::evaluate_perplexity(
        run.model(), tokens, config, [](std::int64_t done, std::int64_t total) {
            if (done % 8 == 0 || done == total) Q4TP_LOG_INFO("window " << done << "/" << total);
        });
    if (!job.is_root()) return 0;
    std::printf("perplexity: %.4f over %lld tokens (nll sum %.4f, window %lld, stride %lld%s)\n", result.perplexity(),
                static_cast<long long>(result.scored_tokens), result.nll_sum, static_cast<long long>(config.window),
                static_cast<long long>(config.stride), add_bos ? ", BOS per window" : "");
    std::fprintf(stderr, "speed: %.1f tokens/s (%.2f s)\n",
                 result.seconds > 0 ? static_cast<double>(result.scored_tokens) / result.seconds : 0.0, result.seconds);
    return 0;
}

}  // namespace
}  // namespace q4tp::launch

int main(int argc, char** argv) {
    return q4tp::launch::run_tool("q4tp-perplexity", argc, argv, q4tp::launch::perplexity);
}
