"""Report presence at once on login (second factor verified) and logout.

Connected in PeersConfig.ready.
"""

from django.contrib.auth.signals import user_logged_out

from accounts.signals import second_factor_verified
from p2psocial import events

from . import services


def _on_login(sender, request, user, **kwargs) -> None:
    services.request_presence_report()
    events.publish_all_on_commit("presence.changed", {})  # this node's open users lists


def _on_logout(sender, request, user, **kwargs) -> None:
    # The session is flushed after this signal: the report must not count it as live.
    session = getattr(request, "session", None)
    services.request_presence_report(exclude_session_key=getattr(session, "session_key", None))
    events.publish_all_on_commit("presence.changed", {})


def connect() -> None:
    # Not user_logged_in: that fires at the password step, before the second factor.
    second_factor_verified.connect(_on_login, dispatch_uid="peers.presence.login")
    user_logged_out.connect(_on_logout, dispatch_uid="peers.presence.logout")
