"""Reputation across restarts: export/restore in the core, the JSON file in the shell."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.reputation import PeerState, Reputation, ReputationConfig
from nodes.reputation_store import (
    decode_state,
    encode_state,
    load_reputation,
    persist_reputation,
    save_reputation,
)

A, B, C = b"\x00\x24peer-a", b"\x00\x24peer-b", b"\x00\x24peer-c"
CFG = ReputationConfig(ban_base_s=100.0, ban_max_s=1000.0, half_life_s=50.0)


def _table() -> Reputation:
    rep = Reputation(CFG)
    for _ in range(30):
        rep.record_verified(A, 0.0)
    rep.ban(B, 0.0)  # 100 s, offence 1
    rep.record_verified(C, 0.0)
    return rep


def test_export_restore_keeps_bans_offences_and_decayed_scores() -> None:
    rep = _table()
    states = rep.export(10.0)
    assert states[0].peer == B  # bans first
    fresh = Reputation(CFG)
    assert fresh.restore(states, 500.0) == 3
    # the ban had 90 s left when exported: it ends 90 s after the restore
    assert fresh.is_banned(B, 589.0) and not fresh.is_banned(B, 591.0)
    assert fresh.record(B) is not None and fresh.record(B).offences == 1  # type: ignore[union-attr]
    assert fresh.trust(A, 500.0) == pytest.approx(rep.trust(A, 10.0), rel=1e-9)
    # a second offence after the restore doubles, as it would have without the restart
    assert fresh.ban(B, 600.0) == pytest.approx(800.0)


def test_restore_clamps_what_it_is_given() -> None:
    rep = Reputation(CFG)
    bad = [
        PeerState(A, 7.0, -5.0, 1, 0, 0.0),  # score clamped to 1, age to 0
        PeerState(B, 0.0, 0.0, 0, 2, 1e12),  # ban clamped to ban_max_s
        PeerState(C, math.nan, 0.0, 0, 0, 0.0),  # skipped
        PeerState(b"", 0.5, 0.0, 0, 0, 0.0),  # skipped
    ]
    assert rep.restore(bad, 0.0) == 2
    assert rep.trust(A, 0.0) == 1.0
    assert rep.is_banned(B, 999.0) and not rep.is_banned(B, 1001.0)
    assert rep.record(C) is None


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["ok", "fault", "ban", "short"]), st.sampled_from([A, B, C]), st.floats(0, 50)
        ),
        max_size=40,
    ),
    downtime=st.floats(0, 2000),
)
def test_file_round_trip_is_the_same_table_later(
    ops: list[tuple[str, bytes, float]], downtime: float
) -> None:
    """Whatever happened, a save and a load ``downtime`` seconds later (wall clock) gives
    the trust, bans and offence counts the table itself would give at that time."""
    rep = Reputation(CFG)
    now = 0.0
    for op, peer, dt in ops:
        now += dt
        if op == "ok":
            rep.record_verified(peer, now)
        elif op == "fault":
            rep.record_fault(peer, now)
        elif op == "ban":
            rep.ban(peer, now)
        else:
            rep.ban(peer, now, duration_s=30.0)
    wall0 = 1_700_000_000.0
    data = encode_state(rep, now, wall0)
    states, skipped = decode_state(data, wall0 + downtime)
    assert skipped == 0
    back = Reputation(CFG)
    back.restore(states, 0.0)
    later = now + downtime
    for peer in (A, B, C):
        orig = rep.record(peer)
        got = back.record(peer)
        if orig is None:
            assert got is None
            continue
        left = orig.banned_until - later
        if abs(left) > 0.01:  # the file keeps milliseconds: skip the very edge of a ban
            assert back.is_banned(peer, 0.0) == (left > 0)
        assert back.trust(peer, 0.0) == pytest.approx(rep.trust(peer, later), abs=1e-4)
        if orig.offences:
            assert got is not None and got.offences == orig.offences


def test_save_is_atomic_private_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "home" / "reputation.json"
    save_reputation(_table(), path, 0.0, 1000.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["reputation.json"]  # no temp file left
    back = Reputation(CFG)
    res = load_reputation(back, path, 0.0, 1050.0)  # 50 s later
    assert (res.taken, res.skipped, res.corrupt) == (3, 0, False)
    assert back.is_banned(B, 49.0) and not back.is_banned(B, 51.0)


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "reputation.json"
    save_reputation(_table(), path, 0.0, 1000.0)
    before = path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_reputation(Reputation(CFG), path, 0.0, 1000.0)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["reputation.json"]


@pytest.mark.parametrize(
    "content",
    [b"\x00\xffnot json", b'{"format": "p2c2r-reputation", "version": 99, "peers": []}', b"[1, 2]", b""],
)
def test_a_corrupt_file_warns_moves_aside_and_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "reputation.json"
    path.write_bytes(content)
    rep = Reputation(CFG)
    with caplog.at_level(logging.WARNING, logger="p2c2r.reputation"):
        res = load_reputation(rep, path, 0.0, 1000.0)
    assert res.corrupt and len(rep) == 0
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert not path.exists() and (tmp_path / "reputation.json.corrupt").read_bytes() == content


def test_bad_records_are_skipped_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "reputation.json"
    good = json.loads(encode_state(_table(), 0.0, 1000.0))
    good["peers"] += [{"peer": "zz"}, {"peer": "00", "score": "x", "updated": 1}, 5]
    path.write_text(json.dumps(good))
    rep = Reputation(CFG)
    with caplog.at_level(logging.WARNING, logger="p2c2r.reputation"):
        res = load_reputation(rep, path, 0.0, 1000.0)
    assert (res.taken, res.skipped, res.corrupt) == (3, 3, False)
    assert "skipped 3" in caplog.text


def test_missing_file_is_an_empty_table(tmp_path: Path) -> None:
    rep = Reputation(CFG)
    res = load_reputation(rep, tmp_path / "nope.json", 0.0, 1000.0)
    assert (res.taken, res.corrupt) == (0, False) and len(rep) == 0


async def test_persist_task_saves_on_change_and_on_exit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "reputation.json"
    wall = [5000.0]
    rep = Reputation(CFG)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: persist_reputation(
                rep, path, interval_s=10.0, wall=lambda: wall[0], task_status=task_status
            )
        )
        await trio.sleep(15.0)
        assert not path.exists()  # nothing changed: nothing written
        rep.ban(B, trio.current_time())
        await trio.sleep(10.0)
        assert path.exists()
        first = path.read_bytes()
        rep.record_verified(A, trio.current_time())
        nursery.cancel_scope.cancel()
    assert path.read_bytes() != first  # the exit save caught the last change
    back = Reputation(CFG)
    load_reputation(back, path, 0.0, wall[0])
    assert back.is_banned(B, 1.0) and back.trust(A, 0.0) > 0
