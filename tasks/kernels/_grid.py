"""Broad phase shared by ``physics_step`` and ``flocking``: candidate pairs from a uniform grid.

Bodies are binned into cubic cells of side ``cell`` (at least the interaction distance);
each unordered pair of bodies in the same or adjacent cells is reported exactly once, by
scanning the body's own cell and the 13 (3-D) or 4 (2-D) "forward" neighbour cells of a
sorted key array. Everything is vectorised and deterministic: a stable sort, and pairs
come out in a fixed order for the same input.

Cells are indexed relative to the bounding box of the bodies, so positions may lie
anywhere; if the box is too wide for 62-bit keys the cell is enlarged (more candidates,
same answer).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]


def _forward_offsets(dims: int) -> list[tuple[int, ...]]:
    out = []
    for o in itertools.product((-1, 0, 1), repeat=dims):
        if o > (0,) * dims:  # lexicographically positive: one of each +-o pair
            out.append(o)
    return out


def candidate_pairs(pos: npt.NDArray[np.float64], cell: float) -> tuple[IntArray, IntArray]:
    """Index arrays ``(i, j)``, i != j, of bodies in the same or neighbouring cells."""
    n, dims = pos.shape
    if n < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    lo = pos.min(axis=0)
    extent = float((pos.max(axis=0) - lo).max())
    per_axis = 2 ** (62 // dims) - 4
    cell = max(cell, extent / per_axis * (1 + 1e-9), 1e-300)
    cells = np.floor((pos - lo) / cell).astype(np.int64) + 1  # 1..m, so c-1 >= 0
    spans = cells.max(axis=0) + 2
    strides = np.ones(dims, dtype=np.int64)
    for a in range(dims - 2, -1, -1):
        strides[a] = strides[a + 1] * spans[a + 1]
    assert math.prod(int(s) for s in spans) < 2**63
    key = cells @ strides
    order = np.argsort(key, kind="stable")
    sk = key[order]
    ar = np.arange(n, dtype=np.int64)
    ends = np.searchsorted(sk, sk, side="right")
    starts_list = [ar + 1]
    counts_list = [ends - ar - 1]
    for o in _forward_offsets(dims):
        nk = sk + int(np.dot(np.asarray(o, dtype=np.int64), strides))
        a = np.searchsorted(sk, nk, side="left")
        b = np.searchsorted(sk, nk, side="right")
        starts_list.append(a)
        counts_list.append(b - a)
    starts = np.concatenate(starts_list)
    counts = np.concatenate(counts_list)
    owner = np.tile(ar, len(starts_list))
    keep = counts > 0
    starts, counts, owner = starts[keep], counts[keep], owner[keep]
    total = int(counts.sum())
    offs = np.cumsum(counts) - counts
    p = np.repeat(owner, counts)
    q = np.repeat(starts - offs, counts) + np.arange(total, dtype=np.int64)
    return order[p].astype(np.int64), order[q].astype(np.int64)
