"""Torch building blocks shared by the bit-exact kernels (``physics_step``, ``flocking``,
``raytrace``): backend choice, exact division, ordered sums, the grid broad phase.

Nothing here imports torch at module import time.

**Why torch can match numpy bit for bit.** The kernels use only IEEE-754 operations that
are correctly rounded on every conforming device (``+ - * /``, ``sqrt``, comparisons,
``min``/``max``, selects) in float64, in the same order as the numpy code, and never a
reduction whose order torch may choose. Four traps are avoided on purpose:

- ``torch.sqrt`` on CPU is vectorised with a 0.5-ULP-ish SIMD routine that is not always
  correctly rounded (measured: ~0.75 % of float64 results off by one ULP with AVX-512),
  so on CPU ``sqrt`` runs numpy's (hardware, correctly rounded) square root on the shared
  buffer; CUDA's double ``sqrt`` is IEEE-correct;

- ``tensor / python_scalar`` on CUDA is computed as ``tensor * (1 / scalar)`` (one more
  rounding): ``div`` divides by a 0-d tensor on the device instead;
- ``python_scalar / tensor`` is ``tensor.reciprocal() * scalar`` in torch: ``rdiv`` uses
  a true division;
- ``np.bincount(idx, weights)`` adds each bin's weights sequentially in input order; on
  CPU ``torch.bincount`` does the same loop, while on CUDA it uses atomics (any order), so
  ``OrderedSum`` adds rank by rank instead (rank = position of an entry among the entries
  of its bin, in input order), which is the same sequence of roundings.

``pow``, ``exp`` and other transcendental functions are not correctly rounded and stay on
the host in numpy (the gamma curve of ``raytrace``'s ``rgb8``), as does the splitmix64
jitter (torch has no unsigned 64-bit arithmetic).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from tasks.kernels._common import torch_device, torch_module

Tensor = Any
#: Above this many entries in one bin, the rank-by-rank sum would take too many passes:
#: that one sum is done on the host with the sequential loop instead (same result).
MAX_RANK_PASSES = 64


def pick_backend(backend: str, cpu_default: str, device: str | None = None) -> tuple[str, str]:
    """``(implementation, device)`` for a kernel call.

    ``backend``: ``"auto"`` (torch on CUDA when torch sees a GPU, else ``cpu_default``),
    ``"numpy"`` or ``"torch"`` (on ``device``, by default CUDA when present, else CPU).
    """
    if backend == "numpy":
        return "numpy", "cpu"
    if backend == "torch":
        return "torch", device or torch_device()
    if backend == "auto":
        if device is not None:
            return ("torch", device) if device != "cpu" else (cpu_default, "cpu")
        if torch_device() == "cuda":
            return "torch", "cuda"
        return cpu_default, "cpu"
    raise ValueError(f"unknown backend {backend!r} (known: auto, numpy, torch)")


def div(a: Tensor, b: float) -> Tensor:
    """``a / b`` correctly rounded on every device (no reciprocal multiply on CUDA)."""
    torch = torch_module()
    return a / torch.tensor(b, dtype=a.dtype, device=a.device)


def sqrt(x: Tensor) -> Tensor:
    """Correctly rounded square root (numpy's on CPU, zero-copy; torch's on CUDA)."""
    torch = torch_module()
    if x.device.type == "cpu":
        return torch.from_numpy(np.sqrt(x.contiguous().numpy()))
    return torch.sqrt(x)


def rdiv(a: float, b: Tensor) -> Tensor:
    """``a / b`` for a Python float ``a``: a true division, like numpy's."""
    torch = torch_module()
    return torch.tensor(a, dtype=b.dtype, device=b.device).div(b)


class OrderedSum:
    """``np.bincount(idx, weights, minlength=n)`` bit for bit, for one index array.

    On CPU (``ranked=False``) it is ``torch.bincount``, a sequential loop in input order
    like numpy's. With ``ranked=True`` (the CUDA path; tests run it on CPU too), entries are
    grouped by their rank within their bin and added pass by pass: pass ``k`` adds every
    bin's ``k``-th entry, so each bin sees ``((0 + w0) + w1) + ...`` as numpy does, and no
    two writes of a pass hit the same bin.
    """

    def __init__(self, idx: Tensor, n: int, *, ranked: bool) -> None:
        torch = torch_module()
        self.idx = idx
        self.n = n
        self.passes: list[tuple[Tensor, Tensor]] | None = None
        if not ranked or idx.numel() == 0:
            return
        order = torch.argsort(idx, stable=True)
        s = idx[order]
        counts = torch.bincount(idx, minlength=n)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(idx.numel(), device=idx.device) - starts[s]
        most = int(counts.max())
        if most > MAX_RANK_PASSES:
            self.idx = idx.cpu()
            return
        self.passes = []
        for k in range(most):
            sel = rank == k
            self.passes.append((s[sel], order[sel]))

    def __call__(self, w: Tensor) -> Tensor:
        torch = torch_module()
        if self.passes is None:
            out = torch.bincount(self.idx, weights=w.to(self.idx.device), minlength=self.n)
            return out.to(w.device)
        out = torch.zeros(self.n, dtype=w.dtype, device=w.device)
        for bins, src in self.passes:
            out[bins] = out[bins] + w[src]
        return out


def ordered_sum(idx: Tensor, w: Tensor, n: int, *, ranked: bool) -> Tensor:
    return OrderedSum(idx, n, ranked=ranked)(w)


def _forward_offsets(dims: int) -> list[tuple[int, ...]]:
    return [o for o in itertools.product((-1, 0, 1), repeat=dims) if o > (0,) * dims]


def candidate_pairs(pos: Tensor, cell: float) -> tuple[Tensor, Tensor]:
    """``tasks.kernels._grid.candidate_pairs`` on torch: the same pairs in the same order."""
    torch = torch_module()
    n, dims = pos.shape
    dev = pos.device
    if n < 2:
        empty = torch.zeros(0, dtype=torch.int64, device=dev)
        return empty, empty
    lo = pos.min(dim=0).values
    extent = float((pos.max(dim=0).values - lo).max())
    per_axis = 2 ** (62 // dims) - 4
    cell = max(cell, extent / per_axis * (1 + 1e-9), 1e-300)
    cells = torch.floor(div(pos - lo, cell)).to(torch.int64) + 1
    spans = [int(v) + 2 for v in cells.max(dim=0).values.tolist()]
    strides = [1] * dims
    for a in range(dims - 2, -1, -1):
        strides[a] = strides[a + 1] * spans[a + 1]
    assert math.prod(spans) < 2**63
    key = cells[:, 0] * strides[0]
    for a in range(1, dims):
        key = key + cells[:, a] * strides[a]
    order = torch.argsort(key, stable=True)
    sk = key[order]
    ar = torch.arange(n, dtype=torch.int64, device=dev)
    ends = torch.searchsorted(sk, sk, right=True)
    starts_list = [ar + 1]
    counts_list = [ends - ar - 1]
    for o in _forward_offsets(dims):
        nk = sk + sum(oa * sa for oa, sa in zip(o, strides, strict=True))
        a_ = torch.searchsorted(sk, nk)
        b_ = torch.searchsorted(sk, nk, right=True)
        starts_list.append(a_)
        counts_list.append(b_ - a_)
    starts = torch.cat(starts_list)
    counts = torch.cat(counts_list)
    owner = ar.repeat(len(starts_list))
    keep = counts > 0
    starts, counts, owner = starts[keep], counts[keep], owner[keep]
    total = int(counts.sum())
    offs = torch.cumsum(counts, 0) - counts
    p = torch.repeat_interleave(owner, counts)
    q = torch.repeat_interleave(starts - offs, counts) + torch.arange(total, dtype=torch.int64, device=dev)
    return order[p], order[q]


def to_numpy(t: Tensor) -> np.ndarray[Any, np.dtype[np.float64]]:
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)
