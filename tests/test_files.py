"""Image loading rules (modes, 16-bit, alpha, EXIF, grey stored as RGB) and atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from semfuse_jax import files
from semfuse_jax.errors import SemfuseError

RNG = np.random.default_rng(0)


def _save(tmp_path, name: str, image: Image.Image, **kw) -> str:
    path = tmp_path / name
    image.save(path, **kw)
    return path


def test_grey_8_and_16_bit(tmp_path):
    grey = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    out = files.load_image(_save(tmp_path, "g.png", Image.fromarray(grey)))
    assert out.shape == (5, 7, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], grey / 255.0, rtol=1e-6)
    deep = RNG.integers(0, 65536, (5, 7), dtype=np.uint16)
    out16 = files.load_image(_save(tmp_path, "g16.png", Image.fromarray(deep)))
    np.testing.assert_allclose(out16[..., 0], deep / 65535.0, rtol=1e-6)


def test_quantise_is_what_save_image_stores(tmp_path):
    grey = RNG.random((5, 7, 1)).astype(np.float32) * 1.2 - 0.1  # out of range at both ends
    colour = RNG.random((5, 7, 3)).astype(np.float32)
    colour[0, :, 1] = 0.0  # so the file stays colour
    for name, image, bits in (("g8.png", grey, 8), ("g16.png", grey, 16), ("c.png", colour, 8)):
        files.save_image(tmp_path / name, image, bits)
        written = files.load_image(tmp_path / name)
        np.testing.assert_array_equal(files.quantise(image, bits), written)
    assert np.unique(files.quantise(grey, 8)).size <= 256
    assert np.abs(files.quantise(grey, 16) - np.clip(grey, 0, 1)).max() <= 0.5 / 65535 + 1e-7


def test_rgb_grey_detection_and_true_colour(tmp_path):
    grey = RNG.integers(0, 250, (6, 6), dtype=np.uint8)
    nearly = np.stack([grey, grey + 2, grey + 1], axis=-1).astype(np.uint8)  # JPEG-like wobble
    out = files.load_image(_save(tmp_path, "ng.png", Image.fromarray(nearly)))
    assert out.shape == (6, 6, 1)
    np.testing.assert_allclose(out[..., 0], (nearly / 255.0) @ files.LUMA, rtol=1e-5)
    colour = nearly.copy()
    colour[0, 0] = (255, 0, 0)
    assert files.load_image(_save(tmp_path, "c.png", Image.fromarray(colour))).shape == (6, 6, 3)


def test_palette_alpha_and_refused_modes(tmp_path):
    rgb = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    loaded = files.load_image(_save(tmp_path, "p.png", palette))
    np.testing.assert_allclose(loaded, np.asarray(palette.convert("RGB")) / 255.0, rtol=1e-6)
    opaque = Image.fromarray(np.dstack([rgb, np.full((4, 4), 255, np.uint8)]))
    assert files.load_image(_save(tmp_path, "o.png", opaque)).shape == (4, 4, 3)
    see_through = np.dstack([rgb, np.full((4, 4), 255, np.uint8)])
    see_through[0, 0, 3] = 10
    with pytest.raises(SemfuseError, match="transparent"):
        files.load_image(_save(tmp_path, "t.png", Image.fromarray(see_through)))
    with pytest.raises(SemfuseError, match="unsupported mode CMYK"):
        files.load_image(_save(tmp_path, "k.tif", Image.fromarray(rgb).convert("CMYK")))
    with pytest.raises(SemfuseError, match="unsupported mode F"):
        files.load_image(_save(tmp_path, "f.tif", Image.fromarray(rgb[..., 0].astype(np.float32))))


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = (255, 0, 0)  # red top-left in storage order
    pixels[..., 1] = 40
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(tmp_path, "e.png", Image.fromarray(pixels), exif=exif.tobytes())
    loaded = files.load_image(path)
    assert loaded.shape == (3, 2, 3)
    np.testing.assert_allclose(loaded[0, 1], (1.0, 40 / 255, 0.0), rtol=1e-6)  # now top-right


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(SemfuseError, match="no such file"):
        files.load_image(tmp_path / "absent.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(SemfuseError, match="not a readable image"):
        files.load_image(tmp_path / "empty.png")
    good = _save(tmp_path, "g.png", Image.fromarray(RNG.integers(0, 256, (64, 64), np.uint8)))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(SemfuseError, match="not a readable image"):
        files.load_image(tmp_path / "cut.png")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2000))
def test_random_bytes_give_an_array_or_our_error(tmp_path, data):
    path = tmp_path / "random.img"
    path.write_bytes(data)
    try:
        out = files.load_image(path)
    except SemfuseError:
        return
    assert out.ndim == 3 and out.shape[-1] in (1, 3) and np.all((out >= 0) & (out <= 1))


def test_save_image_is_atomic_and_refuses_nan(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(SemfuseError, match="NaN"):
        files.save_image(target, np.full((4, 4, 1), np.nan))
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(SemfuseError, match="cannot write"):
        files.save_image(tmp_path / "out.unknownformat", np.zeros((4, 4, 3)))
    assert list(tmp_path.iterdir()) == []
    files.save_image(target, np.linspace(0, 1, 48).reshape(4, 4, 3))
    assert Image.open(target).mode == "RGB" and list(tmp_path.iterdir()) == [target]


def test_written_files_get_the_usual_permissions_not_the_temporary_0600(tmp_path):
    old = os.umask(0o022)
    try:
        files.save_image(tmp_path / "shared.png", np.zeros((4, 4, 1)))
        os.umask(0o077)
        files.save_image(tmp_path / "private.png", np.zeros((4, 4, 1)))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.png").stat().st_mode) == 0o600
