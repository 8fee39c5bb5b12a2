"""Test-only worker misbehaviour, for the adversarial end-to-end test (never for production).

``p2c2r node run --misbehave MODE[:after=N][:delay=S]`` (a hidden flag) installs one of
these on the node's ``Worker.behaviour`` hook. Each mode is what a cheating or broken
peer could really do with its own key:

``wrong``    a validly signed wrong answer that still passes the kind's self-check
             (velocities of ``physics_step``/``flocking`` scaled by 0.999, consistently,
             so cheaters agree with each other: the colluding worst case). Kinds without
             such a plausible perturbation get a flipped byte (fails the self-check).
``forge``    a wrong output under a signature that is not the worker's (another key).
``replay``   the signed result of an earlier task of the same kind, sent for a new one.
``drop``     never answers.
``slow``     answers right, ``delay`` seconds late (default 5).

``after=N``: behave honestly for the first N tasks, then misbehave (a "sleeper").
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np

from mesh import wire
from mesh.errors import ConfigError
from mesh.identity import Identity
from nodes.worker import Worker
from tasks.codecs import decode_array, encode_array

MODES = ("wrong", "forge", "replay", "drop", "slow")
#: Velocity columns per kind: a small consistent scale keeps every self-check passing.
_VELOCITY_COLUMNS = {"physics_step": slice(3, 6), "flocking": slice(2, 4)}


@dataclass(frozen=True)
class MisbehaveSpec:
    mode: str
    after: int = 0
    delay_s: float = 5.0

    @classmethod
    def parse(cls, text: str) -> MisbehaveSpec:
        mode, *opts = text.split(":")
        if mode not in MODES:
            raise ConfigError(f"unknown misbehaviour {mode!r} (known: {', '.join(MODES)})")
        spec = cls(mode)
        for opt in opts:
            key, _, value = opt.partition("=")
            try:
                if key == "after":
                    spec = replace(spec, after=int(value))
                elif key == "delay":
                    spec = replace(spec, delay_s=float(value))
                else:
                    raise ValueError(key)
            except ValueError:
                raise ConfigError(f"bad misbehaviour option {opt!r} (after=N, delay=S)") from None
        return spec


def perturb(kind: str, params: dict[str, object], output: bytes) -> bytes:
    """A wrong output that passes the kind's self-check where one is known."""
    cols = _VELOCITY_COLUMNS.get(kind)
    if cols is not None:
        try:
            arr = np.array(decode_array(output), dtype=np.float64, copy=True)
            arr[:, cols] *= 0.999
            codec = params.get("codec", "raw")
            return encode_array(arr, codec if isinstance(codec, str) else "raw")
        except Exception:  # not the layout we expected: fall back to a plain corruption
            pass
    if not output:
        return b"\x00"
    return output[:-1] + bytes([output[-1] ^ 1])


class Misbehaviour:
    """Implements ``nodes.worker.Behaviour`` for one ``MisbehaveSpec``."""

    def __init__(self, spec: MisbehaveSpec) -> None:
        self.spec = spec
        self.served = 0
        self.misbehaved = 0
        self._decided: OrderedDict[bytes, bool] = OrderedDict()
        self._replays: dict[str, wire.ResultRecord] = {}
        self._forger = Identity.generate()

    def _active(self, task: wire.TaskRecord) -> bool:
        bad = self._decided.get(task.task_id)
        if bad is None:
            self.served += 1
            bad = self.served > self.spec.after
            self.misbehaved += int(bad)
            self._decided[task.task_id] = bad
            while len(self._decided) > 4096:
                self._decided.popitem(last=False)
        return bad

    def delay(self, task: wire.TaskRecord) -> float | None:
        if not self._active(task):
            return 0.0
        if self.spec.mode == "drop":
            return None
        if self.spec.mode == "slow":
            return self.spec.delay_s
        return 0.0

    def corrupt(self, task: wire.TaskRecord, output: bytes) -> bytes:
        if self.spec.mode in ("wrong", "forge") and self._active(task):
            return perturb(task.kind, task.params, output)
        return output

    def after(self, task: wire.TaskRecord, result: wire.ResultRecord) -> wire.ResultRecord:
        mode = self.spec.mode
        if mode == "replay":
            old = self._replays.get(task.kind)
            if old is None:
                self._replays[task.kind] = result
            elif self._active(task):
                return replace(old, task_id=result.task_id)
        elif mode == "forge" and self._active(task):
            return replace(result, signature=self._forger.sign(b"p2c2r forged result " + result.task_id))
        return result


def install(worker: Worker, text: str) -> Misbehaviour:
    """Parse ``MODE[:after=N][:delay=S]`` and set it as ``worker``'s behaviour."""
    behaviour = Misbehaviour(MisbehaveSpec.parse(text))
    worker.behaviour = behaviour
    return behaviour
