"""Profile editing: exact Unicode, escaped output, pictures validated and stripped of metadata."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image

from accounts.models import Profile
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person

pytestmark = pytest.mark.django_db

UNICODE_VALUES = {
    "full_name": "👨‍👩‍👧‍👦 Rene\u0301e שלום",
    "position": "مدير العمليات",
    "location": "שלום עולם \u200f· Zürich",
    "description": "e\u0301 + 👩🏽‍💻 + \u202eRTL override\u202c\nمرحبا بالعالم\r\nline three",  # noqa: RUF001
}
SCRIPT = "<script>alert(1)</script>"


@pytest.fixture(autouse=True)
def _media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def alice_client() -> Client:
    _, secret = make_person("alice")
    client = Client()
    client.post("/login/", {"username": "alice", "password": DEFAULT_PASSWORD})
    client.post("/login/code/", {"code": code_at_step(secret, int(time.time() // 30))})
    return client


def _jpeg_with_gps(width: int = 2000, height: int = 1000) -> bytes:
    image = Image.new("RGB", (width, height), (200, 30, 30))
    exif = Image.Exif()
    exif[0x010F] = "SpyCam Inc"  # Make
    exif[0x0131] = "secret-software"  # Software
    gps = {1: "N", 2: (51.0, 30.0, 0.0), 3: "E", 4: (0.0, 7.0, 0.0)}
    exif[0x8825] = gps  # GPSInfo IFD
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif)
    return out.getvalue()


def test_unicode_profile_text_round_trips_exactly(alice_client):
    response = alice_client.post("/profile/", UNICODE_VALUES)
    assert response.status_code == 302
    profile = Profile.objects.get(user__username="alice")
    for field, value in UNICODE_VALUES.items():
        assert getattr(profile, field) == value, field
    page = alice_client.get("/profile/").content.decode()
    for field in ("full_name", "position", "location"):
        assert f'value="{UNICODE_VALUES[field]}"' in page


def test_script_in_every_field_is_stored_as_text_and_escaped(alice_client):
    alice_client.post("/profile/", dict.fromkeys(UNICODE_VALUES, SCRIPT))
    profile = Profile.objects.get(user__username="alice")
    assert profile.full_name == SCRIPT
    page = alice_client.get("/profile/").content.decode()
    assert SCRIPT not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4


def test_overlong_text_is_refused_with_a_message_and_nothing_changes(alice_client):
    response = alice_client.post("/profile/", {**UNICODE_VALUES, "position": "x" * 151})
    assert response.status_code == 400
    assert "at most 150 characters" in response.content.decode()
    assert Profile.objects.get(user__username="alice").full_name == "Alice"


def test_a_pdf_picture_is_refused_and_nothing_changes(alice_client):
    pdf = SimpleUploadedFile("me.jpg", b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF", "image/jpeg")
    response = alice_client.post("/profile/", {**UNICODE_VALUES, "picture": pdf})
    assert response.status_code == 400
    assert "not a picture we accept" in response.content.decode()
    profile = Profile.objects.get(user__username="alice")
    assert not profile.picture
    assert profile.full_name == "Alice"


def test_an_html_or_svg_picture_is_refused(alice_client):
    for name, body in (
        ("me.png", b"<html><script>alert(1)</script></html>"),
        ("me.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
    ):
        upload = SimpleUploadedFile(name, body, "image/png")
        response = alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
        assert response.status_code == 400
        assert not Profile.objects.get(user__username="alice").picture


def test_a_picture_over_the_size_limit_is_refused(alice_client, settings):
    settings.PROFILE_PICTURE_MAX_BYTES = 1024
    upload = SimpleUploadedFile("big.jpg", _jpeg_with_gps(), "image/jpeg")
    response = alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    assert response.status_code == 400
    assert "too large" in response.content.decode()
    assert not Profile.objects.get(user__username="alice").picture


def test_a_picture_is_stored_without_exif_and_bounded_in_size(alice_client, settings):
    original = _jpeg_with_gps()
    assert b"SpyCam" in original
    upload = SimpleUploadedFile("me.jpg", original, "image/jpeg")
    response = alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    assert response.status_code == 302
    profile = Profile.objects.get(user__username="alice")
    stored = profile.picture.read()
    assert b"SpyCam" not in stored
    assert b"secret-software" not in stored
    image = Image.open(io.BytesIO(stored))
    assert image.format == "JPEG"
    assert not image.getexif()
    assert max(image.size) == settings.PROFILE_PICTURE_MAX_PX
    assert image.size == (settings.PROFILE_PICTURE_MAX_PX, settings.PROFILE_PICTURE_MAX_PX // 2)


def test_the_picture_is_served_only_to_logged_in_people_with_nosniff(alice_client):
    upload = SimpleUploadedFile("me.jpg", _jpeg_with_gps(64, 64), "image/jpeg")
    alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    response = alice_client.get("/people/alice/picture")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert Client().get("/people/alice/picture").status_code == 302


def test_a_transparent_png_stays_a_png(alice_client):
    image = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    upload = SimpleUploadedFile("me.png", out.getvalue(), "image/png")
    alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    response = alice_client.get("/people/alice/picture")
    assert response["Content-Type"] == "image/png"


def test_replacing_the_picture_removes_the_old_file(
    alice_client, settings, django_capture_on_commit_callbacks
):
    for _ in range(2):
        upload = SimpleUploadedFile("me.jpg", _jpeg_with_gps(64, 64), "image/jpeg")
        with django_capture_on_commit_callbacks(execute=True):
            alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    files = list((settings.MEDIA_ROOT / "pictures").iterdir())
    assert len(files) == 1


def test_the_profile_page_shows_when_it_was_last_updated(alice_client):
    alice_client.post("/profile/", UNICODE_VALUES)
    assert "last updated" in alice_client.get("/profile/").content.decode()


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height: enough for the size check, which reads the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (6000, 5000),  # a tiny file (1 bit per pixel), but 30 million pixels decoded
        (10_000, 10_000),  # past Pillow's own bound too
    ],
)
def test_a_picture_with_too_many_pixels_is_refused_with_a_message(alice_client, width, height):
    data = (
        _png_bytes(Image.new("1", (width, height)))
        if width * height < 50_000_000
        else _png_header_only(width, height)
    )
    upload = SimpleUploadedFile("poster.png", data, "image/png")
    response = alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    assert response.status_code == 400
    assert "The picture has too many pixels (at most 25 million" in response.content.decode()
    assert not Profile.objects.get(user__username="alice").picture


def test_a_5000_by_5000_picture_is_accepted(alice_client, settings):
    upload = SimpleUploadedFile("scan.png", _png_bytes(Image.new("1", (5000, 5000))), "image/png")
    response = alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    assert response.status_code == 302
    stored = Image.open(Profile.objects.get(user__username="alice").picture)
    assert stored.size == (settings.PROFILE_PICTURE_MAX_PX, settings.PROFILE_PICTURE_MAX_PX)


def test_a_48_megapixel_phone_photo_is_accepted(alice_client, settings):
    photo = io.BytesIO()
    Image.new("RGB", (8000, 6000), (200, 30, 30)).save(photo, format="JPEG")
    upload = SimpleUploadedFile("IMG_0001.jpg", photo.getvalue(), "image/jpeg")
    response = alice_client.post("/profile/", {**UNICODE_VALUES, "picture": upload})
    assert response.status_code == 302
    stored = Image.open(Profile.objects.get(user__username="alice").picture)
    side = settings.PROFILE_PICTURE_MAX_PX
    assert stored.size == (side, side * 3 // 4)
    assert stored.getpixel((side // 2, side // 4))[0] > 150  # still the photo's red
