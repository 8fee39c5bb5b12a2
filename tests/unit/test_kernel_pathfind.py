"""``pathfind``: optimal lengths against scipy's Dijkstra on random maps, validity, limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import encode_array, encode_msgpack
from tasks.kernels.pathfind import (
    BUDGET_EXHAUSTED,
    PATHFIND,
    UNREACHABLE,
    decode_output,
    make_input,
    random_map,
    random_pairs,
)

csgraph = pytest.importorskip("scipy.sparse.csgraph")
sparse = pytest.importorskip("scipy.sparse")


def _reference_lengths(grid: np.ndarray, pairs: np.ndarray, conn: int) -> np.ndarray:
    h, w = grid.shape
    idx = np.arange(h * w).reshape(h, w)
    free = grid == 0
    rows, cols, vals = [], [], []

    def add(a_free: np.ndarray, a: np.ndarray, b: np.ndarray, cost: float) -> None:
        rows.append(a[a_free])
        cols.append(b[a_free])
        vals.append(np.full(int(a_free.sum()), cost))

    add(free[:, :-1] & free[:, 1:], idx[:, :-1], idx[:, 1:], 1.0)
    add(free[:-1, :] & free[1:, :], idx[:-1, :], idx[1:, :], 1.0)
    if conn == 8:
        both = free[:-1, :-1] & free[1:, 1:] & free[:-1, 1:] & free[1:, :-1]
        add(both, idx[:-1, :-1], idx[1:, 1:], math.sqrt(2))
        add(both, idx[:-1, 1:], idx[1:, :-1], math.sqrt(2))
    m = sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(h * w,) * 2
    )
    starts = pairs[:, 0] * w + pairs[:, 1]
    dist = csgraph.dijkstra(m.tocsr(), directed=False, indices=starts)
    out = dist[np.arange(len(pairs)), pairs[:, 2] * w + pairs[:, 3]]
    return np.where(np.isinf(out), UNREACHABLE, out)


@pytest.mark.parametrize("conn", [4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_optimal_against_dijkstra(conn: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    grid = random_map(rng, 48 + 16 * seed, 64, density=0.35)
    pairs = random_pairs(rng, grid, 12)
    data = make_input(grid, pairs, "zstd" if seed else "raw")
    params = PATHFIND.validate_params({"connectivity": conn}, len(data))
    out = PATHFIND.execute(params, data)
    lengths, _paths = decode_output(out)
    ref = _reference_lengths(grid, pairs.astype(np.int64), conn)
    assert np.allclose(lengths, ref, rtol=0, atol=1e-9), (lengths, ref.tolist())
    assert PATHFIND.self_check(params, data, out)
    assert out == PATHFIND.execute(params, data)


def test_unreachable_same_cell_and_budget() -> None:
    grid = np.zeros((10, 10), np.uint8)
    grid[:, 5] = 1
    pairs = np.array([[0, 0, 9, 9], [3, 3, 3, 3], [0, 0, 9, 4]], np.int32)
    data = make_input(grid, pairs)
    lengths, paths = decode_output(PATHFIND.execute(PATHFIND.validate_params({}), data))
    assert lengths[0] == UNREACHABLE and paths[0] == []
    assert lengths[1] == 0.0 and paths[1] == [3, 3]
    assert lengths[2] == pytest.approx(5 + 4 * math.sqrt(2))
    lengths, _ = decode_output(PATHFIND.execute(PATHFIND.validate_params({"max_expansions": 3}), data))
    assert lengths[2] == BUDGET_EXHAUSTED


def test_no_corner_cutting() -> None:
    grid = np.array([[0, 1], [1, 0]], np.uint8)
    data = make_input(grid, np.array([[0, 0, 1, 1]], np.int32))
    lengths, _ = decode_output(PATHFIND.execute(PATHFIND.validate_params({}), data))
    assert lengths == [UNREACHABLE]


def test_self_check_rejects_bad_paths() -> None:
    grid = np.zeros((8, 8), np.uint8)
    pairs = np.array([[0, 0, 7, 7]], np.int32)
    data = make_input(grid, pairs)
    params = PATHFIND.validate_params({"connectivity": 4})
    good = PATHFIND.execute(params, data)
    assert PATHFIND.self_check(params, data, good)
    lengths, paths = decode_output(good)
    teleport = paths[0][:2] + paths[0][-2:]
    assert not PATHFIND.self_check(params, data, encode_msgpack({"lengths": lengths, "paths": [teleport]}))
    assert not PATHFIND.self_check(params, data, encode_msgpack({"lengths": [1.0], "paths": paths}))
    assert not PATHFIND.self_check(params, data, b"\x00")


@pytest.mark.parametrize(
    ("grid", "pairs"),
    [
        (np.zeros((4, 4), np.float32), np.zeros((1, 4), np.int32)),
        (np.zeros((4, 4), np.uint8), np.zeros((1, 3), np.int32)),
        (np.zeros((4, 4), np.uint8), np.array([[0, 0, 4, 0]], np.int32)),
        (np.ones((4, 4), np.uint8), np.array([[0, 0, 1, 1]], np.int32)),
        (np.zeros((4, 4), np.uint8), np.array([[0, 0, -1, 0]], np.int32)),
    ],
)
def test_bad_input(grid: np.ndarray, pairs: np.ndarray) -> None:
    with pytest.raises(ValidationError):
        PATHFIND.execute(PATHFIND.validate_params({}), make_input(grid, pairs))


def test_limits_and_malformed() -> None:
    params = PATHFIND.validate_params({})
    with pytest.raises(LimitExceededError):
        PATHFIND.execute(params, make_input(np.zeros((1025, 4), np.uint8), np.zeros((1, 4), np.int32)))
    with pytest.raises(LimitExceededError):
        PATHFIND.execute(params, make_input(np.zeros((4, 4), np.uint8), np.zeros((65, 4), np.int32)))
    with pytest.raises(LimitExceededError):
        PATHFIND.execute(params, make_input(np.zeros((4, 4), np.uint8), np.zeros((17, 4), np.int32)))
    with pytest.raises(ValidationError):
        PATHFIND.execute(params, b"\x93\x01\x02")
    with pytest.raises(ValidationError):
        PATHFIND.execute(params, encode_msgpack({"grid": encode_array(np.zeros((2, 2), np.uint8))}))
    with pytest.raises(ValidationError):
        PATHFIND.validate_params({"connectivity": 6})
