"""``physics_step``: determinism, conservation, walls, interpenetration, validation."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import decode_array, encode_array
from tasks.kernels._grid import candidate_pairs
from tasks.kernels.physics import PHYSICS_STEP, kinetic_energy, momentum, random_world, simulate


def _params(**kw: object) -> dict[str, object]:
    return PHYSICS_STEP.validate_params(kw)


def _max_overlap(world: np.ndarray) -> float:
    pos, rad = world[:, :3], world[:, 6]
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    over = rad[:, None] + rad[None] - d
    np.fill_diagonal(over, -np.inf)
    return float(max(over.max(), 0.0))


@pytest.mark.parametrize("dims", [2, 3])
def test_candidate_pairs_cover_all_contacts_once(dims: int) -> None:
    rng = np.random.default_rng(dims)
    pos = rng.uniform(-5, 5, (400, dims))
    i, j = candidate_pairs(pos, 1.0)
    pairs = set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True))
    assert len(pairs) == len(i) and not (i == j).any()
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    bi, bj = np.nonzero(np.triu(d < 1.0, 1))
    assert set(zip(bi.tolist(), bj.tolist(), strict=True)) <= pairs


def test_deterministic_bit_exact() -> None:
    params, data = PHYSICS_STEP.example(np.random.default_rng(3), "small")
    params = PHYSICS_STEP.validate_params(params, len(data))
    a = PHYSICS_STEP.execute(params, data)
    b = PHYSICS_STEP.execute(params, data)
    assert a == b and PHYSICS_STEP.equivalent(params, a, b)
    assert PHYSICS_STEP.self_check(params, data, a)


def test_elastic_no_walls_conserves_momentum_and_energy() -> None:
    world = random_world(np.random.default_rng(4), 800, 12.0, fill=0.3, speed=3.0)
    params = _params(steps=60, gravity=0.0, restitution=1.0, walls=False, dt=0.01)
    data = encode_array(world)
    out_bytes = PHYSICS_STEP.execute(params, data)
    out = decode_array(out_bytes)
    p0, p1 = momentum(world), momentum(out)
    scale = float((np.abs(world[:, 3:6]) * world[:, 7:8]).sum())
    assert np.abs(p1 - p0).max() <= 1e-10 * scale
    e0, e1 = kinetic_energy(world), kinetic_energy(out)
    print("energy", e0, e1, e1 / e0)
    assert 0.95 * e0 <= e1 <= 1.01 * e0
    assert PHYSICS_STEP.self_check(params, data, out_bytes)
    # there were collisions: velocities changed beyond free flight
    assert not np.allclose(out[:, 3:6], world[:, 3:6])


def test_head_on_elastic_collision_swaps_velocities() -> None:
    world = np.array([[0, 0, 0, 1, 0, 0, 0.5, 1.0], [1.2, 0, 0, -1, 0, 0, 0.5, 1.0]], dtype=np.float64)
    out = simulate(world, 30, 0.01, 0.0, 1.0, False, 100.0)
    assert out[0, 3] == pytest.approx(-1.0) and out[1, 3] == pytest.approx(1.0)
    assert out[0, 0] < out[1, 0] - 0.99


def test_no_interpenetration_growth_and_bounds() -> None:
    world = random_world(np.random.default_rng(5), 500, 10.0, fill=0.3)
    assert _max_overlap(world) == 0.0
    params = _params(steps=120, dt=0.01, gravity=-9.81, restitution=0.5, walls=True, box=10.0)
    data = encode_array(world)
    out_bytes = PHYSICS_STEP.execute(params, data)
    out = decode_array(out_bytes)
    r = out[:, 6:7]
    assert (out[:, :3] >= r).all() and (out[:, :3] <= 10.0 - r).all()
    # settled under gravity: overlaps stay a small fraction of a radius
    assert _max_overlap(out) < 0.25 * float(world[:, 6].min())
    assert out[:, 2].mean() < world[:, 2].mean()
    assert PHYSICS_STEP.self_check(params, data, out_bytes)


def test_self_check_rejects_tampering() -> None:
    world = random_world(np.random.default_rng(6), 100, 12.0, fill=0.2)
    params = _params(steps=5, gravity=0.0, walls=False, restitution=1.0)
    data = encode_array(world)
    out = decode_array(PHYSICS_STEP.execute(params, data)).copy()
    assert PHYSICS_STEP.self_check(params, data, encode_array(out))
    bad = out.copy()
    bad[0, 3] += 10.0
    assert not PHYSICS_STEP.self_check(params, data, encode_array(bad))
    bad = out.copy()
    bad[1, 6] *= 2
    assert not PHYSICS_STEP.self_check(params, data, encode_array(bad))
    bad = out.copy()
    bad[2, 0] = np.nan
    assert not PHYSICS_STEP.self_check(params, data, encode_array(bad))
    assert not PHYSICS_STEP.self_check(params, data, encode_array(out[:-1]))
    walled = _params(steps=5, box=12.0)
    bad = out.copy()
    bad[0, 0] = 50.0
    assert not PHYSICS_STEP.self_check(walled, data, encode_array(bad))


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((3, 7)),
        np.zeros((3, 8), np.float32),
        np.zeros((0, 8)),
        np.array([[1, 1, 1, 0, 0, 0, 0.5, np.nan]]),
        np.array([[1, 1, 1, 0, 0, 0, -0.5, 1.0]]),
        np.array([[1, 1, 1, 0, 0, 0, 0.5, 0.0]]),
        np.array([[500, 1, 1, 0, 0, 0, 0.5, 1.0]]),
        np.array([[1, 1, 1, 1e9, 0, 0, 0.5, 1.0]]),
    ],
)
def test_bad_input(arr: np.ndarray) -> None:
    with pytest.raises(ValidationError):
        PHYSICS_STEP.execute(_params(), encode_array(arr))


def test_limits() -> None:
    with pytest.raises(LimitExceededError):
        _params(steps=5000)
    with pytest.raises(ValidationError):
        _params(dt=float("inf"))
    big = np.zeros((30_000, 8))
    with pytest.raises(LimitExceededError):
        PHYSICS_STEP.execute(_params(steps=1000), encode_array(big))
    with pytest.raises(LimitExceededError):
        PHYSICS_STEP.execute(_params(), encode_array(np.zeros((100_001, 8))))


@pytest.mark.parametrize("walls", [True, False])
def test_torch_cpu_matches_numpy_bit_for_bit(walls: bool) -> None:
    torch = pytest.importorskip("torch")
    from tasks.kernels.physics import simulate_numpy, simulate_torch

    world = random_world(np.random.default_rng(7), 250, 9.0, fill=0.3)
    args = (8, 0.01, -9.81 if walls else 0.0, 0.8, walls, 9.0)
    ref = simulate_numpy(world, *args)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny arrays: threads only add contention on a shared box
    try:
        assert np.array_equal(simulate(world, *args, backend="torch", device="cpu"), ref)
        # the CUDA summation strategy (rank by rank), run on the CPU
        assert np.array_equal(simulate_torch(world, *args, "cpu", ranked=True), ref)
    finally:
        torch.set_num_threads(threads)


def test_equivalence_tolerance() -> None:
    world = random_world(np.random.default_rng(8), 50, 12.0)
    params = _params(steps=2, box=12.0)
    out = decode_array(PHYSICS_STEP.execute(params, encode_array(world))).copy()
    near = out.copy()
    near[3, 0] += 1e-12
    assert PHYSICS_STEP.equivalent(params, encode_array(out), encode_array(near))
    far = out.copy()
    far[3, 0] += 1e-4
    assert not PHYSICS_STEP.equivalent(params, encode_array(out), encode_array(far))
    mass = out.copy()
    mass[0, 7] *= 1 + 1e-15
    assert not PHYSICS_STEP.equivalent(params, encode_array(out), encode_array(mass))
    assert not PHYSICS_STEP.equivalent(params, encode_array(out), encode_array(out[:-1]))
    assert not PHYSICS_STEP.equivalent(params, encode_array(out), b"junk")
