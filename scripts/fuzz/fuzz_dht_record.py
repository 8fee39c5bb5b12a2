"""atheris harness: DHT records (``mesh.discovery.parse_record``) may raise only
``ProtocolError``/``VerificationError``, the namespace validator only ``ValueError``, and
its ``select`` nothing. The first two bytes pick the key kind.

Run (outside pytest; atheris exits the interpreter)::

    python scripts/fuzz/fuzz_dht_record.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import main

with atheris.instrument_imports():
    from mesh.discovery import (
        NODE_PREFIX,
        REGION_PREFIX,
        NodeRecord,
        RecordValidator,
        parse_record,
        sign_record,
    )
    from mesh.errors import ProtocolError, VerificationError
    from mesh.identity import Identity, peer_id_to_str

A = Identity.from_seed(b"a" * 32)
PA = peer_id_to_str(A.peer_id_bytes)
KEYS = [NODE_PREFIX + PA, REGION_PREFIX + "eu", "/p2c2r/other", NODE_PREFIX + "x"]
VALIDATOR = RecordValidator()


def test_one_input(data: bytes) -> None:
    key = KEYS[data[0] % len(KEYS)] if data else KEYS[0]
    value = data[1:]
    try:
        parse_record(key, value, now_ms=0)
    except (ProtocolError, VerificationError):
        pass
    try:
        VALIDATOR.validate(key, value)
    except ValueError:
        pass
    if VALIDATOR.select(key, [value, value]) not in (0, 1):
        raise AssertionError("select returned an index out of range")


def seeds() -> list[bytes]:
    rec = NodeRecord(PA, 5, 2**62, "eu", (("echo", 4),), 8, False, ("/ip4/1.2.3.4/tcp/1",))
    return [b"\x00" + sign_record(A.sign, rec)]


if __name__ == "__main__":
    main("dht_record", test_one_input, seeds())
