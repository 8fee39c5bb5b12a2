"""atheris harness: ``mesh.membership.Heartbeat.decode`` may raise only ``ProtocolError``.

Run (outside pytest; atheris exits the interpreter)::

    python scripts/fuzz/fuzz_heartbeat.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import main

with atheris.instrument_imports():
    from mesh.errors import ProtocolError
    from mesh.membership import Heartbeat
    from mesh.vivaldi import Coord


def test_one_input(data: bytes) -> None:
    try:
        hb = Heartbeat.decode(data)
    except ProtocolError:
        return
    if Heartbeat.decode(hb.encode()) != hb:
        raise AssertionError("heartbeat does not round-trip")


def seeds() -> list[bytes]:
    hb = Heartbeat(
        "12D3KooPeer",
        1,
        2,
        "eu",
        "0.1",
        0.5,
        3,
        Heartbeat.make_capacity({"upscale": 2}),
        Coord(0.01, 0.02, 0.001),
        1.0,
        10.0,
    )
    return [hb.encode()]


if __name__ == "__main__":
    main("heartbeat", test_one_input, seeds())
