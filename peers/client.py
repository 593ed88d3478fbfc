"""Outgoing HTTP to the login server and to peers: one requests.Session per host, signed."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

import requests
from django.conf import settings

from p2psocial.logging import request_id_var

from . import protocol
from .identity import local_node, node_signing_key

_sessions: dict[str, requests.Session] = {}
_lock = threading.Lock()


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


def _headers(method: str, base_url: str, path: str, body: bytes) -> dict[str, str]:
    # The signature covers the full path as the receiver sees it (prefix of base_url included).
    full_path = urlsplit(base_url).path.rstrip("/") + path
    identity = local_node()
    headers = {
        "Authorization": protocol.sign_request(
            node_signing_key(), node=identity.name, method=method, path=full_path, body=body
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
) -> requests.Response:
    """GET base_url + path, signed with this node's key (empty body)."""
    url = base_url.rstrip("/") + path
    all_headers = _headers("GET", base_url, path, b"")
    all_headers.update(headers or {})
    return session_for(base_url).get(
        url, headers=all_headers, timeout=timeout or settings.PEER_HTTP_TIMEOUT_S
    )
