"""Browser pages of group conversations: create a group, its conversation (the same
bubbles and script as a one-to-one conversation), its members and their changes, who has
a message and who has not, Retry for one member."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth.decorators import login_required
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import User
from peers.groups import MAX_GROUP_MEMBERS, MAX_GROUP_NAME_CHARS

from . import errors, files, group_messages, groups, queries
from .errors import MessagingError
from .models import Group, GroupDelivery, GroupMember, Message
from .outbox import local_node_name
from .views import _csrf_check, _int_param, _json_error, _wants_json

TYPED_NAMES_SHOWN_CHARS = 4000  # the names field's maxlength: what a refused form shows again


def _group_or_404(user: User, group_id) -> Group:
    group = groups.group_for(user, group_id)
    if group is None:
        raise Http404("There is no such group.")
    return group


def _usernames(request: HttpRequest) -> list[str]:
    """The people picked on a form: ticked boxes and names typed (comma or line separated),
    each once. Never cut short silently: one more than a group holds is kept, so that the
    service refuses too many with its own words instead of making a smaller group."""
    names = request.POST.getlist("member")
    typed = request.POST.get("names", "")
    names += [n.strip().lstrip("@") for n in typed.replace("\n", ",").split(",")]
    return list(dict.fromkeys(n for n in names if n))[: MAX_GROUP_MEMBERS + 1]


def bubbles(viewer: User, group: Group, messages: list[Message]) -> list[dict]:
    """What templates/messaging/_message.html draws of group messages: as one-to-one
    bubbles, with the sender's name and, for one's own, how far each got."""
    summary = group_messages.delivery_summary(m.id for m in messages if m.direction == "out")
    # One query: the page's messages come without sender_username (deferred), and reading
    # it from each would cost a query per bubble.
    senders = dict(
        Message.objects.filter(id__in=[m.id for m in messages if m.direction == "in"]).values_list(
            "id", "sender_username"
        )
    )
    names = queries.people(sorted(set(senders.values())))
    return [
        {
            **queries.message_bubble(m),
            "group": group,
            "sender": names[senders[m.id]] if m.id in senders else None,
            "summary": summary.get(m.id),
        }
        for m in messages
    ]


def _status_marker(summary: dict | None, status: str) -> str:
    """What the page's script compares to tell that a bubble's status part changed."""
    if not summary:
        return status
    return f"{status}:{summary['delivered']}:{summary['read']}:{summary['failed']}"


def _members(group: Group) -> list[dict]:
    rows = list(GroupMember.objects.filter(group=group, left_seq__isnull=True).order_by("username"))
    who = queries.people([m.username for m in rows])
    return [{"row": m, "person": who[m.username]} for m in rows]


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def new_group(request: HttpRequest) -> HttpResponse:
    error, status = None, 200
    name, typed = "", ""
    chosen: list[str] = []
    if request.method == "POST":
        name = request.POST.get("name", "")[:400]
        typed = request.POST.get("names", "")[:TYPED_NAMES_SHOWN_CHARS]
        chosen = _usernames(request)
        try:
            group = groups.create_group(creator=request.user, name=name, usernames=chosen)
        except MessagingError as exc:
            error, status = exc.message, exc.status
        else:
            return redirect("messaging:group", group_id=group.group_id)
    local = User.objects.filter(is_active=True, keys__isnull=False).exclude(pk=request.user.pk)
    candidates = sorted(
        {u for u in local.values_list("username", flat=True)} | _directory_usernames()
    )
    who = queries.people(candidates[:500])
    context = {
        "error": error,
        "name": name,
        "typed": typed,
        "chosen": set(chosen),
        "candidates": [(u, who[u]) for u in candidates[:500] if u != request.user.username],
        "max_name": MAX_GROUP_NAME_CHARS,
        "max_typed": TYPED_NAMES_SHOWN_CHARS,
    }
    return render(request, "messaging/group_new.html", context, status=status)


def _directory_usernames() -> set[str]:
    from peers.models import DirectoryUser

    return set(
        DirectoryUser.objects.filter(listed=True, node__active=True).values_list(
            "username", flat=True
        )[:1000]
    )


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def group_page(request: HttpRequest, group_id) -> HttpResponse:
    group = _group_or_404(request.user, group_id)
    member = groups.is_member(group, request.user.username)
    error, draft, status = None, "", 200
    if request.method == "POST":
        draft = request.POST.get("text", "")
        try:
            group_messages.send_group_message(sender=request.user, group=group, text=draft)
        except MessagingError as exc:
            error, status = exc.message, exc.status
        else:
            return redirect("messaging:group", group_id=group.group_id)
    try:
        before = _int_param(request.GET, "before")
        at = _int_param(request.GET, "at")
    except ValueError:
        raise Http404("That page of the conversation does not exist.") from None
    page = None
    if at is not None:  # a search result: the message with the ones around it
        page = queries.conversation_around(
            owner=request.user, peer_username=group.conversation_key, message_id=at
        )
        if page is None:
            raise Http404("That message is not in this group.")
    if page is None:
        page = queries.conversation_page(
            owner=request.user, peer_username=group.conversation_key, before_id=before
        )
    # A former member keeps what they received, not a view of the group since.
    members = _members(group) if member else []
    me = next((m["row"] for m in members if m["row"].username == request.user.username), None)
    context = {
        "group": group,
        "page": page,
        "bubbles": bubbles(request.user, group, page.messages),
        "members": members,
        "is_member": member,
        "is_admin": bool(me and me.admin),
        "is_home": group.home_node == local_node_name(),
        "error": error,
        "draft": draft,
        "max_chars": settings.MESSAGE_MAX_CHARS,
        "file_max_bytes": settings.FILE_MAX_BYTES,
        "last_id": max((m.id for m in page.messages), default=0),
        "is_latest": before is None and at is None,
        "found_id": at,
    }
    return render(request, "messaging/group.html", context, status=status)


@never_cache
@require_GET
def group_messages_json(request: HttpRequest, group_id) -> JsonResponse:
    """The group page's poll, as messaging.views.messages_json for a conversation."""
    if not (request.user.is_authenticated and request.user.is_verified()):
        return _json_error("login_required", "Log in to continue.", 401)
    group = groups.group_for(request.user, group_id)
    if group is None:
        return _json_error("unknown_group", "There is no such group.", 404)
    try:
        after = _int_param(request.GET, "after") or 0
    except ValueError:
        return _json_error("invalid_field", "after must be a message id", 400)
    wanted = [i for i in request.GET.get("render", "").split(",") if i]
    if len(wanted) > queries.RENDER_MAX_IDS or not all(
        i.isdigit() and len(i) <= 18 for i in wanted
    ):
        return _json_error("invalid_field", "render must be message ids, comma separated", 400)
    key = group.conversation_key
    new = queries.messages_after(owner=request.user, peer_username=key, after_id=after)
    redrawn = queries.messages_by_id(
        owner=request.user, peer_username=key, ids=[int(i) for i in wanted]
    )
    statuses = queries.recent_statuses(owner=request.user, peer_username=key)
    summary = group_messages.delivery_summary(statuses)

    def html(bubble: dict) -> str:
        return render_to_string("messaging/_message.html", bubble, request=request)

    return JsonResponse(
        {
            "messages": [
                {**queries.message_json(b["m"]), "html": html(b)}
                for b in bubbles(request.user, group, new)
            ],
            "statuses": {str(k): _status_marker(summary.get(k), v) for k, v in statuses.items()},
            "files": {
                str(k): v
                for k, v in queries.recent_file_states(
                    owner=request.user, peer_username=key
                ).items()
            },
            "rendered": {str(b["m"].id): html(b) for b in bubbles(request.user, group, redrawn)},
        },
        json_dumps_params={"ensure_ascii": False},
    )


@never_cache
def group_mark_read(request: HttpRequest, group_id) -> JsonResponse:
    """POST up_to=<message id>: the page showed the group's messages up to it."""
    if request.method != "POST":
        response = _json_error("method_not_allowed", "use POST", 405)
        response["Allow"] = "POST"
        return response
    if not (request.user.is_authenticated and request.user.is_verified()):
        return _json_error("login_required", "Log in to continue.", 401)
    group = groups.group_for(request.user, group_id)
    if group is None:
        return _json_error("unknown_group", "There is no such group.", 404)
    try:
        up_to = _int_param(request.POST, "up_to")
    except ValueError:
        up_to = None
    if up_to is None:
        return _json_error("invalid_field", "up_to must be a message id", 400)
    if (
        queries.conversation_position(
            owner=request.user, peer_username=group.conversation_key, message_id=up_to
        )
        is None
    ):
        return _json_error("unknown_message", "No such message in this group.", 404)
    count = group_messages.mark_group_read(viewer=request.user, group=group, up_to_id=up_to)
    still_unread = queries.unread_message_ids(
        owner=request.user, peer_username=group.conversation_key
    )
    return JsonResponse({"read": count, "unread_ids": still_unread})


CHANGES = {"rename", "add", "remove", "promote", "demote", "leave"}


@login_required
@require_POST
def group_change(request: HttpRequest, group_id) -> HttpResponse:
    group = _group_or_404(request.user, group_id)
    action = request.POST.get("action", "")
    if action not in CHANGES:
        flash.error(request, "That change does not exist.")
        return redirect("messaging:group", group_id=group.group_id)
    try:
        applied = groups.change_group(
            author=request.user,
            group=group,
            action=action,
            usernames=_usernames(request),
            name=request.POST.get("name", "")[:400],
        )
    except MessagingError as exc:
        flash.error(request, exc.message)
    else:
        if applied:
            flash.success(request, "Done.")
        else:
            flash.success(
                request,
                f"Sent to the group's home office ({group.home_node}); it takes effect "
                "once that office confirms it.",
            )
    return redirect("messaging:group", group_id=group.group_id)


@never_cache
@login_required
@require_GET
def group_message_detail(request: HttpRequest, group_id, message_id: int) -> HttpResponse:
    """Who has one's group message, who has read it, who has not (Retry for a failed one)."""
    group = _group_or_404(request.user, group_id)
    message = Message.objects.filter(
        id=message_id, owner=request.user, group=group, direction=Message.Direction.OUT
    ).first()
    if message is None:
        raise Http404("No such message of yours in this group.")
    rows = list(GroupDelivery.objects.filter(message=message).order_by("username"))
    who = queries.people([r.username for r in rows])
    context = {
        "group": group,
        "message": message,
        "rows": [{"row": r, "person": who[r.username]} for r in rows],
        "summary": group_messages.delivery_summary([message.id]).get(message.id),
    }
    return render(request, "messaging/group_message.html", context)


@login_required
@require_POST
def group_retry(request: HttpRequest, group_id, message_id: int) -> HttpResponse:
    group = _group_or_404(request.user, group_id)
    if not Message.objects.filter(
        id=message_id, owner=request.user, group=group, direction=Message.Direction.OUT
    ).exists():
        raise Http404("No such message of yours in this group.")
    try:
        group_messages.retry_member(
            owner=request.user, message_id=message_id, username=request.POST.get("username", "")
        )
    except MessagingError as exc:
        flash.error(request, exc.message)
    else:
        flash.success(request, "Sent again to that member's office.")
    return redirect("messaging:group_message", group_id=group.group_id, message_id=message_id)


@csrf_exempt  # checked in _group_upload: the middleware would read the body first
@never_cache
def group_upload(request: HttpRequest, group_id) -> HttpResponse:
    """POST one file (field "file") with an optional caption ("text") to the group, as
    messaging.views.upload does for a conversation: encrypted as it arrives, its type told
    from its bytes; JSON for the page's script, a redirect for a plain form. Whatever goes
    wrong, nothing of the file is left behind."""
    handler = files.EncryptingUploadHandler(request)
    request.upload_handlers = [handler]
    try:
        return _group_upload(request, group_id, handler)
    except MessagingError as exc:
        handler.discard()
        if _wants_json(request):
            return _json_error(exc.code, exc.message, exc.status)
        flash.error(request, exc.message)
        return redirect("messaging:group", group_id=group_id)
    except BaseException:
        handler.discard()
        raise


def _group_upload(
    request: HttpRequest, group_id, handler: files.EncryptingUploadHandler
) -> HttpResponse:
    if request.method != "POST":
        return _json_error("method_not_allowed", "use POST", 405)
    if not (request.user.is_authenticated and request.user.is_verified()):
        return _json_error("login_required", "Log in to continue.", 401)
    try:
        caption = request.POST.get("text", "")  # the body, through the handler
    except (RequestDataTooBig, TooManyFieldsSent, MultiPartParserError):
        raise errors.FileRefused("The upload could not be read; please try again.") from None
    # The token first: a cross-site form learns nothing, not even whether the group exists.
    refused = _csrf_check.process_view(request, None, (), {})
    if refused is not None:  # a cross-site form: nothing it sent is kept
        handler.discard()
        return refused
    group = groups.group_for(request.user, group_id)
    if group is None:
        handler.discard()
        return _json_error("unknown_group", "There is no such group.", 404)
    if not handler.uploads:
        raise errors.FileRefused("Choose a file to send.")
    upload = files.finish_upload(handler.uploads.pop())
    message = group_messages.send_group_message(
        sender=request.user, group=group, text=caption, upload=upload
    )
    if _wants_json(request):
        return JsonResponse(
            {"message": queries.message_json(message)},
            status=201,
            json_dumps_params={"ensure_ascii": False},
        )
    return redirect("messaging:group", group_id=group.group_id)
