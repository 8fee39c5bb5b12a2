"""atheris harness: ``mesh.wire.FrameDecoder`` + ``decode_frame`` may raise only ``ProtocolError``.

Run (outside pytest; atheris exits the interpreter)::

    . .venv/bin/activate && pip install atheris
    python scripts/fuzz/fuzz_wire_frame.py -max_total_time=60      # corpus in /tmp/p2c2r-fuzz
    python scripts/fuzz/fuzz_wire_frame.py crash-<sha1>            # replay a crash
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import main

with atheris.instrument_imports():
    from mesh import wire
    from mesh.errors import ProtocolError


def test_one_input(data: bytes) -> None:
    dec = wire.FrameDecoder(max_frame=1 << 16)
    try:
        for body in dec.feed(data):
            try:
                wire.decode_frame(body, 1 << 16)
            except ProtocolError:
                pass
    except ProtocolError:
        pass


def seeds() -> list[bytes]:
    tid = b"\x01" * 16
    return [
        wire.encode_tasks([wire.TaskRecord(tid, "echo", {"tag": "x"}, b"data", 0, 100)]),
        wire.encode_results(
            [wire.ResultRecord(tid, b"out", 0, 5, b"s" * 64), wire.ErrorRecord(tid, "x", "m")]
        ),
        wire.encode_cancels([tid]),
        wire.encode_error("protocol", "bad"),
    ]


if __name__ == "__main__":
    main("wire_frame", test_one_input, seeds())
