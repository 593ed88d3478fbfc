"""Reads about peers and the login server: the users list, profiles, staleness, health."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Case, Count, IntegerField, Value, When
from django.utils import timezone

from accounts.queries import local_people

from .models import DirectorySync, DirectoryUser, NodeIdentity

_STATUS_ORDER = Case(
    When(status="online", then=Value(0)),
    When(status="away", then=Value(1)),
    When(status="offline", then=Value(2)),
    default=Value(3),
    output_field=IntegerField(),
)


@dataclass(frozen=True)
class Freshness:
    """When the directory was last fetched, and whether presence should be trusted."""

    last_success_at: datetime | None
    stale: bool


def directory_freshness(now: datetime | None = None) -> Freshness:
    """Stale when the last successful fetch is older than three fetch intervals."""
    now = now or timezone.now()
    last = DirectorySync.objects.filter(pk=1).values_list("last_success_at", flat=True).first()
    stale = last is None or (now - last).total_seconds() > 3 * settings.DIRECTORY_FETCH_INTERVAL_S
    return Freshness(last_success_at=last, stale=stale)


@dataclass(frozen=True)
class ListedUser:
    username: str
    full_name: str
    position: str
    status: str
    last_seen: datetime | None
    node_name: str


def listed_users() -> list[ListedUser]:
    """Everyone in the network: online first, then away, then offline; one query.

    Plain rows, not model instances: the users page lists every person of the network.
    """
    rows = (
        DirectoryUser.objects.filter(listed=True, node__active=True)
        .annotate(status_order=_STATUS_ORDER)
        .order_by("status_order", "full_name", "username")
        .values_list("username", "full_name", "position", "status", "last_seen", "node__name")
    )
    return [ListedUser(*row) for row in rows]


def login_server_health() -> dict:
    """For /health: login server reachability (last attempt) and the directory's age."""
    identity = NodeIdentity.objects.filter(pk=1).values("login_server_url").first()
    if identity is None:
        return {
            "login_server": "not_joined",
            "directory_age_s": None,
            "directory_people": {},
            "local_people": local_people().count(),
            "refused_usernames": [],
        }
    sync = (
        DirectorySync.objects.filter(pk=1)
        .values("last_success_at", "last_error", "refused_usernames")
        .first()
    )
    last = sync["last_success_at"] if sync else None
    return {
        "login_server": "ok" if sync and last and not sync["last_error"] else "unreachable",
        "directory_age_s": (
            round((timezone.now() - last).total_seconds(), 1) if last is not None else None
        ),
        "directory_people": directory_people_by_node(),
        # people of this node the network can list: active, with keys
        "local_people": local_people().count(),
        # people of this node whose names another node holds: not in the directory
        "refused_usernames": sorted(
            entry.get("username", "") for entry in (sync or {}).get("refused_usernames") or []
        ),
    }


def directory_people_by_node() -> dict[str, int]:
    """How many people of each active node the cached directory lists (this node too)."""
    rows = (
        DirectoryUser.objects.filter(listed=True, node__active=True)
        .values_list("node__name")
        .annotate(people=Count("id"))
        .order_by("node__name")
    )
    return dict(rows)


def username_held_elsewhere(username: str) -> str | None:
    """The other node that holds this name in the cached directory, or None.

    A name belongs to the node that first reported it: the login server would refuse it
    in this node's reports, so nobody could reach the person made with it.
    """
    local = NodeIdentity.objects.filter(pk=1).values_list("name", flat=True).first()
    return (
        DirectoryUser.objects.filter(username=username)
        .exclude(node__name=local or "")
        .values_list("node__name", flat=True)
        .first()
    )
