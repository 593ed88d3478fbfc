"""Browser pages of messaging: the conversation page, its JSON poll, marking messages
read, the Retry button."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import User

from . import queries, sending
from .errors import MessagingError


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
    error, draft, status = None, "", 200
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
    except ValueError:
        before, status = None, 400
        error = "That page of the conversation does not exist."
    # Showing the page marks nothing read: its script does, through mark_read, once the
    # messages are actually on screen. Without JavaScript nothing is marked read.
    page = queries.conversation_page(owner=request.user, peer_username=username, before_id=before)
    context = {
        "peer": peer,
        "page": page,
        "error": error,
        "draft": draft,
        "max_chars": settings.MESSAGE_MAX_CHARS,
        "key_change_pending": _key_change_pending(request.user, username),
        "last_id": max((m.id for m in page.messages), default=0),
        "is_latest": before is None,
    }
    return render(request, "messaging/conversation.html", context, status=status)


@never_cache
@login_required
@require_GET
def messages_json(request: HttpRequest, username: str) -> JsonResponse:
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
    new = queries.messages_after(owner=request.user, peer_username=peer.username, after_id=after)
    statuses = queries.recent_statuses(owner=request.user, peer_username=peer.username)
    return JsonResponse(
        {
            "messages": [queries.message_json(m) for m in new],
            "statuses": {str(k): v for k, v in statuses.items()},
        },
        json_dumps_params={"ensure_ascii": False},
    )


def _json_error(code: str, message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


@never_cache
def mark_read(request: HttpRequest, username: str) -> JsonResponse:
    """POST up_to=<message id>: the page's script reports the newest received message it
    has shown; the conversation's messages up to it become read (idempotent). CSRF
    protected like every POST; answers JSON."""
    if request.method != "POST":
        response = _json_error("method_not_allowed", "use POST", 405)
        response["Allow"] = "POST"
        return response
    if not (request.user.is_authenticated and request.user.is_verified()):
        return _json_error("login_required", "Log in to continue.", 401)
    try:
        peer = _peer_or_404(request.user, username)
    except Http404:
        return _json_error("unknown_user", "There is nobody with this name.", 404)
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
