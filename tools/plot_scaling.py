#!/usr/bin/env python3
"""Draws the tensor-parallel scaling chart from q4tp-bench JSON lines (scripts/gpu_tp.sh writes them).

    python3 tools/plot_scaling.py scaling.jsonl docs/scaling.png

One panel per model: decode tokens/s ("best", after a 4-token prompt) per GPU count, with the ideal linear
line from the one-GPU figure, and the prompt speedup.
"""
import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("jsonl", help="q4tp-bench --json output")
    parser.add_argument("png", help="chart to write")
    args = parser.parse_args()

    runs = defaultdict(dict)
    device = ""
    for line in open(args.jsonl):
        r = json.loads(line)
        runs[r["model"]][r["tp"]] = r
        device = r["device"]
    models = sorted(runs)
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        tps = sorted(runs[model])
        best = [runs[model][t]["best_tps"] for t in tps]
        prompt = [runs[model][t]["prompt_tps"] / runs[model][tps[0]]["prompt_tps"] * best[0] for t in tps]
        ax.plot(tps, best, "o-", label="decode tokens/s (best)")
        ax.plot(tps, [best[0] * t / tps[0] for t in tps], "--", color="gray", label="linear from 1 GPU")
        ax.plot(tps, prompt, "s:", label="prompt speedup (scaled)")
        for t, b in zip(tps, best):
            ax.annotate(f"{b:.0f}", (t, b), textcoords="offset points", xytext=(4, -12))
        ax.set_xticks(tps)
        ax.set_xlabel("GPUs (tensor parallel)")
        ax.set_ylabel("tokens/s")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"q4tp tensor-parallel scaling, {device}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


if __name__ == "__main__":
    main()
