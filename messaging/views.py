"""Browser pages of messaging: the conversations home, unread counts, the conversation
page, its JSON poll, marking messages read, the Retry button, search."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import wraps

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import redirect, render
from django.template.loader import get_template, render_to_string
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import User
from p2psocial.serving import user_file_response
from peers import protocol

from . import blobs, errors, files, queries, search, sending
from .content import allowed_type
from .errors import MessagingError
from .models import Attachment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    username: str
    full_name: str
    node: str


def _peer_or_404(viewer: User, username: str) -> Peer:
    """The other person of a conversation: a local account or a directory entry."""
    from peers import directory

    if username == viewer.get_username():
        raise Http404("You cannot chat with yourself.")
    local = User.objects.filter(username=username, is_active=True).select_related("profile")
    person = local.first()
    if person is not None:
        profile = getattr(person, "profile", None)
        return Peer(username, profile.full_name if profile else "", settings.NODE_NAME)
    try:
        entry = directory.lookup(username)
    except directory.UnknownUser:
        raise Http404("There is nobody with this name.") from None
    return Peer(username, entry.full_name, entry.node.name)


def _key_change_pending(viewer: User, username: str) -> bool:
    from peers import directory

    return bool(directory.key_change_pending(viewer, username))


def _int_param(params: QueryDict, name: str) -> int | None:
    value = params.get(name, "")
    if not value:
        return None
    if not value.isdigit() or len(value) > 18:
        raise ValueError(name)
    return int(value)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def conversation(request: HttpRequest, username: str) -> HttpResponse:
    peer = _peer_or_404(request.user, username)
    error, page_error, draft, status = None, None, "", 200
    if request.method == "POST":
        draft = request.POST.get("text", "")
        try:
            sending.send_message(sender=request.user, recipient_username=username, text=draft)
        except MessagingError as exc:
            error, status = exc.message, exc.status
        else:
            return redirect("messaging:conversation", username=username)
    try:
        before = _int_param(request.GET, "before")
        at = _int_param(request.GET, "at")
    except ValueError:
        before, at, status = None, None, 400
        page_error = "That page of the conversation does not exist."
    # Showing the page marks nothing read: its script does, through mark_read, once the
    # messages are actually on screen. Without JavaScript nothing is marked read.
    page = None
    if at is not None:  # a search result: the message with the ones around it
        page = queries.conversation_around(
            owner=request.user, peer_username=username, message_id=at
        )
        if page is None:
            at, status = None, 404
            page_error = "That message is not in this conversation."
    if page is None:
        page = queries.conversation_page(
            owner=request.user, peer_username=username, before_id=before
        )
    context = {
        "peer": peer,
        "page": page,
        "bubbles": [queries.message_bubble(m) for m in page.messages],
        "error": error,  # what went wrong with the message typed: shown at the compose box
        "page_error": page_error,  # what went wrong with the address: shown at the top
        "draft": draft,
        "max_chars": settings.MESSAGE_MAX_CHARS,
        "file_max_bytes": settings.FILE_MAX_BYTES,
        "key_change_pending": _key_change_pending(request.user, username),
        "last_id": max((m.id for m in page.messages), default=0),
        "is_latest": before is None and at is None,
        "found_id": at,
    }
    return render(request, "messaging/conversation.html", context, status=status)


@never_cache
@login_required
@require_GET
def messages_json(request: HttpRequest, username: str) -> JsonResponse:
    """The page's poll: messages after ?after=<id>, each with its bubble's HTML (the same
    template as the page's); the status of one's latest sent messages and the state of
    the latest files, so the page can tell which bubbles changed; and for ?render=<ids>
    (comma separated) those bubbles drawn again."""
    try:
        peer = _peer_or_404(request.user, username)
    except Http404:
        return JsonResponse(
            {"error": {"code": "unknown_user", "message": "There is nobody with this name."}},
            status=404,
        )
    try:
        after = _int_param(request.GET, "after") or 0
    except ValueError:
        return JsonResponse(
            {"error": {"code": "invalid_field", "message": "after must be a message id"}},
            status=400,
        )
    wanted = [i for i in request.GET.get("render", "").split(",") if i]
    if len(wanted) > queries.RENDER_MAX_IDS or not all(
        i.isdigit() and len(i) <= 18 for i in wanted
    ):
        return JsonResponse(
            {
                "error": {
                    "code": "invalid_field",
                    "message": f"render must be up to {queries.RENDER_MAX_IDS} message ids, "
                    "comma separated",
                }
            },
            status=400,
        )

    def bubble_html(message) -> str:
        return render_to_string(
            "messaging/_message.html", queries.message_bubble(message), request=request
        )

    new = queries.messages_after(owner=request.user, peer_username=peer.username, after_id=after)
    statuses = queries.recent_statuses(owner=request.user, peer_username=peer.username)
    file_states = queries.recent_file_states(owner=request.user, peer_username=peer.username)
    redrawn = queries.messages_by_id(
        owner=request.user, peer_username=peer.username, ids=[int(i) for i in wanted]
    )
    return JsonResponse(
        {
            "messages": [{**queries.message_json(m), "html": bubble_html(m)} for m in new],
            "statuses": {str(k): v for k, v in statuses.items()},
            "files": {str(k): v for k, v in file_states.items()},
            "rendered": {str(m.id): bubble_html(m) for m in redrawn},
        },
        json_dumps_params={"ensure_ascii": False},
    )


def _json_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _json_peer(request: HttpRequest, username: str) -> tuple[Peer | None, JsonResponse | None]:
    """For the pages' JSON endpoints: (the conversation's other person, None), or (None,
    the refusal) for a session without the second factor or an unknown person."""
    if not (request.user.is_authenticated and request.user.is_verified()):
        return None, _json_error("login_required", "Log in to continue.", 401)
    try:
        return _peer_or_404(request.user, username), None
    except Http404:
        return None, _json_error("unknown_user", "There is nobody with this name.", 404)


@never_cache
def mark_read(request: HttpRequest, username: str) -> JsonResponse:
    """POST up_to=<message id>: the page's script reports the newest received message it
    has shown; the conversation's messages up to it become read (idempotent). CSRF
    protected like every POST; answers JSON."""
    if request.method != "POST":
        response = _json_error("method_not_allowed", "use POST", 405)
        response["Allow"] = "POST"
        return response
    peer, refused = _json_peer(request, username)
    if refused is not None:
        return refused
    try:
        up_to = _int_param(request.POST, "up_to")
    except ValueError:
        up_to = None
    if up_to is None:
        return _json_error("invalid_field", "up_to must be a message id", 400)
    if (
        queries.conversation_position(
            owner=request.user, peer_username=peer.username, message_id=up_to
        )
        is None
    ):
        return _json_error("unknown_message", "No such message in this conversation.", 404)
    count = sending.mark_conversation_read(
        viewer=request.user, peer_username=peer.username, up_to_id=up_to
    )
    # Which messages are still unread, not "everything above up_to on the page": the page
    # shows arrivals in arrival order, the server reads by conversation order.
    still_unread = queries.unread_message_ids(owner=request.user, peer_username=peer.username)
    return JsonResponse({"read": count, "unread_ids": still_unread})


@never_cache
@require_GET
def unread(request: HttpRequest) -> JsonResponse:
    """The person's unread received messages: {"total": n, "by_peer": {username: n}}."""
    if not (request.user.is_authenticated and request.user.is_verified()):
        return _json_error("login_required", "Log in to continue.", 401)
    counts = queries.unread_counts(owner=request.user)
    return JsonResponse(
        {"total": sum(counts.values()), "by_peer": counts},
        json_dumps_params={"ensure_ascii": False},
    )


@never_cache
@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The person's conversations, the most recent first. ?rows=1 answers the list's rows
    as JSON ({"html", "total_unread"}), drawn by the same template, for the page's script
    to redraw the list when an event arrives."""
    limit = queries.CONVERSATIONS_MAX
    conversations = queries.conversation_list(owner=request.user, limit=limit)
    row_template = get_template("messaging/_conversation_row.html")
    # The rows need nothing of the request (no form, no context processors): one template,
    # the same string for the page and for its script.
    rows_html = "".join(row_template.render({"row": row}) for row in conversations.rows)
    if request.GET.get("rows") == "1":
        return JsonResponse(
            {"html": rows_html, "total_unread": conversations.total_unread},
            json_dumps_params={"ensure_ascii": False},
        )
    context = {
        "rows_html": mark_safe(rows_html),  # noqa: S308 - the template's escaped output
        "conversations": conversations,
        "conversations_max": limit,
    }
    return render(request, "messaging/home.html", context)


@login_required
@require_POST
def retry(request: HttpRequest, username: str, message_id: int) -> HttpResponse:
    try:
        sending.retry_message(owner=request.user, message_id=message_id)
    except MessagingError as exc:
        flash.error(request, exc.message)
    else:
        flash.success(request, "The message is queued again.")
    return redirect("messaging:conversation", username=username)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


# The upload's own CSRF check (the middleware's, run by hand once the body is parsed).
_csrf_check = CsrfViewMiddleware(lambda request: HttpResponse())


@csrf_exempt  # checked in _upload: the middleware would read the body before the handler
@never_cache
def upload(request: HttpRequest, username: str) -> HttpResponse:
    """POST one file (field "file") with an optional caption ("text"): the file is
    encrypted as it arrives, its type told from its bytes, and sent as a message. Answers
    JSON to the page's script ({"message": ...} or {"error": ...}), a redirect to a plain
    form (the error shown on the conversation page). Whatever goes wrong, nothing of the
    file is left behind."""
    handler = files.EncryptingUploadHandler(request)
    request.upload_handlers = [handler]
    try:
        return _upload(request, username, handler)
    except MessagingError as exc:
        handler.discard()
        if _wants_json(request):
            return _json_error(exc.code, exc.message, exc.status)
        flash.error(request, exc.message)
        return redirect("messaging:conversation", username=username)
    except BaseException:
        handler.discard()
        raise


def _upload(
    request: HttpRequest, username: str, handler: files.EncryptingUploadHandler
) -> HttpResponse:
    if request.method != "POST":
        return _json_error("method_not_allowed", "use POST", 405)
    peer, refused = _json_peer(request, username)
    if refused is not None:
        return refused
    try:
        caption = request.POST.get("text", "")  # the body, through the handler
    except (RequestDataTooBig, TooManyFieldsSent, MultiPartParserError):
        raise errors.FileRefused("The upload could not be read; please try again.") from None
    refused = _csrf_check.process_view(request, None, (), {})
    if refused is not None:  # a cross-site form: nothing it sent is kept
        handler.discard()
        return refused
    if not handler.uploads:
        raise errors.FileRefused("Choose a file to send.")
    upload = files.finish_upload(handler.uploads.pop())
    message = sending.send_message(
        sender=request.user, recipient_username=peer.username, text=caption, upload=upload
    )
    if _wants_json(request):
        return JsonResponse(
            {"message": queries.message_json(message)},
            status=201,
            json_dumps_params={"ensure_ascii": False},
        )
    return redirect("messaging:conversation", username=username)


@never_cache
@login_required
@require_http_methods(["GET", "HEAD"])
def file_view(request: HttpRequest, file_id: str) -> HttpResponse:
    """A file of one of the person's own messages, decrypted as it is sent; anybody
    else's, or one this node does not hold (yet), is a 404."""
    attachment = queries.file_of(owner=request.user, file_id=file_id)
    if attachment is None or attachment.state != Attachment.State.STORED:
        raise Http404("No such file")
    file_type = allowed_type(attachment.mime)
    inline = bool(file_type and file_type.inline)
    return user_file_response(
        request,
        size=attachment.size,
        content_type=attachment.mime if file_type else "application/octet-stream",
        read=lambda start, end: _checked(files.plaintext(attachment, start=start, end=end)),
        name=attachment.name,
        inline=inline,
        cache_s=3600,
    )


def _checked(chunks):
    """The chunks, cut short (the browser sees an incomplete body) if the file turns out
    to be damaged on disk: never a page of bytes that are not the file's."""
    try:
        yield from chunks
    except blobs.BlobCorrupt:
        logger.error("stored file damaged")
        return


@never_cache
@login_required
@require_http_methods(["GET", "HEAD"])
def file_preview(request: HttpRequest, file_id: str) -> HttpResponse:
    attachment = queries.file_of(owner=request.user, file_id=file_id)
    if attachment is None or not attachment.preview:
        raise Http404("No preview")
    preview = bytes(attachment.preview)
    return user_file_response(
        request,
        size=len(preview),
        content_type="image/jpeg",
        read=lambda start, end: iter([preview[start:end]]),
        cache_s=3600,
    )


def _no_referrer(view):
    """The page's address holds what was searched for: a link followed from it (a result,
    a file) does not pass it on, even within the site."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "no-referrer"
        return response

    return wrapped


@never_cache
@_no_referrer
@login_required
@require_GET
def search_view(request: HttpRequest) -> HttpResponse:
    """Search one's own messages: ?q= what to find, ?with= one conversation only, ?before=
    the next page's cursor. ?rows=1 answers the results as JSON ({"html", "more_url",
    "count"}), drawn by the same template, for the page's script to search as one types.
    The terms are never logged (messaging.search)."""
    text = request.GET.get("q", "")[: search.MAX_QUERY_CHARS * 4]
    with_username = request.GET.get("with", "") or None
    wants_rows = request.GET.get("rows") == "1"
    try:
        before = _int_param(request.GET, "before")
        if with_username is not None:
            protocol.validate_username(with_username)
    except (ValueError, protocol.ProtocolError):
        if wants_rows:
            return _json_error("invalid_field", "That search does not exist.", 400)
        context = {"error": "That search does not exist.", "q": "", "is_first_page": True}
        return render(request, "messaging/search.html", context, status=400)
    page = search.search_messages(
        owner=request.user, text=text, peer_username=with_username, before_id=before
    )
    who = queries.conversations_named(
        request.user, sorted({hit.message.peer_username for hit in page.hits})
    )
    hit_template = get_template("messaging/_search_hit.html")
    hits_html = "".join(
        hit_template.render(
            {
                "hit": hit,
                "person": who[hit.message.peer_username][0],
                "url": who[hit.message.peer_username][1],
            }
        )
        for hit in page.hits
    )
    more_url = ""
    if page.older_cursor is not None:
        params = {"q": text, "before": page.older_cursor}
        if with_username:
            params["with"] = with_username
        more_url = "?" + urlencode(params)
    if wants_rows:
        return JsonResponse(
            {"html": hits_html, "more_url": more_url, "count": len(page.hits)},
            json_dumps_params={"ensure_ascii": False},
        )
    context = {
        "q": text[: search.MAX_QUERY_CHARS],
        "searched": bool(page.query),
        "hits_html": mark_safe(hits_html),  # noqa: S308 - the template's escaped output
        "count": len(page.hits),
        "more_url": more_url,
        "is_first_page": before is None,
        "with_username": with_username,
        "with_person": queries.people([with_username])[with_username] if with_username else None,
    }
    return render(request, "messaging/search.html", context)
