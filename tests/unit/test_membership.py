"""Membership core: merge rules, suspicion timeline, bounds, strict heartbeat decoding."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import FrameTooLargeError, ProtocolError, UnsupportedVersionError
from mesh.membership import (
    Heartbeat,
    HeartbeatDue,
    MembershipConfig,
    MembershipCore,
    PeerAlive,
    PeerDead,
    PeerForgotten,
    PeerJoined,
    PeerState,
    PeerSuspected,
)
from mesh.vivaldi import Coord


def hb(peer: str = "p1", seq: int = 1, inc: int = 0, **kw: Any) -> Heartbeat:
    fields: dict[str, Any] = dict(
        peer=peer,
        incarnation=inc,
        seqno=seq,
        region="eu",
        version="0.1.0",
        load=0.25,
        queue_depth=3,
        capacity=Heartbeat.make_capacity({"upscale": 4, "physics": 2}),
        coord=Coord(0.01, 0.02, 0.001),
        coord_error=0.3,
        uptime_s=12.5,
    )
    fields.update(kw)
    return Heartbeat(**fields)


def test_wire_roundtrip() -> None:
    h = hb()
    assert Heartbeat.from_wire(h.to_wire()) == h
    assert Heartbeat.decode(h.encode()) == h
    assert h.capacity_for("upscale") == 4 and h.capacity_for("ai") == 0
    assert h.capacity == (("physics", 2), ("upscale", 4))


def _mutated(**changes: Any) -> dict[str, Any]:
    w = hb().to_wire()
    for k, v in changes.items():
        if v is _DELETE:
            del w[k]
        else:
            w[k] = v
    return w


_DELETE = object()

BAD_WIRES = [
    ("not a map", [1, 2]),
    ("no version", _mutated(v=_DELETE)),
    ("missing field", _mutated(load=_DELETE)),
    ("extra field", _mutated(evil=1)),
    ("peer type", _mutated(peer=7)),
    ("peer empty", _mutated(peer="")),
    ("peer long", _mutated(peer="x" * 200)),
    ("seq bool", _mutated(seq=True)),
    ("seq negative", _mutated(seq=-1)),
    ("seq float", _mutated(seq=1.0)),
    ("load nan", _mutated(load=float("nan"))),
    ("load inf", _mutated(load=math.inf)),
    ("load negative", _mutated(load=-0.1)),
    ("queue huge", _mutated(queue=1 << 40)),
    ("cap not map", _mutated(cap=[("a", 1)])),
    ("cap kinds", _mutated(cap={f"k{i}": 1 for i in range(40)})),
    ("cap slots", _mutated(cap={"a": -1})),
    ("cap slot type", _mutated(cap={"a": "1"})),
    ("cap kind type", _mutated(cap={1: 1})),
    ("coord", _mutated(coord=[0, 0])),
    ("coord nan", _mutated(coord=[0, float("nan"), 0])),
    ("cerr", _mutated(cerr="x")),
    ("uptime", _mutated(up=-5)),
]


@pytest.mark.parametrize(("why", "wire"), BAD_WIRES, ids=[b[0] for b in BAD_WIRES])
def test_from_wire_rejects_malformed(why: str, wire: object) -> None:
    with pytest.raises(ProtocolError):
        Heartbeat.from_wire(wire)


def test_version_and_size_errors_are_specific() -> None:
    with pytest.raises(UnsupportedVersionError):
        Heartbeat.from_wire(_mutated(v=2))
    with pytest.raises(FrameTooLargeError):
        Heartbeat.decode(b"\x00" * 5000)
    with pytest.raises(ProtocolError):
        Heartbeat.decode(b"\xc1")  # never-used msgpack byte
    with pytest.raises(ProtocolError):
        Heartbeat.decode(hb().encode() + b"\x00")  # trailing data


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(st.binary(max_size=300))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        Heartbeat.decode(data)
    except ProtocolError:
        pass


_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=5)
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.dictionaries(st.sampled_from([*hb().to_wire().keys(), "zz"]), _leaf | st.lists(_leaf, max_size=4)))
def test_from_wire_fuzzed_maps(obj: dict[str, Any]) -> None:
    base = hb().to_wire()
    base.update(obj)
    try:
        Heartbeat.from_wire(msgpack.unpackb(msgpack.packb(base)))
    except ProtocolError:
        pass


def test_merge_rules_newer_wins_stale_counted() -> None:
    m = MembershipCore("me")
    assert m.on_heartbeat(hb(seq=5), 0.0)
    assert not m.on_heartbeat(hb(seq=5), 0.1)  # duplicate
    assert not m.on_heartbeat(hb(seq=4, load=0.9), 0.1)  # reordered
    assert m.on_heartbeat(hb(seq=6, load=0.5), 0.2)
    assert m.on_heartbeat(hb(seq=1, inc=1, load=0.7), 0.3)  # restarted peer: new incarnation
    assert not m.on_heartbeat(hb(seq=99, inc=0), 0.4)  # old incarnation replayed
    assert not m.on_heartbeat(hb(peer="me"), 0.4)
    info = m.get("p1")
    assert info is not None and info.heartbeat.load == 0.7
    assert (m.stats.accepted, m.stats.stale, m.stats.own) == (3, 3, 1)
    assert [type(e) for e in m.poll_effects()] == [PeerJoined]


def test_suspicion_timeline_and_recovery() -> None:
    cfg = MembershipConfig(
        heartbeat_interval_s=0.5, suspect_after_s=1.5, dead_after_s=3.0, forget_after_s=10.0
    )
    m = MembershipCore("me", cfg)
    m.on_heartbeat(hb("a", 1), 0.0)
    m.on_heartbeat(hb("b", 1), 0.0)
    m.poll_effects()
    t = 0.0
    seq = 1
    timeline: list[tuple[float, object]] = []
    while t < 12.0:
        nd = m.next_deadline()
        t = 12.0 if nd is None else min(nd, 12.0)
        if t < 5.0 and t >= seq * 0.5:  # "a" keeps beating until 5 s, "b" is silent
            seq += 1
            m.on_heartbeat(hb("a", seq), t)
        m.on_tick(t)
        timeline += [(t, e) for e in m.poll_effects() if not isinstance(e, HeartbeatDue)]
    events = [(round(t, 2), type(e).__name__, getattr(e, "peer", None)) for t, e in timeline]
    assert ("PeerSuspected", "b") == events[0][1:] and events[0][0] == 1.5
    assert (3.0, "PeerDead", "b") in events
    assert (10.0, "PeerForgotten", "b") in events  # silence is measured from the last heartbeat
    a_suspect = [t for t, kind, p in events if p == "a" and kind == "PeerSuspected"]
    assert a_suspect and 6.0 <= a_suspect[0] <= 6.6
    assert m.get("b") is None and m.state("a") is PeerState.DEAD
    # A newer heartbeat brings a dead peer back.
    m.on_heartbeat(hb("a", 1000), 12.0)
    assert [type(e) for e in m.poll_effects()] == [PeerAlive]
    assert [p.heartbeat.peer for p in m.peers()] == ["a"]


def test_peer_left_is_dead_at_once() -> None:
    m = MembershipCore("me")
    m.on_heartbeat(hb("a"), 0.0)
    m.poll_effects()
    m.on_peer_left("a", 0.1)
    assert m.poll_effects() == [PeerDead("a", left=True)]
    m.on_peer_left("a", 0.2)
    m.on_peer_left("ghost", 0.2)
    assert m.poll_effects() == []


def test_heartbeat_due_cadence_and_local_seqno() -> None:
    m = MembershipCore("me", incarnation=42)
    ticks = []
    t = 0.0
    for _ in range(6):
        t = m.next_deadline() or t
        m.on_tick(t)
        if HeartbeatDue() in m.poll_effects():
            ticks.append(t)
    assert ticks == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    m.on_tick(10.0)  # a long stall does not produce a burst
    assert m.poll_effects().count(HeartbeatDue()) == 1 and m.next_deadline() == 10.5
    kw: dict[str, Any] = dict(
        region="eu",
        version="v",
        load=0.0,
        queue_depth=0,
        capacity={},
        coord=Coord(),
        coord_error=1.0,
        uptime_s=0.0,
    )
    a, b = m.local_heartbeat(**kw), m.local_heartbeat(**kw)
    assert (a.incarnation, a.seqno, b.seqno) == (42, 1, 2)
    assert Heartbeat.from_wire(b.to_wire()) == b


def test_table_is_bounded_and_evicts_longest_dead_only() -> None:
    cfg = MembershipConfig(max_peers=3, suspect_after_s=1.0, dead_after_s=2.0, forget_after_s=100.0)
    m = MembershipCore("me", cfg)
    m.on_heartbeat(hb("a"), 0.0)
    m.on_heartbeat(hb("b"), 0.5)
    m.on_heartbeat(hb("c"), 5.0)
    m.on_tick(5.0)  # a and b are dead now (a first)
    assert m.on_heartbeat(hb("d"), 5.1)  # evicts a
    assert m.get("a") is None and m.get("b") is not None
    m.on_heartbeat(hb("c", 3), 5.2)
    assert m.on_heartbeat(hb("e"), 5.2)  # evicts b
    assert not m.on_heartbeat(hb("f"), 5.3)  # c, d, e all alive: refused
    assert len(m) == 3 and m.stats.refused_full == 1
    kinds = [type(e) for e in m.poll_effects()]
    assert kinds.count(PeerForgotten) == 2


def test_many_peers_timer_heap_stays_compact() -> None:
    m = MembershipCore("me")
    for r in range(30):
        for i in range(200):
            m.on_heartbeat(hb(f"p{i:04d}", r + 1), r * 0.1)
        m.on_tick(r * 0.1)
    assert len(m._timers) <= 4 * len(m) + 64
    assert len(m.peers()) == 200
    m.on_tick(100.0)
    kinds = {type(e) for e in m.poll_effects()}
    assert {PeerSuspected, PeerDead, PeerForgotten} <= kinds and len(m) == 0


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        MembershipCore("me", MembershipConfig(suspect_after_s=3.0, dead_after_s=2.0))
