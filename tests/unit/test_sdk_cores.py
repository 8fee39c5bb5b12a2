"""SDK cores: cache bounds and LRU order, adaptive timeouts, hedge budget, quality control."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.sdk_cores import (
    AdaptiveTimeouts,
    CachedResult,
    HedgeBudget,
    LeaseMisses,
    MissConfig,
    QualityController,
    ResultCache,
    TimeoutConfig,
    content_key,
)


def _entry(n: int, size: int = 10) -> CachedResult:
    return CachedResult(bytes([n % 256]) * size, b"w", bytes(16), n, bytes(64))


def test_content_key_binds_every_field() -> None:
    base = content_key("upscale", b"p" * 32, b"i" * 32)
    assert content_key("upscale", b"p" * 32, b"i" * 32) == base
    assert content_key("physics_step", b"p" * 32, b"i" * 32) != base
    assert content_key("upscale", b"q" * 32, b"i" * 32) != base
    assert content_key("upscale", b"p" * 32, b"j" * 32) != base


def test_cache_lru_eviction_by_count() -> None:
    c = ResultCache(max_entries=3)
    for i in range(3):
        c.put(bytes([i]), _entry(i))
    assert c.get(bytes([0])) is not None  # 0 is now most recent
    c.put(bytes([3]), _entry(3))
    assert c.get(bytes([1])) is None  # 1 was least recently used
    assert c.get(bytes([0])) is not None and c.get(bytes([3])) is not None
    assert c.hits == 3 and c.misses == 1


@settings(max_examples=200, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 300)), max_size=60))
def test_cache_never_exceeds_its_bounds(ops: list[tuple[int, int]]) -> None:
    c = ResultCache(max_entries=5, max_bytes=600)
    for key, size in ops:
        c.put(bytes([key]), _entry(key, size))
        assert len(c) <= 5
        assert c.size_bytes <= 600
        assert c.size_bytes == sum(len(e.output) for e in c._entries.values())


def test_timeouts_learn_per_kind() -> None:
    t = AdaptiveTimeouts(TimeoutConfig(initial_s=10.0))
    assert t.deadline("echo") == 10.0
    for _ in range(50):
        t.observe("echo", 0.002)
    assert 0.002 <= t.deadline("echo") < 0.01
    assert t.deadline("upscale") == 10.0  # other kinds unaffected
    for _ in range(50):
        t.observe("upscale", 0.1)
        t.observe("upscale", 0.3)
    d = t.deadline("upscale")
    assert 0.3 < d < 1.5  # covers the spread, not just the mean
    h = t.hedge_delay("upscale")
    assert h is not None and 0.2 < h < d


def test_hedge_delay_needs_samples() -> None:
    t = AdaptiveTimeouts()
    for _ in range(7):
        t.observe("echo", 0.001)
    assert t.hedge_delay("echo") is None
    t.observe("echo", 0.001)
    assert t.hedge_delay("echo") is not None


def test_hedge_budget_caps_fraction() -> None:
    b = HedgeBudget(fraction=0.05, burst=2.0)
    granted = 0
    for _ in range(1000):
        b.on_submit()
        if b.try_spend():
            granted += 1
    assert 48 <= granted <= 52  # 5% of 1000 plus at most the burst


def test_quality_steps_down_when_late_and_up_when_fast() -> None:
    q = QualityController(target_fps=30, frames_in_flight=2, up_after=10, probe_after=30)
    budget = q.budget_s
    assert q.current.mode == "quality" and q.current.scale == 2.0
    for _ in range(20):
        q.observe(budget * 1.5)
    assert q.level > 0
    worst = q.level
    for _ in range(200):
        q.observe(budget * 0.2)
    assert q.level < worst
    assert q.level == 0


def test_quality_holds_steady_in_band() -> None:
    q = QualityController(target_fps=60)
    for _ in range(500):
        q.observe(q.budget_s * 0.75)
    assert q.level == 0 and q.changes == 0


def test_quality_does_not_flap_back_to_a_level_known_to_be_slow() -> None:
    q = QualityController(target_fps=30, up_after=5, probe_after=40)
    q.observe(q.budget_s * 2.0)  # level 0 too slow -> step down
    assert q.level == 1
    for _ in range(39):
        q.observe(q.budget_s * 0.3)  # level 1 fast, but level 0's estimate is still bad
    assert q.level == 1
    q.observe(q.budget_s * 0.3)  # ... until it is probed again
    assert q.level == 0


def test_quality_ignores_frames_queued_behind_the_previous_level() -> None:
    q = QualityController(target_fps=30, frames_in_flight=4)
    slow = q.budget_s * 2.0
    q.observe(slow)  # level 0 too slow: step down
    assert q.level == 1
    # frames sent at level 1 while 3 level-0 frames were still ahead of them come back late
    for _ in range(3):
        assert q.observe(slow, 1) == q.levels[1]
    q.observe(q.budget_s * 0.3, 0)  # a level-0 straggler: recorded for level 0, no step
    assert q.level == 1 and q.changes == 1
    assert q.observe(slow, 1) == q.levels[2]  # after that, level 1's own latency counts
    # with one frame in flight there is nothing to wait for
    one = QualityController(target_fps=30)
    one.observe(one.budget_s * 2.0)
    one.observe(one.budget_s * 2.0)
    assert one.level == 2


def test_quality_backs_off_probes_of_a_level_that_stays_slow() -> None:
    q = QualityController(target_fps=30, up_after=5, probe_after=20, max_probe_after=80)
    slow, fast = q.budget_s * 2.0, q.budget_s * 0.3
    q.observe(slow)  # level 0 too slow -> 1
    waits = []
    for _ in range(5):
        n = 0
        while q.level == 1:
            q.observe(fast)
            n += 1
        waits.append(n)  # frames at level 1 before it probed level 0
        q.observe(slow)  # the probe fails at once
        assert q.level == 1
    assert waits == [20, 40, 80, 80, 80]
    # a probe that holds resets the wait
    while q.level == 1:
        q.observe(fast)
    for _ in range(5):
        q.observe(fast)  # level 0 now holds for up_after frames
    assert q.level == 0
    while q.level == 0:
        q.observe(slow)  # later it slows down again: level 1, and the next probe after 20
    n = 0
    while q.level == 1:
        q.observe(fast)
        n += 1
    assert n == 20


# ---------------------------------------------------------------- lease replacement


def test_a_worker_is_replaced_after_three_misses_in_a_row_and_an_answer_clears_its_count() -> None:
    m = LeaseMisses()
    assert [m.on_miss("a", t) for t in (0.0, 0.1)] == [False, False]
    m.on_ok("a", 0.2)  # an answer on time: the run starts again
    assert [m.on_miss("a", t) for t in (0.3, 0.4, 0.5)] == [False, False, True]
    # Counts are per worker: another worker's misses do not add up with these.
    assert [m.on_miss(w, 1.0) for w in ("b", "c", "b", "c")] == [False] * 4
    assert m.on_miss("b", 1.1) is True and m.replaced == 2


def test_replacements_are_spaced_by_the_hold_and_back_off_once_nothing_is_on_time() -> None:
    """A stream that gets no answer on time (the gamer's own uplink is the bottleneck) asks
    for ever fewer replacements; one answer on time brings the short gap back."""
    cfg = MissConfig(misses=1, hold_s=0.25, hopeless_s=5.0, hold_max_s=4.0)
    m = LeaseMisses(cfg)
    t, said = 0.0, []
    while t < 60.0:
        if m.on_miss(f"w{len(said)}", t):
            said.append(t)
        t = round(t + 0.05, 2)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(said)]
    # every 0.25 s until 5 s have passed without an answer, then 0.5, 1, 2 and 4 s (the cap)
    assert said[:2] == [0.0, 0.25] and said[21] == 5.25
    assert gaps[:21] == [0.25] * 21 and gaps[21:25] == [0.5, 1.0, 2.0, 4.0] and set(gaps[25:]) == {4.0}
    assert m.held > 0
    m.on_ok("w0", 60.0)
    assert m.on_miss("x", 64.0) and not m.on_miss("y", 64.1) and m.on_miss("y", 64.25)


def test_a_stream_that_keeps_getting_answers_keeps_replacing_promptly() -> None:
    m = LeaseMisses(MissConfig(misses=1))
    said = []
    for i in range(400):  # 40 s: a miss on one worker, an answer on time from another
        t = i * 0.1
        if m.on_miss("bad", t):
            said.append(t)
        m.on_ok("good", t + 0.05)
    assert len(said) >= 100  # every 0.25 s at most, never backing off


def test_a_replaced_worker_is_avoided_for_a_while() -> None:
    m = LeaseMisses(MissConfig(misses=1, avoid_s=10.0))
    assert m.on_miss("a", 0.0) and m.avoided(0.0) == ["a"]
    assert m.on_miss("b", 5.0) and sorted(m.avoided(5.0)) == ["a", "b"]
    assert m.avoided(10.0) == ["b"] and m.avoided(15.0) == []
