"""Shared pieces of train_tiny_llama.py and gptq_quantize.py: the config.json layout, checkpoint I/O, token
streams, and the windowed perplexity protocol of tests/data/perplexity/golden.h5.

Perplexity protocol (PPL_WINDOW, PPL_STRIDE, BOS prepended; the same as core/model/perplexity.h with add_bos, i.e.
`q4tp-perplexity --window 512 --stride 256 --add-bos`): the held-out text is encoded as ONE string without BOS,
giving T tokens t[0..T-1]. Window w covers text tokens [b, e) with b = w * stride and e = min(b + window - 1, T); the
model input is [BOS] + t[b:e], so every window has at most `window` positions (BOS included) and starts at position
0. BOS is context only. Window w scores the tokens t[s..e-1] with s = the previous window's e, and s = 1 for the
first window (it scores all but its first text token): each of t[1..T-1] is scored exactly once, and every later
window scores `stride` new tokens (fewer in the last one) with at least window - 1 - stride tokens of left context.
Windows stop once e == T. nll_sum = sum of -ln p(t[j] | window context) over j = 1..T-1; ppl = exp(nll_sum / (T-1)).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

BOS_ID = 1
EOS_ID = 2
PPL_WINDOW = 512
PPL_STRIDE = 256

PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def model_config(vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
                 num_attention_heads: int, num_key_value_heads: int, head_dim: int, context: int,
                 tie_word_embeddings: bool) -> dict:
    """config.json of the fp16 LlamaForCausalLM, written as transformers 4.x does (rope_theta, rope_scaling,
    torch_dtype) like the test fixtures, so that both the C++ loader and transformers 5 read it."""
    import transformers

    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float16",
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads, "head_dim": head_dim, "hidden_act": "silu",
        "max_position_embeddings": context, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
        "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "tie_word_embeddings": tie_word_embeddings,
        "initializer_range": 0.02, "pretraining_tp": 1, "attention_bias": False, "attention_dropout": 0.0,
        "mlp_bias": False, "use_cache": True, "transformers_version": transformers.__version__,
    }


def build_model(config: dict, attn_implementation: str):
    """An untrained float32 LlamaForCausalLM for config (quantization_config, if any, is ignored)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig.from_dict({k: v for k, v in config.items() if k != "quantization_config"},
                               attn_implementation=attn_implementation)
    return LlamaForCausalLM(hf).float()


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise RuntimeError(f"{path}: not found")
    return json.loads(path.read_text(encoding="utf-8"))


def load_state(model, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Loads float tensors into model (as float32); every parameter must be covered, nothing may be left over.
    lm_head.weight may be absent when the embeddings are tied."""
    tied = bool(model.config.tie_word_embeddings)
    state = {k: v.float() for k, v in tensors.items()}
    result = model.load_state_dict(state, strict=False)
    missing = {k for k in result.missing_keys if "rotary_emb" not in k} - ({"lm_head.weight"} if tied else set())
    unexpected = [k for k in result.unexpected_keys if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"{where}: state dict mismatch, missing {sorted(missing)} unexpected {unexpected}")
    if tied and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        model.tie_weights()
    if tied and not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight):
        raise RuntimeError(f"{where}: tie_word_embeddings is set but lm_head differs from embed_tokens")


def load_fp16_checkpoint(model_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, fp16 tensors) of the checkpoint written by train_tiny_llama.py."""
    import safetensors.torch

    config = read_json(model_dir / "config.json")
    path = model_dir / "model.safetensors"
    if not path.is_file():
        raise RuntimeError(f"{path}: not found")
    tensors = safetensors.torch.load_file(str(path))
    bad = [k for k, v in tensors.items() if v.dtype != torch.float16]
    if bad:
        raise RuntimeError(f"{path}: tensors {bad[:3]} are not F16")
    return config, tensors


def encode_documents(sp, docs: list[dict]) -> np.ndarray:
    """One int32 token stream: each document's ids followed by EOS (no BOS; windows get BOS at training time)."""
    out: list[int] = []
    for d in docs:
        out.extend(sp.encode(d["text"]))
        out.append(EOS_ID)
    return np.asarray(out, dtype=np.int32)


def bos_chunks(stream: np.ndarray, context: int, offset: int = 0) -> np.ndarray:
    """Non-overlapping rows [BOS] + stream[o : o + context - 1] starting at offset; int64 [n, context]."""
    body = context - 1
    n = (len(stream) - offset) // body
    if n <= 0:
        raise RuntimeError(f"token stream of {len(stream)} tokens is shorter than one window of {body}")
    rows = stream[offset: offset + n * body].reshape(n, body).astype(np.int64)
    return np.concatenate([np.full((n, 1), BOS_ID, dtype=np.int64), rows], axis=1)


@torch.no_grad()
def mean_chunk_loss(model, stream: np.ndarray, context: int, device: str, batch: int = 32,
                    max_chunks: int | None = None) -> float:
    """Mean next-token NLL (nats) over non-overlapping BOS-prefixed chunks of the stream (the BOS is never a
    target). A quick figure for training logs; the goldens use windowed_nll."""
    chunks = bos_chunks(stream, context)
    if max_chunks is not None:
        chunks = chunks[:max_chunks]
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch):
        ids = torch.from_numpy(chunks[i:i + batch]).to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        total += float(nll.double().sum())
        count += nll.numel()
    return total / count


def ppl_windows(num_tokens: int, window: int = PPL_WINDOW, stride: int = PPL_STRIDE) -> np.ndarray:
    """int64 [W, 3] rows (begin, score_begin, end) of the protocol in the module docstring."""
    if num_tokens < 2 or stride <= 0 or stride > window - 1:
        raise ValueError(f"ppl_windows: need tokens >= 2 and 0 < stride <= window - 1, got {num_tokens}, "
                         f"{stride}, {window}")
    rows = []
    prev_end = 1  # the first text token is never scored
    begin = 0
    while True:
        end = min(begin + window - 1, num_tokens)
        rows.append((begin, prev_end, end))
        if end == num_tokens:
            break
        prev_end = end
        begin += stride
    return np.asarray(rows, dtype=np.int64)


@torch.no_grad()
def windowed_nll(model, tokens: np.ndarray, device: str, window: int = PPL_WINDOW, stride: int = PPL_STRIDE,
                 batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(windows int64 [W, 3], nll_per_window float64 [W]) for the protocol in the module docstring; the scored
    token count is len(tokens) - 1."""
    windows = ppl_windows(len(tokens), window, stride)
    nll = np.zeros(len(windows), dtype=np.float64)
    # Consecutive windows of equal length are batched; only the last one or few can be shorter.
    i = 0
    while i < len(windows):
        length = windows[i, 2] - windows[i, 0]
        j = i
        while j < len(windows) and j - i < batch and windows[j, 2] - windows[j, 0] == length:
            j += 1
        rows = [np.concatenate([[BOS_ID], tokens[windows[w, 0]:windows[w, 2]]]) for w in range(i, j)]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64)).to(device)
        logits = model(input_ids=ids, use_cache=False).logits.double()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        token_nll = (-logp.gather(-1, ids[:, 1:, None]).squeeze(-1)).cpu().numpy()
        for r, w in enumerate(range(i, j)):
            begin, score_begin, end = windows[w]
            # Input position p + 1 holds t[begin + p]; its NLL sits at token_nll[r, p].
            nll[w] = token_nll[r, score_begin - begin:end - begin].sum()
        i = j
    return windows, nll


# Prompts whose continuations the training and quantization tools print as a readability check.
SAMPLE_PROMPTS = ("The tutorial", "A list is", "In Python, a function", "The logging module")


@torch.no_grad()
def samples(model, sp, device: str) -> list[dict]:
    """Greedy and seeded top-p continuations of a few prompts (with BOS, as HF encodes)."""
    out = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        ids = torch.tensor([[BOS_ID] + sp.encode(prompt)], device=device)
        greedy = model.generate(ids, max_new_tokens=48, do_sample=False, pad_token_id=EOS_ID)
        torch.manual_seed(1000 + i)
        sampled = model.generate(ids, max_new_tokens=48, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
                                 pad_token_id=EOS_ID)
        out.append({"prompt": prompt, "greedy": sp.decode(greedy[0, ids.shape[1]:].tolist()),
                    "sampled_t0.8_p0.95": sp.decode(sampled[0, ids.shape[1]:].tolist())})
    return out
