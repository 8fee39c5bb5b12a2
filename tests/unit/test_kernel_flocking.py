"""``flocking`` against an O(N^2) reference step; determinism, behaviour, validation."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import decode_array, encode_array
from tasks.kernels.flocking import FLOCKING, random_flock, simulate


def _reference_step(agents: np.ndarray, p: dict[str, float]) -> np.ndarray:
    pos, vel = agents[:, :2].copy(), agents[:, 2:].copy()
    d = pos[None, :, :] - pos[:, None, :]  # d[i, j] = pos_j - pos_i
    dist2 = (d**2).sum(-1)
    near = (dist2 < p["radius"] ** 2) & (dist2 > 0)
    cnt = near.sum(1)
    steer = np.zeros_like(pos)
    for i in range(len(pos)):
        nb = near[i]
        if cnt[i]:
            steer[i] += p["w_cohesion"] * (pos[nb].mean(0) - pos[i]) + p["w_alignment"] * (
                vel[nb].mean(0) - vel[i]
            )
        close = nb & (dist2[i] < p["separation"] ** 2)
        steer[i] += p["w_separation"] * (-d[i, close] / dist2[i, close][:, None]).sum(0)
    vel += steer * p["dt"]
    speed = np.sqrt((vel**2).sum(1))
    over = speed > p["max_speed"]
    vel[over] *= (p["max_speed"] / speed[over])[:, None]
    pos += vel * p["dt"]
    bounce = ((pos < 0) & (vel < 0)) | ((pos > p["world"]) & (vel > 0))
    vel[bounce] *= -1
    return np.column_stack([np.clip(pos, 0, p["world"]), vel])


def test_matches_brute_force_reference() -> None:
    params = FLOCKING.validate_params({"steps": 1, "world": 60.0, "radius": 8.0, "separation": 3.0})
    agents = random_flock(np.random.default_rng(0), 300, 60.0)
    got = simulate(agents, params)
    ref = _reference_step(agents, params)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9)


def test_deterministic_and_self_check() -> None:
    params, data = FLOCKING.example(np.random.default_rng(1), "small")
    params = FLOCKING.validate_params(params, len(data))
    a = FLOCKING.execute(params, data)
    assert a == FLOCKING.execute(params, data)
    assert FLOCKING.self_check(params, data, a)
    out = decode_array(a).copy()
    out[0, 0] = -1.0
    assert not FLOCKING.self_check(params, data, encode_array(out))
    out[0, 0] = 1.0
    out[1, 2] = 1e3
    assert not FLOCKING.self_check(params, data, encode_array(out))


def test_alignment_aligns_headings() -> None:
    agents = random_flock(np.random.default_rng(2), 200, 40.0)
    params = FLOCKING.validate_params(
        {
            "steps": 60,
            "world": 40.0,
            "radius": 15.0,
            "w_alignment": 1.0,
            "w_cohesion": 0.0,
            "w_separation": 0.0,
        }
    )
    out = simulate(agents, params)

    def order(a: np.ndarray) -> float:
        v = a[:, 2:] / np.linalg.norm(a[:, 2:], axis=1, keepdims=True)
        return float(np.linalg.norm(v.mean(0)))

    assert order(out) > order(agents) + 0.3


def test_separation_spreads_agents() -> None:
    rng = np.random.default_rng(3)
    agents = np.column_stack([rng.uniform(45, 55, (100, 2)), np.zeros((100, 2))])
    params = FLOCKING.validate_params({"steps": 30, "world": 100.0, "w_cohesion": 0.0, "w_alignment": 0.0})
    out = simulate(agents, params)

    def min_dist(a: np.ndarray) -> float:
        d = np.linalg.norm(a[:, None, :2] - a[None, :, :2], axis=-1)
        np.fill_diagonal(d, np.inf)
        return float(d.min())

    assert min_dist(out) > min_dist(agents)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((3, 5)),
        np.zeros((3, 4), np.float32),
        np.zeros((0, 4)),
        np.array([[1, 1, np.nan, 0.0]]),
        np.array([[-5, 1, 0, 0.0]]),
    ],
)
def test_bad_input(arr: np.ndarray) -> None:
    with pytest.raises(ValidationError):
        FLOCKING.execute(FLOCKING.validate_params({}), encode_array(arr))


def test_limits() -> None:
    with pytest.raises(LimitExceededError):
        FLOCKING.execute(FLOCKING.validate_params({"steps": 500}), encode_array(np.ones((30_000, 4))))
    with pytest.raises(ValidationError):
        FLOCKING.validate_params({"radius": float("nan")})


def test_torch_cpu_matches_numpy_bit_for_bit() -> None:
    torch = pytest.importorskip("torch")
    from tasks.kernels.flocking import simulate_numpy, simulate_torch

    params = FLOCKING.validate_params({"steps": 5, "world": 60.0, "radius": 8.0, "max_speed": 4.0})
    agents = random_flock(np.random.default_rng(5), 250, 60.0)
    ref = simulate_numpy(agents, params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny arrays: threads only add contention on a shared box
    try:
        assert np.array_equal(simulate(agents, params, "torch", "cpu"), ref)
        assert np.array_equal(simulate_torch(agents, params, "cpu", ranked=True), ref)
    finally:
        torch.set_num_threads(threads)


def test_equivalence_tolerance() -> None:
    agents = random_flock(np.random.default_rng(6), 50, 40.0)
    params = FLOCKING.validate_params({"steps": 2, "world": 40.0})
    out = decode_array(FLOCKING.execute(params, encode_array(agents))).copy()
    near = out.copy()
    near[0, 0] += 1e-12
    assert FLOCKING.equivalent(params, encode_array(out), encode_array(near))
    far = out.copy()
    far[0, 0] += 1e-3
    assert not FLOCKING.equivalent(params, encode_array(out), encode_array(far))
    assert not FLOCKING.equivalent(params, encode_array(out), b"junk")
