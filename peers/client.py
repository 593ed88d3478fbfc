"""Outgoing HTTP to the login server and to peers: one requests.Session per host, signed."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db.models.signals import post_delete, post_save
from nacl.signing import SigningKey

from p2psocial.logging import request_id_var

from . import protocol
from .identity import local_node, node_signing_key
from .models import NodeIdentity

_sessions: dict[str, requests.Session] = {}
_lock = threading.Lock()


# Other processes (manage.py rotate_node_key) may replace the key: a running web or
# worker process re-reads it after this long, so a rotation needs no restart.
IDENTITY_CACHE_S = 5.0


@dataclass(frozen=True)
class LocalIdentity:
    name: str
    signing_key: SigningKey
    loaded_at: float


_identity: LocalIdentity | None = None


def local_identity() -> LocalIdentity:
    """This node's name and key, re-read at most every IDENTITY_CACHE_S: every message and
    every signed request needs them. Raises NotJoined before joining (nothing is cached)."""
    global _identity
    identity = _identity
    now = time.monotonic()
    if identity is None or now - identity.loaded_at > IDENTITY_CACHE_S:
        # The decrypted node key stays in this process's memory only, as node_signing_key
        # already keeps it (keyed by the encrypted blob, so a new key is decrypted once).
        identity = LocalIdentity(local_node().name, node_signing_key(), now)
        _identity = identity
    return identity


def _forget_identity(**kwargs: object) -> None:
    global _identity
    _identity = None


post_save.connect(_forget_identity, sender=NodeIdentity, dispatch_uid="peers.client.identity")
post_delete.connect(_forget_identity, sender=NodeIdentity, dispatch_uid="peers.client.identity")


def session_for(base_url: str) -> requests.Session:
    parts = urlsplit(base_url)
    host = f"{parts.scheme}://{parts.netloc}"
    with _lock:
        session = _sessions.get(host)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # never route peer traffic through an env proxy
            _sessions[host] = session
        return session


def _headers(
    method: str, base_url: str, path: str, body: bytes, key: SigningKey | None = None
) -> dict[str, str]:
    # The signature covers the full path as the receiver sees it (prefix of base_url included).
    full_path = urlsplit(base_url).path.rstrip("/") + path
    identity = local_identity()
    signing_key = identity.signing_key if key is None else key
    headers = {
        "Authorization": protocol.sign_request(
            signing_key, node=identity.name, method=method, path=full_path, body=body
        ),
        "Content-Type": "application/json",
    }
    request_id = request_id_var.get()
    if request_id and request_id != "-":
        headers["X-Request-Id"] = request_id
    return headers


def signed_post(
    base_url: str, path: str, body: bytes, *, timeout: float | None = None
) -> requests.Response:
    """POST body to base_url + path, signed with this node's key."""
    url = base_url.rstrip("/") + path
    return session_for(base_url).post(
        url,
        data=body,
        headers=_headers("POST", base_url, path, body),
        timeout=timeout or settings.PEER_HTTP_TIMEOUT_S,
    )


def signed_get(
    base_url: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    timeout: float | None = None,
    key: SigningKey | None = None,
) -> requests.Response:
    """GET base_url + path, signed with this node's key or the given one (empty body)."""
    url = base_url.rstrip("/") + path
    all_headers = _headers("GET", base_url, path, b"", key)
    all_headers.update(headers or {})
    return session_for(base_url).get(
        url, headers=all_headers, timeout=timeout or settings.PEER_HTTP_TIMEOUT_S
    )
