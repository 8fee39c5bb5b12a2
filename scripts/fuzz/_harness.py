"""Shared driver for the atheris harnesses in this folder (not a harness itself).

Each harness calls ``main(name, test_one_input, seeds)``: it writes the seed inputs into
a corpus folder (``$P2C2R_FUZZ_DIR/<name>``, default ``/tmp/p2c2r-fuzz/<name>``) unless
the command line already names a corpus folder, then hands over to libFuzzer. atheris
exits the interpreter on the first uncaught exception, printing the crashing input and
writing it to ``crash-<sha1>`` in the working directory; reproduce it with
``python scripts/fuzz/<harness>.py crash-<sha1>``.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


def main(name: str, test_one_input: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    import atheris

    args = list(sys.argv)
    if not any(Path(a).is_dir() or (Path(a).is_file() and not a.endswith(".py")) for a in args[1:]):
        corpus = Path(os.environ.get("P2C2R_FUZZ_DIR", "/tmp/p2c2r-fuzz")) / name
        corpus.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        args.append(str(corpus))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()
