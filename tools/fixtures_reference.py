"""An independent float64 numpy Llama forward written from formats.md §4, used only to cross-check that the
Hugging Face model in make_fixtures.py was built and loaded the way the C++ engine will read the files (weight
orientation, RoPE pairing and scaling, GQA head mapping). It is deliberately simple and slow."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def rope_inv_freq(head_dim: int, theta: float, rope_scaling: dict | None) -> np.ndarray:
    """inv_freq[i] = theta^(-2i/d) (R4.4) with linear (R4.8) or llama3 (R4.10) scaling; both type keys (R4.7)."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if not rope_scaling:
        return inv
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind == "linear":
        return inv / float(rope_scaling["factor"])
    if kind == "llama3":
        factor = float(rope_scaling["factor"])
        low_ff = float(rope_scaling["low_freq_factor"])
        high_ff = float(rope_scaling["high_freq_factor"])
        old = float(rope_scaling["original_max_position_embeddings"])
        low_wl, high_wl = old / low_ff, old / high_ff
        out = np.empty_like(inv)
        for i, f in enumerate(inv):
            wl = 2.0 * math.pi / f
            if wl < high_wl:
                out[i] = f
            elif wl > low_wl:
                out[i] = f / factor
            else:
                s = (old / wl - low_ff) / (high_ff - low_ff)
                out[i] = (1.0 - s) * f / factor + s * f
        return out
    raise ValueError(f"rope_inv_freq: unsupported rope type '{kind}'")


@dataclass
class RefLayer:
    """Dense float weights of one decoder layer, GPTQ orientation W[K, N]."""

    input_norm: np.ndarray
    post_norm: np.ndarray
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    o: np.ndarray
    gate: np.ndarray
    up: np.ndarray
    down: np.ndarray


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rope(x: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """x[T, heads, d]; rotates pairs (i, i + d/2) (rotate_half convention, R4.4)."""
    t = x.shape[0]
    ang = np.arange(t, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([ang, ang], axis=-1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], axis=-1))[:, None, :]
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def reference_logits(ids: np.ndarray, embed: np.ndarray, layers: list[RefLayer], final_norm: np.ndarray,
                     lm_head: np.ndarray, n_heads: int, n_kv_heads: int, eps: float,
                     inv_freq: np.ndarray) -> np.ndarray:
    """Returns logits[T, V] in float64 for one causal sequence starting at position 0."""
    x = embed[ids].astype(np.float64)
    t = x.shape[0]
    head_dim = layers[0].q.shape[1] // n_heads
    group = n_heads // n_kv_heads
    mask = np.triu(np.full((t, t), -np.inf), k=1)
    for layer in layers:
        u = _rms_norm(x, layer.input_norm, eps)
        q = _rope((u @ layer.q).reshape(t, n_heads, head_dim), inv_freq)
        k = _rope((u @ layer.k).reshape(t, n_kv_heads, head_dim), inv_freq)
        v = (u @ layer.v).reshape(t, n_kv_heads, head_dim)
        heads = []
        for h in range(n_heads):
            kv = h // group  # repeat_kv expands each kv head to `group` consecutive query heads (R4.3)
            scores = q[:, h, :] @ k[:, kv, :].T / math.sqrt(head_dim) + mask
            p = np.exp(scores - scores.max(axis=-1, keepdims=True))
            heads.append((p / p.sum(axis=-1, keepdims=True)) @ v[:, kv, :])
        x = x + np.concatenate(heads, axis=-1) @ layer.o
        u = _rms_norm(x, layer.post_norm, eps)
        g = u @ layer.gate
        x = x + (g / (1.0 + np.exp(-g)) * (u @ layer.up)) @ layer.down
    return _rms_norm(x, final_norm, eps) @ lm_head.T
