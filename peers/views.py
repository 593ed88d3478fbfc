"""Browser pages: the network's users and a person's profile (from the directory cache and,
for another office's people, the cache of their signed profiles)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from html import escape
from urllib.parse import quote

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.models import User
from accounts.queries import local_people
from accounts.views import picture_view
from p2psocial.serving import user_file_response

from . import directory, protocol, queries, services
from .identity import is_joined, local_node
from .presence import local_presence


def _chat_prefix() -> str:
    """The conversation URL prefix, to which a row appends "<username>/"."""
    return reverse("messaging:conversation", args=["x"])[: -len("x/")]


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return redirect("messaging:home")


# One table row per person. The users page lists the whole network (a thousand people
# or more): through the template engine a row costs tens of microseconds, built here
# from escaped strings a few. The rest of the page stays in templates/peers/users.html.
_USER_ROW = (
    '<tr class="user-row user-row--{status}" data-username="{username}" data-status="{status}">'
    '<td><a href="/people/{username_q}/">{name}</a>{handle}</td>'
    '<td class="status status--{status}">{status}</td>'
    "<td>{node}</td><td>{position}</td><td>{last_seen}</td><td>{chat}</td></tr>\n"
)
_HANDLE = ' <span class="muted">@{}</span>'
_LAST_SEEN = '<time datetime="{}">{} ago</time>'
_CHAT = '<a class="button button--secondary" href="{}{}/">Chat</a>'


def _ago(seen: datetime, now: datetime, memo: dict[int, str]) -> str:
    """timesince(seen, now), computed once per distinct minute of age on a page."""
    age = now - seen
    if age >= timedelta(days=28):  # months count from here: depends on the dates too
        return timesince(seen, now)
    # Under four weeks timesince depends only on the whole minutes between the two.
    minutes = int(age.total_seconds() // 60)
    if minutes not in memo:
        memo[minutes] = timesince(seen, now)
    return memo[minutes]


def _user_rows(
    people: list[queries.ListedUser], *, stale: bool, viewer: str, chat_prefix: str
) -> SafeString:
    """The table rows; every value from the directory is escaped (html.escape, as |escape)."""
    now = timezone.now()
    chat_prefix = escape(chat_prefix)
    ages: dict[int, str] = {}
    rows = []
    for person in people:
        status = "unknown" if stale else escape(person.status)
        username = escape(person.username)
        username_q = escape(quote(person.username, safe=""))
        if status == "online":
            last_seen = "now"
        elif person.last_seen:
            seen = timezone.localtime(person.last_seen)
            last_seen = _LAST_SEEN.format(seen.isoformat(), escape(_ago(seen, now, ages)))
        else:
            last_seen = "—"
        rows.append(
            _USER_ROW.format(
                status=status,
                username=username,
                username_q=username_q,
                name=escape(person.full_name) if person.full_name else username,
                handle=_HANDLE.format(username) if person.full_name else "",
                node=escape(person.node_name),
                position=escape(person.position),
                last_seen=last_seen,
                chat="" if person.username == viewer else _CHAT.format(chat_prefix, username_q),
            )
        )
    return mark_safe("".join(rows))  # noqa: S308 - built above from escaped values only


@login_required
@require_GET
def users(request: HttpRequest) -> HttpResponse:
    """The network's people; ?rows=1 answers the same rows as JSON ({"html": ...}) for the
    page's script, which redraws the table when presence changes (one renderer)."""
    freshness = queries.directory_freshness()
    rows = _user_rows(
        queries.listed_users(),
        stale=freshness.stale,
        viewer=request.user.get_username(),
        chat_prefix=_chat_prefix(),
    )
    if request.GET.get("rows") == "1":
        response = JsonResponse({"html": str(rows), "stale": freshness.stale})
        add_never_cache_headers(response)
        return response
    return render(
        request,
        "peers/users.html",
        {"rows": rows, "freshness": freshness, "joined": is_joined()},
    )


def _person_or_404(username: str):
    try:
        return directory.lookup(username)
    except directory.UnknownUser:
        raise Http404("no such person") from None


@dataclass(frozen=True)
class _Office:
    name: str


@dataclass(frozen=True)
class _PersonHere:
    """A person of this node as their profile shows them, from this node's own records."""

    username: str
    full_name: str
    position: str
    status: str
    last_seen: datetime | None
    node: _Office
    sign_key: bytes
    box_key: bytes


def _person_here(user: User, office: str) -> _PersonHere:
    presence = local_presence([user])[user.pk]
    profile = getattr(user, "profile", None)
    return _PersonHere(
        username=user.username,
        full_name=profile.full_name if profile else "",
        position=profile.position if profile else "",
        status=presence.status,
        last_seen=(
            datetime.fromtimestamp(presence.last_seen, tz=dt_timezone.utc)
            if presence.last_seen is not None
            else None
        ),
        node=_Office(office),
        sign_key=bytes(user.keys.sign_public),
        box_key=bytes(user.keys.box_public),
    )


@dataclass(frozen=True)
class _ShownProfile:
    """What a profile shows beyond the directory: from this node's own records for its
    people, from the verified cache of their node's signed profile for another office's."""

    full_name: str
    position: str
    description: str
    location: str
    updated_at: datetime | None
    has_picture: bool


def _shown_profile(local: User | None, remote: services.CachedProfile | None) -> _ShownProfile:
    if remote is not None:
        signed = remote.profile
        return _ShownProfile(
            full_name=signed.full_name,
            position=signed.position,
            description=signed.description,
            location=signed.location,
            updated_at=remote.updated_at,
            has_picture=remote.has_picture,
        )
    own = getattr(local, "profile", None)
    if own is None:
        return _ShownProfile("", "", "", "", None, False)
    return _ShownProfile(
        full_name=own.full_name,
        position=own.position,
        description=own.description,
        location=own.location,
        updated_at=own.updated_at,
        has_picture=bool(own.picture),
    )


@login_required
@require_GET
def profile(request: HttpRequest, username: str) -> HttpResponse:
    """A person's profile. For a person of another office, the profile their node signed,
    from this node's cache: refreshed in the background when old, shown with its age."""
    person = _person_or_404(username)
    here = local_node().name if is_joined() else None
    local = None
    if here is not None:
        local = local_people([username]).select_related("profile", "keys").first()
    key_change_pending = directory.key_change_pending(request.user, username)
    remote = None
    if local is not None and person.node.name != here:
        # The directory lists this node's person at another office (a raced or forged
        # record). As for messages, which go to this node's person and which no other node
        # may send in this name, this node's own person wins: never another's fingerprint.
        person, key_change_pending = _person_here(local, here), False
    elif person.node.name != here:
        local = None
        if here is not None:
            remote = services.profile_for_viewing(person=person)
    return render(
        request,
        "peers/profile.html",
        {
            "person": person,
            "shown": _shown_profile(local, remote),
            "remote": remote,
            "profile_unavailable": remote is None and here is not None and person.node.name != here,
            "fingerprint": protocol.fingerprint(bytes(person.sign_key), bytes(person.box_key)),
            "key_change_pending": key_change_pending,
            "freshness": queries.directory_freshness(),
            "chat_url": reverse("messaging:conversation", args=[username]),
            "is_self": username == request.user.get_username(),
        },
    )


@require_http_methods(["GET", "HEAD"])
def picture(request: HttpRequest, username: str) -> HttpResponse:
    """A person's picture at one URL for everyone: another office's from the verified
    cache, this node's people's (and any other name) as accounts serves them."""
    cached = services.cached_picture(username=username)
    if cached is None:
        return picture_view(request, username)
    data, mime = cached
    # The same safe serving as attachments and local pictures.
    return user_file_response(
        request, size=len(data), content_type=mime, read=lambda start, end: [data[start:end]]
    )


@login_required
@require_POST
def acknowledge_keys(request: HttpRequest, username: str) -> HttpResponse:
    person = _person_or_404(username)
    services.acknowledge_key_change(viewer=request.user, user=person)
    return redirect("peers:profile", username=username)
