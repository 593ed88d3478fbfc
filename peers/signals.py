"""Report presence at once when someone logs in or out (connected in PeersConfig.ready)."""

from django.contrib.auth.signals import user_logged_in, user_logged_out

from . import services


def _on_login(sender, request, user, **kwargs) -> None:
    services.request_presence_report()


def _on_logout(sender, request, user, **kwargs) -> None:
    # The session is flushed after this signal: the report must not count it as live.
    session = getattr(request, "session", None)
    services.request_presence_report(exclude_session_key=getattr(session, "session_key", None))


def connect() -> None:
    user_logged_in.connect(_on_login, dispatch_uid="peers.presence.login")
    user_logged_out.connect(_on_logout, dispatch_uid="peers.presence.logout")
