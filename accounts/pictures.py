"""Profile pictures: accept only real images, re-encode them from pixels (which drops EXIF/GPS)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PictureRejected

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP"})
# The most pixels decoded from any picture (a 5000x5000 photo), so one upload cannot take
# hundreds of MB. JPEGs (phone photos, 12-48 MP) are decoded reduced (1/2, 1/4 or 1/8) first
# and only their reduced size counts; Pillow's own bound (Image.MAX_IMAGE_PIXELS, about
# 89 MP in the file's header) still applies before that.
MAX_SOURCE_PIXELS = 25_000_000
# What Pillow raises for a file that is not a decodable image of its kind (damaged, cut
# short, lying about itself), and for one over its own pixel bound.
UNDECODABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)
TOO_MANY_PIXELS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@dataclass(frozen=True)
class Picture:
    data: bytes
    extension: str
    content_type: str
    width: int
    height: int


def _too_many_pixels() -> PictureRejected:
    side = int(MAX_SOURCE_PIXELS**0.5)
    return PictureRejected(
        f"The picture has too many pixels (at most {MAX_SOURCE_PIXELS // 1_000_000} million, "
        f"such as {side}x{side}). Save it smaller and try again.",
        code="picture_too_many_pixels",
    )


def normalise_picture(stream: IO[bytes], *, max_bytes: int, max_px: int) -> Picture:
    """Decode `stream` as a JPEG/PNG/GIF/WebP and re-encode it at most `max_px` on each side.

    Raises PictureRejected (with a stable code) for anything else; the result carries no metadata.
    """
    raw = stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PictureRejected(
            f"The picture is too large (at most {max_bytes // (1024 * 1024)} MB).",
            code="picture_too_large",
        )
    if not raw:
        raise PictureRejected("The picture file is empty.", code="picture_empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=sorted(ACCEPTED_FORMATS))
            if image.format == "JPEG":
                # libjpeg scales while decoding, to no less than max_px on each side
                image.draft(None, (max_px, max_px))
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise _too_many_pixels()
            image.seek(0)  # first frame of an animation
            image.load()
            image = ImageOps.exif_transpose(image)
    except PictureRejected:
        raise
    except TOO_MANY_PIXELS as exc:
        raise _too_many_pixels() from exc
    except UNDECODABLE as exc:
        raise PictureRejected() from exc

    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    # Re-encode from a fresh image built from pixels only: no EXIF, GPS, ICC or comments survive.
    pixels = image.convert("RGBA" if has_alpha else "RGB")
    pixels.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    clean = Image.new(pixels.mode, pixels.size)
    clean.paste(pixels)
    out = io.BytesIO()
    if has_alpha:
        clean.save(out, format="PNG", optimize=True)
        extension, content_type = "png", "image/png"
    else:
        clean.save(out, format="JPEG", quality=85, optimize=True)
        extension, content_type = "jpg", "image/jpeg"
    return Picture(out.getvalue(), extension, content_type, clean.width, clean.height)
