"""Image files: reading a user's photograph into a model's resolution, writing a result.

Reading, the rule stated once: apply the EXIF orientation, convert to RGB (transparent pixels
become black), scale so the shorter side matches the model's side (Lanczos), then crop the
centre. Any mode and bit depth (16-bit and float images are scaled, not clipped), any size up
to PIL's decompression-bomb limit. A missing, unreadable or too large file is a
SteerCompileError at the statement that named it.

Writing: a PNG with text chunks (the program that made it), written atomically.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from energies.errors import SteerCompileError, SteerRuntimeError
from energies.files import atomic_write


def load_image(path: Path, size: tuple[int, int], span=None, what: str = "source image") -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] at `size` = (H, W). `what` names the file in errors."""
    from PIL import Image, ImageOps

    with open_image(path, span, what) as im:
        try:
            im = ImageOps.exif_transpose(im)
            im = _as_rgb(im)
            h, w = size
            scale = max(h / im.height, w / im.width)
            im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.LANCZOS)
            left, top = (im.width - w) // 2, (im.height - h) // 2
            im = im.crop((left, top, left + w, top + h))
            return np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, SyntaxError, ValueError) as e:  # a truncated or corrupt file fails when its pixels are read
            raise _unreadable(path, what, e, span) from None


def open_image(path: Path, span=None, what: str = "source image"):
    """The image file opened (its header read, no pixels yet), or a SteerCompileError at the
    statement that named it: missing, not an image, or so large that decoding it would take the
    machine's memory (PIL's decompression-bomb limit). Cheap: the run checks its images with it
    before sampling."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise SteerCompileError(f"{what} {str(path)!r} does not exist", span, hint="paths are relative to the script")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # too large is an error, not a warning and then a swap storm
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SteerCompileError(f"{what} {str(path)!r} is too large to read safely ({_pixels(path)})", span,
                                hint=f"scale it down below {Image.MAX_IMAGE_PIXELS // 1_000_000} megapixels first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise _unreadable(path, what, e, span) from None


def _pixels(path: Path) -> str:
    """"W x H pixels" from the file's header, without PIL's size limit."""
    from PIL import Image

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            return f"{im.width} x {im.height} pixels"
    except Exception:  # only for the message: the error is raised either way
        return "too many pixels"
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _unreadable(path: Path, what: str, e: Exception, span) -> SteerCompileError:
    return SteerCompileError(f"cannot read {what} {str(path)!r}: {e}", span, hint="use a PNG, JPEG or WebP file")


def _as_rgb(im):
    """8-bit RGB. Transparent pixels become black. High bit depths are scaled, not clipped:
    PIL's convert("RGB") clips a 16-bit PNG to 255 (mid-grey becomes white) and truncates a
    float image in [0, 1] to 0 (black)."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = Image.fromarray(_eight_bit(np.asarray(im), im.mode), "L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, im)
    return im.convert("RGB")


def _eight_bit(a: np.ndarray, mode: str) -> np.ndarray:
    """A one-channel image as 0..255: floats ("F") are read as 0..1, integers ("I;16", or "I" as
    older PILs open a 16-bit PNG) as 0..65535."""
    full = 1.0 if mode == "F" else 65535.0
    a = np.nan_to_num(a.astype(np.float64) / full, nan=0.0)
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def to_pil(image: np.ndarray):
    """(H, W, 3) float in [0, 1] -> an 8-bit PIL image."""
    from PIL import Image

    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def write_png(image: np.ndarray, path, text: dict | None = None):
    """Write a PNG atomically, with `text` as its text chunks (the program that made it). An image
    with a NaN or an infinity is refused: cast to 8 bits it would be written as black."""
    from PIL.PngImagePlugin import PngInfo

    if not np.isfinite(image).all():
        raise SteerRuntimeError(f"refusing to write {path}: the image has values that are not finite numbers",
                                hint="lower the weights of the terms, or run in fp32 (--dtype fp32)")

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    atomic_write(path, lambda tmp: to_pil(image).save(tmp, format="PNG", pnginfo=info))
