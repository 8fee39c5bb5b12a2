"""atheris harness: ``tasks.codecs.decode_image`` (JPEG/PNG/WebP/raw) may raise only ``ValidationError``.

Run (outside pytest; atheris exits the interpreter)::

    python scripts/fuzz/fuzz_codec_image.py -max_total_time=60
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
        codecs.sniff_image_codec(data)
        codecs.image_size(data)
        codecs.decode_image(data, max_pixels=1 << 16, max_side=1024)
    except ValidationError:
        pass


def seeds() -> list[bytes]:
    img = (np.arange(8 * 8 * 3) % 251).astype(np.uint8).reshape(8, 8, 3)
    return [codecs.encode_image(img, c) for c in codecs.IMAGE_CODECS]


if __name__ == "__main__":
    main("codec_image", test_one_input, seeds())
