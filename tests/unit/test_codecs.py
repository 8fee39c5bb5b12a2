"""Codec round trips, limits, and fuzzing: every decoder raises only ``ValidationError``."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import (
    ARRAY_CODECS,
    ARRAY_DTYPES,
    IMAGE_CODECS,
    decode_array,
    decode_image,
    decode_jpeg_planes,
    encode_array,
    encode_image,
    encode_jpeg_planes,
    image_size,
    psnr,
    sniff_image_codec,
)
from tasks.kernels._common import sample_photo


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return sample_photo(np.random.default_rng(0), 96, 64)


@pytest.mark.parametrize("codec", ARRAY_CODECS)
@pytest.mark.parametrize("dtype", [d.str for d in ARRAY_DTYPES])
def test_array_round_trip(codec: str, dtype: str) -> None:
    rng = np.random.default_rng(1)
    arr = (rng.integers(0, 2, (3, 4, 5)) if dtype == "|b1" else rng.integers(0, 100, (3, 4, 5))).astype(dtype)
    out = decode_array(encode_array(arr, codec))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert np.array_equal(out, arr)


def test_array_empty_and_1d() -> None:
    for arr in (np.zeros(0, np.float32), np.arange(7, dtype=np.int64)):
        for codec in ARRAY_CODECS:
            assert np.array_equal(decode_array(encode_array(arr, codec)), arr)


def test_array_rejects_bad_dtype_and_rank() -> None:
    with pytest.raises(ValidationError):
        encode_array(np.zeros(3, np.complex64))
    with pytest.raises(ValidationError):
        encode_array(np.zeros((1, 1, 1, 1, 1), np.uint8))
    with pytest.raises(ValidationError):
        encode_array(np.zeros(3), "lz4")


def test_array_limits_checked_before_allocating() -> None:
    head = struct.pack("<4sBBBB", b"P2CA", 1, 0, 0, 2) + struct.pack("<2I", 2**31, 2**31)
    with pytest.raises(LimitExceededError):
        decode_array(head)
    with pytest.raises(LimitExceededError):
        decode_array(encode_array(np.zeros(100, np.uint8)), max_elements=10)


def test_zstd_bomb_is_refused() -> None:
    # A 1 GiB frame of zeros compresses to a few KiB; its header claims 16 bytes.
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024))
    head = struct.pack("<4sBBBB", b"P2CA", 1, 1, 0, 1) + struct.pack("<I", 16)
    with pytest.raises(ValidationError, match="declares"):
        decode_array(head + bomb)
    # The same without a content size in the frame header: bounded by max_output_size.
    bomb2 = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (1024 * 1024))
    with pytest.raises(ValidationError):
        decode_array(head + bomb2)


def test_raw_payload_length_must_match() -> None:
    data = encode_array(np.zeros((4, 4), np.float32))
    with pytest.raises(ValidationError):
        decode_array(data[:-1])
    with pytest.raises(ValidationError):
        decode_array(data + b"x")


@pytest.mark.parametrize("codec", IMAGE_CODECS)
def test_image_round_trip(codec: str, photo: np.ndarray) -> None:
    data = encode_image(photo, codec, quality=95)
    assert sniff_image_codec(data) == codec
    assert image_size(data) == photo.shape[:2]
    out = decode_image(data)
    assert out.shape == photo.shape and out.dtype == np.uint8
    if codec in ("png", "raw"):
        assert np.array_equal(out, photo)
    else:
        assert psnr(out, photo) > 30


def test_image_limits(photo: np.ndarray) -> None:
    data = encode_image(photo, "png")
    with pytest.raises(LimitExceededError):
        decode_image(data, max_pixels=100)
    with pytest.raises(ValidationError):
        decode_image(data, expect_codec="jpeg")
    with pytest.raises(ValidationError):
        encode_image(photo.astype(np.float32), "png")
    with pytest.raises(ValidationError):
        encode_image(photo, "gif")


def test_png_with_alpha_is_converted(photo: np.ndarray) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]), "RGBA").save(buf, "PNG")
    assert np.array_equal(decode_image(buf.getvalue()), photo)


def _ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    """JFIF YCbCr -> RGB, as the JPEG decoder converts."""
    yf, u, v = (p.astype(np.float64) for p in (y, cb, cr))
    u, v = u - 128.0, v - 128.0
    rgb = np.stack([yf + 1.402 * v, yf - 0.344136 * u - 0.714136 * v, yf + 1.772 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_jpeg_planes_are_the_rgb_decode_without_its_colour_conversion(photo: np.ndarray) -> None:
    data = encode_image(photo, "jpeg", quality=90)
    planes = decode_jpeg_planes(data)
    assert planes is not None
    h, w = photo.shape[:2]
    assert all(p.shape == (h, w) and p.dtype == np.uint8 for p in planes)
    rgb = decode_image(data)
    diff = np.abs(_ycbcr_to_rgb(*planes).astype(int) - rgb.astype(int))
    assert diff.max() <= 2 and psnr(_ycbcr_to_rgb(*planes), rgb) > 50


def _pillow_jpeg(img: np.ndarray, **save: object) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _exif() -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "p2c2r"  # Make
    return exif.tobytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda im: encode_image(im, "jpeg", 90),  # simplejpeg, JFIF, 4:2:0
        lambda im: _pillow_jpeg(im, subsampling=0),  # 4:4:4
        lambda im: _pillow_jpeg(im, progressive=True),
        lambda im: _pillow_jpeg(im, exif=_exif()),
    ],
    ids=["simplejpeg-420", "pillow-444", "progressive", "exif"],
)
def test_fast_planar_decode_gives_pillows_planes(make: Any) -> None:
    from tasks import codecs

    img = sample_photo(np.random.default_rng(5), 77, 51)  # odd sizes
    data = make(img)
    fast = codecs._decode_untransformed(data, 51, 77)
    slow = codecs._decode_planes_pillow(data, 51, 77)
    assert fast is not None and slow is not None  # the fast path takes all of these
    for f, p in zip(fast, slow, strict=True):
        assert f.shape == p.shape == (51, 77) and np.array_equal(f, p)
    planes = decode_jpeg_planes(data)
    assert planes is not None and all(np.array_equal(a, b) for a, b in zip(planes, fast, strict=True))


def test_fast_planar_decode_leaves_other_jpegs_to_pillow(photo: np.ndarray) -> None:
    from tasks import codecs

    data = encode_image(photo, "jpeg", 90)
    h, w = photo.shape[:2]
    # A JPEG whose header says its components are R, G, B has no YCbCr planes to give
    # (libjpeg does not convert RGB to YCbCr): None, the caller decodes it to RGB.
    rgb_coded = codecs._untransformed_jpeg(data)
    assert rgb_coded is not None and decode_jpeg_planes(rgb_coded) is None
    assert decode_image(rgb_coded).shape == photo.shape
    # a YCbCr JPEG whose header the fast path does not walk: Pillow gives the same planes
    padded = data[:2] + b"\xff" + data[2:]  # a fill byte before the first marker
    assert codecs._decode_untransformed(padded, h, w) is None
    slow = decode_jpeg_planes(padded)
    fast = decode_jpeg_planes(data)
    assert slow is not None and fast is not None
    assert all(np.array_equal(a, b) for a, b in zip(slow, fast, strict=True))
    # headers the small parser does not walk (fill bytes, a bad length) go to Pillow
    assert codecs._untransformed_jpeg(data[:2] + b"\xff" + data[2:]) is None
    assert codecs._untransformed_jpeg(data[:2] + b"\xff\xfe\x00\x01" + data[2:]) is None
    assert codecs._untransformed_jpeg(data[:2] + b"\xff\xe1\x00\x10") is None  # cut short


def test_jpeg_planes_round_trip_and_refusals(photo: np.ndarray) -> None:
    data = encode_image(photo, "jpeg", quality=95)
    planes = decode_jpeg_planes(data)
    assert planes is not None
    y, cb, cr = planes
    h, w = y.shape
    half = ((h + 1) // 2, (w + 1) // 2)
    sub = [np.ascontiguousarray(p[::2, ::2]) for p in (cb, cr)]
    assert sub[0].shape == half
    out = encode_jpeg_planes(y, sub[0], sub[1], quality=95)
    assert sniff_image_codec(out) == "jpeg" and image_size(out) == (h, w)
    assert psnr(decode_image(out), decode_image(data)) > 30
    for bad in (
        (y, cb, cr),  # chroma not 4:2:0
        (y.astype(np.uint16), sub[0], sub[1]),
        (y[None], sub[0], sub[1]),
        (y[:0], sub[0][:0], sub[1][:0]),
    ):
        with pytest.raises(ValidationError):
            encode_jpeg_planes(*bad)
    with pytest.raises(ValidationError):
        encode_jpeg_planes(y, sub[0], sub[1], quality=0)
    # greyscale JPEG: no chroma planes, the caller decodes it to RGB instead
    import simplejpeg

    grey = bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(photo[..., :1]), colorspace="GRAY"))
    assert decode_jpeg_planes(grey) is None
    assert decode_image(grey).shape == photo.shape
    with pytest.raises(LimitExceededError):
        decode_jpeg_planes(data, max_pixels=100)
    with pytest.raises(ValidationError):
        decode_jpeg_planes(encode_image(photo, "png"))


def test_psnr() -> None:
    a = np.zeros((2, 2, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    assert 48 < psnr(a, a + 1) < 49


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (37, 100, 3), (720, 1280, 3), (9,), (3, 4)])
def test_psnr_by_row_band_matches_a_float64_sum(shape: tuple[int, ...]) -> None:
    import math

    rng = np.random.default_rng(len(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    for b in (rng.integers(0, 256, shape, dtype=np.uint8), np.where(a == 0, a, a - 1).astype(np.uint8)):
        d = a.astype(np.float64) - b.astype(np.float64)
        mse = float(np.mean(d * d))
        want = math.inf if mse == 0 else 10 * math.log10(255 * 255 / mse)
        assert psnr(a, b) == want or abs(psnr(a, b) - want) < 1e-4
    one = a.copy()
    one.flat[0] ^= 1  # a single one-level difference is not rounded away
    assert psnr(a, one) < math.inf
    with pytest.raises(ValidationError):
        psnr(a[:0], a[:0])


_PREFIXES = [b"", b"P2CA\x01\x00\x00\x01", b"P2CA\x01\x01\x07\x02", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_PREFIXES), st.binary(max_size=200))
def test_decoders_raise_only_validation_error(prefix: bytes, tail: bytes) -> None:
    data = prefix + tail
    for decode in (decode_array, decode_image, image_size, decode_jpeg_planes):
        try:
            decode(data)
        except ValidationError:
            pass


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(IMAGE_CODECS), st.integers(0, 2000), st.binary(min_size=1, max_size=8))
def test_corrupted_images_raise_only_validation_error(codec: str, where: int, junk: bytes) -> None:
    photo = sample_photo(np.random.default_rng(2), 32, 24)
    data = bytearray(encode_image(photo, codec, quality=80))
    pos = where % len(data)
    data[pos : pos + len(junk)] = junk
    for cut in (len(data), len(data) // 2):
        try:
            out = decode_image(bytes(data[:cut]))
            assert out.dtype == np.uint8 and out.ndim == 3
        except ValidationError:
            pass
        if codec == "jpeg":
            try:
                planes = decode_jpeg_planes(bytes(data[:cut]))
                assert planes is None or all(p.dtype == np.uint8 and p.ndim == 2 for p in planes)
            except ValidationError:
                pass


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(ARRAY_CODECS), st.integers(0, 200), st.binary(min_size=1, max_size=8))
def test_corrupted_arrays_raise_only_validation_error(codec: str, where: int, junk: bytes) -> None:
    data = bytearray(encode_array(np.arange(60, dtype=np.float64).reshape(3, 4, 5), codec))
    pos = where % len(data)
    data[pos : pos + len(junk)] = junk
    try:
        decode_array(bytes(data))
    except ValidationError:
        pass
