"""GPTQ 4-bit packing, unpacking and dequantization in numpy, written from formats.md §2.

Orientation everywhere is the GPTQ one: a linear layer maps x[T, K] to y[T, N] with W[K, N], the transpose of
nn.Linear.weight. Packed words are int32 in the files and are treated as uint32 here (logical shifts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BITS = 4
PACK = 32 // BITS  # codes per 32-bit word
MASK = (1 << BITS) - 1


def effective_group_size(group_size: int, k: int) -> int:
    """group_size -1 means one group spanning all K input rows (R2.1)."""
    return k if group_size == -1 else group_size


def num_groups(group_size: int, k: int) -> int:
    gs = effective_group_size(group_size, k)
    return -(-k // gs)


def pack_rows(codes: np.ndarray) -> np.ndarray:
    """Packs codes[K, N] (0..15) along K into qweight int32 [K/8, N]; row 8r goes to bits 0-3 of word r (R2.4)."""
    k, n = codes.shape
    if k % PACK != 0:
        raise ValueError(f"pack_rows: K={k} is not a multiple of {PACK}")
    if codes.min() < 0 or codes.max() > MASK:
        raise ValueError(f"pack_rows: codes must lie in 0..{MASK}, got {codes.min()}..{codes.max()}")
    blocks = codes.astype(np.uint32).reshape(k // PACK, PACK, n)
    words = np.zeros((k // PACK, n), dtype=np.uint32)
    for i in range(PACK):
        words |= blocks[:, i, :] << np.uint32(BITS * i)
    return words.view(np.int32)


def pack_cols(codes: np.ndarray) -> np.ndarray:
    """Packs codes[G, N] (0..15) along N into qzeros int32 [G, N/8]; column 8c goes to bits 0-3 (R2.5)."""
    g, n = codes.shape
    if n % PACK != 0:
        raise ValueError(f"pack_cols: N={n} is not a multiple of {PACK}")
    if codes.min() < 0 or codes.max() > MASK:
        raise ValueError(f"pack_cols: codes must lie in 0..{MASK}, got {codes.min()}..{codes.max()}")
    blocks = codes.astype(np.uint32).reshape(g, n // PACK, PACK)
    words = np.zeros((g, n // PACK), dtype=np.uint32)
    for i in range(PACK):
        words |= blocks[:, :, i] << np.uint32(BITS * i)
    return words.view(np.int32)


def unpack_rows(qweight: np.ndarray) -> np.ndarray:
    """Inverse of pack_rows, written element-wise from the R2.4 formula: q[k][n] = (qw[k/8][n] >> 4(k%8)) & 15."""
    words = qweight.view(np.uint32)
    k = words.shape[0] * PACK
    rows = np.arange(k)
    shifts = (BITS * (rows % PACK)).astype(np.uint32)[:, None]
    return ((words[rows // PACK, :] >> shifts) & np.uint32(MASK)).astype(np.int32)


def unpack_cols(qzeros: np.ndarray) -> np.ndarray:
    """Inverse of pack_cols from R2.5: zs[g][n] = (qz[g][n/8] >> 4(n%8)) & 15."""
    words = qzeros.view(np.uint32)
    n = words.shape[1] * PACK
    cols = np.arange(n)
    shifts = (BITS * (cols % PACK)).astype(np.uint32)[None, :]
    return ((words[:, cols // PACK] >> shifts) & np.uint32(MASK)).astype(np.int32)


def dequantize(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, g_idx: np.ndarray,
               checkpoint_format: str) -> np.ndarray:
    """Returns W[K, N] as float16 exactly as R2.10/R2.11: W = fp16(scale * (q - z)), z = zs + 1 (v1) or zs (v2).

    The float32 product of an fp16 scale and an integer in [-16, 15] is exact, so one cast to fp16 is the single
    rounding that the GPU kernels perform.
    """
    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise ValueError(f"dequantize: unknown checkpoint_format '{checkpoint_format}'")
    q = unpack_rows(qweight)
    zs = unpack_cols(qzeros)
    k, n = q.shape
    g = scales.shape[0]
    if qzeros.shape[0] != g or zs.shape[1] != n or scales.shape[1] != n or g_idx.shape != (k,):
        raise ValueError(f"dequantize: inconsistent shapes qweight {qweight.shape} qzeros {qzeros.shape} "
                         f"scales {scales.shape} g_idx {g_idx.shape}")
    if g_idx.min() < 0 or g_idx.max() >= g:
        raise ValueError(f"dequantize: g_idx values {g_idx.min()}..{g_idx.max()} outside 0..{g - 1}")
    if checkpoint_format == "gptq":
        if (zs == MASK).any():
            raise ValueError("dequantize: v1 zero nibble 0xF (z = 0) is ambiguous between readers (R2.12)")
        z = zs + 1
    else:
        z = zs
    rows_scale = scales[g_idx, :].astype(np.float32)
    rows_zero = z[g_idx, :]
    return (rows_scale * (q - rows_zero).astype(np.float32)).astype(np.float16)


@dataclass
class QuantLinear:
    """One GPTQ linear layer as stored in the checkpoint plus the codes it was built from."""

    qweight: np.ndarray  # int32 [K/8, N]
    qzeros: np.ndarray  # int32 [G, N/8]
    scales: np.ndarray  # float16 [G, N]
    g_idx: np.ndarray  # int32 [K]
    codes: np.ndarray  # int32 [K, N], 0..15
    zeros: np.ndarray  # int32 [G, N], the mathematical zero point z


def make_g_idx(k: int, group_size: int, perm: np.ndarray | None) -> np.ndarray:
    """Sequential k // gs (R2.14), or act-order g_idx[perm[j]] = j // gs for a permutation of 0..K-1 (R2.15)."""
    gs = effective_group_size(group_size, k)
    if perm is None:
        return (np.arange(k) // gs).astype(np.int32)
    if sorted(perm.tolist()) != list(range(k)):
        raise ValueError(f"make_g_idx: perm is not a permutation of 0..{k - 1}")
    g_idx = np.empty(k, dtype=np.int32)
    g_idx[perm] = np.arange(k) // gs
    return g_idx


def make_quant_linear(rng: np.random.Generator, k: int, n: int, group_size: int, sym: bool,
                      checkpoint_format: str, perm: np.ndarray | None, scale_base: float) -> QuantLinear:
    """Random but realistic GPTQ tensors: uniform codes, positive scales around scale_base/sqrt(K), zero points
    8 (sym) or random per group and column (asym: 1..15 for v1 since z = 0 is refused, 0..15 for v2)."""
    if k % 32 != 0 or n % 32 != 0:
        raise ValueError(f"make_quant_linear: K={k} and N={n} must be multiples of 32")
    g = num_groups(group_size, k)
    codes = rng.integers(0, MASK + 1, size=(k, n), dtype=np.int32)
    scales = (scale_base / np.sqrt(k) * rng.uniform(0.5, 1.5, size=(g, n))).astype(np.float16)
    if sym:
        zeros = np.full((g, n), (MASK + 1) // 2, dtype=np.int32)
    else:
        low = 1 if checkpoint_format == "gptq" else 0
        zeros = rng.integers(low, MASK + 1, size=(g, n), dtype=np.int32)
    stored = zeros - 1 if checkpoint_format == "gptq" else zeros
    return QuantLinear(qweight=pack_rows(codes), qzeros=pack_cols(stored), scales=scales,
                       g_idx=make_g_idx(k, group_size, perm), codes=codes, zeros=zeros)


def self_test() -> None:
    """The formats.md §2.3 test vectors plus a round trip; raises AssertionError on any mismatch."""
    word = np.array([[0x76543210]], dtype=np.uint32).view(np.int32)
    assert unpack_rows(word)[:, 0].tolist() == list(range(8)), "R2.4 test vector 0x76543210"
    zword = np.array([[2004318071]], dtype=np.int32)
    assert unpack_cols(zword)[0].tolist() == [7] * 8, "R2.5 test vector 0x77777777"
    rng = np.random.default_rng(1234)
    codes = rng.integers(0, 16, size=(64, 32), dtype=np.int32)
    assert np.array_equal(unpack_rows(pack_rows(codes)), codes), "pack_rows round trip"
    assert np.array_equal(unpack_cols(pack_cols(codes)), codes), "pack_cols round trip"
    assert pack_cols(np.full((1, 8), 7, dtype=np.int32))[0, 0] == 2004318071, "sym v1 qzeros word"
    perm = rng.permutation(64)
    g_idx = make_g_idx(64, 16, perm)
    assert np.bincount(g_idx).tolist() == [16] * 4 and g_idx[perm[17]] == 1, "act-order g_idx"
    scales = np.array([[0.5] * 8], dtype=np.float16)
    qw = pack_rows(np.tile(np.arange(8, dtype=np.int32)[:, None], (1, 8)))
    w1 = dequantize(qw, pack_cols(np.full((1, 8), 7, dtype=np.int32)), scales, np.zeros(8, np.int32), "gptq")
    w2 = dequantize(qw, pack_cols(np.full((1, 8), 8, dtype=np.int32)), scales, np.zeros(8, np.int32), "gptq_v2")
    expected = 0.5 * (np.arange(8) - 8.0)
    assert np.array_equal(w1[:, 0].astype(np.float64), expected), "v1 sym dequant"
    assert np.array_equal(w2[:, 0].astype(np.float64), expected), "v2 sym dequant"
