"""Scenario files: the TOML schema, its defaults, and validation into frozen dataclasses.

A scenario says what world to simulate (regions and their RTT matrix, peers and their
capabilities, churn, partitions, malicious workers), what the gamers ask for (workloads),
which placement policies to compare, and how to report. Every field has a default except the
region list; see ``simulations/scenarios/*.toml`` for annotated examples with sources.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

__all__ = [
    "ALL_POLICIES",
    "ChurnSpec",
    "ControlSpec",
    "EventSpec",
    "NetworkSpec",
    "OutputSpec",
    "PartitionSpec",
    "PeerClass",
    "PeersSpec",
    "Scenario",
    "VerificationSpec",
    "WorkloadSpec",
    "load_scenario",
    "parse_scenario",
]

#: Every policy ``nodes.scheduler.policy_by_name`` knows, in report order ("ours" last).
ALL_POLICIES = ("random", "round_robin", "least_loaded", "power_of_two", "weighted", "predicted")


@dataclass(frozen=True)
class PartitionSpec:
    start_s: float
    end_s: float
    #: Cut these regions off from the rest of the world.
    regions: tuple[str, ...] = ()
    #: Cut off whoever coordinates this region at ``start_s`` (a minority of one).
    isolate_coordinator: str = ""


@dataclass(frozen=True)
class NetworkSpec:
    regions: tuple[str, ...]
    rtt_ms: tuple[tuple[float, ...], ...]
    intra_rtt_ms: tuple[float, ...]
    region_weights: tuple[float, ...]
    access_rtt_median_ms: float = 8.0
    access_rtt_sigma: float = 0.5
    jitter_ms: float = 2.0
    loss: float = 0.001
    #: (uplink Mbit/s, share) pairs; downlink is ``down_factor`` times the uplink.
    bandwidth_mbps: tuple[tuple[float, float], ...] = ((20.0, 0.3), (100.0, 0.5), (500.0, 0.2))
    down_factor: float = 4.0
    partitions: tuple[PartitionSpec, ...] = ()


@dataclass(frozen=True)
class PeerClass:
    name: str
    share: float
    cores: int
    speed: float
    gpu: bool = False


@dataclass(frozen=True)
class PeersSpec:
    count: int
    stewards_per_region: int = 3
    malicious_fraction: float = 0.0
    classes: tuple[PeerClass, ...] = (
        PeerClass("laptop", 0.4, 4, 0.7),
        PeerClass("desktop", 0.4, 8, 1.0),
        PeerClass("gpu-desktop", 0.2, 8, 1.2, True),
    )
    #: Service-time divisor on GPU peers, per kind (kinds absent: no GPU speedup).
    gpu_speedup: tuple[tuple[str, float], ...] = (("upscale", 8.0), ("raytrace", 10.0))
    #: Coefficient of variation (lognormal) of service times around the calibrated cost.
    service_cv: float = 0.15


@dataclass(frozen=True)
class ChurnSpec:
    enabled: bool = True
    #: Weibull shape of session lengths (Stutzbach & Rejaie 2006: 0.34-0.59).
    session_shape: float = 0.5
    session_median_s: float = 1800.0
    offline_mean_s: float = 900.0
    graceful_fraction: float = 0.5


@dataclass(frozen=True)
class ControlSpec:
    heartbeat_interval_s: float = 0.5
    suspect_after_s: float = 1.5
    dead_after_s: float = 3.0
    forget_after_s: float = 30.0
    lease_s: float = 5.0
    max_queue_wait_s: float = 0.25
    election_lease_s: float = 1.5
    renew_interval_s: float = 0.5
    summary_interval_s: float = 1.0
    #: Load reports to the coordinator (``nodes.control``'s ``LoadReport``, 2 Hz); 0 = none.
    load_report_interval_s: float = 0.5
    #: ``nodes.control`` raises the election's claim timeout from 0.2 s to 0.5 s.
    claim_timeout_s: float = 0.5
    #: "coordinator": heartbeats go to the region coordinator (one copy each);
    #: "topic": flooded to every member of the region (one copy per member).
    heartbeat_delivery: str = "coordinator"
    #: Vivaldi warm-up before t=0: rounds x samples per round, per endpoint.
    vivaldi_rounds: int = 6
    vivaldi_samples: int = 4


@dataclass(frozen=True)
class VerificationSpec:
    """How gamers verify (the real ``nodes.verification`` / ``nodes.reputation`` cores) and how
    malicious workers cheat."""

    #: "core": ``VerificationConfig()`` (the SDK's default policy) with ``config`` overrides;
    #: "off": ``VerificationConfig.off()`` (signatures only; the core still places every task);
    #: "none": no verification core at all (every result accepted; the control and data
    #: planes alone, for scale runs).
    policy: str = "core"
    #: ``VerificationConfig`` field overrides, e.g. ``{ dup_floor = 0.1 }``.
    config: tuple[tuple[str, Any], ...] = ()
    #: ``ReputationConfig`` field overrides (gamers' and coordinators' reputations).
    reputation: tuple[tuple[str, Any], ...] = ()
    #: Probability that a malicious worker returns a wrong result for a task.
    cheat_rate: float = 1.0
    #: Share of wrong results the kind's cheap self-check rejects (the rest are plausible
    #: forgeries only redundancy, probes or a re-run can catch). Deterministic per output.
    self_check_detect: float = 0.5
    #: Malicious workers return the same wrong output for the same task (they collude), so
    #: two of them paired as duplicates agree.
    collude: bool = False
    #: Evidence a gamer's core produces goes to the other gamers of its region and to its
    #: coordinator (each verifies it and applies it to its own ``Reputation``).
    share_evidence: bool = True


@dataclass(frozen=True)
class EventSpec:
    at_s: float
    action: str  # "kill_coordinator" | "kill_peer"
    region: str = ""
    peer: str = ""
    restart_after_s: float = 0.0


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    kind: str
    size: str = "small"
    params: tuple[tuple[str, Any], ...] = ()
    #: Fraction of gamers that run one instance of this workload.
    share: float = 1.0
    #: Periodic rate choices (one drawn per instance); ignored for closed-loop batch work.
    rate_hz: tuple[float, ...] = (30.0,)
    #: Per-task deadline; 0: the caller gives none, so the gamer's ``AdaptiveTimeouts``
    #: (``nodes.sdk_cores``) sets it from the kind's observed latencies.
    deadline_ms: float = 100.0
    priority: int = 1
    #: > 0: closed-loop batch work with this many tasks in flight per instance.
    lanes: int = 0
    #: Leased workers a periodic stream spreads its tasks over, each task to the one with
    #: the fewest copies in flight per leased slot (the SDK's mesh client: its
    #: ``MeshClientConfig.workers_per_kind`` is 2, with 2 ``slots`` each).
    workers: int = 1
    #: Up to this many when every leased worker is over its slots as a task is placed (the
    #: SDK asks for one more lease then, up to ``max_workers_per_kind``, 4); 0: ``workers``.
    #: A lease added so is renewed like the others; once lost (its worker gone, banned or
    #: missing), it is asked for again only if demand still exceeds the leases held.
    max_workers: int = 0
    #: Tasks of this workload count as "simple" in the p50 < 100 ms target.
    simple: bool = False
    #: Placement lease length asked for (0: the scheduler's default); long for batch lanes.
    lease_s: float = 0.0
    #: Slots per lease (closed-loop lanes keep this many tasks in flight on the leased worker).
    slots: int = 1
    #: Extra tasks a closed-loop lane keeps queued on its worker beyond its slots, so the next
    #: task is already there when one finishes (hides the round trip, as a prefetching batch
    #: client does).
    pipeline: int = 0


@dataclass(frozen=True)
class OutputSpec:
    interval_s: float = 1.0
    #: Tasks submitted before this are not counted (the first election takes ~2 s).
    warmup_s: float = 5.0
    #: Fraction of tasks written to tasks.csv (every k-th task; all are counted).
    task_sample: float = 1.0


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    network: NetworkSpec
    peers: PeersSpec
    gamers_per_100_peers: float
    workloads: tuple[WorkloadSpec, ...]
    policies: tuple[str, ...] = ALL_POLICIES
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    control: ControlSpec = field(default_factory=ControlSpec)
    verification: VerificationSpec = field(default_factory=VerificationSpec)
    events: tuple[EventSpec, ...] = ()
    output: OutputSpec = field(default_factory=OutputSpec)
    calibration: str = ""
    description: str = ""

    def with_peers(self, count: int, duration_s: float | None = None) -> Scenario:
        """The same scenario with another peer count (and optionally duration)."""
        from dataclasses import replace

        peers = replace(self.peers, count=count)
        return replace(self, peers=peers, duration_s=duration_s or self.duration_s)


def _take(d: Mapping[str, Any], allowed: set[str], where: str) -> dict[str, Any]:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"scenario [{where}]: unknown key(s) {', '.join(unknown)}")
    return dict(d)


def _floats(x: Any, where: str) -> tuple[float, ...]:
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return (float(x),)
    if not isinstance(x, list) or not all(isinstance(v, (int, float)) for v in x):
        raise ConfigError(f"scenario {where}: expected a number or a list of numbers")
    return tuple(float(v) for v in x)


def _network(d: Mapping[str, Any]) -> NetworkSpec:
    keys = {f for f in NetworkSpec.__dataclass_fields__}
    d = _take(d, keys, "network")
    regions = tuple(str(r) for r in d.pop("regions", ()))
    if not regions:
        raise ConfigError("scenario [network]: regions must list at least one region")
    n = len(regions)
    rtt_raw = d.pop("rtt_ms", [[0.0]])
    rtt = tuple(_floats(row, "network.rtt_ms") for row in rtt_raw)
    if len(rtt) != n or any(len(row) != n for row in rtt):
        raise ConfigError(f"scenario [network]: rtt_ms must be a {n}x{n} matrix")
    for i in range(n):
        for j in range(n):
            if rtt[i][j] < 0 or abs(rtt[i][j] - rtt[j][i]) > 1e-9:
                raise ConfigError("scenario [network]: rtt_ms must be symmetric and non-negative")
    intra = _floats(d.pop("intra_rtt_ms", 10.0), "network.intra_rtt_ms")
    if len(intra) == 1:
        intra = intra * n
    weights = _floats(d.pop("region_weights", [1.0] * n), "network.region_weights")
    if len(intra) != n or len(weights) != n or min(weights) < 0 or sum(weights) <= 0:
        raise ConfigError("scenario [network]: intra_rtt_ms and region_weights need one entry per region")
    parts = []
    for p in d.pop("partitions", []):
        p = _take(p, {"start_s", "end_s", "regions", "isolate_coordinator"}, "network.partitions")
        spec = PartitionSpec(
            float(p["start_s"]),
            float(p["end_s"]),
            tuple(str(r) for r in p.get("regions", [])),
            str(p.get("isolate_coordinator", "")),
        )
        bad = [r for r in (*spec.regions, spec.isolate_coordinator) if r and r not in regions]
        if bad or spec.end_s <= spec.start_s or not (spec.regions or spec.isolate_coordinator):
            raise ConfigError(f"scenario partition {p}: needs start_s < end_s and known regions")
        parts.append(spec)
    bw = d.pop("bandwidth_mbps", None)
    kw: dict[str, Any] = {k: float(v) for k, v in d.items()}
    if bw is not None:
        kw["bandwidth_mbps"] = tuple((float(a), float(b)) for a, b in bw)
    net = NetworkSpec(regions, rtt, intra, weights, partitions=tuple(parts), **kw)
    if not 0 <= net.loss < 1:
        raise ConfigError("scenario [network]: loss must be in [0, 1)")
    return net


def _peers(d: Mapping[str, Any]) -> PeersSpec:
    d = _take(d, set(PeersSpec.__dataclass_fields__), "peers")
    kw: dict[str, Any] = {}
    if "classes" in d:
        classes = []
        for c in d.pop("classes"):
            c = _take(c, set(PeerClass.__dataclass_fields__), "peers.classes")
            classes.append(
                PeerClass(
                    str(c["name"]), float(c["share"]), int(c["cores"]), float(c["speed"]), bool(c.get("gpu"))
                )
            )
        kw["classes"] = tuple(classes)
    if "gpu_speedup" in d:
        kw["gpu_speedup"] = tuple(sorted((str(k), float(v)) for k, v in d.pop("gpu_speedup").items()))
    kw.update(d)
    spec = PeersSpec(**kw)
    if spec.count < 1 or spec.stewards_per_region < 1 or not 0 <= spec.malicious_fraction < 1:
        raise ConfigError(
            "scenario [peers]: count >= 1, stewards_per_region >= 1, malicious_fraction in [0,1)"
        )
    return spec


def _verification(d: Mapping[str, Any]) -> VerificationSpec:
    from nodes.reputation import ReputationConfig
    from nodes.verification import VerificationConfig

    d = _take(d, set(VerificationSpec.__dataclass_fields__), "verification")
    kw = dict(d)
    for key, cls in (("config", VerificationConfig), ("reputation", ReputationConfig)):
        over = dict(d.get(key, {}))
        _take(over, set(cls.__dataclass_fields__), f"verification.{key}")
        kw[key] = tuple(sorted(over.items()))
    spec = VerificationSpec(**kw)
    if spec.policy not in ("core", "off", "none"):
        raise ConfigError("scenario [verification]: policy is 'core', 'off' or 'none'")
    if not (0 <= spec.cheat_rate <= 1 and 0 <= spec.self_check_detect <= 1):
        raise ConfigError("scenario [verification]: cheat_rate and self_check_detect in [0, 1]")
    return spec


def _workload(d: Mapping[str, Any]) -> WorkloadSpec:
    d = _take(d, set(WorkloadSpec.__dataclass_fields__), "workloads")
    kw = dict(d)
    kw["params"] = tuple(sorted(dict(d.get("params", {})).items()))
    kw["rate_hz"] = _floats(d.get("rate_hz", 30.0), "workloads.rate_hz")
    spec = WorkloadSpec(**kw)
    if spec.max_workers and spec.max_workers < spec.workers:
        raise ConfigError(f"scenario workload {spec.name!r}: max_workers below workers")
    if spec.workers < 1 or (spec.lanes > 0 and max(spec.workers, spec.max_workers) != 1):
        raise ConfigError(
            f"scenario workload {spec.name!r}: workers must be >= 1, and only periodic streams"
            " (lanes = 0) spread over several; closed-loop work has one lease per lane"
        )
    if spec.lanes < 0 or spec.deadline_ms < 0 or (spec.lanes == 0 and min(spec.rate_hz) <= 0):
        raise ConfigError(f"scenario workload {spec.name!r}: bad lanes, rate or deadline")
    if spec.deadline_ms == 0 and spec.lanes == 0:
        raise ConfigError(
            f"scenario workload {spec.name!r}: an adaptive deadline (0) needs closed-loop lanes"
        )
    return spec


def parse_scenario(doc: Mapping[str, Any], *, base_dir: Path | None = None) -> Scenario:
    """Build a ``Scenario`` from a decoded TOML document; raises ``ConfigError``."""
    top = {
        "name", "description", "duration_s", "policies", "gamers_per_100_peers", "calibration",
        "network", "peers", "churn", "control", "verification", "events", "workloads", "output",
    }  # fmt: skip
    d = _take(doc, top, "top level")
    try:
        policies = tuple(str(p) for p in d.get("policies", ALL_POLICIES))
        bad = [p for p in policies if p not in ALL_POLICIES]
        if bad or not policies:
            raise ConfigError(f"scenario: unknown policies {bad}; known {list(ALL_POLICIES)}")
        cal = str(d.get("calibration", ""))
        if cal and base_dir is not None and not Path(cal).is_absolute():
            cal = str(base_dir / cal)
        scen = Scenario(
            name=str(d.get("name", "scenario")),
            description=str(d.get("description", "")),
            duration_s=float(d["duration_s"]),
            network=_network(d["network"]),
            peers=_peers(d["peers"]),
            gamers_per_100_peers=float(d.get("gamers_per_100_peers", 10.0)),
            workloads=tuple(_workload(w) for w in d.get("workloads", [])),
            policies=policies,
            churn=ChurnSpec(**_take(d.get("churn", {}), set(ChurnSpec.__dataclass_fields__), "churn")),
            control=ControlSpec(
                **_take(d.get("control", {}), set(ControlSpec.__dataclass_fields__), "control")
            ),
            verification=_verification(d.get("verification", {})),
            events=tuple(
                EventSpec(**_take(e, set(EventSpec.__dataclass_fields__), "events"))
                for e in d.get("events", [])
            ),
            output=OutputSpec(**_take(d.get("output", {}), set(OutputSpec.__dataclass_fields__), "output")),
            calibration=cal,
        )
    except KeyError as e:
        raise ConfigError(f"scenario: missing required key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"scenario: {e}") from e
    if scen.duration_s <= 0 or not scen.workloads:
        raise ConfigError("scenario: duration_s must be positive and at least one workload given")
    if scen.control.heartbeat_delivery not in ("coordinator", "topic"):
        raise ConfigError("scenario [control]: heartbeat_delivery is 'coordinator' or 'topic'")
    for ev in scen.events:
        if ev.action not in ("kill_coordinator", "kill_peer"):
            raise ConfigError(f"scenario event action {ev.action!r}: kill_coordinator or kill_peer")
        if ev.action == "kill_coordinator" and ev.region not in scen.network.regions:
            raise ConfigError(f"scenario event: unknown region {ev.region!r}")
    return scen


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read scenario {p}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"scenario {p} is not valid TOML: {e}") from e
    return parse_scenario(doc, base_dir=p.parent)
