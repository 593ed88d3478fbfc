"""Files in a conversation, in real Chromium: attaching with progress, drawing each kind
inline for both people, refusals in the page and by the server, names that look like HTML.

Alice and Bob are people of one node; what the node's workers would do (deliver the
envelope, pull the file, deliver the "fetched" receipt) runs in the test, as in
test_read_receipts_browser.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from dataclasses import dataclass

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.template.defaultfilters import filesizeformat
from playwright.sync_api import Page, expect

from messaging import delivery, files
from messaging.models import Attachment, Message
from tests.helpers import samples
from tests.helpers.browser import launch_chromium
from tests.helpers.factories import DEFAULT_PASSWORD, code_at_step, make_person
from tests.helpers.messaging import join_local_node

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TIMEOUT_MS = 15_000
HTML_NAME = "<script>alert(1)<!--<img src=x onerror=alert(2)>.png"  # no "/": names keep it


@pytest.fixture(autouse=True)
def files_dir(settings, tmp_path):
    settings.FILES_DIR = tmp_path / "files"
    return settings.FILES_DIR


# The live server's threads all use the test database's one in-memory connection (as in
# Django's LiveServerTestCase): two requests at once (the page's poll and an upload) can
# meet in it mid-transaction ("database table is locked"). They are served one at a time,
# and the test's own database work takes the same turn.
ONE_AT_A_TIME = threading.Lock()


@pytest.fixture(autouse=True)
def requests_one_at_a_time(monkeypatch):
    serve = WSGIHandler.__call__

    def serve_alone(self, environ, start_response):
        with ONE_AT_A_TIME:
            return serve(self, environ, start_response)

    monkeypatch.setattr(WSGIHandler, "__call__", serve_alone)


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as chromium:
        yield chromium


@dataclass
class Side:
    """One person's open conversation page, and what it did that it must not."""

    page: Page
    dialogs: list[str]
    csp_violations: list[str]
    uploads: list[str]  # URLs of the file uploads it posted


def log_in(page: Page, username: str, secret: str) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", DEFAULT_PASSWORD)
    page.click("button[type=submit]:has-text('Continue')")
    page.wait_for_url("**/login/code/")
    page.fill("#id_code", code_at_step(secret, int(time.time() // 30)))
    page.click("main button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


@pytest.fixture
def open_chat(browser, live_server):
    """open_chat(username, secret, peer): username logged in, on the conversation with peer."""
    contexts = []

    def open_chat(username: str, secret: str, peer: str, *, javascript: bool = True) -> Side:
        context = browser.new_context(
            base_url=live_server.url,
            viewport={"width": 900, "height": 900},
            java_script_enabled=javascript,
        )
        contexts.append(context)
        page = context.new_page()
        side = Side(page, [], [], [])
        page.on("dialog", lambda dialog: (side.dialogs.append(dialog.message), dialog.dismiss()))
        page.on(
            "console",
            lambda message: (
                "Content Security Policy" in message.text
                and side.csp_violations.append(message.text)
            ),
        )
        page.on(
            "request",
            lambda request: (
                request.method == "POST"
                and request.url.endswith("/files/")
                and side.uploads.append(request.url)
            ),
        )
        log_in(page, username, secret)
        page.goto(f"/chat/{peer}/")
        return side

    yield open_chat
    for context in contexts:
        context.close()


@pytest.fixture
def alice_and_bob(open_chat):
    join_local_node("hq")
    _, alice_secret = make_person("alice")
    _, bob_secret = make_person("bob")
    alice = open_chat("alice", alice_secret, "bob")
    bob = open_chat("bob", bob_secret, "alice")
    yield alice, bob
    for side in (alice, bob):
        assert side.dialogs == [], "a file's name or content ran as script"
        assert side.csp_violations == []


@pytest.fixture
def alice(open_chat):
    join_local_node("hq")
    _, secret = make_person("alice")
    make_person("bob")
    side = open_chat("alice", secret, "bob")
    yield side
    assert side.dialogs == []
    assert side.csp_violations == []


def upload(name: str, data: bytes, mime: str = "application/octet-stream") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def attach(side: Side, *chosen: dict, caption: str = "") -> None:
    """Choose files with the file input and press Send files."""
    if caption:
        side.page.fill("#compose-text", caption)
    side.page.set_input_files("#attach-file", files=list(chosen))
    side.page.click("#attach-send")


def bubbles(side: Side):
    return side.page.locator("#messages li.bubble")


def deliver() -> None:
    """The node's worker delivers what is due (to itself: Alice and Bob share it)."""
    with ONE_AT_A_TIME:
        delivery.deliver_pending(node="hq")


def received_file_pulled() -> None:
    """Bob's node pulls the file (from itself) and tells Alice's that it holds it."""
    with ONE_AT_A_TIME:
        assert files.pull_pending(node="hq").stored == 1
    deliver()


def file_url(message: Message) -> str:
    return f"/files/{Attachment.objects.get(message=message).file_id}/"


def record_progress(page: Page) -> None:
    """Keep, for each upload row the page shows, its name and the highest progress."""
    page.evaluate(
        """() => {
          window.seenUploads = [];
          new MutationObserver((records) => {
            for (const record of records) for (const row of record.addedNodes) {
              if (!row.classList || !row.classList.contains("upload")) continue;
              const seen = {name: row.querySelector(".upload__name").textContent, highest: 0,
                            cancel: row.querySelector(".upload__cancel").textContent};
              window.seenUploads.push(seen);
              const bar = row.querySelector("progress");
              new MutationObserver(() => { seen.highest = Math.max(seen.highest, bar.value); })
                .observe(row, {subtree: true, attributes: true, childList: true});
            }
          }).observe(document.getElementById("uploads"), {childList: true});
        }"""
    )


def test_a_picture_goes_up_with_progress_and_turns_from_preview_to_picture_for_bob(
    alice_and_bob,
):
    alice, bob = alice_and_bob
    record_progress(alice.page)
    attach(alice, upload("office.png", samples.png(size=(320, 200))), caption="our new office")

    mine = bubbles(alice).filter(has_text="our new office")
    expect(mine.locator("img.attachment__image")).to_be_visible(timeout=TIMEOUT_MS)
    assert alice.page.evaluate("window.seenUploads") == [
        {"name": "office.png", "highest": 100, "cancel": "Cancel office.png"}
    ]
    expect(alice.page.locator("#uploads")).to_be_hidden()
    sent = Message.objects.get(owner__username="alice")
    expect(mine.locator("img.attachment__image")).to_have_attribute("src", file_url(sent))
    expect(mine.locator(".status")).to_have_text("queued")

    deliver()  # the envelope arrives; the file is not pulled yet
    expect(mine.locator(".status")).to_have_text("sending file…", timeout=TIMEOUT_MS)
    theirs = bubbles(bob).filter(has_text="our new office")
    preview = theirs.locator("img.attachment__image--preview")
    expect(preview).to_be_visible(timeout=TIMEOUT_MS)
    expect(preview).to_have_attribute("src", f"{file_url(sent)}preview/")
    expect(theirs).to_contain_text("receiving the file…")

    received_file_pulled()
    picture = theirs.locator("a.attachment__full img.attachment__image")
    expect(picture).to_have_attribute("src", file_url(sent), timeout=TIMEOUT_MS)
    expect(picture).to_have_js_property("complete", True, timeout=TIMEOUT_MS)  # loaded
    assert picture.evaluate("img => img.naturalWidth") == 320
    expect(theirs.locator("a.attachment__full")).to_have_attribute("href", file_url(sent))
    expect(theirs.locator(".attachment__image--preview")).to_have_count(0)
    # Delivered; or read, Bob's page having shown it (and his receipt having come along).
    expect(mine.locator(".status")).to_have_text(
        re.compile("delivered ✓|read ✓✓"), timeout=TIMEOUT_MS
    )
    assert len(alice.uploads) == 1


def test_a_file_that_cannot_be_received_says_why_on_both_sides(alice_and_bob, files_dir):
    alice, bob = alice_and_bob
    attach(alice, upload("office.png", samples.png()), caption="lost on the way")
    mine = bubbles(alice).filter(has_text="lost on the way")
    expect(mine.locator("img.attachment__image")).to_be_visible(timeout=TIMEOUT_MS)
    deliver()
    theirs = bubbles(bob).filter(has_text="lost on the way")
    expect(theirs.locator(".attachment__image--preview")).to_be_visible(timeout=TIMEOUT_MS)

    for sent_copy in (files_dir / "blobs").glob("*/*.out"):
        sent_copy.unlink()  # Alice's node lost it before Bob's could pull it
    with ONE_AT_A_TIME:
        assert files.pull_pending(node="hq").failed == 1
    deliver()

    expect(theirs.locator(".attachment__error")).to_have_text(
        "The file could not be received (the sender's office no longer has it).",
        timeout=TIMEOUT_MS,
    )
    expect(theirs.locator("img")).to_have_count(0)
    expect(mine.locator(".status")).to_have_text("failed", timeout=TIMEOUT_MS)
    # Its envelope was acknowledged: sending it again means a new message, not Retry.
    expect(mine.locator(".status__reason")).to_have_text(
        "the other office could not take the file; send it again"
    )
    expect(mine.get_by_role("button", name="Retry")).to_have_count(0)


def test_several_files_go_one_after_the_other_each_drawn_as_its_kind(alice):
    chosen = [
        upload("tone.wav", samples.wav(), "audio/wav"),
        upload("pattern.webm", samples.webm(), "video/webm"),
        upload("pattern.mp4", samples.mp4(), "video/mp4"),
        upload("report.pdf", samples.pdf(), "application/pdf"),
    ]
    attach(alice, *chosen, caption="the recordings")

    expect(bubbles(alice)).to_have_count(4, timeout=TIMEOUT_MS)
    assert len(alice.uploads) == 4  # one request per file
    sent = list(Message.objects.filter(owner__username="alice").order_by("id"))
    assert [m.attachment.name for m in sent] == [c["name"] for c in chosen]
    assert [m.text for m in sent] == ["the recordings", "", "", ""]  # the caption goes first
    wav, webm, mp4, pdf = (bubbles(alice).nth(i) for i in range(4))
    expect(wav.locator(".bubble__text")).to_have_text("the recordings")
    players = ((wav, "audio", sent[0]), (webm, "video", sent[1]), (mp4, "video", sent[2]))
    for media, element, message in players:
        player = media.locator(f"{element}[controls]")
        expect(player).to_have_attribute("src", file_url(message))
        # Chromium plays it: the file's sandbox CSP and nosniff do not stop media.
        duration = player.evaluate(
            """el => new Promise((done) => {
                 if (el.readyState >= 1) return done(el.duration);
                 el.addEventListener("loadedmetadata", () => done(el.duration));
                 el.addEventListener("error", () => done("error " + el.error.code));
                 el.load();
               })"""
        )
        assert isinstance(duration, (int, float)) and duration > 0, (element, duration)
    link = pdf.locator("a.attachment__link")
    expect(link).to_have_attribute("href", file_url(sent[3]))
    expect(link).to_have_attribute("target", "_blank")
    response = alice.page.request.get(link.get_attribute("href"))
    assert response.ok and response.headers["content-type"] == "application/pdf"
    assert response.headers["content-security-policy"] == "sandbox; default-src 'none'"
    assert response.body() == samples.pdf()


def pdf_viewer(tab: Page) -> list[str]:
    """Chromium's PDF viewer is an extension's frame inside the tab that shows the PDF."""
    return [f.url for f in tab.frames if f.url.startswith("chrome-extension://")]


def test_a_pdf_opens_in_the_browsers_viewer_in_a_new_tab(alice):
    """Served with "Content-Security-Policy: sandbox; default-src 'none'", the PDF still
    shows in Chromium's own viewer (which runs outside the sandboxed document)."""
    attach(alice, upload("report.pdf", samples.pdf("Quarterly report"), "application/pdf"))
    link = bubbles(alice).locator("a.attachment__link")
    expect(link).to_have_text("report.pdf", timeout=TIMEOUT_MS)

    with alice.page.context.expect_page() as opened:
        link.click()
    tab = opened.value
    tab.wait_for_load_state()
    assert tab.url.endswith(link.get_attribute("href"))
    deadline = time.monotonic() + 10
    while not pdf_viewer(tab) and time.monotonic() < deadline:
        tab.wait_for_timeout(100)  # lets Playwright hear of the viewer's frame
    assert pdf_viewer(tab), "the PDF did not open in the browser's viewer"
    assert alice.page.url.endswith("/chat/bob/")  # the conversation stays where it was


def test_a_file_over_the_limit_is_refused_in_the_page_before_any_upload(alice, settings):
    settings.FILE_MAX_BYTES = 2000
    alice.page.reload()
    alice.page.set_input_files("#attach-file", files=[upload("tone.wav", samples.wav())])

    expect(alice.page.locator("#attach-error")).to_have_text(
        f"“tone.wav” is too large to send ({filesizeformat(len(samples.wav()))}): "
        f"a file may be at most {filesizeformat(2000)}."
    )
    expect(alice.page.locator("#attach-staged")).to_be_hidden()
    alice.page.click("#attach-send")
    expect(alice.page.locator("#attach-error")).to_have_text("Choose a file to send first.")
    assert alice.uploads == []
    assert not Message.objects.exists()


def test_an_html_page_named_png_is_refused_with_the_servers_message(alice, files_dir):
    attach(alice, upload("photo.png", samples.html(), "image/png"))

    row = alice.page.locator("#uploads .upload")
    expect(row.locator(".upload__error")).to_have_text(
        "This kind of file cannot be sent. Images (PNG, JPEG, GIF, WebP), audio (MP3, Ogg, "
        "WAV, M4A), video (MP4, WebM) and PDF can.",
        timeout=TIMEOUT_MS,
    )
    expect(alice.page.locator("#attach-status")).to_contain_text("“photo.png” was not sent")
    assert not Message.objects.exists()
    assert not list((files_dir / "blobs").glob("*/*"))
    assert not list((files_dir / "incoming").glob("*"))
    row.get_by_role("button", name="Dismiss photo.png").click()
    expect(row).to_have_count(0)
    expect(alice.page.locator("#attach-file")).to_be_focused()


def test_a_name_made_of_html_shows_as_text_for_both(alice_and_bob):
    alice, bob = alice_and_bob
    alice.page.set_input_files("#attach-file", files=[upload(HTML_NAME, samples.png())])
    expect(alice.page.locator("#attach-staged .attach__name")).to_have_text(HTML_NAME)
    alice.page.click("#attach-send")

    for side in (alice, bob):
        if side is bob:
            deliver()
            received_file_pulled()
        name = bubbles(side).locator(".attachment__name")
        expect(name).to_have_text(HTML_NAME, timeout=TIMEOUT_MS)  # drawn by the poll
        side.page.reload()  # and drawn by the page itself
        expect(bubbles(side).locator(".attachment__name")).to_have_text(HTML_NAME)
        expect(bubbles(side).locator("img.attachment__image")).to_have_attribute("alt", HTML_NAME)
        assert side.page.locator("#messages script, #messages img[src=x]").count() == 0


def test_dropped_and_pasted_files_wait_until_sent(alice):
    page = alice.page
    page.evaluate(
        """([dropped, pasted]) => {
          const file = (b64, name) =>
            new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name,
                     {type: "image/png"});
          const drop = new DataTransfer();
          drop.items.add(file(dropped, "dropped.png"));
          const messages = document.getElementById("messages");
          messages.dispatchEvent(new DragEvent("dragenter", {dataTransfer: drop, bubbles: true}));
          messages.dispatchEvent(new DragEvent("drop", {dataTransfer: drop, bubbles: true,
                                                        cancelable: true}));
          const paste = new DataTransfer();
          paste.items.add(file(pasted, "image.png"));
          document.getElementById("compose-text").dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: paste, bubbles: true, cancelable: true}));
        }""",
        [
            base64.b64encode(samples.png()).decode(),
            base64.b64encode(samples.png(size=(20, 20))).decode(),
        ],
    )
    staged = page.locator("#attach-staged .attach__name")
    expect(staged).to_have_text(["dropped.png", "image.png"])
    expect(page.locator("#conversation")).not_to_have_class("conversation--drop")
    assert alice.uploads == []  # nothing goes before Send

    page.get_by_role("button", name="Remove image.png").click()
    expect(staged).to_have_text(["dropped.png"])
    page.fill("#compose-text", "dropped in")
    page.get_by_role("button", name="Send", exact=True).click()  # Send sends the files too

    expect(bubbles(alice).locator(".attachment__name")).to_have_text(
        "dropped.png", timeout=TIMEOUT_MS
    )
    expect(bubbles(alice).locator(".bubble__text")).to_have_text("dropped in")
    expect(page.locator("#attach-staged")).to_be_hidden()
    assert len(alice.uploads) == 1


def test_cancel_stops_an_upload_under_way_and_nothing_is_kept(alice, files_dir):
    page = alice.page
    slow = page.context.new_cdp_session(page)  # 100 kB/s up: the upload takes seconds
    slow.send("Network.enable")
    slow.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 100_000},
    )
    record_progress(page)
    attach(alice, upload("noise.jpg", samples.noise_jpeg((800, 600)), "image/jpeg"))
    row = page.locator("#uploads .upload")
    expect(row.locator(".upload__percent")).to_have_text(re.compile(r"^[1-9]\d?%$"))

    row.get_by_role("button", name="Cancel noise.jpg").click()
    expect(row).to_have_count(0)
    expect(page.locator("#attach-status")).to_have_text("Sending “noise.jpg” cancelled.")
    expect(page.locator("#attach-file")).to_be_focused()  # focus does not fall off the page
    [seen] = page.evaluate("window.seenUploads")
    assert 0 < seen["highest"] < 100
    assert not Message.objects.exists()
    assert not [p for p in files_dir.rglob("*") if p.is_file()]  # the partial file is gone


def test_the_plain_form_sends_a_file_without_javascript(open_chat):
    join_local_node("hq")
    _, secret = make_person("alice")
    make_person("bob")
    side = open_chat("alice", secret, "bob", javascript=False)
    side.page.set_input_files("#attach-file", files=[upload("office.png", samples.png())])
    side.page.click("#attach-send")
    side.page.wait_for_url("**/chat/bob/")
    expect(bubbles(side).locator("img.attachment__image")).to_be_visible()
    assert Message.objects.get().attachment.name == "office.png"
