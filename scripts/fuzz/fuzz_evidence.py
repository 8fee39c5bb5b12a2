"""atheris harness: ``nodes.reputation.Evidence.from_wire`` may raise only ``ProtocolError``,
and whatever it accepts round-trips; ``verify_evidence`` on it raises only ``InvalidEvidenceError``.

Run (outside pytest; atheris exits the interpreter)::

    python scripts/fuzz/fuzz_evidence.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import main

import mesh.identity  # noqa: F401  (py-libp2p: imported uninstrumented, it is huge and not the target)

with atheris.instrument_imports():
    from mesh.errors import ProtocolError
    from nodes.reputation import Evidence, InvalidEvidenceError, SignedResult, make_evidence, verify_evidence
    from tasks.registry import default_registry

REGISTRY = default_registry()


def test_one_input(data: bytes) -> None:
    try:
        ev = Evidence.from_wire(data)
    except ProtocolError:
        return
    if Evidence.from_wire(ev.to_wire()) != ev:
        raise AssertionError("evidence does not round-trip")
    try:
        verify_evidence(ev, REGISTRY, recompute=False)
    except InvalidEvidenceError:
        pass


def seeds() -> list[bytes]:
    bad = SignedResult(
        b"\x01" * 16, b"\x00\x24" + b"\x08\x01\x12\x20" + b"k" * 32, b"d" * 32, 7, b"s" * 64, b"jello"
    )
    ref = SignedResult(
        b"\x02" * 16, b"\x00\x24" + b"\x08\x01\x12\x20" + b"h" * 32, b"e" * 32, 8, b"t" * 64, b"hello"
    )
    ev = make_evidence(
        kind="echo", params={"tag": "x"}, data=b"hello", bad=bad, reason="self_check", reference=ref
    )
    return [ev.to_wire()]


if __name__ == "__main__":
    main("evidence", test_one_input, seeds())
