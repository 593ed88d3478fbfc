"""Protocol v1: canonical bytes, signatures, sealed envelopes and acknowledgements.

Pure functions over bytes and PyNaCl keys. Nothing here imports Django or the project,
so the wire contract in docs/protocol.md can be tested with fixed vectors on its own.

Every signature covers exact bytes prefixed with a per-kind domain separator; nothing
is ever re-serialised before it is verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey

VERSION = 1
DOMAIN_REQUEST = b"p2psocial/v1/request\x00"
DOMAIN_ENVELOPE = b"p2psocial/v1/envelope\x00"
DOMAIN_ACK = b"p2psocial/v1/ack\x00"
DOMAIN_USER_RECORD = b"p2psocial/v1/user-record\x00"
DOMAIN_DIRECTORY = b"p2psocial/v1/directory\x00"
DOMAIN_DIRECTORY_UNCHANGED = b"p2psocial/v1/directory-unchanged\x00"

AUTH_SCHEME = "P2P-Node"
MAX_SKEW_S = 300
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_BATCH_ENVELOPES = 500
MAX_CREATED_MS = 2**53  # fits every database integer and a JavaScript number
# "fetched": the recipient's node reports that it holds (or refused) a message's file.
# Group envelopes (see peers.groups): no single recipient, their own body instead of a
# ciphertext. group_record is signed by the group's home node, the others by a person.
GROUP_ENVELOPE_KINDS = frozenset({"group_event", "group_record", "group_message", "group_read"})
ENVELOPE_KINDS = frozenset({"message", "read", "fetched"}) | GROUP_ENVELOPE_KINDS

# Always fullmatch: re.match with "$" would accept a trailing newline ("alice\n").
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_USERNAME = re.compile(r"[A-Za-z0-9_.+-]{1,150}")
_NONCE = re.compile(r"[0-9a-f]{32}")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_LABEL_CHARS = 150
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # Unix seconds, ASCII digits only
_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


# --- errors ---------------------------------------------------------------------------
class ProtocolError(Exception):
    """A refusal with a stable machine-readable code and the HTTP status it maps to."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _fail(code: str, message: str, status: int = 400) -> ProtocolError:
    return ProtocolError(code, message, status)


# --- encodings --------------------------------------------------------------------------
def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(value: object, *, field: str, length: int | None = None) -> bytes:
    """Strict base64 decode of a field; wrong type, alphabet or length is a ProtocolError."""
    if not isinstance(value, str):
        raise _fail("invalid_field", f"{field} must be a base64 string")
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _fail("invalid_field", f"{field} is not valid base64") from None
    if length is not None and len(data) != length:
        raise _fail("invalid_field", f"{field} must be {length} bytes")
    return data


def canonical_json(obj: Any) -> bytes:
    """The one JSON encoding that is signed: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


# A \uD800-\uDFFF escape: the only way JSON text can carry a lone surrogate, which is
# not Unicode text and cannot be encoded again (canonical_json, the database).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(value: Any) -> bool:
    """Every string in value (keys too) is valid Unicode text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def parse_json_object(body: bytes, *, what: str = "body") -> dict[str, Any]:
    try:
        # Strict UTF-8 first: json.loads(bytes) would also take UTF-16/32 and let
        # UTF-8-encoded surrogates through.
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail("malformed_json", f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _fail("malformed_json", f"{what} must be a JSON object")
    if _SURROGATE_ESCAPE.search(body) and not _encodable(value):
        raise _fail("malformed_json", f"{what} contains a lone surrogate, which is not text")
    return value


def require(obj: dict[str, Any], field: str, kind: type | tuple[type, ...]) -> Any:
    """obj[field], checked for presence and type (bool is never accepted as int)."""
    if field not in obj:
        raise _fail("missing_field", f"{field} is required")
    value = obj[field]
    if isinstance(value, bool) and kind is not bool:
        raise _fail("invalid_field", f"{field} has the wrong type")
    if not isinstance(value, kind):
        raise _fail("invalid_field", f"{field} has the wrong type")
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(*public_keys: bytes) -> str:
    """A short human-comparable fingerprint: 16 groups of 4 hex digits of SHA-256."""
    digest = hashlib.sha256(b"".join(public_keys)).hexdigest()[:64]
    return " ".join(digest[i : i + 4] for i in range(0, 64, 4))


def validate_node_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _fail("invalid_field", "node name must be 1-63 of a-z 0-9 _ . - (lower case)")
    return name


def validate_label(value: object, *, field: str, max_chars: int = MAX_LABEL_CHARS) -> str:
    """A one-line text shown to people (a full name, a position): any Unicode text up to
    max_chars, but no control characters (NUL breaks PostgreSQL; newlines break lines)."""
    if not isinstance(value, str) or len(value) > max_chars:
        raise _fail("invalid_field", f"{field} must be a string of at most {max_chars} characters")
    if CONTROL_CHARS.search(value):
        raise _fail("invalid_field", f"{field} must not contain control characters")
    return value


def validate_username(name: object) -> str:
    if not isinstance(name, str) or not _USERNAME.fullmatch(name):
        raise _fail("invalid_field", "username must be 1-150 of A-Z a-z 0-9 _ . + -")
    return name


# --- signed requests (node -> login server, node -> node) -------------------------------
@dataclass(frozen=True)
class RequestAuth:
    node: str
    timestamp: int
    nonce: str
    signature: bytes


def request_signing_bytes(
    *, method: str, path: str, node: str, timestamp: int, nonce: str, body: bytes
) -> bytes:
    """The exact bytes a node signs for one HTTP request."""
    lines = [method.upper(), path, node, str(timestamp), nonce, sha256_hex(body)]
    return DOMAIN_REQUEST + "\n".join(lines).encode()


def sign_request(
    key: SigningKey,
    *,
    node: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> str:
    """The Authorization header value for one request."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    nonce = new_nonce() if nonce is None else nonce
    message = request_signing_bytes(
        method=method, path=path, node=node, timestamp=timestamp, nonce=nonce, body=body
    )
    signature = b64e(key.sign(message).signature)
    return f'{AUTH_SCHEME} node="{node}",ts="{timestamp}",nonce="{nonce}",sig="{signature}"'


def new_nonce() -> str:
    """A fresh request nonce: 16 random bytes as 32 lower-case hex digits."""
    return secrets.token_hex(16)


def parse_auth_header(value: str | None) -> RequestAuth:
    if not value or not value.startswith(AUTH_SCHEME + " "):
        raise _fail("missing_signature", "request is not signed by a node", 401)
    params = dict(_AUTH_PARAM.findall(value[len(AUTH_SCHEME) + 1 :]))
    try:
        node = validate_node_name(params["node"])
        if not _TIMESTAMP.fullmatch(params["ts"]):
            raise ValueError("timestamp")
        timestamp = int(params["ts"])
        nonce = params["nonce"]
        signature = b64d(params["sig"], field="sig", length=64)
    except (KeyError, ValueError, ProtocolError):
        raise _fail("bad_auth_header", "the Authorization header is malformed", 401) from None
    if not _NONCE.fullmatch(nonce):
        raise _fail("bad_auth_header", "nonce must be 32 lower-case hex digits", 401)
    return RequestAuth(node=node, timestamp=timestamp, nonce=nonce, signature=signature)


def verify_request(
    verify_key: bytes,
    auth: RequestAuth,
    *,
    method: str,
    path: str,
    body: bytes,
    now: float | None = None,
    max_skew_s: int = MAX_SKEW_S,
) -> None:
    """Check the timestamp window and the node's signature. Nonce reuse is the caller's check."""
    now = time.time() if now is None else now
    if abs(now - auth.timestamp) > max_skew_s:
        raise _fail("stale_timestamp", "request timestamp is outside the allowed window", 401)
    message = request_signing_bytes(
        method=method,
        path=path,
        node=auth.node,
        timestamp=auth.timestamp,
        nonce=auth.nonce,
        body=body,
    )
    try:
        VerifyKey(verify_key).verify(message, auth.signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail("bad_signature", "the request signature does not verify", 401) from None


# --- user records (signed by the login server) -----------------------------------------
@dataclass(frozen=True)
class UserRecord:
    username: str
    node: str
    node_url: str
    sign_key: bytes
    box_key: bytes
    full_name: str
    position: str
    issued: int
    expires: int


def make_user_record(
    *,
    username: str,
    node: str,
    node_url: str,
    sign_key: bytes,
    box_key: bytes,
    full_name: str,
    position: str,
    issued: int,
    expires: int,
) -> bytes:
    return canonical_json(
        {
            "v": VERSION,
            "username": username,
            "node": node,
            "node_url": node_url,
            "sign_key": b64e(sign_key),
            "box_key": b64e(box_key),
            "full_name": full_name,
            "position": position,
            "issued": issued,
            "expires": expires,
        }
    )


def sign_user_record(key: SigningKey, record: bytes) -> bytes:
    return key.sign(DOMAIN_USER_RECORD + record).signature


def verify_user_record(
    login_server_key: bytes, record: bytes, signature: bytes, *, now: float | None = None
) -> UserRecord:
    """Verify the login server's signature, then parse; an expired record is refused."""
    try:
        VerifyKey(login_server_key).verify(DOMAIN_USER_RECORD + record, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail(
            "bad_record_signature", "user record is not signed by the login server"
        ) from None
    obj = parse_json_object(record, what="user record")
    parsed = UserRecord(
        username=validate_username(require(obj, "username", str)),
        node=validate_node_name(require(obj, "node", str)),
        node_url=require(obj, "node_url", str),
        sign_key=b64d(require(obj, "sign_key", str), field="sign_key", length=32),
        box_key=b64d(require(obj, "box_key", str), field="box_key", length=32),
        full_name=validate_label(require(obj, "full_name", str), field="full_name"),
        position=validate_label(require(obj, "position", str), field="position"),
        issued=require(obj, "issued", int),
        expires=require(obj, "expires", int),
    )
    now = time.time() if now is None else now
    if parsed.expires < now:
        raise _fail("record_expired", "user record has expired")
    return parsed


def sign_directory(key: SigningKey, body: bytes) -> bytes:
    return key.sign(DOMAIN_DIRECTORY + body).signature


def verify_directory(login_server_key: bytes, body: bytes, signature: bytes) -> None:
    try:
        VerifyKey(login_server_key).verify(DOMAIN_DIRECTORY + body, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail(
            "bad_directory_signature", "directory is not signed by the login server"
        ) from None


def directory_unchanged_signing_bytes(*, nonce: str, etag: str, generated_ms: int) -> bytes:
    """What the login server signs to say "the directory with this ETag is still current"
    in answer to the request with this nonce (so an answer cannot be replayed or forged)."""
    return DOMAIN_DIRECTORY_UNCHANGED + "\n".join([nonce, etag, str(generated_ms)]).encode()


def sign_directory_unchanged(key: SigningKey, *, nonce: str, etag: str, generated_ms: int) -> bytes:
    message = directory_unchanged_signing_bytes(nonce=nonce, etag=etag, generated_ms=generated_ms)
    return key.sign(message).signature


def verify_directory_unchanged(
    login_server_key: bytes, signature: bytes, *, nonce: str, etag: str, generated_ms: int
) -> None:
    message = directory_unchanged_signing_bytes(nonce=nonce, etag=etag, generated_ms=generated_ms)
    try:
        VerifyKey(login_server_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail(
            "bad_unchanged_signature",
            "the unchanged-directory answer is not signed by the login server for this request",
        ) from None


# --- node addresses -----------------------------------------------------------------------
_NOT_PUBLIC_V4 = (
    ipaddress.IPv4Network("100.64.0.0/10"),  # shared address space (carrier-grade NAT)
    ipaddress.IPv4Network("192.88.99.0/24"),  # 6to4 relay anycast (deprecated)
)


def is_public_address(address: str) -> bool:
    """Whether a node URL may lead to this IP address: not loopback, link-local, private
    (10/8, 172.16/12, 192.168/16, fc00::/7 ...), unspecified, multicast, reserved, shared
    (100.64/10) or a tunnel relay. An IPv4-mapped or 6to4 IPv6 address is judged as the
    IPv4 address it carries; Teredo is refused; text that is not an IP address is not
    public."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:  # 2002::/16 carries an IPv4 address: judge that one
            ip = ip.sixtofour
        elif ip.teredo is not None or ip.is_site_local:  # tunnels, fec0::/10 (deprecated)
            return False
    if isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _NOT_PUBLIC_V4):
        return False
    return not (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
    )


# --- envelopes ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Envelope:
    id: str
    kind: str
    sender: str
    sender_node: str
    recipient: str
    recipient_node: str
    created_ms: int
    ciphertext: bytes
    raw: bytes
    body: dict[str, Any] | None = None  # a group envelope's body (recipient and ciphertext empty)


@dataclass(frozen=True)
class SignedEnvelope:
    raw: bytes
    signature: bytes

    @property
    def id(self) -> str:
        return parse_envelope(self.raw).id


def new_envelope_id() -> str:
    return str(uuid.uuid4())


def seal_envelope(
    *,
    sender_sign_key: SigningKey,
    sender_box_key: PrivateKey,
    recipient_box_key: bytes,
    envelope_id: str,
    kind: str,
    sender: str,
    sender_node: str,
    recipient: str,
    recipient_node: str,
    created_ms: int,
    payload: dict[str, Any],
    nonce: bytes | None = None,
) -> SignedEnvelope:
    """Encrypt payload from sender to recipient (NaCl Box) and sign the envelope bytes."""
    box = Box(sender_box_key, PublicKey(recipient_box_key))
    ciphertext = bytes(box.encrypt(canonical_json(payload), nonce))
    raw = canonical_json(
        {
            "v": VERSION,
            "id": envelope_id,
            "kind": kind,
            "sender": sender,
            "sender_node": sender_node,
            "recipient": recipient,
            "recipient_node": recipient_node,
            "created_ms": created_ms,
            "ciphertext": b64e(ciphertext),
        }
    )
    return SignedEnvelope(raw=raw, signature=sender_sign_key.sign(DOMAIN_ENVELOPE + raw).signature)


def parse_envelope(raw: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    if len(raw) > max_bytes:
        raise _fail("envelope_too_large", f"an envelope may be at most {max_bytes} bytes", 413)
    obj = parse_json_object(raw, what="envelope")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise _fail("unsupported_version", f"envelope version must be {VERSION}")
    envelope_id = require(obj, "id", str)
    try:
        if str(uuid.UUID(envelope_id)) != envelope_id:
            raise ValueError
    except ValueError:
        raise _fail("invalid_field", "id must be a lower-case UUID") from None
    kind = require(obj, "kind", str)
    if kind not in ENVELOPE_KINDS:
        raise _fail("invalid_field", f"kind must be one of {sorted(ENVELOPE_KINDS)}")
    created_ms = require(obj, "created_ms", int)
    if isinstance(created_ms, bool) or not 0 <= created_ms < MAX_CREATED_MS:
        raise _fail("invalid_field", "created_ms must be a positive 53-bit integer")
    if kind in GROUP_ENVELOPE_KINDS:
        fields = {"v", "id", "kind", "sender_node", "recipient_node", "created_ms", "body"}
        if kind != "group_record":
            fields.add("sender")
        _exact_fields(obj, frozenset(fields), what=f"a {kind} envelope")
        return Envelope(
            id=envelope_id,
            kind=kind,
            sender="" if kind == "group_record" else validate_username(obj["sender"]),
            sender_node=validate_node_name(require(obj, "sender_node", str)),
            recipient="",
            recipient_node=validate_node_name(require(obj, "recipient_node", str)),
            created_ms=created_ms,
            ciphertext=b"",
            raw=raw,
            body=require(obj, "body", dict),
        )
    return Envelope(
        id=envelope_id,
        kind=kind,
        sender=validate_username(require(obj, "sender", str)),
        sender_node=validate_node_name(require(obj, "sender_node", str)),
        recipient=validate_username(require(obj, "recipient", str)),
        recipient_node=validate_node_name(require(obj, "recipient_node", str)),
        created_ms=created_ms,
        ciphertext=b64d(require(obj, "ciphertext", str), field="ciphertext"),
        raw=raw,
    )


def sign_group_envelope(
    sign_key: SigningKey,
    *,
    envelope_id: str,
    kind: str,
    sender: str,
    sender_node: str,
    recipient_node: str,
    created_ms: int,
    body: dict[str, Any],
) -> SignedEnvelope:
    """A group envelope's bytes, signed by its sender person (or, for group_record, by
    the home node: sender is then "")."""
    obj: dict[str, Any] = {
        "v": VERSION,
        "id": envelope_id,
        "kind": kind,
        "sender_node": sender_node,
        "recipient_node": recipient_node,
        "created_ms": created_ms,
        "body": body,
    }
    if kind != "group_record":
        obj["sender"] = sender
    raw = canonical_json(obj)
    parse_envelope(raw)
    return SignedEnvelope(raw=raw, signature=sign_key.sign(DOMAIN_ENVELOPE + raw).signature)


def verify_envelope(sender_sign_key: bytes, raw: bytes, signature: bytes) -> None:
    try:
        VerifyKey(sender_sign_key).verify(DOMAIN_ENVELOPE + raw, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail("bad_envelope_signature", "envelope signature does not verify") from None


def open_envelope(
    envelope: Envelope, *, recipient_box_key: PrivateKey, sender_box_key: bytes
) -> dict[str, Any]:
    """Decrypt and parse the payload; a modified ciphertext fails authentication."""
    try:
        plaintext = Box(recipient_box_key, PublicKey(sender_box_key)).decrypt(envelope.ciphertext)
    except (CryptoError, ValueError, TypeError):
        raise _fail("decrypt_failed", "payload does not decrypt for the recipient") from None
    return parse_json_object(plaintext, what="payload")


# --- batches and acknowledgements --------------------------------------------------------
def encode_batch(envelopes: list[SignedEnvelope]) -> bytes:
    """The inbox request body: one JSON object listing base64 envelope bytes and signatures."""
    return canonical_json(
        {"envelopes": [{"body": b64e(e.raw), "sig": b64e(e.signature)} for e in envelopes]}
    )


@dataclass(frozen=True)
class BatchItem:
    """One entry of a batch: a parsed envelope, or the error that refuses it alone."""

    index: int
    envelope: Envelope | None
    signature: bytes | None
    error: ProtocolError | None = None


def parse_batch(
    body: bytes,
    *,
    max_envelopes: int = MAX_BATCH_ENVELOPES,
    max_envelope_bytes: int = MAX_ENVELOPE_BYTES,
) -> list[BatchItem]:
    """Parse an inbox body. A malformed batch raises; a malformed entry is refused alone."""
    obj = parse_json_object(body)
    entries = require(obj, "envelopes", list)
    if not entries:
        raise _fail("empty_batch", "a batch carries at least one envelope")
    if len(entries) > max_envelopes:
        raise _fail("batch_too_large", f"a batch may carry at most {max_envelopes} envelopes", 413)
    items: list[BatchItem] = []
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise _fail("invalid_field", "each entry must be an object")
            raw = b64d(require(entry, "body", str), field="body")
            signature = b64d(require(entry, "sig", str), field="sig", length=64)
            envelope = parse_envelope(raw, max_bytes=max_envelope_bytes)
            items.append(BatchItem(index=index, envelope=envelope, signature=signature))
        except ProtocolError as error:
            items.append(BatchItem(index=index, envelope=None, signature=None, error=error))
    return items


def ack_signing_bytes(envelope_id: str, raw: bytes) -> bytes:
    return ack_digest_signing_bytes(envelope_id, sha256_hex(raw))


def ack_digest_signing_bytes(envelope_id: str, sha256: str) -> bytes:
    return DOMAIN_ACK + f"{envelope_id}\n{sha256}".encode()


def sign_ack(node_key: SigningKey, envelope_id: str, raw: bytes) -> dict[str, str]:
    """The receiving node's acknowledgement: it stored exactly these bytes under this id."""
    return sign_ack_for_digest(node_key, envelope_id, sha256_hex(raw))


def sign_ack_for_digest(node_key: SigningKey, envelope_id: str, sha256: str) -> dict[str, str]:
    """sign_ack for bytes the receiver stored earlier and keeps only the SHA-256 (hex) of."""
    signature = node_key.sign(ack_digest_signing_bytes(envelope_id, sha256)).signature
    return {"id": envelope_id, "status": "stored", "sha256": sha256, "sig": b64e(signature)}


def verify_ack(node_key: bytes, ack: object, *, envelope_id: str, raw: bytes) -> None:
    """Check an acknowledgement against the bytes the sender sent."""
    if not isinstance(ack, dict) or ack.get("id") != envelope_id or ack.get("status") != "stored":
        raise _fail("bad_ack", "acknowledgement does not match the envelope")
    if ack.get("sha256") != sha256_hex(raw):
        raise _fail("bad_ack", "acknowledgement covers different bytes")
    signature = b64d(ack.get("sig"), field="sig", length=64)
    try:
        VerifyKey(node_key).verify(ack_signing_bytes(envelope_id, raw), signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail("bad_ack", "acknowledgement signature does not verify") from None


# --- enrolment (node -> login server, before the node is known) -------------------------
DOMAIN_ENROL = b"p2psocial/v1/enrol\x00"


def enrolment_signing_bytes(*, token: str, name: str, url: str, sign_key: bytes) -> bytes:
    """What a joining node signs with its new key to prove it holds the private part."""
    return DOMAIN_ENROL + "\n".join([token, name, url, b64e(sign_key)]).encode()


def sign_enrolment(key: SigningKey, *, token: str, name: str, url: str) -> bytes:
    message = enrolment_signing_bytes(
        token=token, name=name, url=url, sign_key=bytes(key.verify_key)
    )
    return key.sign(message).signature


def verify_enrolment(sign_key: bytes, signature: bytes, *, token: str, name: str, url: str) -> None:
    message = enrolment_signing_bytes(token=token, name=name, url=url, sign_key=sign_key)
    try:
        VerifyKey(sign_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail("bad_proof", "the enrolment proof does not verify with sign_key") from None


# --- node key rotation (node -> login server, signed by the current key) -----------------
DOMAIN_ROTATE = b"p2psocial/v1/rotate-key\x00"


def rotation_signing_bytes(*, node: str, new_key_b64: str) -> bytes:
    """What a node signs with its new key to prove it holds the private part."""
    return DOMAIN_ROTATE + "\n".join([node, new_key_b64]).encode()


def sign_rotation(new_key: SigningKey, *, node: str) -> bytes:
    message = rotation_signing_bytes(node=node, new_key_b64=b64e(bytes(new_key.verify_key)))
    return new_key.sign(message).signature


def verify_rotation(new_key: bytes, proof: bytes, *, node: str) -> None:
    message = rotation_signing_bytes(node=node, new_key_b64=b64e(new_key))
    try:
        VerifyKey(new_key).verify(message, proof)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail("bad_proof", "the rotation proof does not verify with sign_key") from None


# --- profiles (served by a person's own node, signed by its key) -------------------------
DOMAIN_PROFILE = b"p2psocial/v1/profile\x00"
MAX_PROFILE_BYTES = 32 * 1024  # 4,000 characters of description at 4 bytes each, and more
MAX_DESCRIPTION_CHARS = 4000
MAX_PICTURE_BYTES = 10 * 1024 * 1024
# What a node re-encodes pictures to, and what it accepts as an upload: nothing else is
# ever served as a picture (no SVG, no HTML).
PICTURE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
PROFILE_FIELDS = frozenset(
    {
        "v",
        "username",
        "node",
        "full_name",
        "position",
        "description",
        "location",
        "updated_ms",
        "picture",
        "served_ms",
    }
)
PICTURE_FIELDS = frozenset({"sha256", "size", "mime"})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# A description may run over several lines (and keep tabs); every other control character
# is refused, as in a label.
TEXT_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class ProfilePicture:
    sha256: str  # hex SHA-256 of the exact picture bytes
    size: int
    mime: str


@dataclass(frozen=True)
class Profile:
    username: str
    node: str
    full_name: str
    position: str
    description: str
    location: str
    updated_ms: int
    picture: ProfilePicture | None
    served_ms: int
    raw: bytes


def make_profile(
    *,
    username: str,
    node: str,
    full_name: str,
    position: str,
    description: str,
    location: str,
    updated_ms: int,
    picture: ProfilePicture | None,
    served_ms: int,
) -> bytes:
    """A person's profile as their node serves it: canonical JSON, to be signed whole."""
    return canonical_json(
        {
            "v": VERSION,
            "username": username,
            "node": node,
            "full_name": full_name,
            "position": position,
            "description": description,
            "location": location,
            "updated_ms": updated_ms,
            "picture": (
                None
                if picture is None
                else {"sha256": picture.sha256, "size": picture.size, "mime": picture.mime}
            ),
            "served_ms": served_ms,
        }
    )


def sign_profile(node_key: SigningKey, body: bytes) -> bytes:
    return node_key.sign(DOMAIN_PROFILE + body).signature


def verify_profile(node_key: bytes, body: bytes, signature: bytes) -> None:
    """Check the serving node's signature over the exact profile bytes."""
    try:
        VerifyKey(node_key).verify(DOMAIN_PROFILE + body, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise _fail(
            "bad_profile_signature", "the profile is not signed by the person's node"
        ) from None


def validate_text(value: object, *, field: str, max_chars: int = MAX_DESCRIPTION_CHARS) -> str:
    """Several lines of text shown to people (a description): newlines and tabs, but no
    other control characters."""
    if not isinstance(value, str) or len(value) > max_chars:
        raise _fail("invalid_field", f"{field} must be a string of at most {max_chars} characters")
    if TEXT_CONTROL_CHARS.search(value):
        raise _fail("invalid_field", f"{field} must not contain control characters")
    return value


def _milliseconds(obj: dict[str, Any], field: str) -> int:
    value = require(obj, field, int)
    if not 0 <= value < MAX_CREATED_MS:
        raise _fail("invalid_field", f"{field} must be a positive 53-bit integer")
    return value


def _exact_fields(obj: dict[str, Any], fields: frozenset[str], *, what: str) -> None:
    missing = sorted(fields - obj.keys())
    if missing:
        raise _fail("missing_field", f"{missing[0]} is required")
    unexpected = sorted(obj.keys() - fields)
    if unexpected:
        raise _fail("invalid_field", f"{what} has an unexpected field {unexpected[0]!r}")


def _parse_picture(value: object, *, max_picture_bytes: int) -> ProfilePicture | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail("invalid_field", "picture must be an object or null")
    _exact_fields(value, PICTURE_FIELDS, what="picture")
    sha256 = require(value, "sha256", str)
    if not _SHA256_HEX.fullmatch(sha256):
        raise _fail("invalid_field", "picture.sha256 must be 64 lower-case hex digits")
    size = require(value, "size", int)
    if size < 1:
        raise _fail("invalid_field", "picture.size must be at least 1")
    if size > max_picture_bytes:
        raise _fail("picture_too_large", f"a picture may be at most {max_picture_bytes} bytes")
    mime = require(value, "mime", str)
    if mime not in PICTURE_TYPES:
        raise _fail("invalid_field", f"picture.mime must be one of {sorted(PICTURE_TYPES)}")
    return ProfilePicture(sha256=sha256, size=size, mime=mime)


def parse_profile(
    body: bytes,
    *,
    max_bytes: int = MAX_PROFILE_BYTES,
    max_picture_bytes: int = MAX_PICTURE_BYTES,
) -> Profile:
    """Parse a profile strictly: exactly its fields, each of its type and within its limit."""
    if len(body) > max_bytes:
        raise _fail("profile_too_large", f"a profile may be at most {max_bytes} bytes", 413)
    obj = parse_json_object(body, what="profile")
    if obj.get("v") != VERSION or isinstance(obj.get("v"), bool):
        raise _fail("unsupported_version", f"profile version must be {VERSION}")
    _exact_fields(obj, PROFILE_FIELDS, what="profile")
    return Profile(
        username=validate_username(require(obj, "username", str)),
        node=validate_node_name(require(obj, "node", str)),
        full_name=validate_label(require(obj, "full_name", str), field="full_name"),
        position=validate_label(require(obj, "position", str), field="position"),
        description=validate_text(require(obj, "description", str), field="description"),
        location=validate_label(require(obj, "location", str), field="location"),
        updated_ms=_milliseconds(obj, "updated_ms"),
        picture=_parse_picture(obj["picture"], max_picture_bytes=max_picture_bytes),
        served_ms=_milliseconds(obj, "served_ms"),
        raw=body,
    )
