"""Reading images into float arrays and writing files atomically.

Images enter the library as float32 ``[H, W, C]`` arrays in ``[0, 1]`` with ``C`` = 1 (grey) or
3 (RGB). The rule for file modes:

- ``L``, ``1`` and 16-bit grey (``I;16*``, ``I`` holding 0..65535) load as grey, scaled by the
  mode's maximum; ``RGB``, ``YCbCr`` and palette images without transparency load as RGB.
- ``RGBA``, ``LA``, ``PA`` and palette images with a transparency entry load only when every pixel
  is opaque (the alpha is then dropped); otherwise they are refused: flatten them first.
- ``CMYK``, ``F`` (float) and any other mode are refused: convert them to RGB or grey first.
- EXIF orientation is applied.
- An RGB image whose three channels agree to within ``GREY_TOLERANCE`` grey levels (of 255) at
  every pixel is a grey image stored as RGB (common for JPEGs) and loads as grey: its luminance.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from semfuse_jax.errors import SemfuseError, write_error

GREY_TOLERANCE = 4
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_GREY_MODES = {"1": 1.0, "L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0}
_MAX_PIXELS = 1 << 28


def current_umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary file keeps ``path``'s suffix (so writers that pick a format from it work) and is
    removed if the body raises, so ``path`` is either untouched or complete. The result gets the
    usual permissions of a new file (0666 less the umask), not the temporary file's 0600.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open(path: Path, decode: bool = True) -> Image.Image:
    try:
        if not path.is_file():
            raise SemfuseError(f"cannot read image {path}: no such file")
    except OSError as exc:  # e.g. a symlink loop or a name too long
        raise SemfuseError(f"cannot read image {path}: {exc.strerror or exc}") from None
    try:
        image = Image.open(path)
        if image.width * image.height > _MAX_PIXELS:
            raise SemfuseError(f"image {path} is {image.width}x{image.height}: too large")
        if getattr(image, "n_frames", 1) > 1:
            raise SemfuseError(
                f"image {path} has {image.n_frames} frames; save the frame to fuse as its own file"
            )
        if not decode:
            return image
        image.load()
        return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise SemfuseError(f"cannot read image {path}: not a readable image ({exc})") from None
    except Image.DecompressionBombError as exc:
        raise SemfuseError(f"cannot read image {path}: {exc}") from None


_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(height, width)`` as loaded (after the EXIF orientation), from the file header only."""
    image = _open(Path(path), decode=False)
    try:
        orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        orientation = 1
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return image.width, image.height
    return image.height, image.width


def bit_depth(path: str | os.PathLike[str]) -> int:
    """16 for 16-bit grey files (``I;16*``, ``I``), else 8: the depth outputs keep."""
    mode = _open(Path(path), decode=False).mode
    return 16 if mode.startswith("I;16") or mode == "I" else 8


def _drop_opaque_alpha(image: Image.Image, path: Path) -> Image.Image:
    alpha = np.asarray(image.getchannel(image.mode[-1]))
    if alpha.min() < 255:
        raise SemfuseError(f"image {path} ({image.mode}) has transparent pixels; flatten it first")
    return image.convert("RGB" if image.mode in ("RGBA", "PA") else "L")


def to_array(image: Image.Image, path: Path) -> np.ndarray:
    """Convert a PIL image to float32 ``[H, W, 1|3]`` in ``[0, 1]`` by the module's mode rule."""
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA"):
        image = _drop_opaque_alpha(image, path)
        mode = image.mode
    if mode == "YCbCr":
        image, mode = image.convert("RGB"), "RGB"
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise SemfuseError(f"image {path} (32-bit integer) has values outside 0..65535")
        return (values.astype(np.float32) / 65535.0)[..., None]
    if mode in _GREY_MODES:
        values = np.asarray(image).astype(np.float32)
        return (values / _GREY_MODES[mode])[..., None]
    if mode == "RGB":
        rgb = np.asarray(image)
        spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
        rgb = rgb.astype(np.float32) / 255.0
        if spread.max() <= GREY_TOLERANCE:
            return (rgb @ LUMA)[..., None]
        return rgb
    raise SemfuseError(
        f"image {path} has unsupported mode {mode}; convert it to RGB or greyscale first"
    )


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as float32 ``[H, W, 1|3]`` in ``[0, 1]`` (see the module docstring)."""
    path = Path(path)
    array = to_array(_open(path), path)
    if array.size == 0:
        raise SemfuseError(f"image {path} is empty")
    return array


LOSSLESS_SUFFIXES = (".png", ".tif", ".tiff", ".bmp")


def check_image_suffix(path: str | os.PathLike[str]) -> Path:
    """Fail early unless the suffix names a lossless image format (the scores a tool reports
    must describe the file it writes; a lossy format would change the image after scoring)."""
    path = Path(path)
    if path.suffix.lower() not in LOSSLESS_SUFFIXES:
        raise SemfuseError(
            f"cannot write {path}: {path.suffix or 'no suffix'} is not a lossless image format; "
            f"use one of {', '.join(LOSSLESS_SUFFIXES)}"
        )
    return path


def check_writable(path: str | os.PathLike[str], overwrite: bool = True) -> Path:
    """Fail early, before any work, if ``path`` cannot be written (or exists and must not be)."""
    path = Path(path)
    try:
        if os.path.lexists(path) and not overwrite:
            raise SemfuseError(f"output {path} exists; pass --overwrite to replace it")
        if path.is_dir():
            raise SemfuseError(f"output {path} is a directory")
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise SemfuseError(f"cannot write {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise SemfuseError(f"cannot write {path}: folder {folder} is not writable")
        if len(path.name.encode()) > os.pathconf(folder, "PC_NAME_MAX") - 16:
            raise SemfuseError(f"cannot write {path}: the file name is too long")
    except OSError as exc:
        raise SemfuseError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def file_identity(path: str | os.PathLike[str]) -> tuple[str, tuple[int, int] | None]:
    """What two paths must share to name the same file: the real path, and for an existing file
    its device and inode (so links and hard links are recognised)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):  # a NUL byte, or a name the system refuses
        return os.fspath(path), None
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        return real, None
    return real, (st.st_dev, st.st_ino)


def check_outputs(
    outputs: Sequence[str | os.PathLike[str]],
    inputs: Sequence[str | os.PathLike[str]],
    overwrite: bool,
) -> list[Path]:
    """The one overwrite policy of every tool, applied before any work.

    Refuses an output named twice, an output that is any of ``inputs`` (every file the run reads),
    an output that exists unless ``overwrite``, and one that cannot be written.
    """
    paths = [Path(p) for p in outputs]
    sources: dict[object, str | os.PathLike[str]] = {}  # real path and inode -> an input
    for source in inputs:
        for key in filter(None, file_identity(source)):
            sources.setdefault(key, source)
    named: dict[object, Path] = {}  # the same for the outputs checked so far
    for path in paths:
        keys = list(filter(None, file_identity(path)))
        other = next((named[key] for key in keys if key in named), None)
        if other is not None:
            raise SemfuseError(f"output {path} is named twice ({other}); give distinct outputs")
        source = next((sources[key] for key in keys if key in sources), None)
        if source is not None:
            raise SemfuseError(f"output {path} is an input of this run ({source}); refusing")
        check_writable(path, overwrite)
        named.update((key, path) for key in keys if key not in named)
    return paths


def save_image(path: str | os.PathLike[str], image: np.ndarray, bits: int = 8) -> None:
    """Write float ``[H, W, 1|3]`` in ``[0, 1]`` as grey or RGB, atomically.

    The format follows the file suffix (PNG recommended: lossless). Values are clipped to ``[0, 1]``
    and rounded to ``bits`` (8, or 16 for grey images: a 16-bit PNG/TIFF); non-finite values are
    refused.
    """
    path = Path(path)
    image = np.asarray(image, np.float32)
    if not np.all(np.isfinite(image)):
        raise SemfuseError(f"refusing to write {path}: the image holds NaN or Inf")
    pixels, top = _levels(image, bits)
    if top == 65535:
        write_pil(path, Image.fromarray(pixels[..., 0].astype(np.uint16)))  # mode I;16
        return
    pixels = pixels.astype(np.uint8)
    write_pil(path, Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))


def quantise(image: np.ndarray, bits: int = 8) -> np.ndarray:
    """``image`` ``[..., H, W, 1|3]`` as :func:`save_image` stores it at ``bits``, back in
    ``[0, 1]`` (float32): clipped and rounded to the file's levels."""
    pixels, top = _levels(np.asarray(image, np.float32), bits)
    return (pixels / top).astype(np.float32)


def _levels(image: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """The integer levels (as floats) ``image`` is stored as, and the top level: 65535 for a
    16-bit grey image, else 255."""
    top = 65535 if bits == 16 and image.shape[-1] == 1 else 255
    return np.round(np.clip(image, 0.0, 1.0) * top), top


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically (complete or untouched); failures are one-line errors."""
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise write_error(path, exc) from None


def write_pil(path: str | os.PathLike[str], image: Image.Image) -> None:
    """Save a PIL image atomically; the format follows the suffix."""
    try:
        with atomic_path(path) as tmp:
            image.save(tmp)
    except OSError as exc:
        raise write_error(path, exc) from None
    except (ValueError, KeyError) as exc:
        raise SemfuseError(f"cannot write {path}: {exc}") from None
