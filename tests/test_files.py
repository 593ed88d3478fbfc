"""Attachments as people see them: uploading (every refusal leaves nothing behind),
serving (only to the two people, never as a page, with ranges), and a file's way from
upload to "delivered"."""

from __future__ import annotations

import base64
import io
import zipfile
from pathlib import Path

import pytest
from django.test import Client

from accounts.crypto import decrypt_at_rest
from accounts.models import User
from messaging import delivery, files, outbox
from messaging.models import Attachment, Message
from peers import protocol
from tests.helpers import samples
from tests.helpers.accounts import admin_logged_in, logged_in
from tests.helpers.factories import make_person
from tests.helpers.messaging import (
    INBOX,
    join_local_node,
    make_remote_node,
    make_remote_person,
    post_signed,
    seal_from,
)

pytestmark = pytest.mark.django_db

BOUNDARY = "p2psocial-test-boundary"
JSON = {"HTTP_ACCEPT": "application/json"}


@pytest.fixture(autouse=True)
def files_dir(settings, tmp_path, monkeypatch) -> Path:
    """A private FILES_DIR; tasks are recorded, never sent to Celery."""
    settings.FILES_DIR = tmp_path / "files"
    monkeypatch.setattr(outbox, "enqueue", lambda node, **kw: None)
    monkeypatch.setattr(files, "enqueue", lambda node, **kw: None)
    return settings.FILES_DIR


@pytest.fixture
def net():
    """This node "hq"; rita on node "branch"."""
    node_key = join_local_node("hq")
    rita = make_remote_person(make_remote_node("branch"), "rita")
    return node_key, rita


def login(username: str) -> Client:
    _, secret = make_person(username)
    return logged_in(Client(), username, secret)


def checking_csrf(client: Client) -> Client:
    """client's session in a client that checks CSRF tokens, as a browser request is."""
    browser = Client(enforce_csrf_checks=True)
    browser.cookies = client.cookies
    return browser


@pytest.fixture
def alice(net) -> Client:
    return login("alice")


@pytest.fixture
def bob(net) -> Client:
    return login("bob")


def left_in(files_dir: Path) -> list[Path]:
    """Every file under FILES_DIR (blobs, partial pulls, uploads being written)."""
    return sorted(p for p in files_dir.rglob("*") if p.is_file())


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart/form-data body as a browser sends it: (field, file name or None, bytes);
    every file claims to be a PNG, which must not matter."""
    out = bytearray()
    for field, filename, data in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: image/png\r\n"
        out += b"\r\n" + data + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def post_form(client: Client, body: bytes, *, to: str = "rita"):
    return client.post(
        f"/chat/{to}/files/",
        data=body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        **JSON,
    )


def upload(client: Client, data: bytes, *, name: str = "photo.png", to: str = "rita", text=""):
    return post_form(client, form(("text", None, text.encode()), ("file", name, data)), to=to)


def error_of(response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error["message"]


def nothing_stored(files_dir: Path) -> bool:
    return (
        not Message.objects.exists()
        and not Attachment.objects.exists()
        and left_in(files_dir) == []
    )


def sent_file(client: Client, data: bytes, **kw) -> dict:
    response = upload(client, data, **kw)
    assert response.status_code == 201, response.content
    return response.json()["message"]["file"]


TYPE_REFUSED = (
    415,
    "file_type_not_allowed",
    "This kind of file cannot be sent. Images (PNG, JPEG, GIF, WebP), audio (MP3, Ogg, WAV, "
    "M4A), video (MP4, WebM) and PDF can.",
)


# --- upload -------------------------------------------------------------------------------
def test_an_image_is_sent_encrypted_with_its_type_told_from_its_bytes(alice, files_dir):
    data = samples.jpeg()
    response = upload(alice, data, name="holiday.png", text="Look")
    assert response.status_code == 201
    message = response.json()["message"]
    assert (message["text"], message["status"]) == ("Look", "queued")
    assert message["file"]["mime"] == "image/jpeg"
    assert message["file"]["name"] == "holiday.png.jpg"
    assert message["file"]["size"] == len(data)
    [blob] = left_in(files_dir)
    assert data[:64] not in blob.read_bytes()  # encrypted at rest


def test_a_file_of_no_allowed_type_is_refused(alice, files_dir):
    response = upload(alice, samples.random_bytes(20_000), name="data.png")
    assert error_of(response) == TYPE_REFUSED
    assert nothing_stored(files_dir)


def test_html_renamed_png_is_refused(alice, files_dir):
    response = upload(alice, samples.html(), name="photo.png")
    assert error_of(response) == TYPE_REFUSED
    assert nothing_stored(files_dir)


def test_svg_is_refused(alice, files_dir):
    response = upload(alice, samples.svg(), name="logo.svg")
    assert error_of(response) == TYPE_REFUSED
    assert nothing_stored(files_dir)


def test_a_png_html_polyglot_is_a_png_and_is_served_so_its_html_cannot_run(alice):
    data = samples.png_html_polyglot()
    file = sent_file(alice, data, name="page.html")
    assert (file["mime"], file["name"]) == ("image/png", "page.html.png")

    response = alice.get(file["url"])

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"].split(";")[0] == "sandbox"
    assert "default-src 'none'" in response["Content-Security-Policy"]


def test_a_truncated_png_is_refused_as_damaged(alice, files_dir):
    response = upload(alice, samples.truncated_png())
    assert error_of(response) == (
        400,
        "file_damaged",
        "This image cannot be shown: it is damaged, incomplete or has too many pixels.",
    )
    assert nothing_stored(files_dir)


def test_a_file_over_the_limit_is_a_413_that_names_the_limit(alice, files_dir, settings):
    settings.FILE_MAX_BYTES = 256 * 1024
    data = samples.png() + samples.random_bytes(256 * 1024)
    response = upload(alice, data)
    # the limit as the page writes it too (Django's filesizeformat)
    assert error_of(response) == (413, "file_too_large", "A file may be at most 256.0\xa0KB.")
    assert nothing_stored(files_dir)


def test_a_browser_with_its_csrf_token_gets_the_refusal_not_an_error(net, files_dir):
    """As a browser posts it: the CSRF token checked, against the body read by the handler."""
    browser = checking_csrf(login("alice"))
    browser.get("/chat/rita/")
    token = browser.cookies["csrftoken"].value
    body = form(("text", None, b""), ("file", "photo.png", samples.html()))

    response = browser.post(
        "/chat/rita/files/",
        data=body,
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        HTTP_X_CSRFTOKEN=token,
        **JSON,
    )

    assert error_of(response) == TYPE_REFUSED
    assert nothing_stored(files_dir)


def test_a_cross_site_upload_is_refused_and_nothing_kept(net, files_dir):
    browser = checking_csrf(login("alice"))

    response = browser.post(
        "/chat/rita/files/",
        data=form(("file", "photo.png", samples.png())),
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
    )

    assert response.status_code == 403
    assert nothing_stored(files_dir)


def test_a_file_of_exactly_the_limit_is_accepted(alice, settings):
    data = samples.png() + samples.random_bytes(150_000)
    settings.FILE_MAX_BYTES = len(data)
    assert sent_file(alice, data)["size"] == len(data)


def test_an_empty_file_is_refused(alice, files_dir):
    response = upload(alice, b"")
    assert error_of(response) == (400, "file_empty", "The file is empty.")
    assert nothing_stored(files_dir)


@pytest.mark.parametrize(
    ("sent_name", "stored_name"),
    [
        ("../../etc/passwd", "passwd.png"),
        ("..\\..\\windows\\win.ini.png", "win.ini.png"),
        ("a\x01b\x1fc\x7f.png", "abc.png"),
        ("photo\u202egnp.exe", "photognp.exe.png"),
        ("x" * 500 + ".png", "x" * 116 + ".png"),
    ],
    ids=["slashes", "backslashes", "control", "rtl-override", "500-chars"],
)
def test_a_file_name_is_stored_cleaned(alice, sent_name, stored_name):
    file = sent_file(alice, samples.png(), name=sent_name)
    assert file["name"] == stored_name
    assert Attachment.objects.get().name == stored_name


def test_two_files_in_one_request_are_refused(alice, files_dir):
    body = form(("file", "one.png", samples.png()), ("file", "two.png", samples.png()))
    response = post_form(alice, body)
    assert error_of(response) == (400, "file_refused", "Send one file per upload.")
    assert nothing_stored(files_dir)


def test_a_file_in_another_field_is_refused(alice, files_dir):
    response = post_form(alice, form(("picture", "one.png", samples.png())))
    assert error_of(response) == (400, "file_refused", "Attach files with the file field only.")
    assert nothing_stored(files_dir)


def test_an_upload_without_a_file_is_refused(alice, files_dir):
    response = post_form(alice, form(("text", None, b"hello")))
    assert error_of(response) == (400, "file_refused", "Choose a file to send.")
    assert nothing_stored(files_dir)


def test_an_upload_when_logged_out_stores_nothing(net, files_dir):
    response = upload(Client(), samples.png())
    assert error_of(response) == (401, "login_required", "Log in to continue.")
    assert nothing_stored(files_dir)


def test_an_upload_to_an_unknown_person_is_a_404(alice, files_dir):
    response = upload(alice, samples.png(), to="nobody")
    assert error_of(response) == (404, "unknown_user", "There is nobody with this name.")
    assert nothing_stored(files_dir)


def test_a_refused_caption_removes_the_uploaded_file(alice, files_dir, settings):
    settings.MESSAGE_MAX_CHARS = 5
    response = upload(alice, samples.png(), text="x" * 6)
    assert error_of(response)[:2] == (400, "message_too_long")
    assert nothing_stored(files_dir)


def test_a_disk_that_fills_while_the_preview_is_made_leaves_no_file(alice, files_dir, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "make_preview", disk_full)
    with pytest.raises(OSError):
        upload(alice, samples.png())
    assert nothing_stored(files_dir)


# --- serving ------------------------------------------------------------------------------
def test_another_persons_file_is_a_404(alice, bob):
    file = sent_file(alice, samples.png())
    assert bob.get(file["url"]).status_code == 404
    assert bob.get(file["url"] + "preview/").status_code == 404


def test_a_file_is_never_served_to_a_logged_out_visitor(alice):
    data = samples.png()
    file = sent_file(alice, data)
    response = Client().get(file["url"])
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert data not in response.content


def test_a_range_is_a_206_with_its_content_range(alice):
    data = samples.png() + samples.random_bytes(150_000)  # more than two 64 KiB chunks
    file = sent_file(alice, data)

    response = alice.get(file["url"], HTTP_RANGE="bytes=65530-131080")

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 65530-131080/{len(data)}"
    assert response["Content-Length"] == str(131081 - 65530)
    assert b"".join(response.streaming_content) == data[65530:131081]


def test_a_suffix_range_is_the_end_of_the_file(alice):
    data = samples.png()
    file = sent_file(alice, data)

    response = alice.get(file["url"], HTTP_RANGE="bytes=-100")

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes {len(data) - 100}-{len(data) - 1}/{len(data)}"
    assert b"".join(response.streaming_content) == data[-100:]


def test_a_range_past_the_end_is_a_416(alice):
    data = samples.png()
    file = sent_file(alice, data)

    response = alice.get(file["url"], HTTP_RANGE=f"bytes={len(data)}-")

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(data)}"
    assert data not in response.content


def test_a_range_ending_far_past_the_end_is_the_rest_of_the_file(alice):
    data = samples.png()
    file = sent_file(alice, data)

    response = alice.get(file["url"], HTTP_RANGE="bytes=10-" + "9" * 30)

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 10-{len(data) - 1}/{len(data)}"
    assert b"".join(response.streaming_content) == data[10:]


def test_a_malformed_range_is_ignored(alice):
    data = samples.png()
    file = sent_file(alice, data)

    response = alice.get(file["url"], HTTP_RANGE="bytes=0-1,5-6")

    assert response.status_code == 200
    assert b"".join(response.streaming_content) == data


def test_a_download_type_is_served_as_an_attachment(alice, settings):
    settings.FILE_DOWNLOAD_TYPES = frozenset({"application/zip"})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("index.html", "<script>alert(1)</script>")
    file = sent_file(alice, archive.getvalue(), name="report.zip")
    assert (file["mime"], file["kind"], file["preview_url"]) == (
        "application/zip",
        "download",
        None,
    )

    response = alice.get(file["url"])

    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="report.zip"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content) == archive.getvalue()


def test_an_inline_type_is_served_inline_under_its_clean_name(alice):
    file = sent_file(alice, samples.pdf(), name="minutes.pdf")
    response = alice.get(file["url"])
    assert response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == 'inline; filename="minutes.pdf"'


def test_the_preview_is_a_small_jpeg_served_with_the_same_headers(alice):
    file = sent_file(alice, samples.png(size=(800, 600)))

    response = alice.get(file["preview_url"])

    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert body[:3] == b"\xff\xd8\xff" and len(body) <= 16 * 1024
    assert response["Content-Type"] == "image/jpeg"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Security-Policy"].startswith("sandbox")


def test_a_file_not_pulled_yet_is_a_404_but_its_preview_shows(bob, net):
    _, rita = net
    bob_user = User.objects.get(username="bob")
    preview = samples.jpeg()
    payload = {
        "text": "",
        "file": {
            "id": "0f8fad5b-d9cb-469f-a165-70867728950e",
            "name": "sunset.png",
            "mime": "image/png",
            "size": 1234,
            "sha256": "ab" * 32,
            "key": base64.b64encode(bytes(32)).decode(),
            "preview": base64.b64encode(preview).decode(),
        },
    }
    sealed = seal_from(rita, bob_user, payload)
    answer = post_signed(Client(), rita.node, protocol.encode_batch([sealed]), path=INBOX).json()
    assert answer["errors"] == []

    assert bob.get("/files/0f8fad5b-d9cb-469f-a165-70867728950e/").status_code == 404
    shown = bob.get("/files/0f8fad5b-d9cb-469f-a165-70867728950e/preview/")
    assert b"".join(shown.streaming_content) == preview


# --- lifecycle ----------------------------------------------------------------------------
def test_a_file_to_a_person_of_this_node_is_delivered_once_their_copy_is_verified(alice, bob):
    data = samples.png()
    file = sent_file(alice, data, to="bob")
    delivery.deliver_pending(node="hq")
    sent = Message.objects.get(owner__username="alice")
    assert sent.status == "sent"
    assert bob.get(file["url"]).status_code == 404  # bob's node does not hold it yet

    assert files.pull_pending(node="hq").stored == 1
    delivery.deliver_pending(node="hq")  # the "fetched" receipt

    sent.refresh_from_db()
    assert sent.status == "delivered"
    assert b"".join(bob.get(file["url"]).streaming_content) == data


def test_the_admin_shows_attachment_metadata_but_never_the_key_name_or_hash(alice, files_dir):
    sent_file(alice, samples.png(size=(300, 200)), name="plan.png")
    attachment = Attachment.objects.get()
    key = decrypt_at_rest(bytes(attachment.key))
    secrets = [
        key.hex(),
        base64.b64encode(key).decode(),
        bytes(attachment.key).hex(),
        base64.b64encode(bytes(attachment.key)).decode(),
        base64.b64encode(bytes(attachment.preview)).decode()[:40],
        "plan.png",  # a name says what a document is
        attachment.sha256,  # and a hash confirms a known one was sent
    ]
    _, secret = make_person("root", staff=True)
    admin = admin_logged_in(Client(), "root", secret)

    listing = admin.get("/admin/messaging/attachment/")
    page = admin.get(f"/admin/messaging/attachment/{attachment.pk}/change/")

    assert listing.status_code == page.status_code == 200
    for html in (listing.content.decode(), page.content.decode()):
        assert str(attachment.file_id) in html and "image/png" in html and "branch" in html
        assert not [s for s in secrets if s in html]
        assert "memory at" not in html
    assert admin.get("/admin/messaging/attachment/add/").status_code == 403


def test_a_backup_holds_the_files(tmp_path):
    from tests.test_backup import manage

    live, backup = tmp_path / "live", tmp_path / "backup"
    assert manage(live, "migrate", "--noinput").returncode == 0
    blob = live / "files" / "blobs" / "0f" / "0f8fad5b-d9cb-469f-a165-70867728950e.out"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"ciphertext")
    for folder, name in (("incoming", ".blob-x.part"), ("partial", "y.in")):
        (live / "files" / folder).mkdir()
        (live / "files" / folder / name).write_bytes(b"not finished")

    result = manage(live, "backup_node", str(backup))

    assert result.returncode == 0, result.stderr
    copied = backup / "files" / blob.relative_to(live / "files")
    assert copied.read_bytes() == b"ciphertext"
    assert "files      -> " in result.stdout
    assert not (backup / "files" / "incoming").exists()
    assert not (backup / "files" / "partial").exists()


# --- a file to a group ----------------------------------------------------------------------
def group_upload(client: Client, group_id, data: bytes, *, name: str = "photo.png", text=""):
    return client.post(
        f"/groups/{group_id}/files/",
        data=form(("text", None, text.encode()), ("file", name, data)),
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        **JSON,
    )


def test_a_file_to_a_group_is_stored_once_for_its_sender_and_sent_to_each_office(
    alice, bob, files_dir
):
    from messaging import groups
    from messaging.models import Outbox

    sender = User.objects.get(username="alice")
    group = groups.create_group(creator=sender, name="Board", usernames=["bob", "rita"])
    response = group_upload(alice, group.group_id, samples.png(), text="the chart")
    assert response.status_code == 201, response.content
    message = Message.objects.get(direction="out")
    attachment = Attachment.objects.get(message=message)
    assert (attachment.node, attachment.state) == ("", "stored")
    assert sorted(
        Outbox.objects.filter(kind="group_message").values_list("destination", flat=True)
    ) == ["branch", "hq"]
    assert len(left_in(files_dir)) == 1  # one encrypted copy, however many recipients


def test_a_file_to_a_group_one_is_not_in_leaves_nothing_behind(alice, bob, files_dir):
    from messaging import groups

    other = groups.create_group(
        creator=User.objects.get(username="bob"), name="Not alice's", usernames=["rita"]
    )
    response = group_upload(alice, other.group_id, samples.png())
    assert error_of(response)[:2] == (404, "unknown_group")
    assert not Attachment.objects.exists() and left_in(files_dir) == []
