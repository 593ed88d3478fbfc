"""Every write of the node's peer layer: joining, its key, presence reports, the directory
cache, and the cache of other offices' profiles."""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

import redis
import requests
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError
from nacl.signing import SigningKey
from PIL import Image

from accounts.crypto import encrypt_at_rest
from accounts.models import Profile, User
from accounts.pictures import MAX_SOURCE_PIXELS, TOO_MANY_PIXELS, UNDECODABLE
from accounts.queries import local_people, local_usernames, picture_content_type
from p2psocial import events, redis_client

from . import directory, protocol
from .client import AnswerTooLarge, local_identity, session_for, signed_get, signed_post
from .identity import is_joined, local_node, node_key_rotated, pending_signing_key
from .models import (
    DirectorySync,
    DirectoryUser,
    KeyChangeAck,
    NodeIdentity,
    PeerNode,
    RemoteProfile,
)
from .presence import local_presence

logger = logging.getLogger(__name__)

STATUSES = frozenset({"online", "away", "offline"})


class LoginServerError(Exception):
    """The login server refused a request or could not be reached; code is stable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _refusal(response: requests.Response) -> LoginServerError:
    try:
        error = response.json()["error"]
        return LoginServerError(str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return LoginServerError("http_error", f"login server answered {response.status_code}")


# --- joining -----------------------------------------------------------------------------
@dataclass(frozen=True)
class JoinResult:
    identity: NodeIdentity
    login_server_fingerprint: str
    node_fingerprint: str


# A directory of thousands of people is a few MiB; any other answer is small.
DIRECTORY_MAX_ANSWER_BYTES = 64 * 1024 * 1024


def _bounded(*, directory: bool = False) -> dict[str, Any]:
    """Limits for a request to the login server, as for a peer: the whole exchange within
    P2P_PEER_REQUEST_DEADLINE_S and an answer of bounded size (else: unreachable)."""
    return {
        "deadline_s": settings.PEER_REQUEST_DEADLINE_S,
        "max_answer_bytes": DIRECTORY_MAX_ANSWER_BYTES if directory else None,  # None: default
        "to_login_server": True,  # the operator's own URL: no public-address check
    }


def join_network(*, login_server_url: str, token: str, name: str, url: str) -> JoinResult:
    """Create this node's key, enrol it with a one-time token and pin the login server key."""
    if is_joined():
        raise LoginServerError("already_joined", "this node has already joined a network")
    protocol.validate_node_name(name)
    login_server_url = login_server_url.rstrip("/")
    url = url.rstrip("/")
    if settings.PRODUCTION and not all(u.startswith("https://") for u in (login_server_url, url)):
        raise LoginServerError(
            "insecure_url", "in production the login server URL and --url must be https://"
        )
    key = SigningKey.generate()
    body = protocol.canonical_json(
        {
            "token": token,
            "name": name,
            "url": url,
            "sign_key": protocol.b64e(bytes(key.verify_key)),
            "proof": protocol.b64e(protocol.sign_enrolment(key, token=token, name=name, url=url)),
        }
    )
    try:
        response = session_for(login_server_url).post(
            login_server_url + "/api/v1/enrol",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=settings.PEER_HTTP_TIMEOUT_S,
        )
    except requests.RequestException as exc:
        raise LoginServerError("unreachable", f"login server unreachable: {exc}") from None
    if response.status_code != 201:
        raise _refusal(response)
    try:
        answer = response.json()
        server_key = protocol.b64d(answer["login_server_key"], field="login_server_key", length=32)
        claimed_fingerprint = answer["fingerprint"]
    except (ValueError, KeyError, TypeError, protocol.ProtocolError):
        raise LoginServerError("bad_answer", "the login server's answer is malformed") from None
    fingerprint = protocol.fingerprint(server_key)
    if claimed_fingerprint != fingerprint:
        raise LoginServerError("bad_answer", "the login server key does not match its fingerprint")
    identity = NodeIdentity.objects.create(
        pk=1,
        name=name,
        public_url=url,
        sign_public=bytes(key.verify_key),
        sign_private_encrypted=encrypt_at_rest(bytes(key)),
        login_server_url=login_server_url,
        login_server_key=server_key,
    )
    DirectorySync.objects.update_or_create(pk=1, defaults={"etag": "", "generated": 0})
    logger.info("joined the network", extra={"node": name, "login_server": login_server_url})
    return JoinResult(identity, fingerprint, protocol.fingerprint(bytes(key.verify_key)))


# --- the node's key ---------------------------------------------------------------------
class RotationInterrupted(LoginServerError):
    """No clear answer to a key rotation: the new key stays pending, and running the
    rotation again finds out whether the login server switched and finishes it."""


@dataclass(frozen=True)
class KeyRotation:
    old_fingerprint: str
    new_fingerprint: str
    resumed: bool  # finished a rotation that an earlier, interrupted run started


# Refusals of a resent rotation that the earlier send may have caused by landing meanwhile
# (the login server then holds the pending key): they prove nothing, so the key stays.
_MAYBE_ROTATED_MEANWHILE = frozenset({"bad_signature", "key_changed"})


def rotate_node_key() -> KeyRotation:
    """Give this node a new signing key, announced to the login server with the old one.

    The new key is committed as pending before it is sent and becomes current once the
    login server accepted it. A clear refusal drops it (LoginServerError; the old key
    stays); no clear answer keeps it (RotationInterrupted). Running this again with a key
    pending first asks the login server whether it already switched, then adopts the key
    or sends the same one again. Peers learn the new key from the directory.
    """
    identity = local_node()
    key = pending_signing_key(identity)
    resumed = key is not None
    if key is None:
        key = _store_pending_key()
    elif _login_server_accepts(identity, key):
        return _adopt_pending_key(identity, key, resumed=True)
    body = protocol.canonical_json(
        {
            "sign_key": protocol.b64e(bytes(key.verify_key)),
            "proof": protocol.b64e(protocol.sign_rotation(key, node=identity.name)),
        }
    )
    try:
        response = signed_post(identity.login_server_url, "/api/v1/rotate-key", body, **_bounded())
    except requests.RequestException:
        raise RotationInterrupted("unreachable", "no answer from the login server") from None
    if response.status_code != 200:
        error = _refusal(response)
        clear = 400 <= response.status_code < 500 and error.code != "http_error"
        if not clear or (resumed and error.code in _MAYBE_ROTATED_MEANWHILE):
            raise RotationInterrupted(error.code, error.message)
        _drop_pending_key(key)
        raise error
    return _adopt_pending_key(identity, key, resumed=resumed)


def finish_interrupted_rotation() -> bool:
    """Adopt the pending key if the login server already takes it; True if it did.

    For a request refused for its signature: the answer to a rotation may have been lost.
    Any doubt leaves the key pending for manage.py rotate_node_key.
    """
    identity = local_node()
    key = pending_signing_key(identity)
    if key is None:
        return False
    try:
        if not _login_server_accepts(identity, key):
            return False
    except RotationInterrupted:
        return False
    _adopt_pending_key(identity, key, resumed=True)
    return True


def _signed_request_refusal(response: requests.Response) -> LoginServerError:
    """The refusal of a report or directory fetch. One refused for its signature may mean
    that a rotation's answer was lost: adopting the pending key heals the next request."""
    error = _refusal(response)
    if error.code == "bad_signature":
        finish_interrupted_rotation()
    return error


def _store_pending_key() -> SigningKey:
    key = SigningKey.generate()
    # Committed before the login server can hear of it: whatever happens to the answer,
    # this node still holds the key the login server may switch to.
    stored = NodeIdentity.objects.filter(pk=1, sign_pending_encrypted__isnull=True).update(
        sign_pending_encrypted=encrypt_at_rest(bytes(key))
    )
    if not stored:
        raise LoginServerError("rotation_in_progress", "another key rotation is under way")
    return key


def _login_server_accepts(identity: NodeIdentity, key: SigningKey) -> bool:
    """Whether the login server takes key as this node's: a directory GET signed with it."""
    try:
        response = signed_get(
            identity.login_server_url, "/api/v1/directory", key=key, **_bounded(directory=True)
        )
    except requests.RequestException:
        raise RotationInterrupted("unreachable", "login server unreachable") from None
    if response.status_code == 200:
        # Only the login server's own word counts: a directory it signed that lists this
        # node with the pending key. A bare 200 from a proxy or a cache proves nothing,
        # and adopting a key the login server does not have would lock the node out.
        return _directory_lists_key(identity, response, bytes(key.verify_key))
    error = _refusal(response)
    if response.status_code == 401 and error.code == "bad_signature":
        return False
    raise RotationInterrupted(error.code, error.message)


def _directory_lists_key(identity: NodeIdentity, response, public: bytes) -> bool:
    try:
        signature = protocol.b64d(
            response.headers.get("X-P2P-Signature", ""), field="X-P2P-Signature", length=64
        )
        protocol.verify_directory(bytes(identity.login_server_key), response.content, signature)
        nodes = _parse_nodes(
            protocol.require(protocol.parse_json_object(response.content), "nodes", list)
        )
    except protocol.ProtocolError as error:
        raise RotationInterrupted(error.code, error.message) from None
    listed = nodes.get(identity.name)
    return listed is not None and listed["sign_key"] == public


def _is_pending(identity: NodeIdentity, key: SigningKey) -> bool:
    pending = pending_signing_key(identity)
    return pending is not None and bytes(pending.verify_key) == bytes(key.verify_key)


def _adopt_pending_key(old: NodeIdentity, key: SigningKey, *, resumed: bool) -> KeyRotation:
    """Make key (which the login server accepted) current and no longer pending, at once."""
    with transaction.atomic():
        identity = NodeIdentity.objects.select_for_update().get(pk=1)
        identity.sign_public = bytes(key.verify_key)
        identity.sign_private_encrypted = encrypt_at_rest(bytes(key))
        fields = ["sign_public", "sign_private_encrypted"]
        if _is_pending(identity, key):  # not if another process adopted it meanwhile
            identity.sign_pending_encrypted = None
            fields.append("sign_pending_encrypted")
        # save() (not update()) so this process drops its cached copy of the old key.
        identity.save(update_fields=fields)
        node_key_rotated.send(sender=NodeIdentity, key=key)
    old_fp = protocol.fingerprint(bytes(old.sign_public))
    new_fp = protocol.fingerprint(bytes(key.verify_key))
    logger.warning(
        "node key rotated", extra={"node": old.name, "fingerprint": new_fp, "resumed": resumed}
    )
    return KeyRotation(old_fp, new_fp, resumed)


def _drop_pending_key(key: SigningKey) -> None:
    with transaction.atomic():
        identity = NodeIdentity.objects.select_for_update().get(pk=1)
        if _is_pending(identity, key):
            identity.sign_pending_encrypted = None
            identity.save(update_fields=["sign_pending_encrypted"])


# --- presence reports --------------------------------------------------------------------
def _label(text: str) -> str:
    """A profile text as the protocol carries it: one line, no control characters."""
    return protocol.CONTROL_CHARS.sub(" ", text)[: protocol.MAX_LABEL_CHARS]


def build_report(*, exclude_session_hash: str | None = None) -> bytes:
    """This node's complete user list with keys and presence, as the report body."""
    identity = local_node()
    users = list(local_people().select_related("keys", "profile").order_by("username"))
    presence = local_presence(users, exclude_session_hash=exclude_session_hash)
    entries = []
    for user in users:
        try:
            protocol.validate_username(user.username)
        except protocol.ProtocolError:
            # One bad name must not make the login server refuse everyone's report.
            logger.error("user left out of the report: invalid username", extra={"user": user.pk})
            continue
        profile = getattr(user, "profile", None)
        entries.append(
            {
                "username": user.username,
                "sign_key": protocol.b64e(bytes(user.keys.sign_public)),
                "box_key": protocol.b64e(bytes(user.keys.box_public)),
                "full_name": _label(profile.full_name if profile else ""),
                "position": _label(profile.position if profile else ""),
                "status": presence[user.pk].status,
                "last_seen": presence[user.pk].last_seen,
            }
        )
    return protocol.canonical_json({"url": identity.public_url, "users": entries})


def report_presence(*, exclude_session_hash: str | None = None) -> dict:
    """Send this node's users and presence to the login server; raises LoginServerError.

    Names the login server refused (another node holds them) are logged and kept in
    DirectorySync.refused_usernames for /health and the admin."""
    identity = local_node()
    body = build_report(exclude_session_hash=exclude_session_hash)
    try:
        response = signed_post(identity.login_server_url, "/api/v1/report", body, **_bounded())
    except requests.RequestException:
        raise LoginServerError("unreachable", "login server unreachable") from None
    if response.status_code != 200:
        raise _signed_request_refusal(response)
    try:
        answer = response.json()
    except ValueError:
        raise LoginServerError("bad_answer", "the login server's answer is malformed") from None
    if not isinstance(answer, dict):
        raise LoginServerError("bad_answer", "the login server's answer is malformed")
    record_refused_usernames(refused=_refused_names(answer.get("refused", [])))
    return answer


# A report carries at most P2P_REPORT_MAX_USERS names; the stored list is bounded anyway.
MAX_REFUSED_KEPT = 1000


def _refused_names(entries: object) -> list[dict[str, str]]:
    """The report answer's refused names, as [{"username", "code"}] sorted by name; an
    entry that is not one is skipped."""
    refused: dict[str, str] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("code"), str):
            continue
        try:
            username = protocol.validate_username(entry.get("username"))
        except protocol.ProtocolError:
            continue
        refused[username] = protocol.CONTROL_CHARS.sub("", entry["code"])[:60]
    return [{"username": n, "code": refused[n]} for n in sorted(refused)][:MAX_REFUSED_KEPT]


def record_refused_usernames(*, refused: list[dict[str, str]]) -> None:
    """Keep the names the login server refused in the latest report; a change is logged
    (a warning naming them) and written, an unchanged list costs one read."""
    stored = DirectorySync.objects.filter(pk=1).values_list("refused_usernames", flat=True)
    if list(stored) == [refused]:
        return
    DirectorySync.objects.update_or_create(pk=1, defaults={"refused_usernames": refused})
    if refused:
        logger.warning(
            "login server refused usernames of this node: %s",
            ", ".join(f"{r['username']} ({r['code']})" for r in refused[:20]),
            extra={"usernames": [r["username"] for r in refused], "count": len(refused)},
        )
    else:
        logger.info("login server accepts every username of this node again")


def request_presence_report(*, exclude_session_key: str | None = None) -> None:
    """Report presence soon (after the current transaction commits); for login and logout."""
    if not is_joined():
        return
    from kombu.exceptions import OperationalError

    from .presence import session_hash
    from .tasks import report_presence as task

    excluded = session_hash(exclude_session_key) if exclude_session_key else None

    def enqueue() -> None:
        try:
            task.apply_async(kwargs={"exclude_session_hash": excluded}, retry=False)
        except OperationalError:
            logger.warning("presence report not queued: broker unavailable")

    transaction.on_commit(enqueue)


# --- the directory cache ---------------------------------------------------------------
@dataclass
class ApplyResult:
    nodes: int = 0
    users: int = 0
    rejected: list[str] = field(default_factory=list)
    keys_changed: list[str] = field(default_factory=list)
    came_online: list[str] = field(default_factory=list)


def _dt(value: object) -> datetime | None:
    """Unix seconds from the directory as a date; anything unrepresentable is unknown."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        try:
            return datetime.fromtimestamp(value, tz=dt_timezone.utc)
        except (ValueError, OverflowError, OSError):
            return None
    return None


def _parse_nodes(entries: list) -> dict[str, dict]:
    nodes: dict[str, dict] = {}
    for entry in entries:
        try:
            if not isinstance(entry, dict):
                raise protocol.ProtocolError("invalid_field", "node entry must be an object")
            name = protocol.validate_node_name(protocol.require(entry, "name", str))
            nodes[name] = {
                "url": protocol.require(entry, "url", str).rstrip("/"),
                "sign_key": protocol.b64d(entry.get("sign_key"), field="sign_key", length=32),
                "online": protocol.require(entry, "online", bool),
            }
        except protocol.ProtocolError as error:
            logger.warning("directory node entry rejected", extra={"code": error.code})
    return nodes


def _verify_users(
    entries: list,
    nodes: dict[str, dict],
    pinned: bytes,
    result: ApplyResult,
    *,
    here: str,
    local_names: set[str],
):
    """Yield (UserRecord, entry) for every record the login server signed; log the rest.

    A record that places one of this node's people on another node is refused like a
    forged one (its old copy stays): messages to that name stay here, no other node may
    speak in it, and the users list and profile must not show another person under it."""
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise protocol.ProtocolError("invalid_field", "user entry must be an object")
            record = protocol.b64d(entry.get("record"), field="record")
            signature = protocol.b64d(entry.get("sig"), field="sig", length=64)
            parsed = protocol.verify_user_record(pinned, record, signature)
            if parsed.node not in nodes:
                raise protocol.ProtocolError("unknown_node", "record names an unlisted node")
            if parsed.node != here and parsed.username in local_names:
                raise protocol.ProtocolError(
                    "local_name_elsewhere", "record places a person of this node on another node"
                )
        except protocol.ProtocolError as error:
            result.rejected.append(str(index))
            logger.warning("directory record rejected", extra={"code": error.code, "index": index})
            continue
        yield parsed, record, signature, entry


def apply_directory(*, body: bytes, signature: bytes) -> ApplyResult:
    """Verify a directory answer and update the cache; a bad record keeps its old copy.

    The whole answer must carry the pinned login server's signature; each user record
    must too. A known user whose keys differ gets keys_changed_at.
    """
    identity = local_node()
    pinned = bytes(identity.login_server_key)
    protocol.verify_directory(pinned, body, signature)
    obj = protocol.parse_json_object(body, what="directory")
    generated = protocol.require(obj, "generated_ms", int)
    nodes = _parse_nodes(protocol.require(obj, "nodes", list))
    result = ApplyResult(nodes=len(nodes))
    local_names = local_usernames()
    verified = list(
        _verify_users(
            protocol.require(obj, "users", list),
            nodes,
            pinned,
            result,
            here=identity.name,
            local_names=local_names,
        )
    )
    now = timezone.now()
    with transaction.atomic():
        # A replayed older answer (signed, but from before a revocation or key change)
        # must not roll the cache back. The row is locked (PostgreSQL): two fetches at
        # once cannot both pass the check and commit the older one last.
        sync, _ = DirectorySync.objects.select_for_update().get_or_create(pk=1)
        if generated < sync.generated:
            raise protocol.ProtocolError(
                "stale_directory", "the directory is older than the one already applied"
            )
        DirectorySync.objects.filter(pk=1).update(generated=generated)
        existing_nodes = {n.name: n for n in PeerNode.objects.all()}
        presence_changed = False  # what the users list shows: open pages re-read it
        for name, data in nodes.items():
            node = existing_nodes.get(name)
            if node is None:
                existing_nodes[name] = PeerNode.objects.create(name=name, active=True, **data)
                continue
            if data["online"] and not (node.online and node.active):  # back, or listed again
                result.came_online.append(name)
            changed = (
                node.url != data["url"]
                or bytes(node.sign_key) != data["sign_key"]
                or node.online != data["online"]
                or not node.active
            )
            presence_changed = presence_changed or node.online != data["online"]
            if changed:
                node.url, node.sign_key, node.online = data["url"], data["sign_key"], data["online"]
                node.active = True
                node.save(update_fields=["url", "sign_key", "online", "active", "updated_at"])
        PeerNode.objects.exclude(name__in=list(nodes)).filter(active=True).update(
            active=False, online=False, updated_at=now
        )

        existing_users = {u.username: u for u in DirectoryUser.objects.all()}
        to_create: list[DirectoryUser] = []
        to_update: list[DirectoryUser] = []
        seen: set[str] = set()
        for parsed, record, signature_bytes, entry in verified:
            seen.add(parsed.username)
            status = entry.get("status")
            values = {
                "node": existing_nodes[parsed.node],
                "sign_key": parsed.sign_key,
                "box_key": parsed.box_key,
                "full_name": parsed.full_name[:150],
                "position": parsed.position[:150],
                "record": record,
                "record_sig": signature_bytes,
                "status": status if status in STATUSES else DirectoryUser.Status.UNKNOWN,
                "last_seen": _dt(entry.get("last_seen")),
                "listed": True,
                "updated_at": now,
            }
            user = existing_users.get(parsed.username)
            if user is None:
                to_create.append(DirectoryUser(username=parsed.username, **values))
                presence_changed = True
                continue
            presence_changed = presence_changed or (user.status, user.listed) != (
                values["status"],
                True,
            )
            # A person moved to another node is flagged like new keys: that node would get
            # their messages and its acknowledgements would say "delivered".
            moved = user.node_id != values["node"].pk
            keys = (bytes(user.sign_key), bytes(user.box_key))
            if moved or keys != (parsed.sign_key, parsed.box_key):
                user.keys_changed_at = now
                result.keys_changed.append(parsed.username)
            for name, value in values.items():
                setattr(user, name, value)
            to_update.append(user)
        DirectoryUser.objects.bulk_create(to_create)
        DirectoryUser.objects.bulk_update(
            to_update, [*_USER_FIELDS, "keys_changed_at"], batch_size=500
        )
        rejected_names = _rejected_usernames(obj, result)
        unlisted = (
            DirectoryUser.objects.filter(listed=True)
            .exclude(username__in=list(seen | rejected_names))
            .update(listed=False, updated_at=now)
        )
        came_online = list(result.came_online)
        transaction.on_commit(lambda: _announce_online(came_online))
        if presence_changed or unlisted:
            events.publish_all_on_commit("presence.changed", {})
    result.users = len(seen)
    for username in result.keys_changed:
        logger.warning("user keys changed", extra={"username": username})
    return result


_USER_FIELDS = [
    "node",
    "sign_key",
    "box_key",
    "full_name",
    "position",
    "record",
    "record_sig",
    "status",
    "last_seen",
    "listed",
    "updated_at",
]


def _rejected_usernames(obj: dict, result: ApplyResult) -> set[str]:
    """Best-effort names of rejected records, so their old cached copies stay listed."""
    names: set[str] = set()
    users = obj.get("users")
    for index in result.rejected:
        try:
            entry = users[int(index)]
            record = base64.b64decode(entry["record"], validate=True)
            names.add(str(protocol.parse_json_object(record).get("username")))
        except (
            KeyError,
            TypeError,
            ValueError,
            IndexError,
            binascii.Error,
            protocol.ProtocolError,
        ):
            continue
    return names


def _announce_online(names: list[str]) -> None:
    """Tell messaging that nodes are reachable again, if messaging offers the hook."""
    if not names:
        return
    try:
        hook = importlib.import_module("messaging.delivery").peer_came_online
    except (ImportError, AttributeError):
        return
    for name in names:
        logger.info("peer came online", extra={"node": name})
        hook(name)


_MILLISECONDS = re.compile(r"[0-9]{1,16}")  # Unix milliseconds, ASCII digits only


def _verify_unchanged(
    identity: NodeIdentity, response: requests.Response, *, nonce: str, sync: DirectorySync
) -> None:
    """A 304 counts only with the login server's signature over this request's nonce and
    the ETag this node holds; otherwise something on the path may be withholding updates."""
    signature_header = response.headers.get("X-P2P-Signature", "")
    generated_header = response.headers.get("X-P2P-Generated-Ms", "")
    if not sync.etag or not signature_header:
        raise protocol.ProtocolError(
            "bad_unchanged_signature", "an unchanged-directory answer without a signature"
        )
    if not _MILLISECONDS.fullmatch(generated_header):
        raise protocol.ProtocolError(
            "bad_unchanged_signature", "X-P2P-Generated-Ms is not unix milliseconds"
        )
    generated = int(generated_header)
    try:
        signature = protocol.b64d(signature_header, field="X-P2P-Signature", length=64)
    except protocol.ProtocolError:
        raise protocol.ProtocolError(
            "bad_unchanged_signature", "X-P2P-Signature is not a signature"
        ) from None
    protocol.verify_directory_unchanged(
        bytes(identity.login_server_key),
        signature,
        nonce=nonce,
        etag=sync.etag,
        generated_ms=generated,
    )
    if generated < sync.generated:
        raise protocol.ProtocolError(
            "stale_directory", "the directory is older than the one already applied"
        )


def fetch_directory() -> str:
    """Fetch the directory (ETag), verify and cache it; returns "updated" or "unchanged".

    A 304 must be signed by the login server for this request (_verify_unchanged); a bad
    one fails the fetch and drops the ETag, so the next fetch gets the whole signed answer.
    """
    identity = local_node()
    sync, _ = DirectorySync.objects.get_or_create(pk=1)
    now = timezone.now()
    headers = {"If-None-Match": sync.etag} if sync.etag else {}
    nonce = protocol.new_nonce()
    try:
        try:
            response = signed_get(
                identity.login_server_url,
                "/api/v1/directory",
                headers,
                nonce=nonce,
                **_bounded(directory=True),
            )
        except requests.RequestException:
            raise LoginServerError("unreachable", "login server unreachable") from None
        if response.status_code == 304:
            _verify_unchanged(identity, response, nonce=nonce, sync=sync)
            outcome = "unchanged"
        elif response.status_code == 200:
            signature = protocol.b64d(
                response.headers.get("X-P2P-Signature", ""), field="X-P2P-Signature", length=64
            )
            apply_directory(body=response.content, signature=signature)
            sync.etag = response.headers.get("ETag", "")[:100]
            outcome = "updated"
        else:
            raise _signed_request_refusal(response)
    except (LoginServerError, protocol.ProtocolError) as error:
        failed: dict[str, Any] = {"last_attempt_at": now, "last_error": error.code}
        if error.code == "bad_unchanged_signature":
            failed["etag"] = ""
        DirectorySync.objects.filter(pk=1).update(**failed)
        raise
    sync.last_attempt_at = sync.last_success_at = now
    sync.last_error = ""
    sync.save(update_fields=["etag", "last_attempt_at", "last_success_at", "last_error"])
    return outcome


# --- key changes -------------------------------------------------------------------------
def acknowledge_key_change(*, viewer: User, user: DirectoryUser) -> None:
    """The viewer verified user's current keys; the warning goes away until the next change."""
    KeyChangeAck.objects.update_or_create(
        viewer=viewer, user=user, defaults={"acknowledged_at": timezone.now()}
    )
    logger.info("key change acknowledged", extra={"viewer": viewer.pk, "username": user.username})


# --- profiles: this node's people, served to other offices --------------------------------
def _profile_text(text: str) -> str:
    """A description as the protocol carries it: lines kept, other control characters not."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return protocol.TEXT_CONTROL_CHARS.sub(" ", text)[: protocol.MAX_DESCRIPTION_CHARS]


def local_picture(*, username: str) -> tuple[bytes, str] | None:
    """The picture bytes and type of an active person of this node, as the profile API
    serves them; None without one (or when its file is gone or over the size limit)."""
    profile = Profile.objects.filter(user__in=local_people([username])).first()
    if profile is None or not profile.picture:
        return None
    try:
        with open(profile.picture.path, "rb") as handle:
            data = handle.read(settings.PROFILE_PICTURE_MAX_BYTES + 1)
    except OSError:
        logger.error("profile picture missing", extra={"username": username})
        return None
    if not data or len(data) > settings.PROFILE_PICTURE_MAX_BYTES:
        return None
    return data, picture_content_type(profile.picture.name)


def profile_answer(*, username: str) -> tuple[bytes, bytes] | None:
    """The profile of an active person of this node as the profile API serves it: the
    canonical bytes and this node's signature over them; None for anyone else."""
    user = local_people([username]).select_related("profile").first()
    if user is None:
        return None
    profile = getattr(user, "profile", None) or Profile(user=user)
    identity = local_identity()
    picture = local_picture(username=username)
    body = protocol.make_profile(
        username=user.username,
        node=identity.name,
        full_name=_label(profile.full_name),
        position=_label(profile.position),
        description=_profile_text(profile.description),
        location=_label(profile.location),
        updated_ms=int(profile.updated_at.timestamp() * 1000) if profile.updated_at else 0,
        picture=(
            None
            if picture is None
            else protocol.ProfilePicture(
                sha256=protocol.sha256_hex(picture[0]), size=len(picture[0]), mime=picture[1]
            )
        ),
        served_ms=int(time.time() * 1000),
    )
    return body, protocol.sign_profile(identity.signing_key, body)


# --- profiles: other offices' people, fetched, verified and cached -------------------------
class ProfileFetchFailed(Exception):
    """A profile could not be fetched, or what came was refused; the cache stays as it was."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


PROFILE_PATH = "/api/v1/profiles/{username}"
_PICTURE_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
_ERROR_CODE = re.compile(r"[a-z_]{1,60}")
# Refusals of what the other office sent (as opposed to its own error answers).
_REFUSED_BY_THIS_NODE = frozenset(
    {
        "answer_too_large",
        "bad_profile_signature",
        "invalid_field",
        "malformed_json",
        "missing_field",
        "picture_invalid",
        "picture_mismatch",
        "picture_too_large",
        "profile_too_large",
        "stale_profile",
        "unsupported_version",
        "wrong_profile",
    }
)


@dataclass(frozen=True)
class _VerifiedProfile:
    body: bytes
    signature: bytes
    profile: protocol.Profile
    picture: bytes | None


def _peer_refusal(response: requests.Response) -> ProfileFetchFailed:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if not isinstance(code, str) or not _ERROR_CODE.fullmatch(code):
        code = "http_error"
    return ProfileFetchFailed(code, f"the node answered {response.status_code}")


def _get_within(node: PeerNode, path: str, *, deadline: float, max_bytes: int) -> requests.Response:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ProfileFetchFailed("unreachable", "no answer within the deadline")
    try:
        response = signed_get(node.url, path, deadline_s=remaining, max_answer_bytes=max_bytes)
    except requests.RequestException as error:
        code = "answer_too_large" if isinstance(error, AnswerTooLarge) else "unreachable"
        raise ProfileFetchFailed(code, f"{node.name}: {type(error).__name__}") from None
    if response.status_code != 200:
        raise _peer_refusal(response)
    return response


def check_picture(data: bytes, picture: protocol.ProfilePicture) -> None:
    """The picture bytes are exactly the signed ones and decode, within the pixel bound, as
    the signed type; raises ProfileFetchFailed otherwise."""
    if len(data) != picture.size or protocol.sha256_hex(data) != picture.sha256:
        raise ProfileFetchFailed("picture_mismatch", "the picture is not the one signed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_PICTURE_FORMATS[picture.mime]])
            if image.width * image.height > MAX_SOURCE_PIXELS:
                raise ProfileFetchFailed("picture_too_large", "the picture has too many pixels")
            image.load()
    except (*TOO_MANY_PIXELS, *UNDECODABLE):
        raise ProfileFetchFailed(
            "picture_invalid", f"the picture is not a {picture.mime}"
        ) from None


def _fetch_verified(
    person: DirectoryUser, cached: RemoteProfile | None, *, deadline: float
) -> _VerifiedProfile:
    node = person.node
    path = PROFILE_PATH.format(username=protocol.validate_username(person.username))
    response = _get_within(node, path, deadline=deadline, max_bytes=protocol.MAX_PROFILE_BYTES)
    body = response.content
    try:
        signature = protocol.b64d(
            response.headers.get("X-P2P-Signature", ""), field="X-P2P-Signature", length=64
        )
    except protocol.ProtocolError:
        raise ProfileFetchFailed("bad_profile_signature", "the profile is not signed") from None
    try:
        protocol.verify_profile(bytes(node.sign_key), body, signature)
        profile = protocol.parse_profile(body, max_picture_bytes=settings.PROFILE_PICTURE_MAX_BYTES)
    except protocol.ProtocolError as error:
        raise ProfileFetchFailed(error.code, error.message) from None
    if profile.username != person.username or profile.node != node.name:
        raise ProfileFetchFailed("wrong_profile", "the profile is not this person's on this node")
    if abs(time.time() * 1000 - profile.served_ms) > settings.REQUEST_MAX_SKEW_S * 1000:
        raise ProfileFetchFailed("stale_profile", "the profile was not served just now")
    same_node = cached is not None and cached.node == node.name
    if same_node and profile.served_ms < cached.served_ms:
        raise ProfileFetchFailed("stale_profile", "the profile is older than the cached one")
    picture = None
    if profile.picture is not None:
        if same_node and cached.picture and cached.picture_sha256 == profile.picture.sha256:
            picture = bytes(cached.picture)
        else:
            answer = _get_within(
                node, path + "/picture", deadline=deadline, max_bytes=profile.picture.size
            )
            picture = answer.content
        check_picture(picture, profile.picture)
    return _VerifiedProfile(body=body, signature=signature, profile=profile, picture=picture)


def _store_profile(verified: _VerifiedProfile) -> RemoteProfile:
    profile = verified.profile
    with transaction.atomic():
        row = RemoteProfile.objects.select_for_update().filter(username=profile.username).first()
        if row is not None and row.node == profile.node and row.served_ms > profile.served_ms:
            return row  # another refresh stored a newer copy meanwhile
        row = row or RemoteProfile(username=profile.username)
        row.node = profile.node
        row.body = verified.body
        row.signature = verified.signature
        row.served_ms = profile.served_ms
        row.fetched_at = timezone.now()
        row.refresh_failed_at = None
        row.refresh_error = ""
        row.picture = verified.picture
        row.picture_mime = profile.picture.mime if profile.picture else ""
        row.picture_sha256 = profile.picture.sha256 if profile.picture else ""
        row.save()
    return row


def fetch_profile(*, username: str, deadline_s: float | None = None) -> RemoteProfile | None:
    """Fetch a person's profile from their node (the directory's), verify it with that
    node's key and cache it; returns the cached row, or None when it failed (logged, and
    kept on the row) or the person is not of another office. The whole fetch, picture
    included, ends within deadline_s (P2P_PEER_REQUEST_DEADLINE_S by default)."""
    try:
        person = directory.lookup(username)
    except directory.UnknownUser:
        return None
    if person.node.name == local_node().name:
        return None
    deadline = time.monotonic() + (
        settings.PEER_REQUEST_DEADLINE_S if deadline_s is None else deadline_s
    )
    cached = RemoteProfile.objects.filter(username=username).first()
    try:
        return _store_profile(_fetch_verified(person, cached, deadline=deadline))
    except ProfileFetchFailed as error:
        logger.warning(
            "profile refresh failed",
            extra={"username": username, "node": person.node.name, "code": error.code},
        )
        RemoteProfile.objects.filter(username=username).update(
            refresh_failed_at=timezone.now(), refresh_error=error.code
        )
        return None


def request_profile_refresh(*, username: str) -> None:
    """Refresh a cached profile in the background (a Celery task), at most once per
    P2P_PROFILE_RETRY_S per person. Never raises, and asks Redis first: a page never waits
    on a broker that is down."""
    from .tasks import refresh_profile as task

    flag = f"p2p:peers:profile-refresh:{settings.CELERY_TASK_DEFAULT_QUEUE}:{username}"
    try:
        if not redis_client.get().set(
            flag, b"1", nx=True, px=max(1, int(settings.PROFILE_RETRY_S * 1000))
        ):
            return
        task.apply_async(args=[username], retry=False)
    except (redis.RedisError, BrokerError, OSError):
        logger.warning(
            "profile refresh not queued: broker unavailable", extra={"username": username}
        )


@dataclass(frozen=True)
class CachedProfile:
    """A person of another office's profile as this node holds it, for their page."""

    profile: protocol.Profile
    fetched_at: datetime
    has_picture: bool
    office_offline: bool
    refresh_error: str  # the code of a refresh that failed since fetched_at, or ""
    stale: bool  # older than P2P_PROFILE_CACHE_S

    @property
    def updated_at(self) -> datetime | None:
        if not self.profile.updated_ms:
            return None
        return datetime.fromtimestamp(self.profile.updated_ms / 1000, tz=dt_timezone.utc)

    @property
    def cached(self) -> bool:
        """Shown from the cache rather than as just fetched: the page says how old it is."""
        return self.stale or self.office_offline or bool(self.refresh_error)

    @property
    def why_cached(self) -> str:
        """offline, unreachable, refused (what came failed a check), unavailable (the office
        answered with an error) or refreshing (old, a refresh is on its way)."""
        if self.office_offline:
            return "offline"
        if self.refresh_error == "unreachable":
            return "unreachable"
        if self.refresh_error in _REFUSED_BY_THIS_NODE:
            return "refused"
        return "unavailable" if self.refresh_error else "refreshing"


def _cached_row(person: DirectoryUser) -> RemoteProfile | None:
    """The cached profile of a person, if it came from the node the directory places them on."""
    return RemoteProfile.objects.filter(username=person.username, node=person.node.name).first()


def profile_for_viewing(*, person: DirectoryUser) -> CachedProfile | None:
    """The cached profile of a person of another office. A copy older than
    P2P_PROFILE_CACHE_S is shown and refreshed by a task; with nothing cached, the page
    waits at most P2P_PROFILE_FIRST_FETCH_WAIT_S for the person's node. None: no profile."""
    row = _cached_row(person)
    if row is None and person.node.online:
        row = fetch_profile(
            username=person.username, deadline_s=settings.PROFILE_FIRST_FETCH_WAIT_S
        )
    now = timezone.now()
    if row is None:
        request_profile_refresh(username=person.username)
        return None
    stale = (now - row.fetched_at).total_seconds() > settings.PROFILE_CACHE_S
    failed_recently = (
        row.refresh_failed_at is not None
        and (now - row.refresh_failed_at).total_seconds() < settings.PROFILE_RETRY_S
    )
    if stale and not failed_recently:
        request_profile_refresh(username=person.username)
    try:
        profile = protocol.parse_profile(
            bytes(row.body), max_picture_bytes=settings.PROFILE_PICTURE_MAX_BYTES
        )
    except protocol.ProtocolError:
        return None
    return CachedProfile(
        profile=profile,
        fetched_at=row.fetched_at,
        has_picture=bool(row.picture),
        office_offline=not person.node.online,
        refresh_error=row.refresh_error if row.refresh_failed_at else "",
        stale=stale,
    )


def cached_picture(*, username: str) -> tuple[bytes, str] | None:
    """The cached picture (bytes, type) of a person of another office, or None: for a
    person of this node, or one whose cached profile is not from their current node."""
    if local_usernames([username]):
        return None
    try:
        person = directory.lookup(username)
    except directory.UnknownUser:
        return None
    row = _cached_row(person)
    if row is None or not row.picture or row.picture_mime not in protocol.PICTURE_TYPES:
        return None
    return bytes(row.picture), row.picture_mime
