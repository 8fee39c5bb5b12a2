"""atheris harness: ``tasks.codecs.decode_array`` / ``array_header`` may raise only ``ValidationError``.

Run (outside pytest; atheris exits the interpreter)::

    python scripts/fuzz/fuzz_codec_array.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import main

with atheris.instrument_imports():
    from mesh.errors import ValidationError
    from tasks import codecs


def test_one_input(data: bytes) -> None:
    try:
        codecs.array_header(data)
        codecs.decode_array(data, max_elements=1 << 16, max_bytes=1 << 20)
    except ValidationError:
        pass


def seeds() -> list[bytes]:
    return [
        codecs.encode_array(np.arange(12, dtype="<f8").reshape(3, 4), "raw"),
        codecs.encode_array(np.arange(12, dtype="<i4").reshape(2, 2, 3), "zstd"),
        codecs.encode_array(np.array([True, False]), "raw"),
    ]


if __name__ == "__main__":
    main("codec_array", test_one_input, seeds())
