"""``upscale`` against Pillow on real photographs, quality vs fast, validation, checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mesh.errors import LimitExceededError, ValidationError
from tasks.codecs import IMAGE_CODECS, decode_image, encode_image, psnr
from tasks.kernels.upscale import UPSCALE, run, upscale_frame

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
