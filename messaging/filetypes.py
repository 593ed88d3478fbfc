"""Attachment types: decided from the content against an allow-list, never from names.

Detection is the `filetype` library's (magic bytes in the first HEAD_BYTES). Only the formats
below are shown inline; an admin may let other detected types through as downloads. SVG, HTML,
XML and JavaScript are text the library never detects, and downloads are never inline, so
none of them can be served inline. Pure: no Django.
"""

from __future__ import annotations

import io
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from typing import IO

import filetype
from PIL import Image, ImageOps

from accounts.pictures import MAX_SOURCE_PIXELS, TOO_MANY_PIXELS, UNDECODABLE

# filetype reads at most this many leading bytes (filetype.utils._NUM_SIGNATURE_BYTES)
HEAD_BYTES = 8192


@dataclass(frozen=True)
class FileType:
    mime: str
    kind: str  # image, audio, video, pdf, or download
    extension: str
    inline: bool


ALLOWED_TYPES: dict[str, FileType] = {
    t.mime: t
    for t in (
        FileType("image/png", "image", "png", inline=True),
        FileType("image/jpeg", "image", "jpg", inline=True),
        FileType("image/gif", "image", "gif", inline=True),
        FileType("image/webp", "image", "webp", inline=True),
        FileType("audio/mpeg", "audio", "mp3", inline=True),
        FileType("audio/ogg", "audio", "ogg", inline=True),
        FileType("audio/wav", "audio", "wav", inline=True),
        FileType("audio/mp4", "audio", "m4a", inline=True),
        FileType("video/mp4", "video", "mp4", inline=True),
        FileType("video/webm", "video", "webm", inline=True),
        FileType("application/pdf", "pdf", "pdf", inline=True),
    )
}
# the library's names for formats we allow under their standard names; an APNG is a PNG
# to every browser and to Pillow
_LIBRARY_ALIASES = {"audio/x-wav": "audio/wav", "image/apng": "image/png"}
# extensions people already use for a type; a name ending in one of these is kept as it is
_KNOWN_EXTENSIONS = {
    "image/jpeg": frozenset({"jpg", "jpeg", "jpe", "jfif"}),
    "audio/ogg": frozenset({"ogg", "oga", "opus"}),
    "audio/mp4": frozenset({"m4a", "mp4", "aac"}),
    "video/mp4": frozenset({"mp4", "m4v"}),
    "audio/wav": frozenset({"wav", "wave"}),
}


def detect(head: bytes, *, download_types: frozenset[str] = frozenset()) -> FileType | None:
    """The type of a file from its first HEAD_BYTES, or None if it may not be sent.

    `download_types` (an admin setting) lets more detected types through as downloads: never
    inline, whatever they are.
    """
    match = filetype.guess(bytes(head[:HEAD_BYTES])) if head else None
    if match is None:
        return None
    return type_for_mime(
        _LIBRARY_ALIASES.get(match.mime, match.mime), download_types=download_types
    )


def type_for_mime(mime: str, *, download_types: frozenset[str] = frozenset()) -> FileType | None:
    """The FileType for a mime type named by a peer's envelope, or None if it is not accepted.

    Same rules as `detect`: the allow-list, else a listed download type the library knows.
    """
    if mime in ALLOWED_TYPES:
        return ALLOWED_TYPES[mime]
    known = filetype.get_type(mime=mime)
    if known is None or mime not in {t.lower() for t in download_types}:
        return None
    return FileType(mime, "download", known.extension, inline=False)


MAX_FILENAME_CHARS = 120
_PATH_SEPARATORS = re.compile(r"[/\\]")
_SPACES = re.compile(r" +")


def clean_filename(name: str, file_type: FileType) -> str:
    """A display and download name that cannot hide its type or reach outside a folder.

    Keeps the last path component, drops control, format and bidi characters (so
    "photo\\u202egnp.exe" cannot pose as a PNG), caps the length and makes sure the name ends
    with an extension of the detected type ("report.html" sent as a PNG is "report.html.png").
    """
    name = _PATH_SEPARATORS.split(name)[-1]
    name = "".join(
        " " if char.isspace() else char
        for char in name
        if char.isspace() or not unicodedata.category(char).startswith("C")
    )
    name = unicodedata.normalize("NFC", name)
    name = _SPACES.sub(" ", name).strip(" ").lstrip(".").strip(" ")
    stem, dot, extension = name.rpartition(".")
    known = _KNOWN_EXTENSIONS.get(file_type.mime, frozenset({file_type.extension}))
    if not (dot and stem.strip(" .") and extension.lower() in known):
        stem, extension = name.rstrip(" ."), file_type.extension
    stem = stem[: MAX_FILENAME_CHARS - len(extension) - 1].rstrip(" .")
    return f"{stem or 'file'}.{extension}"


_PILLOW_FORMATS = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
_PREVIEW_QUALITIES = (80, 65, 50, 35)
_MIN_PREVIEW_PX = 16


def make_preview(
    path_or_file: str | os.PathLike[str] | IO[bytes],
    file_type: FileType,
    *,
    max_px: int = 320,
    max_bytes: int = 24 * 1024,
) -> bytes | None:
    """A small metadata-free JPEG of an image for the envelope, or None.

    None for anything but an allowed image, and for images Pillow cannot decode within the
    pixel bound: such a file may still be sent, it just has no preview.
    """
    pillow_format = _PILLOW_FORMATS.get(file_type.mime)
    if file_type.kind != "image" or pillow_format is None:
        return None
    try:
        image = _decode_small(path_or_file, pillow_format, max_px)
    except (*TOO_MANY_PIXELS, *UNDECODABLE):
        return None
    if image is None:
        return None
    side = max_px
    while side >= _MIN_PREVIEW_PX:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        for quality in _PREVIEW_QUALITIES:
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=quality, optimize=True)
            if out.tell() <= max_bytes:
                return out.getvalue()
        side = side * 3 // 4
    return None


def _decode_small(
    source: str | os.PathLike[str] | IO[bytes], pillow_format: str, max_px: int
) -> Image.Image | None:
    """Decode the first frame, upright, at most `max_px` a side, as RGB pixels and nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # only the detected format: a PNG header cannot make Pillow try another decoder
        with Image.open(source, formats=[pillow_format]) as image:
            if image.format == "JPEG":
                # libjpeg scales while decoding, to no less than max_px on each side
                image.draft("RGB", (max_px, max_px))
            if image.width * image.height > MAX_SOURCE_PIXELS:
                return None
            image.seek(0)  # first frame of an animation
            image.load()
            has_alpha = image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            )
            mode = "RGBA" if has_alpha else "RGB"
            # convert before scaling: Pillow scales palette images with nearest-neighbour only
            pixels = image if image.mode == mode else image.convert(mode)
            pixels.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
            pixels = ImageOps.exif_transpose(pixels)
    if has_alpha:
        # JPEG has no alpha: show transparent parts on white, as a chat bubble would
        flat = Image.new("RGB", pixels.size, "white")
        flat.paste(pixels, mask=pixels.getchannel("A"))
        pixels = flat
    # a fresh image from pixels only: no EXIF, GPS, ICC profile or comments survive
    clean = Image.new("RGB", pixels.size)
    clean.paste(pixels)
    return clean
