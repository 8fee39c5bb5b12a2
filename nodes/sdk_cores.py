"""Sans-IO helpers of the gamer SDK: result cache, adaptive timeouts, hedging budget, adaptive quality.

Each is a small deterministic object that takes ``now`` (trio time) as an input, so the SDK
drives it and tests run it without a network or a clock.

- ``ResultCache``: bounded, content-addressed (kind, parameters digest, input digest). Only
  deterministic kinds are cached. An entry keeps the original worker's signed receipt, so a
  cached answer can be re-verified by anyone, exactly like a fresh one.
- ``AdaptiveTimeouts``: per-kind latency estimates in the style of TCP's RTO (Jacobson /
  Karels): ``srtt + k * rttvar``, clamped; used as the deadline when the caller gives none
  and as the hedging delay.
- ``HedgeBudget``: a token bucket that caps hedged (duplicate) requests at a fraction of
  submitted tasks, so hedging cannot multiply load when the whole mesh is slow.
- ``LeaseMisses``: when a leased worker has missed enough deadlines in a row for the lease
  to be replaced, with a hold-off that grows while replacing does not help.
- ``QualityController``: picks the upscale mode and output scale that keep a target frame
  rate from observed latencies, with hysteresis so it does not flap.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- result cache


def content_key(kind: str, params_digest: bytes, input_digest: bytes) -> bytes:
    h = hashlib.sha256(b"p2c2r/content/v1\x00")
    h.update(kind.encode() + b"\x00")
    h.update(params_digest)
    h.update(input_digest)
    return h.digest()


@dataclass(frozen=True, slots=True)
class CachedResult:
    output: bytes
    worker: bytes
    task_id: bytes
    ts_ms: int
    signature: bytes


class ResultCache:
    """LRU cache bounded by entry count and total bytes."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, CachedResult] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: bytes) -> CachedResult | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def remove(self, key: bytes) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.output)

    def put(self, key: bytes, entry: CachedResult) -> None:
        size = len(entry.output)
        if size > self.max_bytes or self.max_entries <= 0:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.output)
        self._entries[key] = entry
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.output)


# ---------------------------------------------------------------- adaptive timeouts


@dataclass
class _Estimate:
    srtt: float
    rttvar: float
    samples: int = 1


@dataclass(frozen=True)
class TimeoutConfig:
    initial_s: float = 10.0
    minimum_s: float = 0.005
    maximum_s: float = 120.0
    #: Deadline = srtt + k * rttvar (TCP uses 4).
    k: float = 4.0
    #: Hedge after srtt + hedge_k * rttvar (about the 90th-95th percentile).
    hedge_k: float = 2.0
    #: Floor of the hedging delay (its own: a deadline floor of a second must not stop
    #: a 30 ms frame from being hedged at 40 ms).
    hedge_minimum_s: float = 0.001
    #: Samples of a kind before its hedging delay is trusted.
    hedge_samples: int = 8
    alpha: float = 0.125
    beta: float = 0.25


class AdaptiveTimeouts:
    """Per-kind latency estimates learned from observed completions."""

    def __init__(self, config: TimeoutConfig = TimeoutConfig()) -> None:
        self.config = config
        self._est: dict[str, _Estimate] = {}

    def observe(self, kind: str, latency_s: float) -> None:
        if not latency_s >= 0:
            return
        e = self._est.get(kind)
        if e is None:
            self._est[kind] = _Estimate(latency_s, latency_s / 2)
            return
        c = self.config
        e.rttvar = (1 - c.beta) * e.rttvar + c.beta * abs(e.srtt - latency_s)
        e.srtt = (1 - c.alpha) * e.srtt + c.alpha * latency_s
        e.samples += 1

    def _clamp(self, v: float) -> float:
        return min(self.config.maximum_s, max(self.config.minimum_s, v))

    def deadline(self, kind: str) -> float:
        e = self._est.get(kind)
        if e is None:
            return self.config.initial_s
        return self._clamp(e.srtt + self.config.k * e.rttvar)

    def hedge_delay(self, kind: str) -> float | None:
        """Seconds to wait before hedging, or None when there is no estimate yet."""
        e = self._est.get(kind)
        c = self.config
        if e is None or e.samples < c.hedge_samples:
            return None
        return min(c.maximum_s, max(c.hedge_minimum_s, e.srtt + c.hedge_k * e.rttvar))

    def backoff(self, kind: str, waited_s: float) -> None:
        """A task of ``kind`` timed out after ``waited_s`` at the learned deadline.

        Without this, a kind that became slower would time out forever: a timeout gives
        no latency sample. Like TCP's RTO backoff, the estimate is raised so the next
        deadline is at least three times the one that expired; successes bring it back
        down at the usual smoothing rate.
        """
        if not waited_s > 0:
            return
        e = self._est.get(kind)
        if e is None:
            self._est[kind] = _Estimate(waited_s, waited_s / 2)
            return
        e.srtt = max(e.srtt, waited_s)
        e.rttvar = max(e.rttvar, waited_s / 2)

    def estimate(self, kind: str) -> tuple[float, float] | None:
        e = self._est.get(kind)
        return (e.srtt, e.rttvar) if e else None


class HedgeBudget:
    """Allows at most ``fraction`` hedges per submitted task (plus a small burst)."""

    def __init__(self, fraction: float = 0.05, burst: float = 5.0) -> None:
        self.fraction = fraction
        self.burst = burst
        self.tokens = burst
        self.spent = 0

    def on_submit(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.fraction)

    def try_spend(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.spent += 1
            return True
        return False


# ---------------------------------------------------------------- lease replacement


@dataclass(frozen=True)
class MissConfig:
    #: Deadlines in a row one leased worker may miss before its lease is replaced.
    misses: int = 3
    #: Replacements of one stream are at least ``hold_s`` apart ...
    hold_s: float = 0.25
    #: ... and once the stream has had no answer on time for ``hopeless_s``, the gap
    #: doubles with each replacement (up to ``hold_max_s``) until one comes.
    hopeless_s: float = 5.0
    hold_max_s: float = 30.0
    #: A replaced worker is left out of the stream's lease requests for this long
    #: (``avoided``), so the coordinator does not lease it straight back.
    avoid_s: float = 10.0


class LeaseMisses:
    """Sans-IO: says when a leased worker keeps missing deadlines and its lease should go.

    One per stream of work (a kind, for the SDK's mesh client), counting misses in a row per
    worker: an answer on time from a worker clears its count. When a worker reaches
    ``misses``, ``on_miss`` says replace it, at most once per ``hold_s``. A stream that gets
    no answer on time for ``hopeless_s`` backs off: each replacement doubles the gap to
    the next, until an answer comes. A gamer whose own uplink cannot carry its stream misses
    on every worker, and replacing at every third miss had the simulator's uplink-bound
    gamers asking their coordinator for a new lease ten times a second for nothing (finding
    14 in ``docs/SIMULATION.md``); a stream that still gets answers on time keeps moving off
    the workers that miss (hopping until a good one is found is worth it there: backing off
    whenever two replacements came without an answer in between cost 1.3 % of the answers
    on time at 1,000 peers). A replaced worker stays out of the stream's lease requests for
    ``avoid_s``: given back and not avoided, its slots were free again at once and the
    coordinator leased it straight back (frame misses went from 4.8 % to 11.8 % on the
    simulator's reference load)."""

    def __init__(self, config: MissConfig | None = None) -> None:
        self.config = config or MissConfig()
        self._run: dict[Any, int] = {}
        #: Replaced workers -> until when lease requests leave them out.
        self._avoid: dict[Any, float] = {}
        self.hold = self.config.hold_s
        self.last = -math.inf
        #: The last answer on time (or the first miss, before any answer).
        self.last_ok = -math.inf
        #: Replacements said, and those held back by the hold-off.
        self.replaced = 0
        self.held = 0

    def on_ok(self, worker: Any, now: float) -> None:
        self._run.pop(worker, None)
        self.hold = self.config.hold_s
        self.last_ok = now

    def on_miss(self, worker: Any, now: float) -> bool:
        """A task placed on ``worker`` missed its deadline (or failed); True: replace its lease."""
        c = self.config
        if self.last_ok == -math.inf:
            self.last_ok = now
        run = self._run.get(worker, 0) + 1
        if run < c.misses or now < self.last + self.hold:
            self._run[worker] = run
            self.held += run >= c.misses
            return False
        if now - self.last_ok > c.hopeless_s:
            self.hold = min(2 * self.hold, c.hold_max_s)
        self.last = now
        self._run.pop(worker, None)
        self._avoid[worker] = now + c.avoid_s
        self.replaced += 1
        return True

    def avoided(self, now: float) -> list[Any]:
        """Workers this stream's lease requests should leave out now (replaced lately)."""
        for w in [w for w, until in self._avoid.items() if until <= now]:
            del self._avoid[w]
        return list(self._avoid)


# ---------------------------------------------------------------- adaptive quality


@dataclass(frozen=True)
class QualityLevel:
    """One rung of the quality ladder: upscale ``mode`` and ``scale``, and optionally the
    output ``quality`` (JPEG/WebP, 1-100) at this rung; ``None`` keeps the caller's."""

    mode: str
    scale: float
    quality: int | None = None

    @property
    def name(self) -> str:
        """``fast@2x``, or ``fast@2x q60`` for a rung that sets the output quality."""
        base = f"{self.mode}@{self.scale:g}x"
        return base if self.quality is None else f"{base} q{self.quality}"

    def params(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """``base`` with this rung's ``mode`` and ``scale`` (and ``quality`` when set)."""
        out = {**(base or {}), "mode": self.mode, "scale": self.scale}
        if self.quality is not None:
            out["quality"] = self.quality
        return out


#: Best first; each level costs less than the one before it on CPU workers. ``fast@2x`` is
#: the upscale kind's planar JPEG path (~18 ms a 720p -> 1440p frame on one core), cheaper
#: than any 1.5x level (those take the RGB path, ~35 ms), so below it the ladder keeps the
#: 2560x1440 output and lowers the output JPEG quality instead, which cuts the bytes each
#: frame costs to send and receive (263 -> 185 -> 145 KB; ``docs/PERFORMANCE.md``). A caller
#: with other costs (a GPU worker, another kind) passes its own ``levels``, e.g. with
#: ``QualityLevel("fast", 1.5)`` rungs.
DEFAULT_LEVELS: tuple[QualityLevel, ...] = (
    QualityLevel("quality", 2.0),
    QualityLevel("fast", 2.0),
    QualityLevel("fast", 2.0, quality=70),
    QualityLevel("fast", 2.0, quality=50),
)


@dataclass
class QualityController:
    """Keeps frames within budget: step down fast when late, step up slowly when there is room.

    ``budget_s`` is the latency a frame may take (for pipelined frames this is the
    per-frame budget times the frames in flight). The controller tracks an EWMA of
    observed latencies per level: it steps down one level as soon as the smoothed latency
    exceeds ``down_at`` of the budget, and steps up only after ``up_after`` consecutive
    frames at the current level below ``up_at`` of the budget *and* when the better
    level's own last estimate (if any) fits; a better level known to be slow is probed
    again only after ``probe_after`` such frames (conditions change: peers join). A probe
    that steps back down before ``up_after`` frames at the probed level doubles that level's
    wait, up to ``max_probe_after`` frames; one that holds resets it (each probe of a level
    that stays too slow costs a few late frames: every 3 s at 30 fps without the back-off).

    After a step down, the first ``frames_in_flight - 1`` frames answered at the new level
    are not counted: they were sent while frames of the slower level were still ahead of
    them, so their latency is mostly that level's (stepping down from a slow level otherwise
    takes the next one down with it, seen in ``p2c2r demo --fps``). A step up needs no
    such wait: the frames ahead are the cheaper level's, and a probe of a level that is
    still slow steps back down on its first late answer.
    """

    target_fps: float
    frames_in_flight: int = 1
    levels: tuple[QualityLevel, ...] = DEFAULT_LEVELS
    down_at: float = 0.9
    up_at: float = 0.6
    up_after: int = 30
    probe_after: int = 90
    max_probe_after: int = 720
    alpha: float = 0.2
    level: int = 0
    _ewma: dict[int, float] = field(default_factory=dict)
    _good_streak: int = 0
    _settle: int = 0
    _probe_wait: dict[int, int] = field(default_factory=dict)
    _probing: int | None = None
    _probe_frames: int = 0
    changes: int = 0

    @property
    def budget_s(self) -> float:
        return self.frames_in_flight / self.target_fps

    @property
    def current(self) -> QualityLevel:
        return self.levels[self.level]

    def smoothed_s(self, level: int) -> float | None:
        """The smoothed latency last observed at ``level`` (None when unknown or forgotten)."""
        return self._ewma.get(level)

    def observe(self, latency_s: float, level: int | None = None, missed: bool = False) -> QualityLevel:
        lvl = self.level if level is None else level
        if lvl == self.level and self._settle > 0:
            self._settle -= 1  # queued behind the previous level's frames: not this level's
            return self.current
        prev = self._ewma.get(lvl)
        sample = max(latency_s, self.budget_s * 1.5) if missed else latency_s
        self._ewma[lvl] = sample if prev is None else (1 - self.alpha) * prev + self.alpha * sample
        if lvl != self.level:
            return self.current
        smoothed = self._ewma[lvl]
        if self._probing == self.level:
            self._probe_frames += 1
            if self._probe_frames >= self.up_after:  # the probed level holds
                self._probe_wait.pop(self.level, None)
                self._probing = None
        if smoothed > self.down_at * self.budget_s and self.level < len(self.levels) - 1:
            if self._probing == self.level:  # a probe that did not hold: wait longer next time
                wait = self._probe_wait.get(self.level, self.probe_after)
                self._probe_wait[self.level] = min(2 * wait, self.max_probe_after)
            self._probing = None
            self.level += 1
            self.changes += 1
            self._good_streak = 0
            self._settle = self.frames_in_flight - 1
        elif smoothed < self.up_at * self.budget_s and self.level > 0:
            self._good_streak += 1
            better = self._ewma.get(self.level - 1)
            fits = better is None or better < self.down_at * self.budget_s
            earned = self._good_streak >= self.up_after and fits
            if earned or self._good_streak >= self._probe_wait.get(self.level - 1, self.probe_after):
                self.level -= 1
                self.changes += 1
                self._good_streak = 0
                self._probing = None if earned else self.level
                self._probe_frames = 0
                # Forget the stale estimate so one bad old sample does not bounce us back.
                self._ewma.pop(self.level, None)
        else:
            self._good_streak = 0
        return self.current
