import io
import unicodedata
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from messaging.filetypes import (
    ALLOWED_TYPES,
    HEAD_BYTES,
    MAX_FILENAME_CHARS,
    FileType,
    clean_filename,
    detect,
    make_preview,
    type_for_mime,
)
from tests.helpers import samples

PNG = ALLOWED_TYPES["image/png"]
JPEG = ALLOWED_TYPES["image/jpeg"]


@pytest.mark.parametrize("name", sorted(samples.ALLOWED_SAMPLES))
def test_each_allowed_sample_is_detected_with_its_type(name):
    build, mime, kind = samples.ALLOWED_SAMPLES[name]

    found = detect(build()[:HEAD_BYTES])

    assert found is not None
    assert (found.mime, found.kind, found.inline) == (mime, kind, True)


def test_the_media_fixtures_stay_small():
    for path in samples.MEDIA.iterdir():
        assert path.stat().st_size < 40 * 1024, path.name


def test_detection_needs_only_the_head():
    assert detect(samples.mp4()[:HEAD_BYTES]) == ALLOWED_TYPES["video/mp4"]
    assert detect(samples.png() + b"\x00" * 3 * HEAD_BYTES) == PNG


@pytest.mark.parametrize(
    "build",
    [samples.html, samples.svg, samples.xml, samples.javascript, samples.random_bytes],
    ids=["html", "svg", "xml", "javascript", "random"],
)
def test_text_and_unknown_content_is_refused(build):
    assert detect(build()) is None


def test_empty_content_is_refused():
    assert detect(b"") is None


def test_a_name_or_claim_does_not_matter_only_content():
    # HTML "renamed .png": detect never sees the name, and the content is not a PNG
    assert detect(samples.html()) is None


def test_a_png_html_polyglot_is_a_png():
    # It is served as image/png with nosniff and a sandboxing CSP, so its HTML never runs.
    assert detect(samples.png_html_polyglot()) == PNG


def test_a_truncated_png_is_still_a_png():
    assert detect(samples.truncated_png()) == PNG


def test_a_listed_download_type_comes_back_as_a_download():
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("notes.txt", "hello")

    found = detect(zipped.getvalue(), download_types=frozenset({"application/zip"}))

    assert found == FileType("application/zip", "download", "zip", inline=False)
    assert detect(zipped.getvalue()) is None


def test_download_types_never_make_text_formats_inline():
    listed = frozenset({"image/svg+xml", "text/html", "application/xml", "text/javascript"})

    for build in (samples.svg, samples.html, samples.xml, samples.javascript):
        found = detect(build(), download_types=listed)
        assert found is None or (found.kind, found.inline) == ("download", False)


def test_listing_an_allowed_type_as_download_keeps_it_inline():
    assert detect(samples.png(), download_types=frozenset({"image/png"})) == PNG


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_detect_never_raises(data):
    found = detect(data, download_types=frozenset({"application/zip"}))

    assert found is None or found.mime in ALLOWED_TYPES or found.kind == "download"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_detect_never_raises_on_damaged_containers(tail):
    for head in (b"\x00\x00\x00\x20ftypisom", b"\x1aE\xdf\xa3", b"RIFF\x00\x00\x00\x00WEBP"):
        detect(head + tail)


def test_a_peers_mime_maps_to_the_same_types_detect_gives():
    downloads = frozenset({"application/zip", "image/svg+xml"})

    assert type_for_mime("audio/wav") == ALLOWED_TYPES["audio/wav"]
    assert type_for_mime("application/zip", download_types=downloads) == FileType(
        "application/zip", "download", "zip", inline=False
    )
    assert type_for_mime("application/zip") is None
    assert type_for_mime("image/svg+xml", download_types=downloads) is None
    assert type_for_mime("text/html") is None


# clean_filename


@pytest.mark.parametrize(
    ("name", "file_type", "expected"),
    [
        ("photo.png", PNG, "photo.png"),
        ("photo.JPG", JPEG, "photo.JPG"),
        ("photo.jpeg", JPEG, "photo.jpeg"),
        ("report.html", PNG, "report.html.png"),
        ("holiday", JPEG, "holiday.jpg"),
        ("../../etc/passwd", PNG, "passwd.png"),
        ("C:\\Users\\ann\\Desktop\\cat.png", PNG, "cat.png"),
        ("dir/sub\\mixed/cat.png", PNG, "cat.png"),
        ("folder/", PNG, "file.png"),
        ("", PNG, "file.png"),
        ("   ", PNG, "file.png"),
        ("...", PNG, "file.png"),
        (".bashrc", PNG, "bashrc.png"),
        ("..hidden.png", PNG, "hidden.png"),
        (".png", PNG, "png.png"),
        ("a\x00b\x07c\x1b[31m.png", PNG, "abc[31m.png"),
        ("tab\tand\nnewline.png", PNG, "tab and newline.png"),
        ("many     spaces   .png", PNG, "many spaces.png"),
        ("zero\u200bwidth\u200d\ufeff.png", PNG, "zerowidth.png"),
        ("trailing dot.", PNG, "trailing dot.png"),
        ("voice.opus", ALLOWED_TYPES["audio/ogg"], "voice.opus"),
        ("song.mp4", ALLOWED_TYPES["audio/mp4"], "song.mp4"),
        ("clip.MOV", ALLOWED_TYPES["video/mp4"], "clip.MOV.mp4"),
    ],
)
def test_clean_filename(name, file_type, expected):
    assert clean_filename(name, file_type) == expected


def test_a_right_to_left_override_cannot_disguise_an_executable():
    # shown as "photoexe.png" by a bidi-aware renderer; really "photo<RLO>gnp.exe"
    cleaned = clean_filename("photo\u202egnp.exe", PNG)

    assert cleaned == "photognp.exe.png"


@pytest.mark.parametrize(
    "char",
    [
        "\u202a",
        "\u202b",
        "\u202c",
        "\u202d",
        "\u202e",
        "\u2066",
        "\u2067",
        "\u2068",
        "\u2069",
        "\u200e",
        "\u200f",
    ],
)
def test_every_bidi_control_is_dropped(char):
    assert clean_filename(f"a{char}b.png", PNG) == "ab.png"


def test_a_long_name_is_capped_and_keeps_its_extension():
    cleaned = clean_filename("x" * 500 + ".jpeg", JPEG)

    assert len(cleaned) == MAX_FILENAME_CHARS
    assert cleaned.endswith("x.jpeg")


def test_a_long_name_with_a_wrong_extension_is_capped_with_the_right_one():
    cleaned = clean_filename("y" * 500 + ".exe", PNG)

    assert len(cleaned) == MAX_FILENAME_CHARS
    assert cleaned.endswith("y.png")


def test_names_are_nfc_normalised():
    decomposed = "cafe\u0301.png"

    assert clean_filename(decomposed, PNG) == unicodedata.normalize("NFC", decomposed)
    assert clean_filename(decomposed, PNG) == "caf\u00e9.png"


def test_a_download_keeps_the_libraries_extension():
    zipped = FileType("application/zip", "download", "zip", inline=False)

    assert clean_filename("notes.ZIP", zipped) == "notes.ZIP"
    assert clean_filename("notes.txt", zipped) == "notes.txt.zip"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.sampled_from(sorted(ALLOWED_TYPES)))
def test_any_name_comes_out_safe(name, mime):
    file_type = ALLOWED_TYPES[mime]

    cleaned = clean_filename(name, file_type)

    assert 0 < len(cleaned) <= MAX_FILENAME_CHARS
    assert "/" not in cleaned and "\\" not in cleaned
    assert not cleaned.startswith((".", " "))
    assert not any(unicodedata.category(c).startswith("C") for c in cleaned)
    assert "." in cleaned and cleaned.rsplit(".", 1)[1]
    assert cleaned == unicodedata.normalize("NFC", cleaned)


# make_preview


def open_preview(preview: bytes) -> Image.Image:
    shown = Image.open(io.BytesIO(preview))
    shown.load()
    return shown


@pytest.mark.parametrize("name", sorted(samples.IMAGE_SAMPLES))
def test_each_image_kind_gets_a_small_clean_jpeg_preview(name):
    data = samples.IMAGE_SAMPLES[name]()
    file_type = detect(data)

    preview = make_preview(io.BytesIO(data), file_type, max_px=32, max_bytes=4096)

    shown = open_preview(preview)
    assert shown.format == "JPEG"
    assert max(shown.size) <= 32
    assert len(preview) <= 4096
    assert not shown.getexif()
    assert "exif" not in shown.info and "icc_profile" not in shown.info


@pytest.mark.parametrize(
    ("fmt", "mime"), [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")]
)
def test_a_large_photo_preview_is_bounded(fmt, mime):
    data = samples.image(fmt, size=(1200, 800))

    preview = make_preview(io.BytesIO(data), ALLOWED_TYPES[mime])

    shown = open_preview(preview)
    assert shown.size == (320, 213)
    assert len(preview) <= 24 * 1024


def test_a_noisy_photo_lowers_quality_until_it_fits():
    data = samples.noise_jpeg()

    preview = make_preview(io.BytesIO(data), JPEG, max_bytes=8 * 1024)

    assert preview is not None
    assert len(preview) <= 8 * 1024
    assert max(open_preview(preview).size) <= 320


def test_a_preview_is_read_from_a_path_too(tmp_path):
    path = tmp_path / "upload"
    path.write_bytes(samples.png(size=(64, 64)))

    assert open_preview(make_preview(path, PNG)).size == (64, 64)


def test_a_preview_is_upright_and_carries_no_camera_metadata():
    orientation, make = ExifTags.Base.Orientation, ExifTags.Base.Make
    data = samples.jpeg(size=(80, 40), exif={orientation: 6, make: "SpyCam 3000"})

    preview = make_preview(io.BytesIO(data), JPEG)

    shown = open_preview(preview)
    assert shown.size == (40, 80)  # rotated as the camera asked
    assert not shown.getexif()
    assert b"SpyCam" not in preview


def test_transparent_parts_become_white():
    picture = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    out = io.BytesIO()
    picture.save(out, format="PNG")

    shown = open_preview(make_preview(io.BytesIO(out.getvalue()), PNG))

    assert min(shown.getpixel((10, 10))) > 240


@pytest.mark.parametrize("name", ["mp3", "wav", "mp4", "webm", "pdf"])
def test_non_images_get_no_preview(name):
    build, mime, _ = samples.ALLOWED_SAMPLES[name]

    assert make_preview(io.BytesIO(build()), ALLOWED_TYPES[mime]) is None


def test_a_download_gets_no_preview():
    zipped = FileType("application/zip", "download", "zip", inline=False)

    assert make_preview(io.BytesIO(samples.png()), zipped) is None


def test_an_undecodable_png_gets_no_preview():
    assert make_preview(io.BytesIO(samples.truncated_png()), PNG) is None


def test_content_of_another_format_gets_no_preview():
    # the preview decodes only the detected format
    assert make_preview(io.BytesIO(samples.gif()), PNG) is None


@pytest.mark.parametrize(
    ("width", "height"),
    [(100_000, 100_000), (10_000, 10_000), (6_000, 6_000), (1, 30_000_000)],
)
def test_a_decompression_bomb_header_gets_no_preview(width, height):
    data = samples.png_claiming_size(width, height)
    assert detect(data) == PNG

    assert make_preview(io.BytesIO(data), PNG) is None
