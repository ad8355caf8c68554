#!/usr/bin/env python3
"""Trains the tiny English Llama (transformers LlamaForCausalLM) on the train split of tools/corpus.py.

The model is a real Llama: RMSNorm, RoPE (theta 10000), SwiGLU MLP, grouped-query attention with head_dim 64 (the
CUDA attention kernels support 64 and 128 only), tied input/output embeddings. Every linear has K and N that are
multiples of 128, so GPTQ groups of 128 tile them exactly.

Data: the train documents are encoded with the sentencepiece model and joined into one stream, each document
followed by EOS. A training row is [BOS] + 511 consecutive stream tokens (context 512); each epoch starts at a
random offset and visits the rows in a random order. The validation documents (never trained on) choose the number
of epochs: the tool trains one model per entry of --epochs from the same initialisation and keeps the one with the
lowest validation loss. The held-out documents are only evaluated and reported.

Optimiser: AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay to
--min-lr-ratio of the peak, gradient clipping at 1.0, bf16 autocast with float32 master weights. Seeds are fixed
(torch, numpy, the data order); GPU kernels may still differ in the last bits between runs.

Writes OUT/config.json, OUT/model.safetensors (F16, no lm_head.weight since the embeddings are tied),
OUT/tokenizer.model (a copy) and OUT/train_log.json (losses, the sweep, timings, samples).

Usage (GPU machine): python3 tools/train_tiny_llama.py --corpus .corpus --tokenizer models/tiny-llama/tokenizer.model
                       --out out/tiny-llama-fp16
Quick CPU check: add --device cpu --hidden 128 --layers 2 --heads 2 --kv-heads 1 --intermediate 256 --max-steps 5
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import tiny_llama as tl  # noqa: E402



def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, required=True, help="directory written by tools/corpus.py")
    ap.add_argument("--tokenizer", type=Path, required=True, help="sentencepiece tokenizer.model")
    ap.add_argument("--out", type=Path, required=True, help="output directory for the fp16 checkpoint")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32, help="rows per optimiser step")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup-frac", type=float, default=0.05)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--epochs", default="3,6,12,24,48", help="comma-separated candidates; the best on validation wins")
    ap.add_argument("--time-budget-s", type=float, default=220.0,
                    help="skip a candidate whose expected end (from the measured step time) lies beyond this")
    ap.add_argument("--max-steps", type=int, default=0, help="cap on steps per candidate (quick checks only)")
    ap.add_argument("--seed", type=int, default=1234)
    return ap.parse_args(argv)


def check_shapes(args: argparse.Namespace) -> None:
    if args.head_dim not in (64, 128) and args.device != "cpu":
        raise ValueError(f"--head-dim {args.head_dim}: the CUDA attention kernels support 64 and 128 only")
    if args.heads % args.kv_heads != 0:
        raise ValueError(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    for name, value in (("--hidden", args.hidden), ("--intermediate", args.intermediate),
                        ("heads*head_dim", args.heads * args.head_dim),
                        ("kv_heads*head_dim", args.kv_heads * args.head_dim)):
        if value % 32 != 0:
            raise ValueError(f"{name} = {value}: GPTQ needs K and N to be multiples of 32")


def lr_at(step: int, total: int, args: argparse.Namespace) -> float:
    warmup = max(1, int(total * args.warmup_frac))
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return args.lr * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def make_optimizer(model, args: argparse.Namespace) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = args.device.startswith("cuda")
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def train_one(init_state: dict, config: dict, train: np.ndarray, valid: np.ndarray, epochs: int,
              args: argparse.Namespace) -> tuple[object, dict]:
    """Trains a model from init_state for `epochs` passes; returns it and its log."""
    model = tl.build_model(config, "sdpa").to(args.device)
    model.load_state_dict(init_state)
    model.train()
    opt = make_optimizer(model, args)
    body = args.context - 1
    rows_per_epoch = (len(train) - body) // body
    steps_per_epoch = rows_per_epoch // args.batch
    total = epochs * steps_per_epoch
    if args.max_steps:
        total = min(total, args.max_steps)
    gen = np.random.default_rng(args.seed + 1)  # the same data order for every candidate
    use_amp = args.device.startswith("cuda")
    losses: list[float] = []
    start = time.time()
    step = 0
    epoch = 0
    while step < total:
        offset = int(gen.integers(0, body))
        rows = tl.bos_chunks(train, args.context, offset)
        order = gen.permutation(len(rows))
        for b in range(steps_per_epoch):
            if step >= total:
                break
            ids = torch.from_numpy(rows[order[b * args.batch:(b + 1) * args.batch]]).to(args.device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, args)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 200 == 0 or step == total:
                print(f"  epochs {epochs}: step {step}/{total} epoch {epoch} loss {np.mean(losses[-50:]):.4f} "
                      f"lr {lr_at(step - 1, total, args):.2e} {time.time() - start:.1f} s", flush=True)
        epoch += 1
    model.eval()
    val = tl.mean_chunk_loss(model, valid, args.context, args.device)
    log = {"epochs": epochs, "steps": total, "steps_per_epoch": steps_per_epoch, "seconds": time.time() - start,
           "final_train_loss_50": float(np.mean(losses[-50:])), "validation_loss": val}
    print(f"candidate epochs {epochs}: {total} steps in {log['seconds']:.1f} s, train loss "
          f"{log['final_train_loss_50']:.4f}, validation loss {val:.4f}", flush=True)
    return model, log




def main(argv: list[str]) -> int:
    import safetensors.torch
    import sentencepiece as spm

    args = parse_args(argv)
    check_shapes(args)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    sp = spm.SentencePieceProcessor(model_file=str(args.tokenizer))
    train_docs = corpus.read_documents(args.corpus / "train.jsonl")
    valid_docs = corpus.read_documents(args.corpus / "validation.jsonl")
    heldout_text = (args.corpus / "heldout.txt").read_text(encoding="utf-8")
    train = tl.encode_documents(sp, train_docs)
    valid = tl.encode_documents(sp, valid_docs)
    heldout = np.asarray(sp.encode(heldout_text), dtype=np.int32)
    print(f"tokens: train {len(train)}, validation {len(valid)}, held-out {len(heldout)}", flush=True)

    config = tl.model_config(sp.get_piece_size(), args.hidden, args.intermediate, args.layers, args.heads,
                             args.kv_heads, args.head_dim, args.context, tie_word_embeddings=True)
    init = tl.build_model(config, "sdpa")
    n_params = sum(p.numel() for p in init.parameters())
    print(f"model: {n_params} parameters ({n_params / 1e6:.2f} M, embeddings tied)", flush=True)
    init_state = copy.deepcopy(init.state_dict())

    sweep: list[dict] = []
    best_model, best_log = None, None
    sweep_start = time.time()
    seconds_per_step = None
    for epochs in [int(e) for e in args.epochs.split(",")]:
        if seconds_per_step is not None:
            steps = epochs * ((len(train) - args.context + 1) // (args.context - 1) // args.batch)
            expected = time.time() - sweep_start + steps * seconds_per_step
            if expected > args.time_budget_s:
                print(f"candidate epochs {epochs}: skipped, the sweep would reach {expected:.0f} s", flush=True)
                sweep.append({"epochs": epochs, "skipped": f"time budget, expected {expected:.0f} s"})
                continue
        model, log = train_one(init_state, config, train, valid, epochs, args)
        seconds_per_step = log["seconds"] / max(1, log["steps"])
        sweep.append(log)
        if best_log is None or log["validation_loss"] < best_log["validation_loss"]:
            best_model, best_log = model, log
        else:
            del model
    assert best_model is not None and best_log is not None

    # The checkpoint is fp16; report the losses of exactly those rounded weights (float32 compute).
    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in best_model.state_dict().items()
               if k != "lm_head.weight" and "rotary_emb" not in k}
    fp16_model = tl.build_model(config, "sdpa")
    tl.load_state(fp16_model, tensors, "fp16 checkpoint")
    fp16_model.to(args.device).eval()
    losses = {"train": tl.mean_chunk_loss(fp16_model, train, args.context, args.device, max_chunks=512),
              "validation": tl.mean_chunk_loss(fp16_model, valid, args.context, args.device),
              "heldout": tl.mean_chunk_loss(fp16_model, heldout, args.context, args.device)}
    print(f"chosen: {best_log['epochs']} epochs; fp16 weights: train loss {losses['train']:.4f} (first 512 rows), "
          f"validation {losses['validation']:.4f}, held-out {losses['heldout']:.4f} "
          f"(ppl {math.exp(losses['heldout']):.2f})", flush=True)
    demo = tl.samples(fp16_model, sp, args.device)
    for s in demo:
        print(f"sample [{s['prompt']}] greedy: {s['greedy']!r}\n       sampled: {s['sampled_t0.8_p0.95']!r}")

    args.out.mkdir(parents=True, exist_ok=True)
    tl.write_json(args.out / "config.json", config)
    safetensors.torch.save_file(tensors, str(args.out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(args.tokenizer, args.out / "tokenizer.model")
    tl.write_json(args.out / "train_log.json", {
        "parameters": n_params, "args": {k: str(v) for k, v in vars(args).items()},
        "tokens": {"train": len(train), "validation": len(valid), "heldout": len(heldout)},
        "sweep": sweep, "chosen_epochs": best_log["epochs"], "fp16_losses": losses, "samples": demo,
        "torch_version": torch.__version__, "device_name": (torch.cuda.get_device_name()
                                                            if args.device.startswith("cuda") else "cpu")})
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
