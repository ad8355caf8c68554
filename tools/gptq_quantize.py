#!/usr/bin/env python3
"""GPTQ 4-bit quantization of a Llama checkpoint into the Hugging Face / AutoGPTQ layout (formats.md §2).

The algorithm (Frantar et al., "GPTQ", 2022), implemented here from the paper and formats.md:
- Decoder layers are quantized in order, each with the calibration activations produced by the already-quantized
  layers before it. Inside a layer the linears go in AutoGPTQ's true_sequential order [q, k, v], [o], [gate, up],
  [down]; each set is quantized after a forward pass of the layer whose earlier sets are already quantized, and the
  layer's outputs (inputs of the next layer) are computed once all seven are done.
- Per linear, H = 2/n * X^T X over the n calibration tokens of its input (q/k/v share one H, as do gate/up).
  Columns with diag(H) = 0 are zeroed. With desc_act the columns are processed by descending diag(H) (act-order).
  H += damp_percent * mean(diag(H)) * I; U = upper Cholesky factor of H^-1.
- Columns are processed in blocks of block_size: each column is quantized, its error e = (w - q) / U[j, j] is
  propagated to the remaining columns of the block with row j of U, and the block's errors to all later columns.
- Groups of group_size columns are assigned in the processing (permuted) order, so g_idx[perm[j]] = j // gs
  (R2.15; without act-order g_idx[k] = k // gs). A group's scale and zero come from the current (error-updated)
  weights of its columns when its first column is reached, exactly as in the unblocked algorithm for any block and
  group size (AutoGPTQ agrees when group_size == block_size, the default), min/max per output row as in
  AutoGPTQ's quantizer: sym uses
  z = 8 and s = 2 max|w| / 15; asym uses s = (max - min) / 15 with min <= 0 <= max and z = round(-min / s).
  Scales are rounded to fp16 before the codes are chosen, and each quantized value is fp16(s * (q - z)), exactly
  what the kernels compute (R2.10/R2.11); that value is the one the error propagation sees.
- v1 storage ("gptq"): qzeros hold z - 1, so z = 0 cannot be written (R2.12, our loader refuses the nibble 0xF).
  An asym group whose zero would round to 0 (all its weights >= -s/2) gets z = 1 and s = max / 14 instead, which
  still covers its range.

Output: config.json with quantization_config, quantize_config.json (the same dict), model.safetensors (qweight I32
[K/8, N], qzeros I32 [G, N/8], scales F16 [G, N], g_idx I32 [K] per linear; embeddings and norms F16) and a copy
of tokenizer.model. The result is then validated: the files are read back, every linear is dequantized with
tools/fixtures_gptq.py and must equal the weights the quantizer used, bit for bit; the dequantized model is loaded
into transformers (float32) and its loss and perplexity compared with the fp16 model's. Optionally the golden
perplexities (tests/data/perplexity/golden.h5) and greedy/sampled text are written.

Usage (GPU machine): python3 tools/gptq_quantize.py --model out/tiny-llama-fp16 --corpus .corpus
    --out models/tiny-llama --golden tests/data/perplexity/golden.h5 --log out/quantize_log.json
Quick CPU check: add --device cpu --nsamples 8 --calib-batch 4
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
import fixtures_gptq  # noqa: E402
import tiny_llama as tl  # noqa: E402

BITS = 4
MAXQ = (1 << BITS) - 1
# Sets of linears quantized together, in order; members of a set read the same input (one Hessian).
SEQUENTIAL_SETS = (("self_attn", ("q_proj", "k_proj", "v_proj")), ("self_attn", ("o_proj",)),
                   ("mlp", ("gate_proj", "up_proj")), ("mlp", ("down_proj",)))
# The dequantized model must stay within this perplexity ratio of the fp16 model, else the tool fails.
MAX_PPL_RATIO = 1.15


class _StopForward(Exception):
    pass


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-test", dest="self_test_only", action="store_true",
                    help="only run the self-test (it also runs before every quantization)")
    ap.add_argument("--model", type=Path, help="fp16 checkpoint from train_tiny_llama.py")
    ap.add_argument("--corpus", type=Path, help="directory written by tools/corpus.py")
    ap.add_argument("--out", type=Path, help="output directory of the GPTQ checkpoint")
    ap.add_argument("--group-size", type=int, default=128, help="-1: one group over all K rows")
    ap.add_argument("--no-desc-act", dest="desc_act", action="store_false", help="quantize columns in order")
    ap.add_argument("--asym", dest="sym", action="store_false", help="asymmetric zero points (default sym)")
    ap.add_argument("--damp-percent", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--nsamples", type=int, default=256, help="calibration rows of [BOS] + 511 train tokens")
    ap.add_argument("--calib-batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--golden", type=Path, help="write the golden perplexities (HDF5) here")
    ap.add_argument("--log", type=Path, help="write a JSON log (errors per linear, losses, samples) here")
    args = ap.parse_args(argv)
    if not args.self_test_only and (args.model is None or args.corpus is None or args.out is None):
        ap.error("--model, --corpus and --out are required unless --self-test is given")
    return args


# ---------------------------------------------------------------------------------------------------------------
# The GPTQ algorithm
# ---------------------------------------------------------------------------------------------------------------

def group_params(x: torch.Tensor, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32 holding fp16 values [N], zero int64 [N]) for the weights x[N, cols] of one group."""
    xmin = torch.clamp(x.min(dim=1).values, max=0.0)
    xmax = torch.clamp(x.max(dim=1).values, min=0.0)
    if sym:
        xmax = torch.maximum(-xmin, xmax)
        xmin = torch.where(xmin < 0, -xmax, xmin)
    empty = (xmin == 0) & (xmax == 0)
    xmin = torch.where(empty, -torch.ones_like(xmin), xmin)
    xmax = torch.where(empty, torch.ones_like(xmax), xmax)
    scale = (xmax - xmin) / MAXQ
    if sym:
        zero = torch.full_like(scale, (MAXQ + 1) // 2, dtype=torch.int64)
    else:
        zero = torch.round(-xmin / scale).to(torch.int64)
        low = zero < 1  # v1 cannot store z = 0 (R2.12): use z = 1 and stretch the scale to keep max representable
        scale = torch.where(low, xmax / (MAXQ - 1), scale)
        zero = torch.where(low, torch.ones_like(zero), zero)
    # fp16 scales, never 0 or subnormal: the smallest normal fp16 is 2^-14.
    scale = torch.clamp(scale, min=2.0 ** -14).to(torch.float16).to(torch.float32)
    return scale, zero


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int64, dequantized fp16 values as float32) of one column w[N]."""
    q = torch.clamp(torch.round(w / scale) + zero, 0, MAXQ).to(torch.int64)
    return q, (scale * (q - zero).to(torch.float32)).to(torch.float16).to(torch.float32)


def gptq(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, sym: bool, desc_act: bool,
         damp_percent: float, block_size: int) -> dict:
    """Quantizes nn.Linear weight[N, K] with the Hessian H[K, K] of its input. Returns codes int64 [N, K],
    dequant float32 [N, K] (fp16 values), scales float32 [G, N], zeros int64 [G, N], g_idx int64 [K] (original
    column order throughout) and the GPTQ objective sum of (w - q)^2 / U[j, j]^2 / 2 (its own error measure)."""
    n, k = weight.shape
    gs = k if group_size == -1 else group_size
    g_count = -(-k // gs)
    w_all = weight.detach().to(torch.float32).clone()
    h = hessian.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w_all[:, dead] = 0.0
    if desc_act:
        perm = torch.argsort(torch.diag(h), descending=True, stable=True)
    else:
        perm = torch.arange(k, device=h.device)
    w_all = w_all[:, perm]
    h = h[perm][:, perm]
    u = None
    damp = damp_percent
    for _ in range(4):
        # A Hessian that is not positive definite even after dampening gets 10x more (reported in the log).
        damped = h + damp * torch.mean(torch.diag(h)) * torch.eye(k, dtype=h.dtype, device=h.device)
        chol, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            u, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0:
                break
        u = None
        damp *= 10.0
    if u is None:
        raise RuntimeError(f"gptq: Hessian [{k}, {k}] is not positive definite even with damp_percent {damp}")
    u = u.to(torch.float32)

    codes = torch.zeros((n, k), dtype=torch.int64, device=w_all.device)
    dequant = torch.zeros((n, k), dtype=torch.float32, device=w_all.device)
    scales = torch.zeros((g_count, n), dtype=torch.float32, device=w_all.device)
    zeros = torch.zeros((g_count, n), dtype=torch.int64, device=w_all.device)
    objective = torch.zeros((), dtype=torch.float64, device=w_all.device)
    scale = zero = None
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w_block = w_all[:, i1:i2].clone()
        err_block = torch.zeros_like(w_block)
        u_block = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if j % gs == 0:
                # The group's columns as the unblocked algorithm would see them: those beyond this block still
                # lack the updates from this block's columns quantized so far, so apply those first.
                group_end = min(j + gs, k)
                group_cols = w_block[:, i:min(group_end, i2) - i1]
                if group_end > i2:
                    pending = w_all[:, i2:group_end] - err_block[:, :i] @ u[i1:j, i2:group_end]
                    group_cols = torch.cat([group_cols, pending], dim=1)
                scale, zero = group_params(group_cols, sym)
                scales[j // gs] = scale
                zeros[j // gs] = zero
            w = w_block[:, i]
            q, dq = quantize_column(w, scale, zero)
            codes[:, j] = q
            dequant[:, j] = dq
            d = u_block[i, i]
            err = (w - dq) / d
            objective += (err.double() ** 2).sum() / 2
            w_block[:, i:] -= err[:, None] * u_block[i, i:][None, :]
            err_block[:, i] = err
        w_all[:, i2:] -= err_block @ u[i1:i2, i2:]
    inv = torch.argsort(perm)
    g_idx = (torch.arange(k, device=perm.device) // gs)[inv]
    return {"codes": codes[:, inv], "dequant": dequant[:, inv], "scales": scales, "zeros": zeros, "g_idx": g_idx,
            "objective": float(objective), "damp_percent": damp}


# ---------------------------------------------------------------------------------------------------------------
# Layer-by-layer flow over a transformers LlamaForCausalLM
# ---------------------------------------------------------------------------------------------------------------

def calibration_rows(stream: np.ndarray, nsamples: int, context: int, seed: int) -> np.ndarray:
    """nsamples rows [BOS] + stream[o : o + context - 1] at seeded random offsets; int64 [nsamples, context]."""
    rng = np.random.default_rng(seed)
    body = context - 1
    offsets = rng.integers(0, len(stream) - body, size=nsamples)
    rows = np.stack([stream[o:o + body] for o in offsets]).astype(np.int64)
    return np.concatenate([np.full((nsamples, 1), tl.BOS_ID, dtype=np.int64), rows], axis=1)


def layer_inputs(model, rows: np.ndarray, batch: int, device: str) -> tuple[list[torch.Tensor], dict]:
    """Hidden states entering decoder layer 0 (one tensor per batch) and the keyword arguments LlamaModel passes
    to its layers (position embeddings, mask), captured with a pre-hook so no transformers internals are copied."""
    captured: list[torch.Tensor] = []
    kwargs_seen: dict = {}

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden.detach())
        if not kwargs_seen:
            kwargs_seen.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i in range(0, len(rows), batch):
            try:
                model(input_ids=torch.from_numpy(rows[i:i + batch]).to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured, kwargs_seen


def run_layer(layer, inputs: list[torch.Tensor], kwargs: dict) -> list[torch.Tensor]:
    outputs = []
    for x in inputs:
        out = layer(x, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return outputs


@torch.no_grad()
def quantize_model(model, rows: np.ndarray, args: argparse.Namespace) -> tuple[dict[str, dict], list[dict]]:
    """Quantizes every decoder linear of model in place (its weights become the dequantized values). Returns the
    GPTQ results by module prefix and one log row per linear."""
    inputs, kwargs = layer_inputs(model, rows, args.calib_batch, args.device)
    results: dict[str, dict] = {}
    log: list[dict] = []
    for li, layer in enumerate(model.model.layers):
        for block_name, names in SEQUENTIAL_SETS:
            block = getattr(layer, block_name)
            first = getattr(block, names[0])
            acc = {"h": None, "n": 0}

            def hook(_module, hook_args, acc=acc):
                x = hook_args[0].detach().reshape(-1, hook_args[0].shape[-1]).to(torch.float32)
                acc["h"] = x.T @ x if acc["h"] is None else acc["h"] + x.T @ x
                acc["n"] += x.shape[0]

            handle = first.register_forward_pre_hook(hook)
            try:
                run_layer(layer, inputs, kwargs)
            finally:
                handle.remove()
            hessian = 2.0 * acc["h"] / acc["n"]
            for name in names:
                module = getattr(block, name)
                start = time.time()
                res = gptq(module.weight, hessian, args.group_size, args.sym, args.desc_act, args.damp_percent,
                           args.block_size)
                rel = float((res["dequant"] - module.weight).norm() / module.weight.norm())
                # Output error on the calibration inputs: tr((W - Q) H (W - Q)^T) / 2 relative to tr(W H W^T) / 2.
                diff = module.weight.to(torch.float32) - res["dequant"]
                out_err = float(torch.einsum("nk,kl,nl->", diff, hessian, diff))
                out_ref = float(torch.einsum("nk,kl,nl->", module.weight.float(), hessian, module.weight.float()))
                module.weight.copy_(res["dequant"].to(module.weight.dtype))
                prefix = f"model.layers.{li}.{block_name}.{name}"
                results[prefix] = res
                log.append({"linear": prefix, "weight_rel_err": rel, "output_rel_err": out_err / out_ref,
                            "gptq_objective": res["objective"], "damp_percent": res["damp_percent"],
                            "seconds": time.time() - start})
                print(f"  {prefix}: |W-Q|/|W| {rel:.4f}, output err {out_err / out_ref:.5f}, "
                      f"{time.time() - start:.2f} s", flush=True)
        inputs = run_layer(layer, inputs, kwargs)
    return results, log


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------------------------

def quantize_config(args: argparse.Namespace) -> dict:
    """AutoGPTQ's quantize_config.json dict (A4 to_dict field set), v1 zero format."""
    return {"bits": BITS, "group_size": args.group_size, "damp_percent": args.damp_percent,
            "desc_act": args.desc_act, "static_groups": False, "sym": args.sym, "true_sequential": True,
            "model_name_or_path": None, "model_file_base_name": "model", "quant_method": "gptq",
            "checkpoint_format": "gptq"}


def gptq_tensors(res: dict) -> dict[str, np.ndarray]:
    """The four stored tensors of one linear (formats.md §2.2), packed with tools/fixtures_gptq.py."""
    codes = res["codes"].cpu().numpy().T.astype(np.int32)  # GPTQ orientation W[K, N]
    zeros = res["zeros"].cpu().numpy().astype(np.int32)
    if zeros.min() < 1 or zeros.max() > MAXQ:
        raise RuntimeError(f"zero points {zeros.min()}..{zeros.max()} cannot be stored as v1 (z - 1 in 0..14)")
    return {"qweight": fixtures_gptq.pack_rows(codes), "qzeros": fixtures_gptq.pack_cols(zeros - 1),
            "scales": res["scales"].cpu().numpy().astype(np.float16),
            "g_idx": res["g_idx"].cpu().numpy().astype(np.int32)}


def checkpoint_tensors(config: dict, fp16: dict[str, torch.Tensor], results: dict[str, dict]) -> dict:
    """All tensors of the GPTQ checkpoint in module order."""
    out: dict[str, np.ndarray] = {"model.embed_tokens.weight": fp16["model.embed_tokens.weight"].numpy()}
    for li in range(config["num_hidden_layers"]):
        out[f"model.layers.{li}.input_layernorm.weight"] = fp16[f"model.layers.{li}.input_layernorm.weight"].numpy()
        for block_name, names in SEQUENTIAL_SETS:
            for name in names:
                prefix = f"model.layers.{li}.{block_name}.{name}"
                for suffix, t in gptq_tensors(results[prefix]).items():
                    out[f"{prefix}.{suffix}"] = t
        out[f"model.layers.{li}.post_attention_layernorm.weight"] = (
            fp16[f"model.layers.{li}.post_attention_layernorm.weight"].numpy())
    out["model.norm.weight"] = fp16["model.norm.weight"].numpy()
    if not config["tie_word_embeddings"]:
        out["lm_head.weight"] = fp16["lm_head.weight"].numpy()
    return out


def validate_files(out_dir: Path, config: dict, results: dict[str, dict], args: argparse.Namespace) -> dict:
    """Reads the written checkpoint back and returns the dequantized float tensors for transformers; raises on
    any difference from what the quantizer produced."""
    import safetensors

    path = out_dir / "model.safetensors"
    with safetensors.safe_open(str(path), framework="np") as f:
        if f.metadata() != {"format": "pt"}:
            raise RuntimeError(f"{path}: __metadata__ {f.metadata()} is not {{'format': 'pt'}}")
        stored = {name: f.get_tensor(name) for name in f.keys()}
    state: dict[str, torch.Tensor] = {}
    for name, t in stored.items():
        if name.endswith(".weight"):
            if t.dtype != np.float16:
                raise RuntimeError(f"{path}: tensor '{name}' is {t.dtype}, expected F16")
            state[name] = torch.from_numpy(t.astype(np.float32))
    for prefix, res in results.items():
        qw, qz, sc, gi = (stored[f"{prefix}.{s}"] for s in ("qweight", "qzeros", "scales", "g_idx"))
        n, k = res["codes"].shape
        gs = k if args.group_size == -1 else args.group_size
        g = -(-k // gs)
        want = {"qweight": ((k // 8, n), np.int32), "qzeros": ((g, n // 8), np.int32),
                "scales": ((g, n), np.float16), "g_idx": ((k,), np.int32)}
        for suffix, t in zip(want, (qw, qz, sc, gi)):
            if (t.shape, t.dtype) != want[suffix]:
                raise RuntimeError(f"{path}: tensor '{prefix}.{suffix}' is {t.dtype} {list(t.shape)}, expected "
                                   f"{want[suffix][1].__name__} {list(want[suffix][0])}")
        if args.sym and not (qz.view(np.uint32) == 0x77777777).all():
            raise RuntimeError(f"{path}: tensor '{prefix}.qzeros' has words other than 0x77777777 (sym v1)")
        counts = np.bincount(gi, minlength=g)
        if counts.max() > gs or (counts < gs).sum() > 1:
            raise RuntimeError(f"{path}: tensor '{prefix}.g_idx' group sizes {counts.tolist()} break R2.18")
        w = fixtures_gptq.dequantize(qw, qz, sc, gi, "gptq")  # [K, N] float16
        expected = res["dequant"].cpu().numpy().T.astype(np.float16)
        if not np.array_equal(w.view(np.uint16), expected.view(np.uint16)):
            raise RuntimeError(f"{path}: '{prefix}' dequantizes to values that differ from the quantizer's")
        state[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(w.astype(np.float32).T))
    for li in range(config["num_hidden_layers"]):
        for a, b in (("q_proj", "k_proj"), ("q_proj", "v_proj"), ("gate_proj", "up_proj")):
            block = "self_attn" if a == "q_proj" else "mlp"
            ga, gb = (stored[f"model.layers.{li}.{block}.{x}.g_idx"] for x in (a, b))
            if not np.array_equal(ga, gb):
                raise RuntimeError(f"{path}: layer {li} {a} and {b} g_idx differ although they share a Hessian")
    return state


# ---------------------------------------------------------------------------------------------------------------
# Self-test (runs on the CPU in a few seconds, before every quantization)
# ---------------------------------------------------------------------------------------------------------------

def reference_gptq(weight: torch.Tensor, hessian: torch.Tensor, group_size: int, sym: bool, desc_act: bool,
                   damp_percent: float) -> torch.Tensor:
    """Codes [N, K] of the unblocked algorithm in float64 with the explicit inverse Hessian and the Optimal Brain
    Surgeon updates (remove column j from H^-1 by a Schur complement), no Cholesky factor: an independent check."""
    n, k = weight.shape
    gs = k if group_size == -1 else group_size
    w = weight.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = (torch.argsort(torch.diag(h), descending=True, stable=True) if desc_act else torch.arange(k))
    w = w[:, perm]
    h = h[perm][:, perm]
    h += damp_percent * torch.mean(torch.diag(h)) * torch.eye(k, dtype=torch.float64)
    hinv = torch.linalg.inv(h)
    codes = torch.zeros((n, k), dtype=torch.int64)
    scale = zero = None
    for j in range(k):
        if j % gs == 0:
            scale, zero = group_params(w[:, j:j + gs].float(), sym)
        q, dq = quantize_column(w[:, j].float(), scale, zero)
        codes[:, j] = q
        err = (w[:, j] - dq.double()) / hinv[j, j]
        w[:, j + 1:] -= err[:, None] * hinv[j, j + 1:][None, :]
        hinv[j + 1:, j + 1:] -= torch.outer(hinv[j + 1:, j], hinv[j, j + 1:]) / hinv[j, j]
    return codes[:, torch.argsort(perm)]


def output_error(weight: torch.Tensor, dequant: torch.Tensor, hessian: torch.Tensor) -> float:
    diff = (weight - dequant).double()
    return float(torch.einsum("nk,kl,nl->", diff, hessian.double(), diff))


def self_test() -> None:
    """GPTQ against the unblocked float64 reference, against round-to-nearest, packing round trips through
    tools/fixtures_gptq.py, and the perplexity windows; raises AssertionError on any failure."""
    fixtures_gptq.self_test()
    gen = torch.Generator().manual_seed(7)
    n, k = 48, 192
    mix = torch.randn(k, k, generator=gen) / math.sqrt(k) + 0.5 * torch.eye(k)
    col_scale = torch.exp(torch.randn(k, generator=gen))
    x = (torch.randn(2048, k, generator=gen) @ mix) * col_scale
    h = 2.0 * x.T @ x / x.shape[0]
    w = torch.randn(n, k, generator=gen) * 0.05
    for gs, sym, desc_act, block in ((64, True, True, 128), (96, False, True, 128), (-1, True, False, 64),
                                     (32, False, False, 48), (64, False, True, 40)):
        what = f"gs {gs} sym {sym} desc_act {desc_act} block {block}"
        res = gptq(w, h, gs, sym, desc_act, 0.01, block)
        ref = reference_gptq(w, h, gs, sym, desc_act, 0.01)
        same = float((res["codes"] == ref).double().mean())
        assert same >= 0.998, f"{what}: only {same:.4f} of the codes match the unblocked reference"
        rtn = gptq(w, torch.eye(k), gs, sym, False, 0.01, block)
        e_gptq, e_rtn = output_error(w, res["dequant"], h), output_error(w, rtn["dequant"], h)
        assert e_gptq < 0.8 * e_rtn, f"{what}: GPTQ output error {e_gptq:.4g} not below 0.8 x RTN's {e_rtn:.4g}"
        packed = gptq_tensors(res)
        deq = fixtures_gptq.dequantize(packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"], "gptq")
        want = res["dequant"].numpy().T.astype(np.float16)
        assert np.array_equal(deq.view(np.uint16), want.view(np.uint16)), f"{what}: packed tensors dequantize wrong"
        assert np.array_equal(fixtures_gptq.unpack_rows(packed["qweight"]), res["codes"].numpy().T), what
        g_eff = k if gs == -1 else gs
        perm = torch.argsort(torch.diag(h), descending=True, stable=True) if desc_act else torch.arange(k)
        expect_g = np.empty(k, dtype=np.int32)
        expect_g[perm.numpy()] = np.arange(k) // g_eff
        assert np.array_equal(packed["g_idx"], expect_g), f"{what}: g_idx does not follow R2.15"
        zeros = res["zeros"].numpy()
        assert (zeros == 8).all() if sym else (zeros.min() >= 1 and zeros.max() <= MAXQ), f"{what}: zeros"
    # With H = I the error propagation vanishes and GPTQ is plain round-to-nearest per group.
    res = gptq(w, torch.eye(k), 64, True, False, 0.01, 128)
    for g in range(k // 64):
        scale, zero = group_params(w[:, g * 64:(g + 1) * 64], True)
        for c in range(g * 64, (g + 1) * 64):
            assert torch.equal(res["codes"][:, c], quantize_column(w[:, c], scale, zero)[0]), "H = I: RTN"
    # An asym group with no negative weight cannot use z = 0 in v1: it gets z = 1 and still reaches its max.
    scale, zero = group_params(torch.tensor([[0.0, 0.5, 1.4]]), False)
    assert int(zero[0]) == 1 and abs(float(scale[0]) * (MAXQ - 1) - 1.4) < 1e-3, "asym z = 0 fallback"
    # Perplexity windows partition t[1..T-1] (core/model/perplexity.cpp's layout), later ones keep >= 254 tokens of
    # context; the window count matches the C++ tool's formula.
    for count in (2, 300, 511, 512, 1000, 38443):
        win = tl.ppl_windows(count)
        assert win[0, 0] == 0 and win[0, 1] == 1 and win[-1, 2] == count, f"windows for {count} tokens"
        assert len(win) == 1 + sum(1 for b in range(0, count, tl.PPL_STRIDE) if b + tl.PPL_WINDOW - 1 < count)
        assert (win[1:, 1] == win[:-1, 2]).all() and (win[:, 2] - win[:, 0] <= tl.PPL_WINDOW - 1).all()
        assert (win[1:, 1] - win[1:, 0] >= tl.PPL_WINDOW - 1 - tl.PPL_STRIDE).all()
    check_windowed_nll()


def check_windowed_nll() -> None:
    """windowed_nll of a tiny random model against transformers' own loss, one window at a time."""
    config = tl.model_config(300, 64, 128, 2, 2, 1, 32, 64, tie_word_embeddings=True)
    torch.manual_seed(3)
    model = tl.build_model(config, "eager").eval()
    tokens = np.random.default_rng(5).integers(3, 300, size=200).astype(np.int32)
    windows, nll = tl.windowed_nll(model, tokens, "cpu", window=48, stride=16, batch=3)
    assert len(windows) == len(tl.ppl_windows(200, 48, 16))
    with torch.no_grad():
        for (begin, score_begin, end), value in zip(windows, nll):
            ids = torch.tensor([[tl.BOS_ID] + tokens[begin:end].tolist()])
            # labels -100 mask the tokens this window does not score; HF shifts labels by one internally.
            labels = ids.clone()
            labels[0, :1 + score_begin - begin] = -100
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
            expected = float(loss) * (end - score_begin)
            assert abs(expected - value) < 1e-4 * max(1.0, abs(value)), f"window {begin}: {value} vs {expected}"


# ---------------------------------------------------------------------------------------------------------------
# Evaluation, goldens, samples
# ---------------------------------------------------------------------------------------------------------------



def write_golden(path: Path, tokens: np.ndarray, windows: np.ndarray, evals: dict[str, dict], meta: dict) -> None:
    """tests/data/perplexity/golden.h5; attributes are variable-length UTF-8 strings (numbers in Python repr) so
    that the C++ Hdf5File reader, which reads string attributes, sees them too."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    string = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        for key, value in meta.items():
            f.attrs.create(key, str(value), dtype=string)
        f.create_dataset("tokens", data=tokens.astype(np.int32), compression="gzip", compression_opts=9, shuffle=True)
        f.create_dataset("windows", data=windows.astype(np.int32))
        for name, ev in evals.items():
            g = f.create_group(name)
            g.create_dataset("ppl", data=np.float64(ev["ppl"]))
            g.create_dataset("nll_sum", data=np.float64(ev["nll_sum"]))
            g.create_dataset("nll_per_window", data=ev["nll_per_window"].astype(np.float64))
            for key in ("ppl", "nll_sum", "token_count", "scored_count", "weights", "compute"):
                g.attrs.create(key, str(ev[key]), dtype=string)


def evaluate(model, tokens: np.ndarray, device: str, weights: str) -> dict:
    windows, nll = tl.windowed_nll(model, tokens, device)
    nll_sum = float(nll.sum())
    scored = len(tokens) - 1
    return {"windows": windows, "nll_per_window": nll, "nll_sum": nll_sum, "token_count": len(tokens),
            "scored_count": scored, "ppl": math.exp(nll_sum / scored), "weights": weights,
            "compute": "float32, transformers LlamaForCausalLM eager attention, TF32 off"}


def main(argv: list[str]) -> int:
    import safetensors.numpy
    import sentencepiece as spm
    import transformers

    args = parse_args(argv)
    start = time.time()
    self_test()
    print(f"self-test passed ({time.time() - start:.1f} s)", flush=True)
    if args.self_test_only:
        return 0
    if args.nsamples % args.calib_batch != 0:
        raise ValueError(f"--nsamples {args.nsamples} must be a multiple of --calib-batch {args.calib_batch}")
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    config, fp16 = tl.load_fp16_checkpoint(args.model)
    tokenizer_path = args.model / "tokenizer.model"
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    context = config["max_position_embeddings"]

    fp16_model = tl.build_model(config, "eager")
    tl.load_state(fp16_model, fp16, str(args.model))
    fp16_model.to(args.device).eval()

    train = tl.encode_documents(sp, corpus.read_documents(args.corpus / "train.jsonl"))
    valid = tl.encode_documents(sp, corpus.read_documents(args.corpus / "validation.jsonl"))
    heldout_bytes = (args.corpus / "heldout.txt").read_bytes()
    heldout = np.asarray(sp.encode(heldout_bytes.decode("utf-8")), dtype=np.int32)
    rows = calibration_rows(train, args.nsamples, context, args.seed)
    print(f"calibration: {args.nsamples} rows x {context} tokens from the train split; group size "
          f"{args.group_size}, desc_act {args.desc_act}, sym {args.sym}, damp {args.damp_percent}", flush=True)

    qmodel = tl.build_model(config, "eager")
    tl.load_state(qmodel, fp16, str(args.model))
    qmodel.to(args.device).eval()
    start = time.time()
    results, qlog = quantize_model(qmodel, rows, args)
    quant_seconds = time.time() - start
    print(f"quantized {len(results)} linears in {quant_seconds:.1f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    qcfg = quantize_config(args)
    tl.write_json(args.out / "config.json", {**config, "quantization_config": qcfg})
    tl.write_json(args.out / "quantize_config.json", qcfg)
    shutil.copyfile(tokenizer_path, args.out / "tokenizer.model")
    safetensors.numpy.save_file(checkpoint_tensors(config, fp16, results), str(args.out / "model.safetensors"),
                                metadata={"format": "pt"})

    # From here on the 4-bit model is the one read back from the files.
    state = validate_files(args.out, config, results, args)
    deq_model = tl.build_model(config, "eager")
    tl.load_state(deq_model, state, str(args.out))
    deq_model.to(args.device).eval()
    del qmodel

    losses = {}
    for name, m in (("fp16", fp16_model), ("gptq", deq_model)):
        losses[name] = {"validation": tl.mean_chunk_loss(m, valid, context, args.device),
                        "heldout": tl.mean_chunk_loss(m, heldout, context, args.device)}
    evals = {"fp16": evaluate(fp16_model, heldout, args.device, "fp16 checkpoint weights (rounded), as float32"),
             "gptq": evaluate(deq_model, heldout, args.device,
                              "dequantized GPTQ weights fp16(scale * (q - z)) from model.safetensors, as float32")}
    ratio = evals["gptq"]["ppl"] / evals["fp16"]["ppl"]
    for name in ("fp16", "gptq"):
        print(f"{name}: validation loss {losses[name]['validation']:.4f}, held-out loss "
              f"{losses[name]['heldout']:.4f}; windowed held-out ppl {evals[name]['ppl']:.4f} "
              f"(nll_sum {evals[name]['nll_sum']:.4f} over {len(heldout) - 1} scored tokens)", flush=True)
    print(f"4-bit / fp16 perplexity ratio {ratio:.4f}", flush=True)

    if args.golden:
        meta = {"window": tl.PPL_WINDOW, "stride": tl.PPL_STRIDE, "add_bos": "true", "bos_id": tl.BOS_ID,
                "token_count": len(heldout), "scored_count": len(heldout) - 1,
                "window_count": len(evals["gptq"]["windows"]),
                "protocol": "Perplexity protocol " + " ".join(tl.__doc__.split("Perplexity protocol ")[1].split()),
                "text_file": "tests/data/perplexity/heldout.txt",
                "text_sha256": hashlib.sha256(heldout_bytes).hexdigest(),
                "tokenizer_sha256": hashlib.sha256(tokenizer_path.read_bytes()).hexdigest(),
                "model": "models/tiny-llama", "generator": "tools/gptq_quantize.py",
                "transformers_version": transformers.__version__, "torch_version": torch.__version__,
                "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
        write_golden(args.golden, heldout, evals["gptq"]["windows"], evals, meta)
        print(f"wrote {args.golden}", flush=True)

    demo = tl.samples(deq_model, sp, args.device)
    for s in demo:
        print(f"4-bit sample [{s['prompt']}] greedy: {s['greedy']!r}\n       sampled: {s['sampled_t0.8_p0.95']!r}")
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        tl.write_json(args.log, {
            "quantize_config": qcfg, "nsamples": args.nsamples, "seed": args.seed, "seconds": quant_seconds,
            "linears": qlog, "losses": losses, "ppl": {k: v["ppl"] for k, v in evals.items()},
            "nll_sum": {k: v["nll_sum"] for k, v in evals.items()}, "ppl_ratio": ratio, "samples": demo,
            "model_bytes": (args.out / "model.safetensors").stat().st_size})
    if not ratio < MAX_PPL_RATIO:
        raise RuntimeError(f"dequantized model perplexity {evals['gptq']['ppl']:.3f} is more than "
                           f"{MAX_PPL_RATIO} x the fp16 model's {evals['fp16']['ppl']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
