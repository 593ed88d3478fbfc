"""A rogue node and a rogue login server for attack tests.

Everything the attacker sends is built here from the protocol's own primitives (canonical
JSON, signatures, raw HTTP bytes on a socket), never through the project's HTTP client, so
a test decides every byte: a bad signature, a stale timestamp, a body cut short or sent a
few bytes at a time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nacl.public import PrivateKey
from nacl.signing import SigningKey

from peers import protocol

# --- raw HTTP ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def request_head(
    method: str,
    path: str,
    *,
    host: str,
    headers: dict[str, str] | None = None,
    content_length: int | None = None,
) -> bytes:
    """The request line and headers, byte for byte (Connection: close: one request)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket) -> RawAnswer | None:
    """Read until the server closes; None when it closed without answering."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return RawAnswer(int(status_line.split()[1]), headers, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def connect(address: tuple[str, int], *, timeout_s: float = 15.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(address: tuple[str, int], head: bytes, body: bytes = b"") -> RawAnswer | None:
    """Send one request at once and read the answer."""
    with connect(address) as sock:
        sock.sendall(head + body)
        return read_answer(sock)


def trickle(sock: socket.socket, data: bytes, *, chunk_bytes: int, pause_s: float) -> None:
    """Send data a few bytes at a time: the slow client's pace is the attack itself."""
    for start in range(0, len(data), chunk_bytes):
        sock.sendall(data[start : start + chunk_bytes])
        time.sleep(pause_s)


# --- a rogue node -----------------------------------------------------------------------


@dataclass
class RoguePerson:
    username: str
    sign: SigningKey = field(default_factory=SigningKey.generate)
    box: PrivateKey = field(default_factory=PrivateKey.generate)


@dataclass
class RogueNode:
    """An enrolled node under the attacker's control: its key signs whatever it sends."""

    name: str
    key: SigningKey = field(default_factory=SigningKey.generate)

    def authorization(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> str:
        return protocol.sign_request(
            self.key,
            node=self.name,
            method=method,
            path=path,
            body=body,
            timestamp=timestamp,
            nonce=nonce,
        )

    def signed_head(
        self,
        method: str,
        path: str,
        body: bytes,
        *,
        host: str,
        content_length: int | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
    ) -> bytes:
        """The head of a request signed over body; content_length may lie about it."""
        return request_head(
            method,
            path,
            host=host,
            headers={
                "Authorization": self.authorization(
                    method, path, body, timestamp=timestamp, nonce=nonce
                ),
                "Content-Type": "application/json",
            },
            content_length=len(body) if content_length is None else content_length,
        )

    def enrolment_body(self, *, token: str, url: str) -> bytes:
        return protocol.canonical_json(
            {
                "token": token,
                "name": self.name,
                "url": url,
                "sign_key": protocol.b64e(bytes(self.key.verify_key)),
                "proof": protocol.b64e(
                    protocol.sign_enrolment(self.key, token=token, name=self.name, url=url)
                ),
            }
        )

    def report_body(self, *people: RoguePerson) -> bytes:
        return protocol.canonical_json(
            {
                "users": [
                    {
                        "username": p.username,
                        "sign_key": protocol.b64e(bytes(p.sign.verify_key)),
                        "box_key": protocol.b64e(bytes(p.box.public_key)),
                        "full_name": p.username.title(),
                        "position": "",
                        "status": "online",
                        "last_seen": int(time.time()),
                    }
                    for p in people
                ]
            }
        )


def seal(
    sender: RoguePerson,
    *,
    sender_node: str,
    recipient: str,
    recipient_node: str,
    recipient_box_key: bytes,
    text: str = "hello",
) -> protocol.SignedEnvelope:
    return protocol.seal_envelope(
        sender_sign_key=sender.sign,
        sender_box_key=sender.box,
        recipient_box_key=recipient_box_key,
        envelope_id=protocol.new_envelope_id(),
        kind="message",
        sender=sender.username,
        sender_node=sender_node,
        recipient=recipient,
        recipient_node=recipient_node,
        created_ms=int(time.time() * 1000),
        payload={"text": text},
    )


# --- a rogue login server ---------------------------------------------------------------


def user_entry(
    login_server_key: SigningKey,
    *,
    username: str,
    node: str,
    sign_key: bytes,
    box_key: bytes,
    expires: int | None = None,
    full_name: str = "",
    status: str = "online",
) -> dict[str, Any]:
    """A directory user entry whose record login_server_key signed."""
    now = int(time.time())
    record = protocol.make_user_record(
        username=username,
        node=node,
        node_url="http://127.0.0.1:9",
        sign_key=sign_key,
        box_key=box_key,
        full_name=full_name or username.title(),
        position="",
        issued=now,
        expires=now + 7 * 86400 if expires is None else expires,
    )
    return {
        "record": protocol.b64e(record),
        "sig": protocol.b64e(protocol.sign_user_record(login_server_key, record)),
        "status": status,
        "last_seen": now,
    }


def node_entry(name: str, sign_key: bytes, *, url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    return {
        "name": name,
        "url": url,
        "sign_key": protocol.b64e(sign_key),
        "active": True,
        "online": True,
    }


def directory(
    login_server_key: SigningKey,
    *,
    nodes: list[dict[str, Any]],
    users: list[dict[str, Any]],
    generated_ms: int | None = None,
) -> tuple[bytes, bytes]:
    """A directory answer (canonical body, signature) signed by login_server_key."""
    body = protocol.canonical_json(
        {
            "v": 1,
            "generated_ms": int(time.time() * 1000) if generated_ms is None else generated_ms,
            "nodes": nodes,
            "users": users,
        }
    )
    return body, protocol.sign_directory(login_server_key, body)


@dataclass
class CannedAnswer:
    status: int
    headers: dict[str, str]
    body: bytes = b""


class RogueLoginServer(ThreadingHTTPServer):
    """A loopback HTTP server that answers every request with `answer`; it records what
    the node sent (path, headers)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        self.answer = CannedAnswer(500, {})
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CannedHandler(BaseHTTPRequestHandler):
    server: RogueLoginServer

    def _answer(self) -> None:
        self.server.requests.append((self.command, self.path, dict(self.headers.items())))
        answer = self.server.answer
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


@contextmanager
def rogue_login_server() -> Iterator[RogueLoginServer]:
    server = RogueLoginServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
