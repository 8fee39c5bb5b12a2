"""``upscale``: enlarge a game frame by 1.5x to 4x, up to 3840x2160 output.

Two modes:

- ``fast``: bilinear interpolation (PIL/torch convention: pixel centres, edge clamp).
- ``quality``: a clamped (halo-limited) unsharp mask at *input* resolution followed by
  bicubic interpolation (Keys, a = -0.5). Sharpening before enlarging costs 1/scale^2 of
  doing it after, and clamping the detail term to +-20 levels keeps strong edges from
  ringing (the edge-aware part). On photographs downsampled by 2 and enlarged back it is
  1.3-1.8 dB PSNR better than ``fast`` and on par with Lanczos3 (figures in the tests).

Two implementations of the same maths: ``torch`` (default; on CPU it uses torch's
vectorised uint8 resampler, on CUDA a float path) and ``numpy`` (separable gathers), for
comparison in ``scripts/bench_kernels.py``. They agree within the kind's tolerance, not
bit for bit, so the kind is not deterministic across peers: two outputs are equivalent
when their decoded frames have PSNR >= 40 dB.

``fast`` at 2x from a colour JPEG to a JPEG (720p -> 1440p game frames) takes a planar
path on every device (``run_planar``): decoded straight to Y/Cb/Cr planes, luma enlarged
by an integer 2x bilinear, the chroma filtered to what 4:2:0 of the enlargement would be,
encoded from the planes; no colour conversion either way and a third of the bytes of RGB.
It matches the RGB path within JPEG noise (45-50 dB), at about half the cost (720p:
18 ms against 34 ms, ``docs/KERNELS.md``).

Self-check: the output, box-downsampled back to the input size, must match the input with
PSNR >= 22 dB (photographs give 30-45 dB; a wrong or unrelated frame gives ~10-15 dB).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import (
    IMAGE_CODECS,
    decode_image,
    decode_jpeg_planes,
    encode_image,
    encode_jpeg_planes,
    image_size,
    psnr,
    sniff_image_codec,
)
from tasks.kernels._common import check_backend, sample_photo, torch_device, torch_module
from tasks.registry import Params, ParamSpec, TaskKind

MAX_OUT_W = 3840
MAX_OUT_H = 3840
MAX_OUT_PIXELS = 3840 * 2160
SCALES = (1.5, 2.0, 3.0, 4.0)
EQUIVALENCE_PSNR_DB = 40.0
SELF_CHECK_PSNR_DB = 22.0
#: Unsharp mask: amount, Gaussian sigma (input pixels), detail clamp (levels).
SHARPEN_AMOUNT = 0.4
SHARPEN_SIGMA = 0.6
SHARPEN_CLAMP = 20.0

DEFAULT_BACKEND = "torch"

Frame = npt.NDArray[np.uint8]
#: One ``H x W`` uint8 plane (Y, Cb or Cr).
Plane = npt.NDArray[np.uint8]


def output_size(h: int, w: int, scale: float) -> tuple[int, int]:
    return round(h * scale), round(w * scale)


def _check_sizes(h: int, w: int, scale: float) -> tuple[int, int]:
    oh, ow = output_size(h, w, scale)
    if ow > MAX_OUT_W or oh > MAX_OUT_H or ow * oh > MAX_OUT_PIXELS:
        raise LimitExceededError(
            f"upscale: {w}x{h} x{scale} gives {ow}x{oh}, over the limit of {MAX_OUT_PIXELS} pixels "
            f"(sides <= {MAX_OUT_W})"
        )
    return oh, ow


@functools.cache
def _gaussian_taps(sigma: float) -> tuple[float, ...]:
    r = max(1, math.ceil(2.0 * sigma))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return tuple(float(v) for v in k / k.sum())


# --------------------------------------------------------------------------- numpy


@functools.lru_cache(maxsize=64)
def _tables(n_in: int, n_out: int, kind: str) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Source indices and weights (n_out x taps) for 1-D resampling, pixel-centre aligned."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    support = 1 if kind == "bilinear" else 2
    base = np.floor(x).astype(np.intp)
    idx = base[:, None] + np.arange(-support + 1, support + 1)[None, :]
    t = np.abs(x[:, None] - idx)
    if kind == "bilinear":
        w = np.maximum(0.0, 1.0 - t)
    else:
        a = -0.5
        w = np.where(
            t <= 1.0,
            (a + 2) * t**3 - (a + 3) * t**2 + 1,
            np.where(t < 2.0, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0),
        )
    w /= w.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, n_in - 1), w.astype(np.float32)


def _sharpen_np(img: Frame) -> Frame:
    x = img.astype(np.float32)
    k = _gaussian_taps(SHARPEN_SIGMA)
    r = len(k) // 2
    h, w = img.shape[:2]
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
    t = p[:, 0:w] * np.float32(k[0])
    for i in range(1, len(k)):
        t += p[:, i : i + w] * np.float32(k[i])
    b = t[0:h] * np.float32(k[0])
    for i in range(1, len(k)):
        b += t[i : i + h] * np.float32(k[i])
    detail = np.clip(x - b, -SHARPEN_CLAMP, SHARPEN_CLAMP)
    x += np.float32(SHARPEN_AMOUNT) * detail
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _resize_np(img: Frame, oh: int, ow: int, kind: str) -> Frame:
    h, w, _ = img.shape
    x = img.astype(np.float32)
    ix, wx = _tables(w, ow, kind)
    t = x[:, ix[:, 0], :] * wx[None, :, 0, None]
    for k in range(1, ix.shape[1]):
        t += x[:, ix[:, k], :] * wx[None, :, k, None]
    iy, wy = _tables(h, oh, kind)
    o = t[iy[:, 0]] * wy[:, 0, None, None]
    for k in range(1, iy.shape[1]):
        o += t[iy[:, k]] * wy[:, k, None, None]
    return np.asarray(np.clip(np.rint(o), 0, 255), dtype=np.uint8)


def upscale_numpy(img: Frame, oh: int, ow: int, mode: str) -> Frame:
    if mode == "quality":
        return _resize_np(_sharpen_np(img), oh, ow, "bicubic")
    return _resize_np(img, oh, ow, "bilinear")


# --------------------------------------------------------------------------- torch


def _sharpen_torch(x: Any) -> Any:
    """``x``: float32 H x W x 3 tensor; returns the sharpened tensor (same layout)."""
    torch = torch_module()
    f = torch.nn.functional
    k = _gaussian_taps(SHARPEN_SIGMA)
    r = len(k) // 2
    h, w = x.shape[:2]
    p = f.pad(x.permute(2, 0, 1)[None], (r, r, r, r), mode="replicate")[0].permute(1, 2, 0)
    t = p[:, 0:w] * k[0]
    for i in range(1, len(k)):
        t.add_(p[:, i : i + w], alpha=k[i])
    b = t[0:h] * k[0]
    for i in range(1, len(k)):
        b.add_(t[i : i + h], alpha=k[i])
    detail = (x - b).clamp_(-SHARPEN_CLAMP, SHARPEN_CLAMP)
    return x.add_(detail, alpha=SHARPEN_AMOUNT)


def upscale_torch(img: Frame, oh: int, ow: int, mode: str, device: str | None = None) -> Frame:
    torch = torch_module()
    f = torch.nn.functional
    dev = device or torch_device()
    with torch.inference_mode():
        src = img if img.flags.writeable and img.flags.c_contiguous else np.array(img, order="C")
        x = torch.from_numpy(src).to(dev)
        if mode == "quality":
            x = _sharpen_torch(x.float()).round_().clamp_(0, 255).to(torch.uint8)
        nchw = x.permute(2, 0, 1)[None]
        interp = "bicubic" if mode == "quality" else "bilinear"
        if dev == "cpu":
            # The uint8 channels-last path is torch's vectorised resampler (PIL-compatible
            # kernels; antialias only matters when shrinking, and selects this fast path).
            y = f.interpolate(
                nchw.contiguous(memory_format=torch.channels_last),
                size=(oh, ow),
                mode=interp,
                antialias=True,
            )
        else:
            y = f.interpolate(nchw.float(), size=(oh, ow), mode=interp, antialias=True)
            y = y.round_().clamp_(0, 255).to(torch.uint8)
        out = y[0].permute(1, 2, 0).contiguous()
        return np.asarray(out.cpu().numpy(), dtype=np.uint8)


# --------------------------------------------------------------------------- planar 2x


def _pad_edges(a: Plane) -> npt.NDArray[np.uint16]:
    """``a`` as uint16 with a one-pixel border repeating its edges (the resamplers' clamp)."""
    h, w = a.shape
    p = np.empty((h + 2, w + 2), np.uint16)
    p[1:-1, 1:-1] = a
    p[0, 1:-1] = a[0]
    p[-1, 1:-1] = a[-1]
    p[:, 0] = p[:, 1]
    p[:, -1] = p[:, -2]
    return p


#: Input rows per block in the planar kernels: the block's uint16 intermediates stay in a
#: core's L2 cache (~1.4 MB at 1280 columns) instead of streaming whole-frame temporaries
#: through memory, measured ~1.5x faster than whole-frame numpy on a shared 2-core box.
_BLOCK_ROWS = 64


def bilinear_2x(a: Plane) -> Plane:
    """Bilinear enlargement of one uint8 plane by exactly 2 (pixel centres, edge clamp).

    At 2x every output pixel sits a quarter pixel from its nearest input pixel, so the
    taps are fixed, 3/4 and 1/4 each way: the 2-D weights (9, 3, 3, 1)/16 are summed in
    integers and rounded once, ``(s + 8) >> 4``. That is the ``fast`` mode's bilinear with a
    single rounding (torch's and Pillow's fixed-point resamplers round twice; they differ
    from this by at most one level), with no float conversion or weight tables.
    """
    h, w = a.shape
    p = _pad_edges(a)
    three = np.uint16(3)
    rows = min(h, _BLOCK_ROWS)
    c = np.empty((rows + 2, w), np.uint16)
    hz = np.empty((rows + 2, w, 2), np.uint16)  # even and odd output columns, interleaved
    cv = np.empty((rows, 2 * w), np.uint16)
    t = np.empty((rows, 2 * w), np.uint16)
    out = np.empty((h, 2, 2 * w), np.uint8)  # even and odd output rows, interleaved
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        pb = p[r0 : r0 + n + 2]  # input rows r0 - 1 .. r0 + n, edges repeated
        cc, hb = c[: n + 2], hz[: n + 2]
        np.multiply(pb[:, 1:-1], three, out=cc)
        np.add(cc, pb[:, :-2], out=hb[:, :, 0])
        np.add(cc, pb[:, 2:], out=hb[:, :, 1])
        hr = hb.reshape(n + 2, 2 * w)
        cb, tb = cv[:n], t[:n]
        np.multiply(hr[1:-1], three, out=cb)
        cb += np.uint16(8)
        np.add(cb, hr[:-2], out=tb)
        np.right_shift(tb, 4, out=out[r0 : r0 + n, 0], casting="unsafe")
        np.add(cb, hr[2:], out=tb)
        np.right_shift(tb, 4, out=out[r0 : r0 + n, 1], casting="unsafe")
    return out.reshape(2 * h, 2 * w)


def subsampled_bilinear_2x(a: Plane) -> Plane:
    """The 2x2 box average of ``bilinear_2x(a)``, at ``a``'s own size, computed directly.

    Averaging output pixels ``2i`` and ``2i + 1`` of a 2x bilinear gives
    ``(x[i-1] + 6 x[i] + x[i+1]) / 8`` each way; the 2-D weights (sum 64) are summed in
    integers and rounded once. This is the 4:2:0 chroma of a 2x bilinear enlargement: what
    the JPEG encoder's chroma downsampling (2x2 box) makes of an RGB-domain result.
    """
    h, w = a.shape
    p = _pad_edges(a)
    six = np.uint16(6)
    rows = min(h, _BLOCK_ROWS)
    hz = np.empty((rows + 2, w), np.uint16)
    v = np.empty((rows, w), np.uint16)
    out = np.empty((h, w), np.uint8)
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        pb = p[r0 : r0 + n + 2]
        hb, vb = hz[: n + 2], v[:n]
        np.multiply(pb[:, 1:-1], six, out=hb)
        hb += pb[:, :-2]
        hb += pb[:, 2:]
        np.multiply(hb[1:-1], six, out=vb)
        vb += hb[:-2]
        vb += hb[2:]
        vb += np.uint16(32)
        np.right_shift(vb, 6, out=out[r0 : r0 + n], casting="unsafe")
    return out


def planar_applies(params: Params) -> bool:
    """Whether ``run`` takes the planar path for these parameters (given a colour JPEG)."""
    return bool(params["mode"] == "fast" and params["scale"] == 2.0 and params["codec"] == "jpeg")


def run_planar(params: Params, data: bytes) -> bytes | None:
    """``fast`` at 2x from a colour JPEG to a JPEG, in the YCbCr domain; else ``None``.

    The JPEG is decoded to Y/Cb/Cr planes (no colour conversion), luma is enlarged by
    ``bilinear_2x`` and the full-size chroma planes become the output's 4:2:0 chroma by
    ``subsampled_bilinear_2x``; the planes are encoded as they are (no conversion, no
    chroma downsampling). Bilinear and the JFIF colour transform are both linear, so this
    is the RGB path (decode to RGB, enlarge, encode with 4:2:0) up to rounding and the
    RGB clamp, i.e. JPEG noise (a PSNR bound in the tests), at about half the cost.
    ``None``: not a colour JPEG (greyscale, CMYK); the caller takes the RGB path.
    """
    if not planar_applies(params) or sniff_image_codec(data) != "jpeg":
        return None
    _check_input(params, data)
    planes = decode_jpeg_planes(data, max_pixels=MAX_OUT_PIXELS, max_side=MAX_OUT_W)
    if planes is None:
        return None
    y, cb, cr = planes
    return encode_jpeg_planes(
        bilinear_2x(y), subsampled_bilinear_2x(cb), subsampled_bilinear_2x(cr), params["quality"]
    )


# --------------------------------------------------------------------------- the kind


def upscale_frame(img: Frame, scale: float, mode: str, backend: str = DEFAULT_BACKEND) -> Frame:
    """Upscale a decoded frame; ``backend`` is ``"torch"`` or ``"numpy"``."""
    oh, ow = _check_sizes(img.shape[0], img.shape[1], scale)
    if check_backend(backend) == "torch":
        return upscale_torch(img, oh, ow, mode)
    return upscale_numpy(img, oh, ow, mode)


def _check_input(params: Params, data: bytes) -> None:
    """The input's codec against ``input_codec`` and its output size, from the header alone."""
    codec = sniff_image_codec(data)
    if params["input_codec"] != "auto" and codec != params["input_codec"]:
        raise ValidationError(
            f"upscale: input is {codec}, parameter input_codec says {params['input_codec']}"
        )
    h, w = image_size(data)
    _check_sizes(h, w, params["scale"])


def _decode_input(params: Params, data: bytes) -> Frame:
    _check_input(params, data)
    return decode_image(data, max_pixels=MAX_OUT_PIXELS, max_side=MAX_OUT_W)


def run(params: Params, data: bytes, backend: str = DEFAULT_BACKEND, *, planar: bool = True) -> bytes:
    """Decode, enlarge, encode. ``fast`` 2x JPEG -> JPEG goes through ``run_planar`` (on every
    device and backend, so honest workers agree byte for byte) unless ``planar=False``."""
    if planar:
        encoded = run_planar(params, data)
        if encoded is not None:
            return encoded
    img = _decode_input(params, data)
    out = upscale_frame(img, params["scale"], params["mode"], backend)
    return encode_image(out, params["codec"], params["quality"])


def _execute(params: Params, data: bytes) -> bytes:
    return run(params, data, DEFAULT_BACKEND)


#: Milliseconds per output megapixel on one core, decode and encode included
#: (``docs/bench_kernels.json``): RGB path ``fast`` / ``quality``, and the planar JPEG path.
COST_MS_PER_OUT_MP = {"fast": 14.0, "quality": 22.0, "planar": 5.5}


def _cost(params: Params, data_len: int) -> float:
    # Calibrated on one core; the planar path (fast 2x JPEG -> JPEG, 720p -> 1440p in
    # ~18 ms) is about half the RGB path's cost. The input size is not known from its
    # length, so a compressed input is assumed at ~0.3 bytes/pixel.
    in_px = max(1.0, data_len / 0.3)
    out_mp = min(in_px * params["scale"] ** 2, MAX_OUT_PIXELS) / 1e6
    planar = planar_applies(params) and params["input_codec"] in ("jpeg", "auto")
    per_mp = COST_MS_PER_OUT_MP["planar" if planar else params["mode"]]
    return float(1.0 + per_mp * out_mp)


def _equivalent(params: Params, a: bytes, b: bytes) -> bool:
    if a == b:
        return True
    try:
        fa = decode_image(a, max_pixels=MAX_OUT_PIXELS, max_side=MAX_OUT_W)
        fb = decode_image(b, max_pixels=MAX_OUT_PIXELS, max_side=MAX_OUT_W)
    except ValidationError:
        return False
    return fa.shape == fb.shape and psnr(fa, fb) >= EQUIVALENCE_PSNR_DB


def _box_shrink(out: Frame, k: int) -> Frame:
    """Mean of each ``k x k`` block (rounded half up), by row band: a whole-number shrink."""
    oh, ow, c = out.shape
    h, w = oh // k, ow // k
    res = np.empty((h, w, c), np.uint8)
    rows = min(h, 32)
    for r0 in range(0, h, rows):
        n = min(rows, h - r0)
        band = out[r0 * k : (r0 + n) * k].reshape(n, k, w, k, c)
        s = band[:, 0].astype(np.uint16)  # k * k * 255 fits for k <= 4
        for i in range(1, k):
            s += band[:, i]
        t = s[:, :, 0].copy()
        for j in range(1, k):
            t += s[:, :, j]
        t += np.uint16(k * k // 2)
        t //= np.uint16(k * k)
        res[r0 : r0 + n] = t
    return res


def downsample_back(out: Frame, h: int, w: int) -> Frame:
    """``out`` box-filtered down to ``h x w`` (the self-check's comparison with the input).

    A whole-number factor (2x, 3x, 4x) is a block mean in numpy (~2x faster than Pillow's
    BOX resize at 1440p; the two differ by at most one level in rounding); others use Pillow.
    """
    oh, ow = out.shape[:2]
    k = oh // h if h else 0
    if out.ndim == 3 and 2 <= k <= 4 and oh == k * h and ow == k * w:
        return _box_shrink(out, k)
    from PIL import Image

    return np.asarray(Image.fromarray(out).resize((w, h), Image.Resampling.BOX), dtype=np.uint8)


def _self_check(params: Params, data: bytes, output: bytes) -> bool:
    try:
        img = _decode_input(params, data)
        out = decode_image(output, max_pixels=MAX_OUT_PIXELS, max_side=MAX_OUT_W)
        if params["codec"] != sniff_image_codec(output):
            return False
    except ValidationError:
        return False
    h, w = img.shape[:2]
    if out.shape[:2] != output_size(h, w, params["scale"]):
        return False
    return psnr(downsample_back(out, h, w), img) >= SELF_CHECK_PSNR_DB


_EXAMPLE_SIZES = {"small": (160, 90), "medium": (640, 360), "large": (1280, 720)}


def _example(rng: np.random.Generator, size: str) -> tuple[Params, bytes]:
    w, h = _EXAMPLE_SIZES[size]
    frame = sample_photo(rng, w, h)
    params: Params = {"scale": 2.0, "mode": "quality", "codec": "jpeg", "input_codec": "jpeg", "quality": 90}
    return params, encode_image(frame, "jpeg", 95)


UPSCALE = TaskKind(
    name="upscale",
    description="enlarge a frame 1.5-4x (bilinear, or sharpened bicubic), up to 3840x2160 output",
    params={
        "scale": ParamSpec(float, default=2.0, choices=SCALES, doc="enlargement factor"),
        "mode": ParamSpec(str, default="quality", choices=("fast", "quality"), doc="fast or quality"),
        "codec": ParamSpec(str, default="jpeg", choices=IMAGE_CODECS, doc="output codec"),
        "input_codec": ParamSpec(
            str, default="auto", choices=("auto", *IMAGE_CODECS), doc="expected input codec"
        ),
        "quality": ParamSpec(int, default=90, minimum=1, maximum=100, doc="jpeg/webp output quality"),
    },
    execute=_execute,
    cost=_cost,
    deterministic=False,
    equivalent=_equivalent,
    self_check=_self_check,
    example=_example,
    max_input_bytes=32 * 1024 * 1024,
    tolerance=(
        f"decoded outputs agree with PSNR >= {EQUIVALENCE_PSNR_DB:g} dB; self-check: output "
        f"box-downsampled to the input size has PSNR >= {SELF_CHECK_PSNR_DB:g} dB against the input"
    ),
    extra={"max_output": (MAX_OUT_W, MAX_OUT_H), "max_output_pixels": MAX_OUT_PIXELS, "scales": SCALES},
)
