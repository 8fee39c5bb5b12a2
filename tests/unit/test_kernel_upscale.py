"""``upscale`` against Pillow on real photographs, quality vs fast, validation, checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import (
    IMAGE_CODECS,
    decode_image,
    decode_jpeg_planes,
    encode_image,
    encode_jpeg_planes,
    psnr,
)
from tasks.kernels.upscale import (
    UPSCALE,
    bilinear_2x,
    downsample_back,
    run,
    run_planar,
    subsampled_bilinear_2x,
    upscale_frame,
)

skdata = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "coffee", "chelsea")
#: quality must beat fast by this much on "shrink by 2, enlarge back" (measured 1.3-1.8 dB).
QUALITY_MARGIN_DB = 1.0


def _photo(name: str, size: int = 256) -> np.ndarray:
    img = np.asarray(getattr(skdata, name)(), dtype=np.uint8)
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.LANCZOS))


def _shrink(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BOX))


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_matches_pillow_and_quality_beats_fast(name: str, backend: str) -> None:
    orig = _photo(name)
    small = _shrink(orig)
    h, w = orig.shape[:2]
    fast = upscale_frame(small, 2.0, "fast", backend)
    quality = upscale_frame(small, 2.0, "quality", backend)
    pil_bilinear = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))
    pil_lanczos = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.LANCZOS))
    figures = {
        "fast_vs_pil_bilinear": psnr(fast, pil_bilinear),
        "fast_vs_orig": psnr(fast, orig),
        "quality_vs_orig": psnr(quality, orig),
        "pil_bilinear_vs_orig": psnr(pil_bilinear, orig),
        "pil_lanczos_vs_orig": psnr(pil_lanczos, orig),
    }
    print(name, backend, {k: round(v, 2) for k, v in figures.items()})
    # fast is the same bilinear as Pillow's (rounding aside)
    assert figures["fast_vs_pil_bilinear"] > 45
    assert figures["quality_vs_orig"] >= figures["fast_vs_orig"] + QUALITY_MARGIN_DB
    # and at least as good as Pillow's Lanczos3, within 0.2 dB
    assert figures["quality_vs_orig"] >= figures["pil_lanczos_vs_orig"] - 0.2


@pytest.mark.parametrize("scale", [1.5, 2.0, 3.0])
@pytest.mark.parametrize("mode", ["fast", "quality"])
def test_backends_agree_and_self_check(scale: float, mode: str) -> None:
    img = _photo("coffee", 90)
    a = upscale_frame(img, scale, mode, "torch")
    b = upscale_frame(img, scale, mode, "numpy")
    assert a.shape == b.shape == (round(90 * scale), round(90 * scale), 3)
    assert psnr(a, b) >= 40
    params = UPSCALE.validate_params({"scale": scale, "mode": mode, "codec": "png"})
    data = encode_image(img, "png")
    out = UPSCALE.execute(params, data)
    assert UPSCALE.self_check(params, data, out)
    assert UPSCALE.equivalent(params, out, encode_image(b, "png"))


@pytest.mark.parametrize("codec", IMAGE_CODECS)
def test_codecs_in_and_out(codec: str) -> None:
    img = _photo("chelsea", 64)
    params = UPSCALE.validate_params({"codec": codec, "input_codec": codec, "quality": 85})
    data = encode_image(img, codec, 95)
    out = UPSCALE.execute(params, data)
    assert decode_image(out).shape == (128, 128, 3)
    assert UPSCALE.self_check(params, data, out)


def test_self_check_and_equivalence_reject_wrong_output() -> None:
    img = _photo("astronaut", 64)
    other = _photo("coffee", 64)
    params = UPSCALE.validate_params({"codec": "png"})
    data = encode_image(img, "png")
    good = UPSCALE.execute(params, data)
    bad = UPSCALE.execute(params, encode_image(other, "png"))
    assert not UPSCALE.self_check(params, data, bad)
    assert not UPSCALE.self_check(params, data, b"garbage")
    assert not UPSCALE.equivalent(params, good, bad)
    assert not UPSCALE.equivalent(params, good, b"garbage")
    half = UPSCALE.validate_params({"codec": "png", "scale": 1.5})
    assert not UPSCALE.self_check(half, data, good)  # wrong size


def test_example_sizes() -> None:
    rng = np.random.default_rng(0)
    params, data = UPSCALE.example(rng, "large")
    assert decode_image(data).shape == (720, 1280, 3)
    params, data = UPSCALE.example(rng, "small")
    params = UPSCALE.validate_params(params, len(data))
    out = UPSCALE.execute(params, data)
    assert UPSCALE.self_check(params, data, out)
    assert UPSCALE.cost(params, len(data)) > 0


@pytest.mark.parametrize(
    "bad",
    [{"scale": 2.5}, {"scale": float("nan")}, {"mode": "ultra"}, {"codec": "gif"}, {"quality": 0}, {"x": 1}],
)
def test_bad_params(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UPSCALE.validate_params(bad)


def test_output_limit_checked_before_decoding() -> None:
    # 2000x1200 x2 = 4000x2400 > 3840x2160: refused from the header alone.
    big = np.zeros((1200, 2000, 3), np.uint8)
    params = UPSCALE.validate_params({"scale": 2.0})
    with pytest.raises(LimitExceededError):
        run(params, encode_image(big, "jpeg"))
    params = UPSCALE.validate_params({"scale": 1.5})
    assert decode_image(run(params, encode_image(big, "jpeg"))).shape == (1800, 3000, 3)


def test_bad_input() -> None:
    params = UPSCALE.validate_params({})
    with pytest.raises(ValidationError):
        UPSCALE.execute(params, b"not an image")
    with pytest.raises(ValidationError):
        UPSCALE.execute(
            UPSCALE.validate_params({"input_codec": "png"}), encode_image(_photo("coffee", 16), "jpeg")
        )


# ----------------------------------------------------------------- planar fast@2x (JPEG -> JPEG)

FAST2 = {"scale": 2.0, "mode": "fast", "codec": "jpeg", "input_codec": "jpeg", "quality": 85}
#: The planar path against the RGB path, decoded outputs (measured 46-50 dB on photographs):
#: the same bilinear and colour transform, differing by rounding and JPEG noise.
PLANAR_VS_RGB_DB = 44.0


def _bilinear_2x_exact(a: np.ndarray) -> np.ndarray:
    """2x bilinear (pixel centres, edge clamp) in float64, rounded once, half up."""
    x = a.astype(np.float64)
    for axis in (0, 1):
        n = x.shape[axis]
        prev = np.take(x, np.clip(np.arange(n) - 1, 0, n - 1), axis=axis)
        nxt = np.take(x, np.clip(np.arange(n) + 1, 0, n - 1), axis=axis)
        both = np.stack([0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt], axis=axis + 1)
        shape = list(x.shape)
        shape[axis] *= 2
        x = both.reshape(shape)
    return x


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (3, 7), (63, 10), (64, 3), (65, 9), (130, 17)])
def test_bilinear_2x_is_exact_bilinear_rounded_once(shape: tuple[int, int]) -> None:
    a = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    ref = _bilinear_2x_exact(a)
    assert np.array_equal(bilinear_2x(a), np.floor(ref + 0.5).astype(np.uint8))
    # the 4:2:0 chroma of the enlargement: 2x2 box of the exact values, rounded once
    box = ref.reshape(shape[0], 2, shape[1], 2).mean(axis=(1, 3))
    assert np.array_equal(subsampled_bilinear_2x(a), np.floor(box + 0.5).astype(np.uint8))
    # and it is the fast mode's bilinear, up to the resamplers' own rounding
    rgb = np.repeat(a[..., None], 3, axis=2)
    for backend in ("torch", "numpy"):
        other = upscale_frame(rgb, 2.0, "fast", backend)[..., 0]
        assert np.abs(other.astype(int) - bilinear_2x(a).astype(int)).max() <= 1


def _scene(w: int, h: int) -> np.ndarray:
    from tasks.kernels._common import sample_photo

    return sample_photo(np.random.default_rng(3), w, h)


@pytest.mark.parametrize("name", [*PHOTOS, "scene"])
def test_planar_path_matches_the_rgb_path(name: str) -> None:
    img = _scene(320, 180) if name == "scene" else _photo(name, 200)
    data = encode_image(img, "jpeg", 90)
    params = UPSCALE.validate_params(FAST2, len(data))
    planar = run(params, data)
    rgb = run(params, data, planar=False)
    assert run_planar(params, data) == planar  # the kind takes the planar path for fast@2x
    a, b = decode_image(planar), decode_image(rgb)
    assert a.shape == b.shape == (2 * img.shape[0], 2 * img.shape[1], 3)
    figure = psnr(a, b)
    print(name, f"planar vs rgb {figure:.1f} dB, {len(planar)} vs {len(rgb)} bytes")
    assert figure >= PLANAR_VS_RGB_DB
    assert UPSCALE.equivalent(params, planar, rgb) and UPSCALE.equivalent(params, rgb, planar)
    assert UPSCALE.self_check(params, data, planar)
    assert UPSCALE.execute(params, data) == planar


def test_planar_output_forgeries_fail_the_checks() -> None:
    img, other = _photo("astronaut", 128), _photo("coffee", 128)
    data = encode_image(img, "jpeg", 90)
    params = UPSCALE.validate_params(FAST2, len(data))
    good = UPSCALE.execute(params, data)
    assert UPSCALE.self_check(params, data, good) and UPSCALE.equivalent(params, good, good)
    # another frame's honest output
    wrong = UPSCALE.execute(params, encode_image(other, "jpeg", 90))
    assert not UPSCALE.self_check(params, data, wrong)
    assert not UPSCALE.equivalent(params, good, wrong)
    # the right luma with the colour dropped, or Cb and Cr swapped
    planes = decode_jpeg_planes(good)
    assert planes is not None
    y = planes[0]
    cb, cr = (np.ascontiguousarray(p[::2, ::2]) for p in planes[1:])
    grey = encode_jpeg_planes(y, np.full_like(cb, 128), np.full_like(cr, 128), 85)
    swapped = encode_jpeg_planes(y, cr, cb, 85)
    for forged in (grey, swapped):
        assert not UPSCALE.equivalent(params, good, forged)
    # the right frame at the wrong size, another codec, garbage
    half = UPSCALE.validate_params({**FAST2, "scale": 1.5})
    assert not UPSCALE.self_check(half, data, good)
    png = UPSCALE.validate_params({**FAST2, "codec": "png"})
    assert not UPSCALE.self_check(png, data, good)
    assert not UPSCALE.self_check(params, data, b"\xff\xd8\xff garbage")
    assert not UPSCALE.equivalent(params, good, b"garbage")


def test_planar_path_falls_back_and_keeps_the_limits() -> None:
    import simplejpeg

    img = _photo("chelsea", 64)
    # greyscale JPEG and PNG inputs take the RGB path
    grey = bytes(simplejpeg.encode_jpeg(np.ascontiguousarray(img[..., :1]), colorspace="GRAY"))
    params = UPSCALE.validate_params(FAST2)
    assert run_planar(params, grey) is None
    out = UPSCALE.execute(params, grey)
    assert decode_image(out).shape == (128, 128, 3) and UPSCALE.self_check(params, grey, out)
    auto = UPSCALE.validate_params({**FAST2, "input_codec": "auto"})
    assert run_planar(auto, encode_image(img, "png")) is None
    # other modes and scales are not planar
    for other in ({"mode": "quality"}, {"scale": 1.5}, {"codec": "webp"}):
        assert run_planar(UPSCALE.validate_params({**FAST2, **other}), encode_image(img, "jpeg")) is None
    # input codec and output size are checked from the header before decoding
    with pytest.raises(ValidationError):
        run(UPSCALE.validate_params({**FAST2, "input_codec": "png"}), encode_image(img, "jpeg"))
    with pytest.raises(LimitExceededError):
        run(params, encode_image(np.zeros((1200, 2000, 3), np.uint8), "jpeg"))
    with pytest.raises(ValidationError):
        run(params, b"\xff\xd8\xff not a jpeg")


@pytest.mark.parametrize("k", [2, 3, 4])
def test_downsample_back_is_the_block_mean_for_whole_factors(k: int) -> None:
    rng = np.random.default_rng(k)
    for h, w in ((1, 1), (5, 7), (33, 10)):
        big = rng.integers(0, 256, (h * k, w * k, 3), dtype=np.uint8)
        mean = big.reshape(h, k, w, k, 3).astype(np.float64).mean(axis=(1, 3))
        got = downsample_back(big, h, w)
        assert np.array_equal(got, np.floor(mean + 0.5).astype(np.uint8))
        pil = np.asarray(Image.fromarray(big).resize((w, h), Image.Resampling.BOX))
        assert np.abs(pil.astype(int) - got.astype(int)).max() <= 1
    # 1.5x and sizes that are not a whole multiple go through Pillow
    odd = rng.integers(0, 256, (15, 16, 3), dtype=np.uint8)
    assert downsample_back(odd, 10, 11).shape == (10, 11, 3)
