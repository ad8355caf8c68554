// layer_diff: where does a backend part ways with Hugging Face? Runs a model directory on the CPU or CUDA
// backend over the prompts of a golden.h5 (tools/make_fixtures.py layout) and prints, stage by stage
// (embedding, each decoder layer's output, the final norm, the logits), the largest absolute difference and
// the relative RMS difference to transformers' values. The first stage whose error jumps is where to look.
//
//   build/bin/layer_diff tests/data/fixtures/tiny-g64-gqa-v2 [--device cpu|cuda] [--golden FILE]

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/model/llama_model.h"
#include "launch/cli.h"
#include "launch/job.h"
#include "launch/model_session.h"
#include "launch/tool_main.h"
#include "loaders/hdf5_file.h"

namespace q4tp::examples {
namespace {

struct Difference {
    double max_abs = 0.0;
    double relative_rms = 0.0;
};

Difference compare(const float* ours, const float* theirs, std::size_t n) {
    double err = 0.0, ref = 0.0;
    Difference d;
    for (std::size_t i = 0; i < n; ++i) {
        const double e = static_cast<double>(ours[i]) - theirs[i];
        d.max_abs = std::max(d.max_abs, std::isfinite(e) ? std::fabs(e) : INFINITY);
        err += e * e;
        ref += static_cast<double>(theirs[i]) * theirs[i];
    }
    d.relative_rms = ref > 0 ? std::sqrt(err / ref) : std::sqrt(err);
    return d;
}

int layer_diff(int argc, char** argv) {
    launch::SessionOptions session;
    std::string model_dir, golden_path, device = "auto";
    launch::ArgParser args("layer_diff", "MODEL_DIR [--golden FILE] [--device DEV]",
                           "Stage-by-stage differences between a q4tp backend and Hugging Face golden data.");
    args.add_positional("MODEL_DIR", "model directory (with golden.h5 unless --golden is given)", &model_dir, true);
    args.add_string("golden", "FILE", "golden HDF5 file (default MODEL_DIR/golden.h5)", &golden_path);
    args.add_string("device", "DEV", "auto, cpu or cuda", &device);
    if (!args.parse(argc, argv)) return 0;
    if (golden_path.empty()) golden_path = model_dir + "/golden.h5";

    session.model_dir = model_dir;
    session.device = launch::parse_device(device);
    session.context = 512;
    session.all_logits = true;
    launch::Job job;
    launch::ModelSession run(session, job);
    const loaders::Hdf5File golden = loaders::Hdf5File::open_read(golden_path);
    const auto hidden = static_cast<std::size_t>(run.config().hidden_size);
    const auto vocab = static_cast<std::size_t>(run.config().vocab_size);
    const std::int64_t layers = run.config().num_hidden_layers;

    for (int p = 0; golden.has("prompt" + std::to_string(p)); ++p) {
        const std::string group = "prompt" + std::to_string(p);
        const auto ids = golden.read_int(group + "/tokens");
        const std::vector<std::int32_t> tokens(ids.data.begin(), ids.data.end());
        const std::size_t t = tokens.size();
        std::vector<std::vector<float>> stages(static_cast<std::size_t>(layers) + 2);
        model::HiddenObserver observer = [&](std::int64_t stage, TensorView h) {
            auto& out = stages[static_cast<std::size_t>(stage + 1)];
            out.resize(static_cast<std::size_t>(h.numel()));
            run.ops().download(h, out);
        };
        std::vector<float> logits;
        run.model().forward(tokens, 0, model::LogitsMode::All, logits, &observer);

        std::printf("%s (%zu tokens) on %s:\n", group.c_str(), t, run.ops().name());
        auto row = [](const std::string& stage, const Difference& d) {
            std::printf("  %-12s max |diff| %.3e   relative rms %.3e\n", stage.c_str(), d.max_abs, d.relative_rms);
        };
        const auto embeddings = golden.read_float(group + "/embeddings");
        row("embedding", compare(stages[0].data(), embeddings.data.data(), t * hidden));
        const auto outputs = golden.read_float(group + "/layer_outputs");
        for (std::int64_t l = 0; l < layers; ++l) {
            row("layer " + std::to_string(l), compare(stages[static_cast<std::size_t>(l + 1)].data(),
                                                      outputs.data.data() + static_cast<std::size_t>(l) * t * hidden,
                                                      t * hidden));
        }
        const auto final_norm = golden.read_float(group + "/final_norm");
        row("final norm", compare(stages.back().data(), final_norm.data.data(), t * hidden));
        const auto ref_logits = golden.read_float(group + "/logits");
        row("logits", compare(logits.data(), ref_logits.data.data(), t * vocab));
    }
    return 0;
}

}  // namespace
}  // namespace q4tp::examples

int main(int argc, char** argv) {
    return q4tp::launch::run_tool("layer_diff", argc, argv, q4tp::examples::layer_diff);
}
