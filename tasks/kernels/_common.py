"""Helpers shared by the kernels: lazy torch, device choice, input checks, sample photos.

Nothing here imports torch at module import time: ``import tasks.kernels`` must stay cheap
for nodes that never compute. ``torch_module()`` imports it on first use.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh.errors import LimitExceededError, ValidationError

BACKENDS = ("numpy", "torch")


def torch_module() -> Any:
    """The ``torch`` module, imported on first use (raises ``ImportError`` if absent)."""
    import torch

    return torch


@functools.cache
def torch_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``; decided once per process."""
    try:
        torch = torch_module()
    except ImportError:
        return "cpu"
    return "cuda" if bool(torch.cuda.is_available()) else "cpu"


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    return backend


def require_array(
    arr: npt.NDArray[Any],
    name: str,
    *,
    dtypes: tuple[type[Any], ...],
    ndim: int,
    last: int | None = None,
    max_rows: int | None = None,
) -> None:
    """Raise ``ValidationError`` unless ``arr`` has the stated dtype, rank and last axis."""
    if arr.dtype.type not in dtypes:
        allowed = ", ".join(np.dtype(d).name for d in dtypes)
        raise ValidationError(f"{name} must have dtype {allowed}, got {arr.dtype}")
    if arr.ndim != ndim:
        raise ValidationError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if last is not None and arr.shape[-1] != last:
        raise ValidationError(f"{name} must have {last} columns, got shape {arr.shape}")
    if max_rows is not None and arr.shape[0] > max_rows:
        raise LimitExceededError(f"{name} has {arr.shape[0]} rows, the limit is {max_rows}")


def require_finite(arr: npt.NDArray[Any], name: str) -> None:
    if arr.dtype.kind == "f" and not bool(np.isfinite(arr).all()):
        raise ValidationError(f"{name} holds NaN or infinite values")


_PHOTOS = ("astronaut", "coffee", "chelsea")


@functools.cache
def _photo(name: str) -> npt.NDArray[np.uint8]:
    try:
        import skimage.data

        img = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
    except ImportError:
        # scikit-image is a test/bench extra; without it, a smooth synthetic scene.
        yy, xx = np.mgrid[0:512, 0:512].astype(np.float64)
        r = 127 + 120 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
        g = 127 + 120 * np.sin((xx + yy) / 51.0)
        b = 127 + 120 * np.cos(np.hypot(xx - 256, yy - 256) / 29.0)
        img = np.stack([r, g, b], axis=-1).astype(np.uint8)
    return img


def sample_photo(rng: np.random.Generator, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A real photograph (scikit-image sample data) cropped to the aspect and resized."""
    from PIL import Image

    name = _PHOTOS[int(rng.integers(len(_PHOTOS)))]
    img = _photo(name)
    h, w = img.shape[:2]
    target = width / height
    if w / h > target:
        cw, ch = round(h * target), h
    else:
        cw, ch = w, round(w / target)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    crop = Image.fromarray(img[y0 : y0 + ch, x0 : x0 + cw])
    out = crop.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)
