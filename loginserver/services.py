"""Every write of the login server: its key, enrolment, node keys, reports, revocation."""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import dataclass
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


def enrol_node(*, token: str, name: str, url: str, sign_key: bytes, proof: bytes) -> Node:
    """Register a node with a valid one-time token and proof of its key; all or nothing."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise ProtocolError("token_invalid", "unknown enrolment token", 403)
    now = timezone.now()
    with transaction.atomic():
        # Locked: two enrolments with one token queue here instead of racing to create.
        row = (
            EnrolmentToken.objects.select_for_update().filter(token_hash=_token_hash(token)).first()
        )
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
        protocol.verify_enrolment(sign_key, proof, token=token, name=name, url=url)
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
    "status", "last_seen",
)  # fmt: skip
_NODE_REPORTED_SQL = (
    "UPDATE loginserver_node SET url = %s, last_report_at = %s WHERE id = %s AND active = %s"
)


class _Stored(NamedTuple):
    """A stored record as a report compares it (a model instance only when re-signed)."""

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

    def as_model(self) -> UserRecord:
        return UserRecord.from_db(connection.alias, _RECORD_FIELDS, self)


def _current_records(names: list[str], node_id: int) -> list[_Stored]:
    """One read: the reported names (whoever owns them) and this node's current users.

    Plain SQL, as in _store_presence: this read runs on every report, and the ORM's
    statement building and row conversion cost several times the query itself."""
    marks = ", ".join(["%s"] * len(names)) or "NULL"
    # Only constant column names and placeholders are interpolated; values are parameters.
    sql = (
        f"SELECT {', '.join(_RECORD_FIELDS)} FROM loginserver_userrecord "  # noqa: S608
        f"WHERE username IN ({marks}) OR node_id = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*names, node_id])
        rows = cursor.fetchall()
    return [_Stored._make(row) for row in rows]


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
class ReportResult:
    users: int
    signed: int
    presence_changed: int
    removed: int


def accept_report(*, node: Node, report: Report) -> ReportResult:
    """Store a node's users and presence in one transaction; re-sign only what changed.

    The report is the node's complete list: its users missing from it are removed. A
    username that belongs to another node refuses the whole report. An unchanged report
    costs one read and one UPDATE of the node.
    """
    now = timezone.now()
    now_s = int(now.timestamp())
    renew_before = now_s + settings.USER_RECORD_LIFETIME_S // 2
    names = [u.username for u in report.users]
    # Inside the signed request's transaction this is part of it (no savepoint).
    with transaction.atomic(savepoint=False):
        existing = {r.username: r for r in _current_records(names, node.pk)}
        foreign = sorted(n for n in names if n in existing and existing[n].node_id != node.pk)
        if foreign:
            raise ProtocolError(
                "user_owned_by_other_node", f"{foreign[0]} belongs to another node", 409
            )
        visible_change = not _node_is_online(node, now)
        url_changed = report.url is not None and report.url != node.url
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
        presence: list[tuple[str, int | None, int]] = []
        for user in report.users:
            stored = existing.get(user.username)
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
            if identity != current or url_changed or stored.expires < renew_before:
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

        if created:
            try:
                UserRecord.objects.bulk_create(created)
            except IntegrityError:
                # Another report claimed one of these names at the same moment (possible
                # on PostgreSQL); the whole request rolls back and the node reports again.
                raise ProtocolError(
                    "user_owned_by_other_node", "a reported name was just claimed", 409
                ) from None
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
        if presence:
            _store_presence(presence, now)
        reported = set(names)
        gone = [
            r.id for r in existing.values() if r.node_id == node.pk and r.username not in reported
        ]
        removed = UserRecord.objects.filter(pk__in=gone).delete()[0] if gone else 0
        if created or resigned or presence or removed or visible_change:
            bump_directory_version()
    result = ReportResult(
        users=len(report.users),
        signed=len(created) + len(resigned),
        presence_changed=len(presence),
        removed=removed,
    )
    if result.signed or result.removed:
        logger.info(
            "report changed records",
            extra={"node": node.name, "signed": result.signed, "removed": result.removed},
        )
    return result
