"""The directory answer: every active node and user record, signed, cached per version.

Building it costs one pass over the records; answering an unchanged directory costs one
indexed read of the version token. A node that stops reporting turns offline when its
deadline passes, which also invalidates the cached answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.utils import timezone

from peers import protocol

from .models import Node, UserRecord
from .services import server_signing_key


@dataclass(frozen=True)
class Snapshot:
    version: str
    valid_until: float  # unix seconds: the first moment a node may turn offline
    body: bytes
    signature: str
    etag: str
    generated_ms: int


_cache: dict[str, Snapshot] = {}


def _ts(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def current_version() -> str:
    # Plain SQL: every directory request asks, and the ORM's statement building cost
    # more than this primary-key read.
    with connection.cursor() as cursor:
        cursor.execute("SELECT token FROM loginserver_directoryversion WHERE id = 1")
        row = cursor.fetchone()
    return row[0] if row else ""


def version_time_ms(version: str) -> int:
    """When the directory last changed (Unix milliseconds), from the version token."""
    stamp = version[:13]
    return int(stamp) if len(stamp) == 13 and stamp.isdigit() else 0


def build(version: str, now: datetime) -> Snapshot:
    """Encode and sign the directory as of now."""
    offline_after = settings.NODE_OFFLINE_AFTER_S
    valid_until = float("inf")
    # "generated_ms" depends on the data only (when the version changed, or the latest time a
    # node turned offline since), never on when this process built it: every process of
    # the login server then answers the same bytes, ETag and time for one state.
    generated_ms = version_time_ms(version)
    nodes = []
    online: dict[int, bool] = {}
    last_report: dict[int, int | None] = {}
    for node in Node.objects.filter(active=True).order_by("name"):
        is_online = False
        if node.last_report_at is not None:
            deadline = node.last_report_at.timestamp() + offline_after
            is_online = deadline >= now.timestamp()
            if is_online:
                valid_until = min(valid_until, deadline)
            else:
                generated_ms = max(generated_ms, int(deadline * 1000))
        online[node.pk] = is_online
        last_report[node.pk] = _ts(node.last_report_at)
        nodes.append(
            {
                "name": node.name,
                "url": node.url,
                "sign_key": protocol.b64e(bytes(node.sign_key)),
                "active": True,
                "online": is_online,
            }
        )
    users = []
    rows = (
        UserRecord.objects.filter(node__active=True, listed=True)
        .order_by("username")
        .values_list("node_id", "record", "record_sig", "status", "last_seen")
    )
    for node_id, record, record_sig, status, last_seen in rows:
        if node_id not in online:  # a node enrolled between the two reads: next build
            continue
        if not online[node_id]:
            if status != "offline":
                last_seen = last_report[node_id]
            status = "offline"
        users.append(
            {
                "record": protocol.b64e(bytes(record)),
                "sig": protocol.b64e(bytes(record_sig)),
                "status": status,
                "last_seen": last_seen,
            }
        )
    body = protocol.canonical_json(
        {"v": protocol.VERSION, "generated_ms": generated_ms, "nodes": nodes, "users": users}
    )
    signature = protocol.b64e(protocol.sign_directory(server_signing_key(), body))
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Snapshot(version, valid_until, body, signature, etag, generated_ms)


def snapshot() -> Snapshot:
    """The current directory, rebuilt only when the version changed or a node went stale."""
    version = current_version()
    now = timezone.now()
    cached = _cache.get("directory")
    # No version row yet ("") is a version too: the first change creates the row.
    if cached is not None and cached.version == version and now.timestamp() < cached.valid_until:
        return cached
    fresh = build(version, now)
    _cache["directory"] = fresh
    return fresh
