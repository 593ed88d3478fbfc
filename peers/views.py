"""Browser pages: the network's users and a person's profile (from the directory cache)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User

from . import directory, protocol, queries, services
from .identity import is_joined, local_node


def _chat_prefix() -> str:
    """The conversation URL prefix; a plain path while messaging has no URL name yet."""
    try:
        return reverse("messaging:conversation", args=["x"])[: -len("x/")]
    except NoReverseMatch:
        return "/chat/"


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return redirect("peers:users")


@login_required
@require_GET
def users(request: HttpRequest) -> HttpResponse:
    freshness = queries.directory_freshness()
    return render(
        request,
        "peers/users.html",
        {
            "people": queries.listed_users(),
            "freshness": freshness,
            "chat_prefix": _chat_prefix(),
            "joined": is_joined(),
        },
    )


@login_required
@require_GET
def profile(request: HttpRequest, username: str) -> HttpResponse:
    try:
        person = directory.lookup(username)
    except directory.UnknownUser:
        raise Http404("no such person") from None
    local = None
    if is_joined() and person.node.name == local_node().name:
        local = User.objects.filter(username=username).select_related("profile").first()
    return render(
        request,
        "peers/profile.html",
        {
            "person": person,
            "local_profile": getattr(local, "profile", None),
            "fingerprint": protocol.fingerprint(bytes(person.sign_key), bytes(person.box_key)),
            "key_change_pending": directory.key_change_pending(request.user, username),
            "freshness": queries.directory_freshness(),
            "chat_url": _chat_prefix() + username + "/",
            "is_self": username == request.user.get_username(),
        },
    )


@login_required
@require_POST
def acknowledge_keys(request: HttpRequest, username: str) -> HttpResponse:
    try:
        person = directory.lookup(username)
    except directory.UnknownUser:
        raise Http404("no such person") from None
    services.acknowledge_key_change(viewer=request.user, user=person)
    return redirect("peers:profile", username=username)
