"""The registry of built-in task kinds: what a worker will run, and within which limits.

Peers are strangers, so a worker only ever runs kernels registered here, never code it
was sent. Each kind declares a parameter schema with hard limits; ``validate_params``
normalises a peer's parameters (defaults filled in, unknown keys, wrong types, NaN and
out-of-range values refused with a typed ``ValidationError``) before any work starts.

A kind also carries what the rest of the system needs to reason about it without
running it: a cost estimate in work units for the scheduler, an equivalence check for
redundant execution, an optional cheap self-consistency check for verification, and an
example generator for the demo and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mesh.errors import LimitExceededError, UnknownKindError, ValidationError

Params = dict[str, Any]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its type, default and hard limits.

    ``type`` is one of ``int``, ``float``, ``str``, ``bool``. ``choices`` restricts str
    (and int) values to a set. A spec without a default is required.
    """

    type: type
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    required: bool = False
    doc: str = ""

    def check(self, name: str, value: Any) -> Any:
        """Return the normalised value or raise ``ValidationError`` naming the parameter."""
        if self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValidationError(f"parameter {name!r} must be a number, got {type(value).__name__}")
            value = float(value)
            if not math.isfinite(value):
                raise ValidationError(f"parameter {name!r} must be finite, got {value}")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"parameter {name!r} must be an integer, got {type(value).__name__}")
        elif self.type is bool:
            if not isinstance(value, bool):
                raise ValidationError(f"parameter {name!r} must be true or false, got {value!r}")
        elif self.type is str:
            if not isinstance(value, str):
                raise ValidationError(f"parameter {name!r} must be a string, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ValidationError(f"parameter {name!r} must be one of {allowed}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise LimitExceededError(f"parameter {name!r} must be >= {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise LimitExceededError(f"parameter {name!r} must be <= {self.maximum}, got {value}")
        return value


def _no_self_check(params: Params, data: bytes, output: bytes) -> bool:
    return True


def _bytes_equal(params: Params, a: bytes, b: bytes) -> bool:
    return a == b


@dataclass(frozen=True)
class TaskKind:
    """A registered kernel and everything the mesh needs to know about it.

    - ``execute(params, data) -> bytes``: decode the input (raising ``ValidationError`` on
      bad input, before computing), compute, encode the output. Pure and thread-safe; runs
      off the trio thread.
    - ``cost(params, data_len) -> float``: work units (about one millisecond of one
      reference CPU core each), for scheduling and timeouts.
    - ``equivalent(params, out_a, out_b) -> bool``: whether two outputs for the same task
      agree (bit-exact for deterministic kinds, a stated tolerance otherwise).
    - ``self_check(params, data, output) -> bool``: a cheap plausibility check of one
      output against its input (e.g. an upscaled frame downsampled back matches the input).
    - ``example(rng, size) -> (params, data)``: a real input for demos and benchmarks;
      ``size`` is "small", "medium" or "large".
    """

    name: str
    description: str
    params: Mapping[str, ParamSpec]
    execute: Callable[[Params, bytes], bytes]
    cost: Callable[[Params, int], float]
    deterministic: bool = True
    equivalent: Callable[[Params, bytes, bytes], bool] = _bytes_equal
    self_check: Callable[[Params, bytes, bytes], bool] = _no_self_check
    example: Callable[[np.random.Generator, str], tuple[Params, bytes]] | None = None
    max_input_bytes: int = 64 * 1024 * 1024
    #: Trivially cheap kinds (``echo``) may run on the event loop: a thread hop would cost
    #: more than the work. Anything that computes must leave this False.
    inline: bool = False
    tolerance: str = "bit-exact"
    extra: Mapping[str, Any] = field(default_factory=dict)

    def validate_params(self, params: Mapping[str, Any] | None, data_len: int = 0) -> Params:
        """Normalise ``params`` against the schema; raise a typed error before any work."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise ValidationError(f"{self.name}: parameters must be a map, got {type(params).__name__}")
        unknown = sorted(str(k) for k in params if k not in self.params)
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise ValidationError(f"{self.name}: unknown parameter(s) {', '.join(unknown)} (known: {known})")
        if data_len > self.max_input_bytes:
            raise LimitExceededError(
                f"{self.name}: input of {data_len} bytes exceeds the limit of {self.max_input_bytes}"
            )
        out: Params = {}
        for name, spec in self.params.items():
            if name in params:
                out[name] = spec.check(f"{self.name}.{name}", params[name])
            elif spec.required:
                raise ValidationError(f"{self.name}: parameter {name!r} is required")
            else:
                out[name] = spec.default
        return out


class Registry:
    """Task kinds by name. Lookups of unknown kinds raise ``UnknownKindError``."""

    def __init__(self, kinds: Iterable[TaskKind] = ()) -> None:
        self._kinds: dict[str, TaskKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: TaskKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"task kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> TaskKind:
        try:
            return self._kinds[name]
        except (KeyError, TypeError):
            known = ", ".join(sorted(self._kinds))
            raise UnknownKindError(f"unknown task kind {name!r} (this node serves: {known})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def kinds(self) -> list[TaskKind]:
        return [self._kinds[n] for n in self.names()]


def default_registry() -> Registry:
    """Every built-in kind. Kernel modules import torch lazily, so this is cheap."""
    from tasks.kernels import all_kinds

    return Registry(all_kinds())
