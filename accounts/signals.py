"""Hooks on Django login signals, and the signal sent when a second factor is verified."""

from django.contrib.auth.signals import user_logged_in
from django.dispatch import Signal, receiver

from . import sessions

# Sent with (request, user) once a person is fully logged in (password and second factor).
second_factor_verified = Signal()


@receiver(user_logged_in, dispatch_uid="accounts.remember_session")
def _remember_session(sender, request, user, **kwargs) -> None:
    # Both the people's login and the admin's OTP login pass through auth.login. For the
    # people's login this is the password step: recorded so that ending sessions finds it,
    # but presence counts it only once the second factor is verified (peers.presence).
    if request is not None and hasattr(request, "session"):
        sessions.remember_session(user=user, session_key=request.session.session_key)
