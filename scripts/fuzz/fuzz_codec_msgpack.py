"""atheris harness: ``tasks.codecs.decode_msgpack_map`` may raise only ``ValidationError``.

Run (outside pytest; atheris exits the interpreter)::

    python scripts/fuzz/fuzz_codec_msgpack.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import main

with atheris.instrument_imports():
    from mesh.errors import ValidationError
    from tasks import codecs


def test_one_input(data: bytes) -> None:
    try:
        codecs.decode_msgpack_map(data, max_bytes=1 << 16)
    except ValidationError:
        pass


def seeds() -> list[bytes]:
    return [codecs.encode_msgpack({"grid": b"\x00" * 16, "pairs": [[0, 0, 3, 3]], "h": 4, "w": 4})]


if __name__ == "__main__":
    main("codec_msgpack", test_one_input, seeds())
