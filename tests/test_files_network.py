"""End to end: files between real nodes (uvicorn, Celery worker and beat, Redis). A person
uploads through the conversation's upload view; the other office's worker pulls the
ciphertext, verifies it and reports back; the recipient downloads it from their own node."""

from __future__ import annotations

import hashlib

import pytest
import requests
from playwright.sync_api import expect

from tests.helpers import samples
from tests.helpers.browser import launch_chromium
from tests.helpers.chat import file_state, people_on, poll, send_file, url, wait_until_listed
from tests.network import Network, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"
KINDS = {
    "photo.png": (samples.png, "image/png", "image"),
    "photo.jpg": (samples.jpeg, "image/jpeg", "image"),
    "anim.gif": (samples.animated_gif, "image/gif", "image"),
    "pic.webp": (samples.webp, "image/webp", "image"),
    "voice.mp3": (samples.mp3, "audio/mpeg", "audio"),
    "voice.ogg": (samples.ogg_opus, "audio/ogg", "audio"),
    "note.wav": (samples.wav, "audio/wav", "audio"),
    "memo.m4a": (samples.m4a, "audio/mp4", "audio"),
    "clip.mp4": (samples.mp4, "video/mp4", "video"),
    "clip.webm": (samples.webm, "video/webm", "video"),
    "minutes.pdf": (samples.pdf, "application/pdf", "pdf"),
}


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    with Network(tmp_path_factory.mktemp("files"), nodes=("hq", "branch")) as network:
        people_on(network, {"alice": "hq", "bob": "branch"}, PASSWORD)
        wait_until_listed(network, [("alice", "bob"), ("bob", "alice")])
        yield network


def message_with_file(net: Network, user: str, peer: str, file_id: str) -> dict | None:
    for message in poll(net, user, peer)["messages"]:
        if message["file"] and message["file"]["id"] == file_id:
            return message
    return None


def status(net: Network, user: str, peer: str, message_id: int) -> str:
    answer = poll(net, user, peer)
    for message in answer["messages"]:
        if message["id"] == message_id:
            return answer["statuses"].get(str(message_id), message["status"])
    raise AssertionError(f"no message {message_id}")


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_allowed_kind_arrives_byte_identical_and_is_served_safely(net, name):
    make, mime, kind = KINDS[name]
    data = make()
    sent = send_file(net, "alice", "bob", name, data, caption=f"here is {name}")
    file_id = sent["file"]["id"]
    assert (sent["file"]["mime"], sent["file"]["kind"]) == (mime, kind)

    wait_for(
        lambda: file_state(net, "bob", "alice", file_id) == "stored",
        timeout=60,
        message=f"branch holds {name}",
    )
    received = message_with_file(net, "bob", "alice", file_id)
    assert received["text"] == f"here is {name}"
    response = net.sessions["bob"].get(url(net, "bob", received["file"]["url"]), timeout=30)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()
    assert response.headers["Content-Type"] == mime
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert response.headers["Accept-Ranges"] == "bytes"
    # "delivered" only once the recipient's node holds the whole, verified file
    wait_for(
        lambda: status(net, "alice", "bob", sent["id"]) == "delivered",
        timeout=60,
        message=f"alice sees {name} delivered",
    )


def test_a_range_of_a_received_video_is_served_for_seeking(net):
    data = samples.mp4()
    sent = send_file(net, "alice", "bob", "seek.mp4", data)
    file_id = sent["file"]["id"]
    wait_for(lambda: file_state(net, "bob", "alice", file_id) == "stored", timeout=60)
    file_url = url(net, "bob", message_with_file(net, "bob", "alice", file_id)["file"]["url"])

    response = net.sessions["bob"].get(file_url, headers={"Range": "bytes=100-199"}, timeout=30)

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert response.content == data[100:200]


def test_the_file_is_not_served_to_another_person_or_to_nobody(net):
    secret = net.create_person("branch", "dave", PASSWORD)
    dave = net.login("branch", "dave", PASSWORD, secret)
    sent = send_file(net, "alice", "bob", "private.png", samples.png())
    file_id = sent["file"]["id"]
    wait_for(lambda: file_state(net, "bob", "alice", file_id) == "stored", timeout=60)
    file_url = url(net, "bob", f"/files/{file_id}/")

    assert dave.get(file_url, timeout=10, allow_redirects=False).status_code == 404
    nobody = requests.get(file_url, timeout=10, allow_redirects=False)
    assert nobody.status_code == 302 and "/login/" in nobody.headers["Location"]


def test_a_tampered_ciphertext_is_refused_and_both_sides_show_failed(net):
    branch, hq = net.node("branch"), net.node("hq")
    branch.stop_worker()  # nothing pulls until the file has been tampered with
    try:
        sent = send_file(net, "alice", "bob", "tampered.png", samples.png(size=(64, 64)))
        file_id = sent["file"]["id"]
        blob = hq.data_dir / "files" / "blobs" / file_id[:2] / f"{file_id}.out"
        wait_for(blob.exists, timeout=10, message="hq holds the upload")
        raw = bytearray(blob.read_bytes())
        raw[40] ^= 0x01  # inside the first chunk's ciphertext
        blob.write_bytes(bytes(raw))
        wait_for(
            lambda: file_state(net, "bob", "alice", file_id) == "pending",
            timeout=60,
            message="bob's node has the message, waiting for its file",
        )
    finally:
        branch.start_worker()

    wait_for(
        lambda: file_state(net, "bob", "alice", file_id) == "failed",
        timeout=60,
        message="bob's node refuses the file",
    )
    received = message_with_file(net, "bob", "alice", file_id)
    assert received["file"]["error"].startswith("file_")
    assert (
        net.sessions["bob"].get(url(net, "bob", received["file"]["url"]), timeout=10).status_code
        == 404
    )
    assert not list((branch.data_dir / "files").rglob(f"{file_id}*"))  # nothing half-kept
    wait_for(
        lambda: status(net, "alice", "bob", sent["id"]) == "failed",
        timeout=60,
        message="alice sees the file failed",
    )


def test_the_recipients_browser_shows_each_kind_with_its_own_element(net):
    """In Chromium, bob's conversation on branch shows what alice sent from hq: a picture,
    players that load the audio and video from branch, the PDF's link, the caption."""
    sent = {
        kind: send_file(net, "alice", "bob", name, KINDS[sample][0](), caption=f"shown {kind}")
        for kind, name, sample in (
            ("image", "shown.png", "photo.png"),
            ("audio", "shown.wav", "note.wav"),
            ("video", "shown.webm", "clip.webm"),
            ("pdf", "shown.pdf", "minutes.pdf"),
        )
    }
    for kind, message in sent.items():
        wait_for(
            lambda file_id=message["file"]["id"]: (
                file_state(net, "bob", "alice", file_id) == "stored"
            ),
            timeout=60,
            message=f"branch holds the {kind}",
        )
    branch_url = net.node("branch").url
    cookies = [
        {"name": c.name, "value": c.value, "url": branch_url} for c in net.sessions["bob"].cookies
    ]
    dialogs: list[str] = []
    with launch_chromium() as browser:
        context = browser.new_context()
        context.add_cookies(cookies)
        page = context.new_page()
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(f"{branch_url}/chat/alice/")

        def bubble(kind: str):
            file_id = sent[kind]["file"]["id"]
            url = message_with_file(net, "bob", "alice", file_id)["file"]["url"]
            return page.locator(f".bubble:has([href='{url}'], [src='{url}'])"), url

        image, url = bubble("image")
        expect(image.locator(f"img.attachment__image[src='{url}']")).to_be_visible()
        assert image.locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
        for kind, tag in (("audio", "audio"), ("video", "video")):
            player, url = bubble(kind)
            element = player.locator(f"{tag}[src='{url}']")
            expect(element).to_have_count(1)
            # the browser fetched it from branch and could read its length
            page.wait_for_function(
                f"() => {{ const m = document.querySelector(\"{tag}[src='{url}']\");"
                " return m && m.readyState >= 1 && m.duration > 0; }",
                timeout=20_000,
            )
        pdf, url = bubble("pdf")
        expect(pdf.locator(f"a.attachment__link[href='{url}']")).to_have_text("shown.pdf")
        expect(pdf.locator(".bubble__text")).to_have_text("shown pdf")
        context.close()
    assert dialogs == []
