"""atheris harness: every ``TaskKind.validate_params`` may raise only ``ValidationError``.

The first byte picks the kind; the rest is decoded as msgpack (any object, not only maps)
and handed to ``validate_params`` with a fuzzed input length.

Run (outside pytest; atheris exits the interpreter)::

    python scripts/fuzz/fuzz_task_params.py -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import main

with atheris.instrument_imports():
    from mesh.errors import ValidationError
    from tasks.registry import default_registry

REGISTRY = default_registry()
KINDS = REGISTRY.kinds()


def test_one_input(data: bytes) -> None:
    if len(data) < 5:
        return
    kind = KINDS[data[0] % len(KINDS)]
    data_len = int.from_bytes(data[1:5], "big")
    try:
        params = msgpack.unpackb(data[5:], raw=False, strict_map_key=False, max_ext_len=0)
    except Exception:  # not msgpack: nothing to validate (the wire decoder refuses it first)
        return
    try:
        kind.validate_params(params, data_len)
    except ValidationError:
        pass


def seeds() -> list[bytes]:
    out = []
    for i, kind in enumerate(KINDS):
        params = {name: spec.default for name, spec in kind.params.items() if spec.default is not None}
        out.append(bytes([i]) + (1000).to_bytes(4, "big") + msgpack.packb(params, use_bin_type=True))
    return out


if __name__ == "__main__":
    main("task_params", test_one_input, seeds())
