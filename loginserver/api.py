"""Login server API v1: enrol, report, rotate-key, directory. Callers are office nodes.

All bodies are UTF-8 JSON. Every error is `{"error": {"code": "...", "message": "..."}}`
with a 4xx status; the codes are stable.

Signed requests (report, rotate-key, directory) carry, as in peers.protocol.sign_request:

    Authorization: P2P-Node node="hq",ts="1767000000",nonce="<32 hex>",sig="<b64>"

where sig is the node key's ed25519 signature over

    b"p2psocial/v1/request\\x00" + "\\n".join([METHOD, PATH_WITH_QUERY, node, ts, nonce,
                                            sha256_hex(body)])

(for a GET the body is empty). Refusals: missing_signature / bad_auth_header /
stale_timestamp (more than REQUEST_MAX_SKEW_S off) / bad_signature / replayed_nonce
(401), unknown_node / node_revoked (403), body_too_large (413).

POST /api/v1/enrol (not signed by a known node; carries a one-time token)
    request:  {"token": "<token from create_enrolment_token>", "name": "hq",
               "url": "https://hq.example.com", "sign_key": "<b64 32-byte ed25519 public key>",
               "proof": "<b64 signature>"}
              proof = new node key's signature over
              b"p2psocial/v1/enrol\\x00" + "\\n".join([token, name, url, sign_key_b64])
    201:      {"login_server_key": "<b64 32 bytes>", "fingerprint": "<login server key
               fingerprint>", "node": "hq", "node_fingerprint": "<fingerprint of sign_key>"}
    refusals: token_invalid, token_used, token_expired, token_name_mismatch (403),
              node_exists (409), bad_proof, malformed_json, missing_field, invalid_field,
              insecure_url, private_node_url, unresolvable_node_url (400), body_too_large
              (413: over ENROL_MAX_BODY_BYTES, checked before parsing).
    The token is single use, bound to the node name, and expires after
    ENROLMENT_TOKEN_LIFETIME_S. A refused enrolment writes nothing.

POST /api/v1/report (signed)
    request:  {"url": "https://hq.example.com" (optional: the node's new public URL),
               "users": [{"username": "alice", "sign_key": "<b64 32>", "box_key": "<b64 32>",
                          "full_name": "Alice A.", "position": "CEO",
                          "status": "online" | "away" | "offline",
                          "last_seen": 1767000000 | null}, ...]}
              The list is the node's complete set of users: users of this node that are
              missing leave the directory, their names stay reserved to the node.
    200:      {"users": 2, "signed": 0, "presence_changed": 1, "removed": 0,
               "refused": [{"username": "bob", "code": "user_owned_by_other_node"}]}
              A name held by another active node (user_owned_by_other_node) or beyond
              NODE_MAX_USERNAMES (too_many_usernames) is refused alone; the rest is stored.
    refusals: duplicate_user, invalid_field, missing_field, malformed_json, insecure_url,
              private_node_url, unresolvable_node_url (400), too_many_users (413),
              conflict (409: a name claimed by another report at the same moment).
    The login server signs a new user record when a user is new, their keys, name or
    position or the node URL changed, or the record is past half its lifetime.

POST /api/v1/rotate-key (signed by the node's CURRENT key)
    request:  {"sign_key": "<b64 32-byte ed25519 public key: the new key>",
               "proof": "<b64 signature>"}
              proof = new key's signature over
              b"p2psocial/v1/rotate-key\\x00" + "\\n".join([node, sign_key_b64])
    200:      {"node": "hq", "node_fingerprint": "<fingerprint of the new key>"}
    refusals: bad_proof, malformed_json, missing_field, invalid_field (400), same_key (409:
              sign_key is the current key), key_changed (409: another rotation won),
              node_revoked (403).
    From then on only the new key signs for the node; the directory version changes, so
    every node learns the new key at its next directory fetch. A refusal writes nothing.

GET /api/v1/directory (signed)
    request headers: If-None-Match: "<etag of the copy the node holds>" (optional)
    304:      no body, when the ETag is unchanged; headers ETag, X-P2P-Generated-Ms:
              <generated_ms of that directory>, X-P2P-Signature: <b64 signature by the login
              server key over b"p2psocial/v1/directory-unchanged\\x00" +
              "\\n".join([request nonce, etag, generated_ms])>.
    200:      headers ETag: "<32 hex>", X-P2P-Signature: <b64 signature by the login server
              key over b"p2psocial/v1/directory\\x00" + exact body bytes>
              body (canonical JSON: sorted keys, no spaces):
              {"v": 1, "generated_ms": 1767000000000,
               "nodes": [{"name": "hq", "url": "...", "sign_key": "<b64 32>",
                          "active": true, "online": true}, ...],
               "users": [{"record": "<b64 user record bytes>", "sig": "<b64 signature over
                          b'p2psocial/v1/user-record\\x00' + record>",
                          "status": "online" | "away" | "offline", "last_seen": int | null},
                         ...]}
              A user record is canonical JSON {"v", "username", "node", "node_url",
              "sign_key", "box_key", "full_name", "position", "issued", "expires"}
              (peers.protocol.make_user_record). Revoked nodes and their users are absent;
              the users of a node that has not reported for NODE_OFFLINE_AFTER_S are
              listed offline (last_seen = the node's last report).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from peers import protocol
from peers.auth import (
    KnownNode,
    declared_length,
    error_response,
    log_refusal,
    read_body,
    run_signed,
    signed_endpoint,
    writer_retry_after_s,
)

from . import directory, services

logger = logging.getLogger(__name__)


def _refused(request: HttpRequest, error: protocol.ProtocolError) -> JsonResponse:
    logger.warning(
        "request refused",
        extra={
            "code": error.code,
            "path": request.path,
            "remote": request.META.get("REMOTE_ADDR"),
        },
    )
    return error_response(error)


def _read_enrolment_body(request: HttpRequest) -> bytes:
    """The body, refused with 413 before it is parsed when over ENROL_MAX_BODY_BYTES: the
    caller is not known yet, and parsing megabytes of JSON costs far more memory."""
    limit = settings.ENROL_MAX_BODY_BYTES
    too_large = protocol.ProtocolError(
        "body_too_large", f"an enrolment body may be at most {limit} bytes", 413
    )
    if declared_length(request.META.get("CONTENT_LENGTH")) > limit:
        raise too_large
    body = request.read(limit + 1)
    if len(body) > limit:
        raise too_large
    return body


@csrf_exempt
def enrol(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return error_response(protocol.ProtocolError("method_not_allowed", "use POST", 405))
    try:
        obj = protocol.parse_json_object(_read_enrolment_body(request))
        name = protocol.validate_node_name(protocol.require(obj, "name", str))
        url = services.validate_url(protocol.require(obj, "url", str))
        sign_key = protocol.b64d(
            protocol.require(obj, "sign_key", str), field="sign_key", length=32
        )
        proof = protocol.b64d(protocol.require(obj, "proof", str), field="proof", length=64)
        token = protocol.require(obj, "token", str)
        node = services.enrol_node(token=token, name=name, url=url, sign_key=sign_key, proof=proof)
    except protocol.ProtocolError as error:
        return _refused(request, error)
    server_key = bytes(services.server_signing_key().verify_key)
    return JsonResponse(
        {
            "login_server_key": protocol.b64e(server_key),
            "fingerprint": protocol.fingerprint(server_key),
            "node": node.name,
            "node_fingerprint": protocol.fingerprint(bytes(node.sign_key)),
        },
        status=201,
    )


@dataclass(frozen=True)
class Answer:
    """An HTTP answer as plain values, so Django's view and loginserver.asgi send the same."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: dict, status: int = 200) -> Answer:
        body = json.dumps(payload, cls=DjangoJSONEncoder, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json"}
        if status == 503:  # WriterBusy: the same request may be sent again after this
            headers["Retry-After"] = str(writer_retry_after_s())
        return cls(status, body, headers)

    def http_response(self) -> HttpResponse:
        return HttpResponse(self.body, status=self.status, headers=self.headers)


def _report_payload(body: bytes, node: KnownNode, checked_url: str | None) -> dict:
    result = services.accept_report(
        node=node.obj, report=services.parse_report(body), checked_url=checked_url
    )
    return {
        "users": result.users,
        "signed": result.signed,
        "presence_changed": result.presence_changed,
        "removed": result.removed,
        "refused": [{"username": r.username, "code": r.code} for r in result.refused],
    }


def _run_report(
    *,
    path: str,
    authorization: str | None,
    body: bytes,
    remote: str | None,
    checked_url: str | None,
) -> Answer:
    payload, status = run_signed(
        method="POST",
        path=path,
        authorization=authorization,
        body=body,
        remote=remote,
        resolve=services.resolve_node,
        view=lambda node: _report_payload(body, node, checked_url),
    )
    return Answer.json(payload, status)


def answer_report(
    *, path: str, authorization: str | None, body: bytes, remote: str | None
) -> Answer:
    """POST /api/v1/report once the body is read: verify, claim the nonce, store, answer.

    A report that moves its node to a new URL is stopped before any write (in production)
    and run again once the URL's address is checked: the DNS lookup never holds the write
    transaction. Only a request whose signature verified gets that far."""
    signed = {"path": path, "authorization": authorization, "body": body, "remote": remote}
    try:
        return _run_report(**signed, checked_url=None)
    except services.NodeUrlUnchecked as unchecked:
        try:
            services.check_node_url_address(unchecked.url)
        except protocol.ProtocolError as error:
            log_refusal(error, path=path, remote=remote)
            return Answer.json({"error": error.as_dict()}, error.status)
        return _run_report(**signed, checked_url=unchecked.url)


@csrf_exempt
def report(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return error_response(protocol.ProtocolError("method_not_allowed", "use POST", 405))
    try:
        body = read_body(request)
    except protocol.ProtocolError as error:
        return _refused(request, error)
    return answer_report(
        path=request.get_full_path(),
        authorization=request.headers.get("Authorization"),
        body=body,
        remote=request.META.get("REMOTE_ADDR"),
    ).http_response()


@signed_endpoint(services.resolve_node)
def rotate_key(request: HttpRequest, node: KnownNode) -> dict:
    sign_key, proof = services.parse_rotation(request.signed_body)
    rotated = services.rotate_node_key(node=node.obj, sign_key=sign_key, proof=proof)
    return {"node": rotated.name, "node_fingerprint": protocol.fingerprint(sign_key)}


def answer_directory(
    *,
    path: str,
    authorization: str | None,
    if_none_match: str | None,
    body: bytes,
    remote: str | None,
) -> Answer:
    """GET /api/v1/directory: verify, claim the nonce, then the signed directory, or a 304
    signed over the request's nonce (so nothing on the path can fake "unchanged")."""
    started = time.perf_counter()
    payload, status = run_signed(
        method="GET",
        path=path,
        authorization=authorization,
        body=body,
        remote=remote,
        resolve=services.resolve_node,
        view=lambda node: {},
    )
    if status != 200:
        return Answer.json(payload, status)
    snap = directory.snapshot()
    if if_none_match == snap.etag:
        nonce = protocol.parse_auth_header(authorization).nonce  # verified just above
        signature = protocol.sign_directory_unchanged(
            services.server_signing_key(),
            nonce=nonce,
            etag=snap.etag,
            generated_ms=snap.generated_ms,
        )
        answer = Answer(
            304,
            headers={
                "ETag": snap.etag,
                "X-P2P-Signature": protocol.b64e(signature),
                "X-P2P-Generated-Ms": str(snap.generated_ms),
            },
        )
    else:
        answer = Answer(
            200,
            snap.body,
            {
                "Content-Type": "application/json",
                "ETag": snap.etag,
                "X-P2P-Signature": snap.signature,
            },
        )
    # The view's own time, apart from the HTTP server and middleware (for benchmarks).
    answer.headers["Server-Timing"] = f"view;dur={(time.perf_counter() - started) * 1000:.3f}"
    return answer


@csrf_exempt
def directory_view(request: HttpRequest) -> HttpResponse:
    if request.method != "GET":
        return error_response(protocol.ProtocolError("method_not_allowed", "use GET", 405))
    try:
        body = read_body(request)
    except protocol.ProtocolError as error:
        return _refused(request, error)
    return answer_directory(
        path=request.get_full_path(),
        authorization=request.headers.get("Authorization"),
        if_none_match=request.headers.get("If-None-Match"),
        body=body,
        remote=request.META.get("REMOTE_ADDR"),
    ).http_response()
