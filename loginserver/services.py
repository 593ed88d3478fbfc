"""Every write of the login server: its key, enrolment, node keys, reports, revocation."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from functools import lru_cache
from typing import NamedTuple
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from nacl.signing import SigningKey

from accounts.crypto import decrypt_at_rest, encrypt_at_rest
from peers import protocol
from peers.auth import KnownNode
from peers.protocol import ProtocolError

from .models import DirectoryVersion, EnrolmentToken, Node, ServerKey, UserRecord

logger = logging.getLogger(__name__)

STATUSES = frozenset({"online", "away", "offline"})
MAX_TOKEN_CHARS = 200
MAX_URL_CHARS = 300
MAX_TEXT_CHARS = 150


# --- the login server's own key ------------------------------------------------------
@lru_cache(maxsize=4)
def _decrypt_key(blob: bytes) -> SigningKey:
    return SigningKey(decrypt_at_rest(blob))


def server_signing_key() -> SigningKey:
    """The login server's ed25519 key, created (encrypted at rest) on first use."""
    row = ServerKey.objects.filter(pk=1).first()
    if row is None:
        key = SigningKey.generate()
        ServerKey.objects.bulk_create(
            [
                ServerKey(
                    pk=1,
                    sign_public=bytes(key.verify_key),
                    sign_private_encrypted=encrypt_at_rest(bytes(key)),
                )
            ],
            ignore_conflicts=True,
        )
        row = ServerKey.objects.get(pk=1)
        logger.info("login server key created")
    return _decrypt_key(bytes(row.sign_private_encrypted))


def server_fingerprint() -> str:
    return protocol.fingerprint(bytes(server_signing_key().verify_key))


# --- the directory version -----------------------------------------------------------
_BUMP_VERSION_SQL = "UPDATE loginserver_directoryversion SET token = %s WHERE id = 1"


def bump_directory_version() -> None:
    """Mark the directory changed; every process rebuilds its cached answer on next read."""
    # 13 digits of Unix milliseconds, then randomness: the directory's "generated_ms"
    # comes from it (loginserver.directory.version_time_ms), the same in every process.
    token = f"{time.time_ns() // 1_000_000:013d}{uuid.uuid4().hex[:19]}"
    # Plain SQL: most reports change presence and land here, and building the ORM
    # statement cost more than running it.
    with connection.cursor() as cursor:
        cursor.execute(_BUMP_VERSION_SQL, [token])
        bumped = cursor.rowcount
    if not bumped:
        DirectoryVersion.objects.bulk_create([DirectoryVersion(pk=1)], ignore_conflicts=True)
        DirectoryVersion.objects.filter(pk=1).update(token=token)


# --- enrolment -------------------------------------------------------------------------
def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_url(url: object, *, field: str = "url") -> str:
    """An absolute http(s) URL without query or fragment, returned without a trailing slash."""
    refused = ProtocolError("invalid_field", f"{field} must be an http(s) URL")
    # urlsplit drops tabs and newlines silently: refuse them (and spaces) outright.
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS or not url.isprintable():
        raise refused
    if any(c.isspace() for c in url):
        raise refused
    try:
        parts = urlsplit(url)
        hostname, _port = parts.hostname, parts.port  # both raise on a malformed netloc
    except ValueError:
        raise refused from None
    if parts.scheme not in {"http", "https"} or not hostname or parts.query or parts.fragment:
        raise refused
    if settings.PRODUCTION and parts.scheme != "https":
        # Node-to-node and node-to-login-server traffic is signed but must not be
        # replayable or held back by whoever sits on the path: TLS in production.
        raise ProtocolError("insecure_url", f"{field} must be an https URL in production")
    return url.rstrip("/")


# --- node URLs lead to public addresses (production) -------------------------------------
def node_urls_must_be_public() -> bool:
    return settings.PRODUCTION and not settings.ALLOW_PRIVATE_NODE_URLS


@lru_cache(maxsize=1)
def _resolver() -> ThreadPoolExecutor:
    # getaddrinfo has no timeout of its own: a lookup that hangs is abandoned after
    # NODE_URL_RESOLVE_TIMEOUT_S and holds one of these threads, never a request.
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="node-url-dns")


os.register_at_fork(after_in_child=_resolver.cache_clear)  # a child has no pool threads


def _resolve(host: str, port: int) -> list[str]:
    unresolved = ProtocolError(
        "unresolvable_node_url", f"the url's host {host!r} does not resolve to an address"
    )
    future = _resolver().submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        found = future.result(timeout=settings.NODE_URL_RESOLVE_TIMEOUT_S)
    except (OSError, UnicodeError, ValueError):  # TimeoutError and gaierror are OSErrors
        future.cancel()
        raise unresolved from None
    addresses = sorted({str(info[4][0]) for info in found})
    if not addresses:
        raise unresolved
    return addresses


class _RecentRefusals:
    """Node URLs refused lately, so that a node reporting the same bad URL again and again
    costs one DNS lookup per NODE_URL_REFUSAL_MEMORY_S, not one per report (the lookup may
    wait NODE_URL_RESOLVE_TIMEOUT_S on the thread that answers every node)."""

    MAX_ENTRIES = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused: dict[str, tuple[float, ProtocolError]] = {}

    def get(self, url: str) -> ProtocolError | None:
        with self._lock:
            entry = self._refused.get(url)
            if entry is None or entry[0] < time.monotonic():
                self._refused.pop(url, None)
                return None
            return entry[1]

    def add(self, url: str, error: ProtocolError) -> None:
        with self._lock:
            if len(self._refused) >= self.MAX_ENTRIES:
                self._refused.pop(next(iter(self._refused)))
            self._refused[url] = (time.monotonic() + NODE_URL_REFUSAL_MEMORY_S, error)

    def clear(self) -> None:
        with self._lock:
            self._refused.clear()


NODE_URL_REFUSAL_MEMORY_S = 300.0
recent_url_refusals = _RecentRefusals()


def check_node_url_address(url: str) -> None:
    """In production (unless P2P_ALLOW_PRIVATE_NODE_URLS), refuse a node URL whose host is,
    or resolves to, an address that is not public (peers.protocol.is_public_address); a
    host that does not resolve within NODE_URL_RESOLVE_TIMEOUT_S is refused too. May wait
    for DNS: never call it in a write transaction. A refusal is remembered for
    NODE_URL_REFUSAL_MEMORY_S."""
    if not node_urls_must_be_public():
        return
    remembered = recent_url_refusals.get(url)
    if remembered is not None:
        raise ProtocolError(remembered.code, remembered.message, remembered.status)
    try:
        _check_public(url)
    except ProtocolError as error:
        # Only an answer that says "not public" is remembered: a lookup that failed or
        # timed out may work at the next report (DNS being updated after a move).
        if error.code == "private_node_url":
            recent_url_refusals.add(url, error)
        raise


def _check_public(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]  # an IP literal: no lookup
    except ValueError:
        addresses = _resolve(host, port)
    for address in addresses:
        if not protocol.is_public_address(address):
            raise ProtocolError(
                "private_node_url",
                f"the url's host leads to {address}, which is not a public address "
                "(the login server's operator can allow it with P2P_ALLOW_PRIVATE_NODE_URLS=1)",
            )


class NodeUrlUnchecked(Exception):
    """A report moves its node to a URL whose address is not checked yet. Raised inside
    the report's transaction, before any write, so the check's DNS lookup can run outside
    it (loginserver.api checks, then runs the report again with checked_url)."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


def create_enrolment_token(*, node_name: str) -> tuple[EnrolmentToken, str]:
    """A one-time token for node_name; the plain token is returned once and never stored."""
    protocol.validate_node_name(node_name)
    if Node.objects.filter(name=node_name, active=True).exists():
        raise ProtocolError(
            "node_exists", f"the node {node_name!r} is enrolled and active; revoke it first", 409
        )
    # Hex, so a token can never start with '-' and be taken for an option on the command line.
    token = secrets.token_hex(32)
    row = EnrolmentToken.objects.create(
        node_name=node_name,
        token_hash=_token_hash(token),
        expires_at=timezone.now() + timedelta(seconds=settings.ENROLMENT_TOKEN_LIFETIME_S),
    )
    logger.info("enrolment token created", extra={"node": node_name, "token_id": row.pk})
    return row, token


def _refuse_unusable_token(row: EnrolmentToken | None, *, name: str, now: datetime) -> None:
    if row is None:
        raise ProtocolError("token_invalid", "unknown enrolment token", 403)
    if row.used_at is not None:
        raise ProtocolError("token_used", "this enrolment token was already used", 403)
    if row.expires_at <= now:
        raise ProtocolError("token_expired", "this enrolment token has expired", 403)
    if row.node_name != name:
        raise ProtocolError(
            "token_name_mismatch", "this enrolment token is for another node name", 403
        )


def enrol_node(*, token: str, name: str, url: str, sign_key: bytes, proof: bytes) -> Node:
    """Register a node with a valid one-time token and proof of its key; all or nothing."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise ProtocolError("token_invalid", "unknown enrolment token", 403)
    now = timezone.now()
    token_hash = _token_hash(token)
    # Checked first without a lock, so that only a caller with a valid token and key gets
    # to the URL check, which may wait for DNS: outside the write transaction.
    _refuse_unusable_token(
        EnrolmentToken.objects.filter(token_hash=token_hash).first(), name=name, now=now
    )
    protocol.verify_enrolment(sign_key, proof, token=token, name=name, url=url)
    check_node_url_address(url)
    with transaction.atomic():
        # Locked: two enrolments with one token queue here instead of racing to create.
        row = EnrolmentToken.objects.select_for_update().filter(token_hash=token_hash).first()
        _refuse_unusable_token(row, name=name, now=now)
        node = Node.objects.select_for_update().filter(name=name).first()
        if node is None:
            node = Node.objects.create(name=name, url=url, sign_key=sign_key)
        elif node.active:
            raise ProtocolError("node_exists", "a node with this name is already enrolled", 409)
        else:
            # A revoked office joins again (say, a reinstalled server): a new key and none
            # of the old records; its people reappear with its first report.
            UserRecord.objects.filter(node=node).delete()
            node.url, node.sign_key, node.active = url, sign_key, True
            node.revoked_at = node.last_report_at = None
            node.enrolled_at = now
            node.save()
            logger.warning("revoked node enrolled again", extra={"node": name})
        claimed = EnrolmentToken.objects.filter(pk=row.pk, used_at__isnull=True).update(
            used_at=now, used_by=node
        )
        if not claimed:
            raise ProtocolError("token_used", "this enrolment token was already used", 403)
        bump_directory_version()
    logger.info("node enrolled", extra={"node": name, "url": url})
    return node


_NODE_FIELDS = ("id", "name", "url", "sign_key", "active", "last_report_at")
_NODE_SQL = (
    "SELECT id, name, url, sign_key, active, last_report_at FROM loginserver_node WHERE name = %s"
)


def resolve_node(name: str) -> KnownNode:
    """The signed-request resolver: enrolled, active nodes only."""
    # Plain SQL: every signed request starts here; the ORM's statement building cost
    # several times the indexed read. The row has what requests use (the rest deferred).
    with connection.cursor() as cursor:
        cursor.execute(_NODE_SQL, [name])
        row = cursor.fetchone()
    if row is None:
        raise ProtocolError("unknown_node", "this node is not enrolled", 403)
    pk, name, url, sign_key, active, last_report_at = row
    if last_report_at is not None and timezone.is_naive(last_report_at):
        last_report_at = timezone.make_aware(last_report_at, dt_timezone.utc)  # SQLite: UTC
    values = (pk, name, url, bytes(sign_key), bool(active), last_report_at)
    node = Node.from_db(connection.alias, _NODE_FIELDS, values)
    if not node.active:
        raise ProtocolError("node_revoked", "this node was revoked", 403)
    return KnownNode(name=node.name, verify_key=bytes(node.sign_key), obj=node)


def revoke_node(*, name: str) -> Node:
    """Refuse everything the node sends from now on and hide it and its users."""
    with transaction.atomic():
        node = Node.objects.filter(name=name).first()
        if node is None:
            raise ProtocolError("unknown_node", f"no node named {name!r}", 404)
        if node.active:
            node.active = False
            node.revoked_at = timezone.now()
            node.save(update_fields=["active", "revoked_at"])
            bump_directory_version()
    logger.warning("node revoked", extra={"node": name})
    return node


def parse_rotation(body: bytes) -> tuple[bytes, bytes]:
    """The new key and its proof from a rotate-key body; any bad field refuses it."""
    obj = protocol.parse_json_object(body)
    sign_key = protocol.b64d(protocol.require(obj, "sign_key", str), field="sign_key", length=32)
    proof = protocol.b64d(protocol.require(obj, "proof", str), field="proof", length=64)
    return sign_key, proof


def rotate_node_key(*, node: Node, sign_key: bytes, proof: bytes) -> Node:
    """Replace an active node's key with one it proves to hold; all or nothing.

    The request itself is signed by the current key (the caller checked it), so only
    the node can move its own name to a new key; peers learn it from the directory.
    """
    protocol.verify_rotation(sign_key, proof, node=node.name)
    if sign_key == bytes(node.sign_key):
        raise ProtocolError("same_key", "sign_key is already this node's key", 409)
    # Inside the signed request's transaction this is part of it (no savepoint).
    with transaction.atomic(savepoint=False):
        # Checked in the write transaction: a node revoked since its request was verified,
        # or whose key another request rotated meanwhile, stores nothing.
        current = Node.objects.filter(pk=node.pk, active=True, sign_key=bytes(node.sign_key))
        if not current.update(sign_key=sign_key):
            if not Node.objects.filter(pk=node.pk, active=True).exists():
                raise ProtocolError("node_revoked", "this node was revoked", 403)
            raise ProtocolError("key_changed", "this node's key changed meanwhile", 409)
        bump_directory_version()
    node.sign_key = sign_key
    logger.warning(
        "node key rotated",
        extra={"node": node.name, "fingerprint": protocol.fingerprint(sign_key)},
    )
    return node


# --- reports ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportedUser:
    username: str
    sign_key: bytes
    box_key: bytes
    full_name: str
    position: str
    status: str
    last_seen: int | None


@dataclass(frozen=True)
class Report:
    url: str | None
    users: list[ReportedUser]


def _text(obj: dict, field: str) -> str:
    """A profile text: optional, one line of at most 150 characters, no control characters
    (every node stores it, and PostgreSQL refuses NUL)."""
    return protocol.validate_label(obj.get(field, ""), field=field, max_chars=MAX_TEXT_CHARS)


def parse_report(body: bytes) -> Report:
    """Parse and validate a report body; any bad field refuses the whole report."""
    obj = protocol.parse_json_object(body)
    url = obj.get("url")
    if url is not None:
        url = validate_url(url)
    entries = protocol.require(obj, "users", list)
    if len(entries) > settings.REPORT_MAX_USERS:
        raise ProtocolError(
            "too_many_users", f"a report may carry at most {settings.REPORT_MAX_USERS} users", 413
        )
    users: list[ReportedUser] = []
    seen: set[str] = set()
    # Never in the future (beyond the allowed clock skew): every node turns last_seen into
    # a date, and a year-33658 value must not reach the directory they all apply.
    latest = int(time.time()) + settings.REQUEST_MAX_SKEW_S
    for entry in entries:
        if not isinstance(entry, dict):
            raise ProtocolError("invalid_field", "each user must be an object")
        username = protocol.validate_username(protocol.require(entry, "username", str))
        if username in seen:
            raise ProtocolError("duplicate_user", f"{username} is listed twice")
        seen.add(username)
        status = protocol.require(entry, "status", str)
        if status not in STATUSES:
            raise ProtocolError("invalid_field", "status must be online, away or offline")
        last_seen = entry.get("last_seen")
        if last_seen is not None and (
            isinstance(last_seen, bool)
            or not isinstance(last_seen, int)
            or not 0 <= last_seen <= latest
        ):
            raise ProtocolError(
                "invalid_field", "last_seen must be unix seconds, not in the future, or null"
            )
        users.append(
            ReportedUser(
                username=username,
                sign_key=protocol.b64d(entry.get("sign_key"), field="sign_key", length=32),
                box_key=protocol.b64d(entry.get("box_key"), field="box_key", length=32),
                full_name=_text(entry, "full_name"),
                position=_text(entry, "position"),
                status=status,
                last_seen=last_seen,
            )
        )
    return Report(url=url, users=users)


def _sign_record(row: UserRecord, node: Node, key: SigningKey, now_s: int) -> None:
    row.issued = now_s
    row.expires = now_s + settings.USER_RECORD_LIFETIME_S
    row.record = protocol.make_user_record(
        username=row.username,
        node=node.name,
        node_url=node.url,
        sign_key=bytes(row.sign_key),
        box_key=bytes(row.box_key),
        full_name=row.full_name,
        position=row.position,
        issued=row.issued,
        expires=row.expires,
    )
    row.record_sig = protocol.sign_user_record(key, row.record)


# What a report compares: no record bytes (re-signing replaces them), no timestamps.
_RECORD_FIELDS = (
    "id", "username", "node_id", "sign_key", "box_key", "full_name", "position", "expires",
    "status", "last_seen", "listed",
)  # fmt: skip
_NODE_REPORTED_SQL = (
    "UPDATE loginserver_node SET url = %s, last_report_at = %s WHERE id = %s AND active = %s"
)


class _Stored(NamedTuple):
    """A stored record as a report compares it (a model instance only when re-signed),
    and whether the node that holds its name is active."""

    id: int
    username: str
    node_id: int
    sign_key: bytes
    box_key: bytes
    full_name: str
    position: str
    expires: int
    status: str
    last_seen: int | None
    listed: bool
    owner_active: bool

    def as_model(self) -> UserRecord:
        return UserRecord.from_db(connection.alias, _RECORD_FIELDS, self[: len(_RECORD_FIELDS)])


def _current_records(names: list[str], node_id: int) -> list[_Stored]:
    """One read: the reported names (whoever holds them) and every name this node holds.

    Plain SQL, as in _store_presence: this read runs on every report, and the ORM's
    statement building and row conversion cost several times the query itself."""
    marks = ", ".join(["%s"] * len(names)) or "NULL"
    columns = ", ".join(f"r.{name}" for name in _RECORD_FIELDS)
    # Only constant column names and placeholders are interpolated; values are parameters.
    sql = (
        f"SELECT {columns}, n.active FROM loginserver_userrecord r "  # noqa: S608
        "JOIN loginserver_node n ON n.id = r.node_id "
        f"WHERE r.username IN ({marks}) OR r.node_id = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*names, node_id])
        rows = cursor.fetchall()
    # SQLite answers booleans as 0 and 1.
    return [_Stored._make((*row[:-2], bool(row[-2]), bool(row[-1]))) for row in rows]


_PRESENCE_SQL = (
    "UPDATE loginserver_userrecord SET status = %s, last_seen = %s, updated_at = %s WHERE id = %s"
)


def _store_presence(changes: list[tuple[str, int | None, int]], now: datetime) -> None:
    """(status, last_seen, pk) of each changed row, one statement run per row: presence
    changes on almost every report, and bulk_update's per-row CASE expressions cost more
    to build than the writes."""
    updated_at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.executemany(_PRESENCE_SQL, [(s, seen, updated_at, pk) for s, seen, pk in changes])


def _node_is_online(node: Node, now: datetime) -> bool:
    return (
        node.last_report_at is not None
        and (now - node.last_report_at).total_seconds() <= settings.NODE_OFFLINE_AFTER_S
    )


@dataclass(frozen=True)
class RefusedName:
    """A reported username the login server did not take, and why (a stable code)."""

    username: str
    code: str


@dataclass(frozen=True)
class ReportResult:
    users: int
    signed: int
    presence_changed: int
    removed: int
    refused: list[RefusedName] = field(default_factory=list)


def _claims(
    report: Report, existing: dict[str, _Stored], node: Node
) -> tuple[list[tuple[ReportedUser, _Stored | None]], list[RefusedName], list[int]]:
    """Which reported users this node may have: (user, its stored record or None) for each,
    the refused names, and the records of revoked nodes whose names it takes over."""
    held = sum(1 for r in existing.values() if r.node_id == node.pk)
    accepted: list[tuple[ReportedUser, _Stored | None]] = []
    refused: list[RefusedName] = []
    freed: list[int] = []
    for user in report.users:
        stored = existing.get(user.username)
        if stored is not None and stored.node_id != node.pk:
            if stored.owner_active:
                refused.append(RefusedName(user.username, "user_owned_by_other_node"))
                continue
            freed.append(stored.id)  # its node was revoked: the name is free again
            stored = None
        if stored is None:
            if held >= settings.NODE_MAX_USERNAMES:
                refused.append(RefusedName(user.username, "too_many_usernames"))
                continue
            held += 1
        accepted.append((user, stored))
    return accepted, refused, freed


def accept_report(*, node: Node, report: Report, checked_url: str | None = None) -> ReportResult:
    """Store a node's users and presence in one transaction; re-sign only what changed.

    The report is the node's complete list. A name belongs to the node that first
    reported it: its users missing from the report leave the directory but their names
    stay reserved to it (unlisted), until it is revoked or an administrator releases them.
    A name held by another active node is refused alone (ReportResult.refused); the rest
    is stored. An unchanged report costs one read and one UPDATE of the node.

    In production a new node URL must be checked (DNS) before this transaction: unless it
    is checked_url, NodeUrlUnchecked is raised before any write.
    """
    now = timezone.now()
    now_s = int(now.timestamp())
    renew_before = now_s + settings.USER_RECORD_LIFETIME_S // 2
    names = [u.username for u in report.users]
    url_changed = report.url is not None and report.url != node.url
    if url_changed and node_urls_must_be_public() and report.url != checked_url:
        raise NodeUrlUnchecked(report.url)
    # Inside the signed request's transaction this is part of it (no savepoint).
    with transaction.atomic(savepoint=False):
        existing = {r.username: r for r in _current_records(names, node.pk)}
        accepted, refused, freed = _claims(report, existing, node)
        visible_change = not _node_is_online(node, now)
        if url_changed:
            node.url = report.url
            visible_change = True
        node.last_report_at = now
        # Checked here, in the write transaction: a node revoked since its request was
        # verified stores nothing.
        with connection.cursor() as cursor:
            cursor.execute(
                _NODE_REPORTED_SQL,
                [node.url, connection.ops.adapt_datetimefield_value(now), node.pk, True],
            )
            if not cursor.rowcount:
                raise ProtocolError("node_revoked", "this node was revoked", 403)

        key: SigningKey | None = None
        created: list[UserRecord] = []
        resigned: list[UserRecord] = []
        relisted: list[int] = []
        presence: list[tuple[str, int | None, int]] = []
        for user, stored in accepted:
            if stored is None:
                row = UserRecord(
                    username=user.username,
                    node=node,
                    sign_key=user.sign_key,
                    box_key=user.box_key,
                    full_name=user.full_name,
                    position=user.position,
                    status=user.status,
                    last_seen=user.last_seen,
                )
                key = key or server_signing_key()
                _sign_record(row, node, key, now_s)
                created.append(row)
                continue
            identity = (user.sign_key, user.box_key, user.full_name, user.position)
            current = (
                bytes(stored.sign_key),
                bytes(stored.box_key),
                stored.full_name,
                stored.position,
            )
            if not stored.listed:
                # Back in the node's report: re-signed, as its node URL may have changed
                # while it was out.
                relisted.append(stored.id)
            if (
                identity != current
                or url_changed
                or stored.expires < renew_before
                or not stored.listed
            ):
                row = stored.as_model()
                row.sign_key, row.box_key, row.full_name, row.position = identity
                key = key or server_signing_key()
                _sign_record(row, node, key, now_s)
                row.updated_at = now
                resigned.append(row)
            # An online user's last_seen moves with every report; it is shown as "now"
            # anyway, so it is only stored when the status changes or the user is idle.
            if stored.status != user.status or (
                user.status != "online" and stored.last_seen != user.last_seen
            ):
                presence.append((user.status, user.last_seen, stored.id))

        if freed:
            taken = UserRecord.objects.filter(pk__in=freed, node__active=False).delete()[0]
            logger.info("names of a revoked node taken", extra={"node": node.name, "count": taken})
        if created:
            try:
                UserRecord.objects.bulk_create(created)
            except IntegrityError:
                # Another report claimed one of these names at the same moment (possible
                # on PostgreSQL); the whole request rolls back and the node reports again.
                raise ProtocolError("conflict", "a reported name was just claimed", 409) from None
        if resigned:
            UserRecord.objects.bulk_update(
                resigned,
                [
                    "sign_key",
                    "box_key",
                    "full_name",
                    "position",
                    "record",
                    "record_sig",
                    "issued",
                    "expires",
                    "updated_at",
                ],
            )
        if relisted:
            UserRecord.objects.filter(pk__in=relisted).update(listed=True, updated_at=now)
        if presence:
            _store_presence(presence, now)
        reported = {user.username for user, _ in accepted}
        gone = [
            r.id
            for r in existing.values()
            if r.node_id == node.pk and r.listed and r.username not in reported
        ]
        removed = 0
        if gone:
            # Out of the directory; the name stays this node's.
            removed = UserRecord.objects.filter(pk__in=gone).update(
                listed=False, status=UserRecord.Status.OFFLINE, updated_at=now
            )
        if created or resigned or relisted or presence or removed or visible_change:
            bump_directory_version()
    result = ReportResult(
        users=len(report.users),
        signed=len(created) + len(resigned),
        presence_changed=len(presence),
        removed=removed,
        refused=refused,
    )
    if result.signed or result.removed:
        logger.info(
            "report changed records",
            extra={"node": node.name, "signed": result.signed, "removed": result.removed},
        )
    if refused:
        logger.info(
            "report names refused",
            extra={"node": node.name, "refused": len(refused), "first": refused[0].username},
        )
    return result


# --- reserved usernames ------------------------------------------------------------------
def release_username(*, username: str) -> UserRecord:
    """Free a name its node no longer lists (or whose node was revoked), so another node
    can claim it with its next report. A name its active node still lists is refused:
    that node would claim it again at once."""
    with transaction.atomic():
        row = (
            UserRecord.objects.select_for_update()
            .select_related("node")
            .filter(username=username)
            .first()
        )
        if row is None:
            raise ProtocolError("unknown_user", f"no user record named {username!r}", 404)
        if row.listed and row.node.active:
            raise ProtocolError(
                "username_listed",
                f"{username!r} is still listed by {row.node.name}: that node must remove the "
                "person first",
                409,
            )
        row.delete()
    logger.warning("username released", extra={"username": username, "node": row.node.name})
    return row
