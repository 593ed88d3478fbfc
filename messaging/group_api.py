"""The group page's JSON: the group as this node knows it (state.json), for its script and
for anyone checking that offices agree (the same seq and head means the same group)."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import groups
from .models import GroupMember
from .views import _json_error


@never_cache
@require_GET
def group_state_json(request: HttpRequest, group_id) -> JsonResponse:
    """{"name", "home_node", "seq", "head", "members": [{"username", "node", "admin"}]}
    for a member of the group on this node; 404 JSON for anyone else (a former member
    too: what the group became since is not theirs to see)."""
    if not (request.user.is_authenticated and request.user.is_verified()):
        return _json_error("login_required", "Log in to continue.", 401)
    group = groups.group_for(request.user, group_id)
    if group is None or not groups.is_member(group, request.user.username):
        return _json_error("unknown_group", "There is no such group.", 404)
    members = GroupMember.objects.filter(group=group, left_seq__isnull=True).order_by("username")
    return JsonResponse(
        {
            "name": group.name,
            "home_node": group.home_node,
            "seq": group.seq,
            "head": group.head,
            "members": [
                {"username": m.username, "node": m.node, "admin": m.admin} for m in members
            ],
        },
        json_dumps_params={"ensure_ascii": False},
    )
