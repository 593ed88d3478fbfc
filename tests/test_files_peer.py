"""Files between nodes: the signed, ranged GET /api/v1/files/<id> that serves a sent
file's ciphertext to its recipient's node, the checks of a received message's file fields,
and pulls from peers that misbehave (cut off, stalled, lying about the file).

The peers of the pull tests are small socket servers on loopback that serve one
ciphertext; each request is answered by the next behaviour in their line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from messaging import blobs, files, outbox, sending
from messaging.models import Attachment, Message, Outbox, ReceivedEnvelope
from peers import protocol
from peers.models import NodeIdentity, PeerNode
from tests.helpers import samples
from tests.helpers.messaging import (
    INBOX,
    RemoteNode,
    RemotePerson,
    join_local_node,
    make_local_person,
    make_remote_node,
    make_remote_person,
    opened_by,
    post_signed,
    seal_from,
)
from tests.helpers.uploads import uploaded

pytestmark = pytest.mark.django_db

PEER_LIFETIME_S = 20.0  # a fake peer's connection ends by itself after this long
FILE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture(autouse=True)
def files_dir(settings, tmp_path, monkeypatch) -> Path:
    """A private FILES_DIR; tasks are recorded, never sent to Celery."""
    settings.FILES_DIR = tmp_path / "files"
    settings.PEER_HTTP_TIMEOUT_S = 2.0
    settings.FILE_PULL_DEADLINE_S = 15.0
    monkeypatch.setattr(outbox, "enqueue", lambda node, **kw: None)
    monkeypatch.setattr(files, "enqueue", lambda node, **kw: None)
    return settings.FILES_DIR


def left_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- the peer API -------------------------------------------------------------------------
@pytest.fixture
def sent():
    """alice on this node "hq" sent rita (node "branch") a file; "other" is a third node."""
    join_local_node("hq")
    alice = make_local_person("alice")
    branch, other = make_remote_node("branch"), make_remote_node("other")
    make_remote_person(branch, "rita")
    data = samples.png() + samples.random_bytes(100_000)
    message = sending.send_message(
        sender=alice, recipient_username="rita", text="", upload=uploaded(data)
    )
    return message.attachment, branch, other


def get_signed(node: RemoteNode, path: str, *, auth: str | None = None, **headers):
    auth = auth or protocol.sign_request(
        node.key, node=node.name, method="GET", path=path, body=b""
    )
    return Client().get(path, HTTP_AUTHORIZATION=auth, **headers)


def path_of(attachment: Attachment) -> str:
    return f"/api/v1/files/{attachment.file_id}"


def test_the_recipients_node_gets_the_exact_ciphertext(sent):
    attachment, branch, _ = sent

    response = get_signed(branch, path_of(attachment))

    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert len(body) == int(response["Content-Length"]) == blobs.ciphertext_size(attachment.size)
    assert body == files.attachment_path(attachment).read_bytes()
    assert response["Content-Type"] == "application/octet-stream"


def test_a_pull_resumes_with_a_range(sent):
    attachment, branch, _ = sent
    whole = files.attachment_path(attachment).read_bytes()

    response = get_signed(branch, path_of(attachment), HTTP_RANGE="bytes=70000-")

    assert response.status_code == 206
    assert response["Content-Range"] == f"bytes 70000-{len(whole) - 1}/{len(whole)}"
    assert b"".join(response.streaming_content) == whole[70000:]


def test_a_node_that_is_not_the_recipients_gets_a_404(sent):
    attachment, _, other = sent
    response = get_signed(other, path_of(attachment))
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "file_not_found", "message": "no such file"}


def test_an_unsigned_request_is_a_401(sent):
    attachment, _, _ = sent
    response = Client().get(path_of(attachment))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_signature"


def test_a_request_signed_with_another_key_is_refused(sent):
    attachment, branch, other = sent
    path = path_of(attachment)
    forged = protocol.sign_request(other.key, node="branch", method="GET", path=path, body=b"")
    response = get_signed(branch, path, auth=forged)
    assert response.status_code == 401
    assert b"\x89PNG" not in response.content


def test_a_file_this_node_no_longer_holds_is_a_404(sent):
    attachment, branch, _ = sent
    files.attachment_path(attachment).unlink()
    response = get_signed(branch, path_of(attachment))
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"


@pytest.mark.parametrize("file_id", ["nope", "0f8fad5b", "..", FILE_ID.upper(), FILE_ID])
def test_a_bad_or_unknown_id_is_a_json_404(sent, file_id):
    _, branch, _ = sent
    response = get_signed(branch, f"/api/v1/files/{file_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_not_found"


def test_a_replayed_request_is_refused(sent):
    attachment, branch, _ = sent
    path = path_of(attachment)
    auth = protocol.sign_request(branch.key, node="branch", method="GET", path=path, body=b"")
    assert get_signed(branch, path, auth=auth).status_code == 200

    again = get_signed(branch, path, auth=auth)

    assert again.status_code == 401
    assert again.json()["error"]["code"] == "replayed_nonce"


# --- a received message's file fields -----------------------------------------------------
@pytest.fixture
def net():
    """This node "hq" with bob; rita on node "branch" (at url, once a test sets it)."""
    join_local_node("hq")
    bob = make_local_person("bob")
    rita = make_remote_person(make_remote_node("branch"), "rita")
    return bob, rita


def file_fields(info: blobs.BlobInfo, **changes) -> dict:
    fields = {
        "id": FILE_ID,
        "name": "photo.png",
        "mime": "image/png",
        "size": info.size,
        "sha256": info.sha256,
        "key": base64.b64encode(info.key).decode(),
    }
    fields.update(changes)
    return {key: value for key, value in fields.items() if value is not None}


def announce(rita: RemotePerson, bob: User, fields: dict, text: str = "") -> dict:
    """rita's node delivers her message with this file to bob, as the inbox answers it."""
    sealed = seal_from(rita, bob, {"text": text, "file": fields})
    response = post_signed(Client(), rita.node, protocol.encode_batch([sealed]), path=INBOX)
    assert response.status_code == 200, response.content
    return response.json()


SAMPLE_INFO = blobs.BlobInfo(key=bytes(range(32)), size=1234, sha256="ab" * 32, ciphertext_size=0)
b64 = base64.b64encode


@pytest.mark.parametrize(
    "changes",
    [
        {"mime": "text/html"},
        {"mime": "image/svg+xml"},
        {"mime": "application/zip"},  # not a download type here
        {"mime": None},
        {"size": 0},
        {"size": -5},
        {"size": 100 * 1024 * 1024 + 1},
        {"size": "1234"},
        {"size": True},
        {"sha256": "AB" * 32},
        {"sha256": "ab" * 31},
        {"sha256": None},
        {"key": b64(bytes(31)).decode()},
        {"key": b64(bytes(33)).decode()},
        {"key": "not base64!"},
        {"key": None},
        {"preview": b64(bytes(16 * 1024 + 1)).decode()},
        {"preview": "%%%"},
        {"id": "../../etc/passwd"},
        {"id": FILE_ID.upper()},
        {"name": None},
        {"name": "x" * 1001},
    ],
    ids=lambda c: "-".join(f"{k}={str(v)[:12]}" for k, v in c.items()),
)
def test_a_message_with_bad_file_fields_is_refused_and_nothing_stored(net, changes):
    bob, rita = net
    answer = announce(rita, bob, file_fields(SAMPLE_INFO, **changes))
    assert answer["acks"] == []
    [error] = answer["errors"]
    assert error["code"] == "invalid_payload"
    assert not Message.objects.exists() and not Attachment.objects.exists()
    assert not ReceivedEnvelope.objects.exists()


def test_a_file_that_is_not_an_object_is_refused(net):
    bob, rita = net
    [error] = announce(rita, bob, "photo.png")["errors"]
    assert error["code"] == "invalid_payload"
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("sent_name", "stored_name"),
    [
        ("../../etc/passwd", "passwd.png"),
        ("C:\\Users\\x\\evil.png", "evil.png"),
        ("a\x00b\x1b[31m.png", "ab[31m.png"),
        ("photo\u202egnp.exe", "photognp.exe.png"),
        ("", "file.png"),
    ],
    ids=["slashes", "backslashes", "control", "rtl-override", "empty"],
)
def test_a_received_file_name_is_stored_cleaned(net, sent_name, stored_name):
    bob, rita = net
    answer = announce(rita, bob, file_fields(SAMPLE_INFO, name=sent_name))
    assert answer["errors"] == []
    attachment = Attachment.objects.get()
    assert (attachment.name, attachment.state, attachment.node) == (
        stored_name,
        "pending",
        "branch",
    )


def test_a_file_id_already_received_here_is_refused_so_no_file_takes_anothers_place(net):
    bob, rita = net
    first = announce(rita, bob, file_fields(SAMPLE_INFO))
    second = announce(rita, bob, file_fields(SAMPLE_INFO, name="other.png"), text="again")

    assert first["errors"] == []
    [error] = second["errors"]
    assert error["code"] == "file_id_conflict"
    assert Attachment.objects.get().name == "photo.png"
    assert Message.objects.count() == 1


# --- pulls from a peer that misbehaves ----------------------------------------------------
Behaviour = Callable[["FilePeer", socket.socket, dict], None]


class FilePeer:
    """Node "branch" on 127.0.0.1 with one file's ciphertext; keeps each request's headers
    and answers it with the next behaviour in line (the last one repeats)."""

    def __init__(self, blob: bytes, *behaviours: Behaviour) -> None:
        self.blob = blob
        self.behaviours = list(behaviours)
        self.requests: list[dict[str, str]] = []
        self.client_closed = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._serve, daemon=True)
        self._acceptor.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(PEER_LIFETIME_S)
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
                headers = {"request": lines[0]}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                self.requests.append(headers)
                behaviour = self.behaviours.pop(0) if len(self.behaviours) > 1 else None
                (behaviour or self.behaviours[0])(self, conn, headers)
            except OSError:
                self.client_closed.set()

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(timeout=5)
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=PEER_LIFETIME_S + 5)


def _send_head(conn: socket.socket, status: str, length: int, extra: str = "") -> None:
    conn.sendall(
        f"HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n{extra}\r\n".encode()
    )


def serve(peer: FilePeer, conn: socket.socket, headers: dict) -> None:
    """What a healthy node answers: the ciphertext, or the rest of it from a Range."""
    blob, wanted = peer.blob, headers.get("range")
    if wanted:
        start = int(wanted.removeprefix("bytes=").rstrip("-"))
        content_range = f"Content-Range: bytes {start}-{len(blob) - 1}/{len(blob)}\r\n"
        _send_head(conn, "206 Partial Content", len(blob) - start, content_range)
        conn.sendall(blob[start:])
    else:
        _send_head(conn, "200 OK", len(blob))
        conn.sendall(blob)


def cut_after(sent: int) -> Behaviour:
    """Announce the whole ciphertext, send its first bytes, hang up."""

    def answer(peer: FilePeer, conn: socket.socket, headers: dict) -> None:
        _send_head(conn, "200 OK", len(peer.blob))
        conn.sendall(peer.blob[:sent])

    return answer


def stall_after(sent: int) -> Behaviour:
    """Announce the whole ciphertext, send its first bytes, then nothing until the client
    hangs up (or the peer's lifetime ends)."""

    def answer(peer: FilePeer, conn: socket.socket, headers: dict) -> None:
        _send_head(conn, "200 OK", len(peer.blob))
        conn.sendall(peer.blob[:sent])
        started = time.monotonic()
        while time.monotonic() - started < PEER_LIFETIME_S:
            readable, _, _ = select.select([conn], [], [], 0.1)
            if readable and not conn.recv(1):
                peer.client_closed.set()
                return

    return answer


def serve_bytes(data: bytes) -> Behaviour:
    def answer(peer: FilePeer, conn: socket.socket, headers: dict) -> None:
        _send_head(conn, "200 OK", len(data))
        conn.sendall(data)

    return answer


def encrypted(data: bytes, folder: Path, key: bytes | None = None) -> tuple[bytes, blobs.BlobInfo]:
    """data encrypted as the sender's node keeps it: (ciphertext, what its envelope says)."""
    folder.mkdir(parents=True, exist_ok=True)
    with blobs.BlobWriter(folder, key=key) as writer:
        writer.write(data)
        info = writer.finish(folder / hashlib.sha256(data).hexdigest())
    return (folder / hashlib.sha256(data).hexdigest()).read_bytes(), info


@contextlib.contextmanager
def file_peer(blob: bytes, *behaviours: Behaviour) -> Iterator[FilePeer]:
    peer = FilePeer(blob, *behaviours)
    try:
        yield peer
    finally:
        peer.close()


@pytest.fixture
def sender_dir(tmp_path) -> Path:
    return tmp_path / "sender"


def pulling_from(peer: FilePeer, net, info: blobs.BlobInfo, mime: str = "image/png") -> User:
    """Point node "branch" at peer; rita's message with the file reaches bob. Returns bob."""
    bob, rita = net
    PeerNode.objects.filter(name="branch").update(url=peer.url)
    answer = announce(rita, bob, file_fields(info, mime=mime))
    assert answer["errors"] == []
    return bob


def receipt_of(bob: User, rita: RemotePerson) -> dict:
    """The "fetched" receipt bob's node queued for rita's, as rita's node reads it."""
    row = Outbox.objects.get(kind="fetched")
    assert row.destination == "branch"
    return opened_by(rita, row, bob)


def test_a_pull_is_a_signed_get_and_the_verified_file_is_kept(net, sender_dir, files_dir):
    data = samples.png()
    blob, info = encrypted(data, sender_dir)
    with file_peer(blob, serve) as peer:
        bob = pulling_from(peer, net, info)

        result = files.pull_pending(node="branch")

    assert (result.stored, result.failed) == (1, 0)
    [request] = peer.requests
    assert request["request"] == f"GET /api/v1/files/{FILE_ID} HTTP/1.1"
    auth = protocol.parse_auth_header(request["authorization"])
    hq_key = bytes(NodeIdentity.objects.get().sign_public)
    protocol.verify_request(
        hq_key, auth, method="GET", path=f"/api/v1/files/{FILE_ID}", body=b"", max_skew_s=60
    )
    attachment = Attachment.objects.get()
    assert attachment.state == "stored"
    assert b"".join(files.plaintext(attachment)) == data
    message = Message.objects.get(owner=bob)
    assert receipt_of(bob, net[1]) == {"id": str(message.envelope_id), "outcome": "stored"}
    assert left_in(files_dir / "partial") == []


def test_an_interrupted_pull_resumes_with_a_range_and_verifies(net, sender_dir, files_dir):
    data = samples.png() + samples.random_bytes(600_000)
    blob, info = encrypted(data, sender_dir)
    with file_peer(blob, cut_after(300_000), serve) as peer:
        bob = pulling_from(peer, net, info)

        first = files.pull_pending(node="branch")
        attachment = Attachment.objects.get()
        [partial] = left_in(files_dir / "partial")
        kept = partial.read_bytes()
        files.pull_again(node="branch")  # retried later: the peer is back
        second = files.pull_pending(node="branch")

    assert (first.stored, first.failed, first.retry_in_s is not None) == (0, 0, True)
    assert (attachment.state, attachment.attempts) == ("pending", 1)
    assert attachment.error.startswith("network")
    assert 0 < len(kept) <= 300_000 and kept == blob[: len(kept)]
    assert peer.requests[1].get("range") == f"bytes={len(kept)}-"
    assert second.stored == 1
    attachment.refresh_from_db()
    assert attachment.state == "stored"
    assert b"".join(files.plaintext(attachment)) == data
    assert receipt_of(bob, net[1])["outcome"] == "stored"


def test_a_ciphertext_that_is_not_the_announced_file_fails_and_tells_the_sender(
    net, sender_dir, files_dir
):
    announced, info = encrypted(samples.png(), sender_dir / "a")
    other = samples.png()[:-4] + bytes(4)  # the same size, another hash
    forged, _ = encrypted(other, sender_dir / "b", key=info.key)
    assert len(forged) == len(announced)
    with file_peer(forged, serve) as peer:
        bob = pulling_from(peer, net, info)

        result = files.pull_pending(node="branch")

    assert (result.stored, result.failed) == (0, 1)
    attachment = Attachment.objects.get()
    assert (attachment.state, attachment.error) == ("failed", "file_hash")
    message = Message.objects.get(owner=bob)
    assert receipt_of(bob, net[1]) == {"id": str(message.envelope_id), "outcome": "file_hash"}
    assert left_in(files_dir) == []


def test_a_file_of_another_type_than_announced_fails(net, sender_dir, files_dir):
    blob, info = encrypted(samples.jpeg(), sender_dir)
    with file_peer(blob, serve) as peer:
        bob = pulling_from(peer, net, info, mime="image/png")
        assert files.pull_pending(node="branch").failed == 1
    assert Attachment.objects.get().error == "file_type_mismatch"
    assert receipt_of(bob, net[1])["outcome"] == "file_type_mismatch"
    assert left_in(files_dir) == []


def test_a_peer_that_sends_more_than_announced_fails(net, sender_dir, files_dir):
    blob, info = encrypted(samples.png(), sender_dir)
    with file_peer(blob, serve_bytes(blob + b"\x00" * 5000)) as peer:
        bob = pulling_from(peer, net, info)
        result = files.pull_pending(node="branch")
    assert (result.stored, result.failed) == (0, 1)
    assert Attachment.objects.get().state == "failed"
    assert receipt_of(bob, net[1])["outcome"] == "file_too_long"
    assert left_in(files_dir) == []


def test_a_peer_that_stalls_mid_file_is_cut_off_and_tried_again_later(
    net, sender_dir, files_dir, settings
):
    settings.PEER_HTTP_TIMEOUT_S = 0.5
    data = samples.png() + samples.random_bytes(600_000)
    blob, info = encrypted(data, sender_dir)
    with file_peer(blob, stall_after(300_000)) as peer:
        pulling_from(peer, net, info)
        started = time.monotonic()

        result = files.pull_pending(node="branch")

        elapsed = time.monotonic() - started
        assert peer.client_closed.wait(timeout=5)  # the connection was closed, not pooled
    assert elapsed < 5
    assert (result.stored, result.failed) == (0, 0) and result.retry_in_s is not None
    attachment = Attachment.objects.get()
    assert (attachment.state, attachment.attempts) == ("pending", 1)
    assert attachment.error.startswith("network") and attachment.next_attempt_at is not None
    [partial] = left_in(files_dir / "partial")
    assert partial.read_bytes() == blob[: partial.stat().st_size]
    assert not Outbox.objects.filter(kind="fetched").exists()


def test_a_pull_from_a_node_that_is_no_longer_known_fails(net, sender_dir, files_dir):
    blob, info = encrypted(samples.png(), sender_dir)
    with file_peer(blob, serve) as peer:
        pulling_from(peer, net, info)
        PeerNode.objects.filter(name="branch").update(active=False)

        result = files.pull_pending(node="branch")

    assert result.failed == 1 and peer.requests == []
    assert (Attachment.objects.get().state, Attachment.objects.get().error) == (
        "failed",
        "unknown_node",
    )
    assert left_in(files_dir) == []


def test_a_peer_that_ignores_the_range_sends_it_all_again_and_the_pull_verifies(
    net, sender_dir, files_dir
):
    data = samples.png() + samples.random_bytes(600_000)
    blob, info = encrypted(data, sender_dir)
    with file_peer(blob, cut_after(300_000), serve_bytes(blob)) as peer:
        pulling_from(peer, net, info)
        files.pull_pending(node="branch")
        files.pull_again(node="branch")

        result = files.pull_pending(node="branch")

    assert peer.requests[1]["range"].startswith("bytes=")
    assert result.stored == 1
    assert b"".join(files.plaintext(Attachment.objects.get())) == data
    assert left_in(files_dir / "partial") == []


@pytest.mark.parametrize(
    ("status", "state", "error"),
    [
        ("404 Not Found", "failed", "file_not_found"),
        ("503 Service Unavailable", "pending", "http 503"),
        ("401 Unauthorized", "pending", "http 401"),
    ],
)
def test_a_peer_that_answers_an_error_status(net, sender_dir, files_dir, status, state, error):
    blob, info = encrypted(samples.png(), sender_dir)

    def answer(peer: FilePeer, conn: socket.socket, headers: dict) -> None:
        body = b'{"error": {"code": "x", "message": "x"}}'
        _send_head(conn, status, len(body))
        conn.sendall(body)

    with file_peer(blob, answer) as peer:
        pulling_from(peer, net, info)
        files.pull_pending(node="branch")

    attachment = Attachment.objects.get()
    assert (attachment.state, attachment.error) == (state, error)
    assert left_in(files_dir) == []


def test_a_pull_that_never_completes_fails_by_age_and_tells_the_sender(
    net, sender_dir, files_dir, settings
):
    settings.DELIVERY_MAX_AGE_S = 60
    data = samples.png() + samples.random_bytes(600_000)
    blob, info = encrypted(data, sender_dir)
    with file_peer(blob, cut_after(300_000)) as peer:
        bob = pulling_from(peer, net, info)
        files.pull_pending(node="branch")
    assert left_in(files_dir / "partial") != []
    Message.objects.update(stored_at=timezone.now() - timedelta(seconds=61))

    files.sweep_pulls()

    assert (Attachment.objects.get().state, Attachment.objects.get().error) == (
        "failed",
        "file_expired",
    )
    assert receipt_of(bob, net[1])["outcome"] == "file_expired"
    assert left_in(files_dir) == []


# --- receipts from the recipient's node -----------------------------------------------------
def test_a_read_receipt_and_the_fetched_receipt_in_one_batch_leave_the_message_read():
    join_local_node("hq")
    alice = make_local_person("alice")
    rita = make_remote_person(make_remote_node("branch"), "rita")
    message = sending.send_message(
        sender=alice, recipient_username="rita", text="look", upload=uploaded(samples.png())
    )
    Message.objects.filter(id=message.id).update(status="sent")  # its envelope arrived
    ids = {"id": str(message.envelope_id)}
    read = seal_from(rita, alice, {"ids": [ids["id"]]}, kind="read")
    fetched = seal_from(rita, alice, {**ids, "outcome": "stored"}, kind="fetched")

    response = post_signed(Client(), rita.node, protocol.encode_batch([read, fetched]), path=INBOX)

    assert response.status_code == 200 and response.json()["errors"] == []
    assert Message.objects.get(id=message.id).status == "read"


def test_a_fetched_receipt_from_someone_else_changes_nothing():
    join_local_node("hq")
    alice = make_local_person("alice")
    branch = make_remote_node("branch")
    make_remote_person(branch, "rita")
    mallory = make_remote_person(branch, "mallory")
    message = sending.send_message(
        sender=alice, recipient_username="rita", text="", upload=uploaded(samples.png())
    )
    Message.objects.filter(id=message.id).update(status="sent")
    forged = seal_from(
        mallory, alice, {"id": str(message.envelope_id), "outcome": "file_hash"}, kind="fetched"
    )

    post_signed(Client(), branch, protocol.encode_batch([forged]), path=INBOX)

    assert Message.objects.get(id=message.id).status == "sent"


def _file_message_sent_to_rita():
    join_local_node("hq")
    alice = make_local_person("alice")
    rita = make_remote_person(make_remote_node("branch"), "rita")
    message = sending.send_message(
        sender=alice, recipient_username="rita", text="look", upload=uploaded(samples.png())
    )
    Message.objects.filter(id=message.id).update(status="sent")  # its envelope arrived
    return alice, rita, message


def test_a_file_refused_after_its_caption_was_read_shows_failed():
    alice, rita, message = _file_message_sent_to_rita()
    ids = [str(message.envelope_id)]
    read = seal_from(rita, alice, {"ids": ids}, kind="read")
    post_signed(Client(), rita.node, protocol.encode_batch([read]), path=INBOX)
    assert Message.objects.get(id=message.id).status == "read"
    refused = seal_from(rita, alice, {"id": ids[0], "outcome": "file_hash"}, kind="fetched")

    post_signed(Client(), rita.node, protocol.encode_batch([refused]), path=INBOX)

    assert Message.objects.values_list("status", "error").get(id=message.id) == (
        "failed",
        "file_hash",
    )


def test_a_file_never_reported_fetched_fails_after_the_maximum_age(settings):
    from messaging import delivery

    settings.DELIVERY_MAX_AGE_S = 60
    _, _, message = _file_message_sent_to_rita()
    waited = settings.DELIVERY_MAX_AGE_S + delivery.FETCH_GRACE_S
    delivery.sweep_outbox()
    assert Message.objects.get(id=message.id).status == "sent"  # not yet
    Message.objects.filter(id=message.id).update(
        stored_at=timezone.now() - timedelta(seconds=waited + 1)
    )

    delivery.sweep_outbox()

    assert Message.objects.values_list("status", "error").get(id=message.id) == (
        "failed",
        "file_not_fetched",
    )


def test_a_pull_expired_by_the_sweeper_is_not_settled_again_by_a_late_pull(net, files_dir):
    bob, rita = net
    announce(rita, bob, file_fields(SAMPLE_INFO))
    attachment = Attachment.objects.select_related("message").get()
    files._settle(attachment, outcome="file_expired")
    receipts = Outbox.objects.filter(kind="fetched").count()

    files._settle(attachment, outcome="stored")  # a pull that finished meanwhile

    assert Attachment.objects.get().state == "failed"
    assert Outbox.objects.filter(kind="fetched").count() == receipts == 1
