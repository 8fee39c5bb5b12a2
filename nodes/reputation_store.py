"""Keeping a ``Reputation`` across restarts: a JSON file under the P2C2R home.

``Reputation`` (``nodes.reputation``) is sans-IO and lives in the process's own clock
(trio time). This shell maps it onto wall-clock time so that a ban, an offence count or a
score survives a restart and keeps expiring or decaying while the process is down:

- ``save_reputation(rep, path, now, wall)``: ``Reputation.export`` with every relative time
  turned into an absolute wall-clock time, written atomically (a temporary file in the same
  directory, flushed and fsynced, then ``os.replace``): a crash mid-write leaves the old
  file, never half of a new one. Mode 0600 (it names the peers this node distrusts).
- ``load_reputation(rep, path, now, wall)``: the reverse; a ban that ended during the
  downtime is dropped (its offence count is kept, so the next ban is longer). A file that
  cannot be read as a reputation file (bad JSON, wrong version, truncated) is moved aside
  to ``<name>.corrupt`` with a clear warning and the node starts with an empty table; a
  single bad record is skipped (counted in the warning), never fatal.
- ``persist_reputation(rep, path)``: a trio task that loads at start, saves every
  ``interval_s`` when something changed (``Reputation.changes``), and once more on exit.

Used by the gamer SDK (``GamerConfig.reputation_file``) and by every node
(``<home>/reputation.json``, ``nodes.node``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from nodes.reputation import PeerState, Reputation

log = logging.getLogger("p2c2r.reputation")

FORMAT = "p2c2r-reputation"
VERSION = 1
#: Largest file read back (100,000 records of ~160 bytes each, with room to spare).
MAX_FILE_BYTES = 32 * 1024 * 1024


class LoadResult:
    """What ``load_reputation`` found: records taken, records skipped, whether the file was bad."""

    __slots__ = ("corrupt", "skipped", "taken")

    def __init__(self, taken: int = 0, skipped: int = 0, corrupt: bool = False) -> None:
        self.taken = taken
        self.skipped = skipped
        self.corrupt = corrupt

    def __repr__(self) -> str:
        return f"LoadResult(taken={self.taken}, skipped={self.skipped}, corrupt={self.corrupt})"


def encode_state(rep: Reputation, now: float, wall: float) -> bytes:
    """The file's bytes: ``Reputation.export`` with times made absolute (wall-clock seconds)."""
    peers = []
    for st in rep.export(now):
        peers.append(
            {
                "peer": st.peer.hex(),
                "score": round(st.score, 6),
                "updated": round(wall - st.age_s, 3),
                "verified": st.verified,
                "offences": st.offences,
                "banned_until": round(wall + st.ban_left_s, 3) if st.ban_left_s > 0 else None,
            }
        )
    doc = {"format": FORMAT, "version": VERSION, "saved_at": round(wall, 3), "peers": peers}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_state(data: bytes, wall: float) -> tuple[list[PeerState], int]:
    """Parse a file's bytes into records relative to ``wall``; returns (records, skipped).

    Raises ``ValueError`` when the file as a whole is not a reputation file.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a p2c2r reputation file")
    if doc.get("version") != VERSION:
        raise ValueError(f"unsupported version {doc.get('version')!r}")
    peers = doc.get("peers")
    if not isinstance(peers, list):
        raise ValueError("'peers' is not a list")
    out: list[PeerState] = []
    skipped = 0
    for item in peers:
        try:
            out.append(_record(item, wall))
        except (KeyError, TypeError, ValueError):
            skipped += 1
    return out, skipped


def _record(item: Any, wall: float) -> PeerState:
    if not isinstance(item, dict):
        raise TypeError("record is not an object")
    peer = bytes.fromhex(item["peer"])
    score = _num(item["score"])
    updated = _num(item["updated"])
    until = item.get("banned_until")
    ban_left = 0.0 if until is None else max(0.0, _num(until) - wall)
    verified, offences = item.get("verified", 0), item.get("offences", 0)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (verified, offences)):
        raise ValueError("counts must be non-negative integers")
    return PeerState(peer, score, max(0.0, wall - updated), verified, offences, ban_left)


def _num(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError("not a finite number")
    return float(x)


#: A file name as the SDK and the node take it.
PathLike = str | os.PathLike[str]


def save_reputation(rep: Reputation, file: PathLike, now: float, wall: float) -> None:
    """Write ``rep`` to ``file`` atomically (temporary file, fsync, rename)."""
    path = Path(file).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_state(rep, now, wall)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_reputation(rep: Reputation, file: PathLike, now: float, wall: float) -> LoadResult:
    """Read ``file`` into ``rep``. A missing file is an empty table; a corrupt one is
    moved aside to ``<name>.corrupt`` with a warning (never an exception)."""
    path = Path(file).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{size} bytes is over the {MAX_FILE_BYTES}-byte limit")
        states, skipped = decode_state(path.read_bytes(), wall)
    except FileNotFoundError:
        return LoadResult()
    except (OSError, ValueError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
            where = f"moved to {aside}"
        except OSError as move_exc:
            where = f"could not be moved aside ({move_exc})"
        log.warning(
            "reputation file %s is unreadable (%s): starting with no bans or scores; the file %s",
            path,
            exc,
            where,
        )
        return LoadResult(corrupt=True)
    taken = rep.restore(states, now)
    skipped += len(states) - taken
    if skipped:
        log.warning("reputation file %s: skipped %d malformed record(s)", path, skipped)
    log.info("loaded %d reputation record(s) from %s", taken, path)
    return LoadResult(taken, skipped)


async def persist_reputation(
    rep: Reputation,
    path: PathLike,
    *,
    interval_s: float = 30.0,
    wall: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[LoadResult] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Load ``path`` into ``rep``, then save it every ``interval_s`` when it changed and
    once more when cancelled. Start with ``await nursery.start(persist_reputation, ...)``."""
    result = load_reputation(rep, path, trio.current_time(), wall())
    saved = rep.changes
    task_status.started(result)
    try:
        while True:
            await trio.sleep(interval_s)
            if rep.changes != saved:
                saved = rep.changes
                _save_quietly(rep, path, wall)
    finally:
        if rep.changes != saved:
            _save_quietly(rep, path, wall)


def _save_quietly(rep: Reputation, path: PathLike, wall: Callable[[], float]) -> None:
    try:
        save_reputation(rep, path, trio.current_time(), wall())
    except OSError as exc:  # a full disk must not take the node or the game down
        log.warning("could not save reputation to %s: %s", path, exc)
