"""The paced frame stream of ``p2c2r demo --fps`` against a fake client, in virtual time."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from mesh.errors import ConfigError, TaskTimeoutError
from nodes.demo_fps import _CpuMeter, _worker_threads, stream_frames
from nodes.gamer import FrameQuality
from nodes.sdk_cores import DEFAULT_LEVELS, QualityController, QualityLevel


class _Handle:
    def __init__(self, work: trio.CapacityLimiter, cost_s: float, deadline: float) -> None:
        self.work, self.cost_s, self.deadline = work, cost_s, deadline
        self.latency_s: float | None = None

    async def result(self) -> bytes:
        t0 = trio.current_time()
        with trio.move_on_after(self.deadline) as scope:
            async with self.work:  # queue for one of the workers' slots
                await trio.sleep(self.cost_s)
        if scope.cancelled_caught:
            raise TaskTimeoutError("deadline passed")
        self.latency_s = trio.current_time() - t0
        return b"frame"


class FakeWorkers:
    """``slots`` kernel slots; a frame at (mode, scale, output quality or None) costs
    ``costs[(mode, scale, quality)]`` s."""

    def __init__(self, costs: dict[tuple[str, float, int | None], float], slots: int = 2) -> None:
        self.costs = costs
        self.work = trio.CapacityLimiter(slots)
        self.params_seen: list[dict[str, Any]] = []

    async def submit(self, kind: str, data: bytes, params: dict[str, Any], *, deadline: float) -> _Handle:
        assert kind == "upscale"
        self.params_seen.append(params)
        key = (params["mode"], params["scale"], params.get("quality"))
        return _Handle(self.work, self.costs[key], deadline)


def quality(client: FakeWorkers, fps: float = 30.0, in_flight: int = 4) -> FrameQuality:
    return FrameQuality(client, QualityController(fps, frames_in_flight=in_flight))  # type: ignore[arg-type]


#: The default ladder (``nodes.sdk_cores.DEFAULT_LEVELS``); only its last rung fits 30 fps.
SLOW_TOP: dict[tuple[str, float, int | None], float] = {
    ("quality", 2.0, None): 0.30,
    ("fast", 2.0, None): 0.15,
    ("fast", 2.0, 70): 0.10,
    ("fast", 2.0, 50): 0.04,
}


async def test_a_stream_that_misses_its_budget_steps_down_until_it_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeWorkers(SLOW_TOP)
    q = quality(client)
    rows: list[dict[str, Any]] = []
    stats = await stream_frames(
        q, [b"a", b"b"], seconds=10, base_params={"codec": "jpeg"}, on_second=rows.append
    )
    s = stats.summary()
    budget_ms = s["budget_ms"]
    assert s["frames_due"] == 300 and s["frames_sent"] + s["dropped"] == 300
    assert s["dropped"] > 0  # quality@2x cannot keep 4 frames moving at 30 fps on 2 slots
    assert s["deadline_misses"] > 0
    first = s["changes"][0]
    assert first["from"] == "quality@2x" and first["direction"] == "down"
    assert first["smoothed_ms"] > 0.9 * budget_ms  # it stepped because the budget was missed
    # Once down at a level that fits, the target rate holds; the controller probes the
    # better level now and then (``probe_after`` frames) and comes straight back down.
    assert s["final_level"] == "fast@2x q50"
    # (after each step down the controller waits out the frames that were queued behind
    # the slower level, 3 here, before judging the new one: the descent through three
    # slow levels takes ~1.1 s instead of ~0.7 s, and seconds 2-3 lose a few frames)
    for row in rows[1:10]:
        assert row["fps"] >= 26 and row["on_time"] >= 20 and row["dropped"] <= 4, row
    assert sum(r["fps"] == r["on_time"] == 30 for r in rows[1:10]) >= 4
    ups = [i for i, c in enumerate(s["changes"]) if c["direction"] == "up"]
    for i in ups:
        assert s["changes"][i + 1]["direction"] == "down"
        assert s["changes"][i + 1]["smoothed_ms"] > 0.9 * budget_ms
    assert all(p["codec"] == "jpeg" for p in client.params_seen)
    assert len(rows) >= 10 and [r["second"] for r in rows] == list(range(1, len(rows) + 1))
    assert set(s) >= {"achieved_fps", "frames_verified", "deadline_misses", "mode_changes", "per_second"}


async def test_a_stream_with_room_holds_the_best_level(autojump_clock: trio.testing.MockClock) -> None:
    client = FakeWorkers(dict.fromkeys(SLOW_TOP, 0.01))
    stats = await stream_frames(quality(client), [b"a"], seconds=5)
    s = stats.summary()
    assert s["mode_changes"] == 0 and s["final_level"] == "quality@2x"
    assert s["frames_verified"] == 150 and s["deadline_misses"] == 0 and s["dropped"] == 0
    assert s["achieved_fps"] == pytest.approx(30, rel=0.02)  # virtual time: exact pacing


async def test_frames_that_never_come_back_count_as_timeouts_and_step_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeWorkers({**SLOW_TOP, ("quality", 2.0, None): 5.0})
    stats = await stream_frames(quality(client), [b"a"], seconds=3)
    s = stats.summary()
    assert s["timeouts"] > 0 and s["deadline_misses"] >= s["timeouts"]
    assert s["changes"][0]["from"] == "quality@2x"
    assert s["frames_per_level"].get("quality@2x", 0) == 0


async def test_spot_checks_run_on_a_sample_and_failures_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[bytes] = []

    def check(params: dict[str, Any], frame: bytes, out: bytes) -> bool:
        seen.append(frame)
        return False

    client = FakeWorkers(dict.fromkeys(SLOW_TOP, 0.01))
    s = (await stream_frames(quality(client), [b"a"], seconds=2, spot_check=check, spot_every=10)).summary()
    assert 1 <= s["spot_checks"]["checked"] <= 6 and s["spot_checks"]["failed"] == s["spot_checks"]["checked"]
    assert len(seen) == s["spot_checks"]["checked"]


async def test_an_empty_stream_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        await stream_frames(quality(FakeWorkers(SLOW_TOP)), [], seconds=1)


async def test_a_longer_frame_deadline_shows_late_frames_instead_of_none(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = dict.fromkeys(SLOW_TOP, 0.5)  # every level misses a 133 ms budget
    strict = (await stream_frames(quality(FakeWorkers(slow)), [b"a"], seconds=3)).summary()
    assert strict["frames_verified"] == 0 and strict["timeouts"] == strict["frames_sent"]
    lenient = (
        await stream_frames(quality(FakeWorkers(slow)), [b"a"], seconds=5, frame_deadline_s=2.0)
    ).summary()
    assert lenient["timeouts"] == 0 and lenient["frames_verified"] == lenient["late"] > 0
    assert lenient["final_level"] == "fast@2x q50" and lenient["mode_changes"] == 3


class RungWorkers(FakeWorkers):
    """Frame cost by (mode, scale, output quality): cost of the rung the params name."""

    def __init__(self, costs: dict[tuple[str, float, int], float], slots: int = 2) -> None:
        super().__init__({}, slots)
        self.rung_costs = costs

    async def submit(self, kind: str, data: bytes, params: dict[str, Any], *, deadline: float) -> _Handle:
        self.params_seen.append(params)
        cost = self.rung_costs[(params["mode"], params["scale"], params["quality"])]
        return _Handle(self.work, cost, deadline)


def test_a_rung_names_and_sets_its_output_quality() -> None:
    assert QualityLevel("fast", 2.0).name == "fast@2x"
    assert QualityLevel("fast", 1.5, quality=50).name == "fast@1.5x q50"
    base = {"codec": "jpeg", "quality": 85}
    assert QualityLevel("fast", 2.0).params(base) == {**base, "mode": "fast", "scale": 2.0}
    assert QualityLevel("fast", 2.0, 70).params(base) == {
        "codec": "jpeg",
        "quality": 70,
        "mode": "fast",
        "scale": 2.0,
    }
    assert base == {"codec": "jpeg", "quality": 85}
    # the demo's ladder: distinct rungs, the best first, all at 2560x1440 from 720p
    assert len(set(DEFAULT_LEVELS)) == len(DEFAULT_LEVELS) and DEFAULT_LEVELS[0] == QualityLevel(
        "quality", 2.0
    )
    assert all(lvl.scale == 2.0 for lvl in DEFAULT_LEVELS)


async def test_the_demo_ladder_steps_down_to_a_lower_output_quality_when_fast_2x_misses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # fast@2x at q85 takes 80 ms a frame on each of 2 slots: 25 fps, misses; q70 fits.
    costs = {
        ("quality", 2.0, 85): 0.30,
        ("fast", 2.0, 85): 0.08,
        ("fast", 2.0, 70): 0.05,
        ("fast", 2.0, 50): 0.04,
    }
    client = RungWorkers(costs)
    q = FrameQuality(client, QualityController(30.0, frames_in_flight=4, levels=DEFAULT_LEVELS))  # type: ignore[arg-type]
    s = (await stream_frames(q, [b"a"], seconds=10, base_params={"codec": "jpeg", "quality": 85})).summary()
    assert [c["to"] for c in s["changes"][:2]] == ["fast@2x", "fast@2x q70"]
    assert s["final_level"] == "fast@2x q70"
    assert s["frames_per_level"]["fast@2x q70"] > 200
    assert {p["quality"] for p in client.params_seen} >= {85, 70}
    # it holds the rate there; a probe of fast@2x every 90 frames costs a frame or three
    late = s["per_second"][3:10]
    assert sum(r["fps"] for r in late) >= 28 * len(late)
    assert all(r["fps"] >= 26 for r in late), late


def test_cpu_meter_reads_this_process_and_the_workers() -> None:
    import os

    meter = _CpuMeter([os.getpid(), None])
    sum(i * i for i in range(200_000))
    ms = meter.per_frame_ms(10)
    assert ms["gamer"] is not None and ms["gamer"] >= 0
    assert ms["workers"] is None and ms["total"] is None  # one pid unreadable: no partial sum
    ms = _CpuMeter([os.getpid()]).per_frame_ms(0)
    assert ms["workers"] is not None and ms["workers"] >= 0
    assert (
        ms["machine_busy_cores"] is not None and 0 <= ms["machine_busy_cores"] <= (os.cpu_count() or 1) + 0.5
    )
    assert ms["other_processes_cores"] is not None and ms["other_processes_cores"] >= 0


def test_worker_threads_share_the_cores_and_keep_a_user_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with _worker_threads(2):
        assert os.environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with _worker_threads(2):
        assert os.environ["OMP_NUM_THREADS"] == "3"
    assert os.environ["OMP_NUM_THREADS"] == "3"
