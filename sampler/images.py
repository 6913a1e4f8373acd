"""Image files: reading a user's photograph into a model's resolution, writing a result.

Reading, the rule stated once: apply the EXIF orientation, convert to RGB (transparent pixels
become black), scale so the shorter side matches the model's side (Lanczos), then crop the
centre. Any size, any mode. A missing or unreadable file is a SteerCompileError at the
statement that named it.

Writing: a PNG with text chunks (the program that made it), written atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from energies.errors import SteerCompileError
from energies.files import atomic_write


def load_image(path: Path, size: tuple[int, int], span=None, what: str = "source image") -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] at `size` = (H, W). `what` names the file in errors."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise SteerCompileError(f"{what} {str(path)!r} does not exist", span, hint="paths are relative to the script")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                black = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(black, im)
            im = im.convert("RGB")
            h, w = size
            scale = max(h / im.height, w / im.width)
            im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))), Image.LANCZOS)
            left, top = (im.width - w) // 2, (im.height - h) // 2
            im = im.crop((left, top, left + w, top + h))
            return np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise SteerCompileError(f"cannot read {what} {str(path)!r}: {e}", span, hint="use a PNG, JPEG or WebP file") from None


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def to_pil(image: np.ndarray):
    """(H, W, 3) float in [0, 1] -> an 8-bit PIL image."""
    from PIL import Image

    return Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))


def write_png(image: np.ndarray, path, text: dict | None = None):
    """Write a PNG atomically, with `text` as its text chunks (the program that made it)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    atomic_write(path, lambda tmp: to_pil(image).save(tmp, format="PNG", pnginfo=info))
