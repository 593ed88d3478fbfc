"""The admin site for both roles: staff only, with a verified second factor."""

from __future__ import annotations

from django import forms
from django.template.response import TemplateResponse
from django.urls import path
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from . import twofactor
from .errors import CodeRejected
from .twofactor import normalise_code


class CodeAuthenticationForm(OTPAdminAuthenticationForm):
    """Username, password and one code: a 6-digit authenticator code or a backup code.

    The device is chosen from the shape of the code, so nobody has to pick one from a list.
    """

    otp_token = forms.CharField(
        required=False,
        label="Authenticator code or backup code",
        max_length=32,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code"}),
    )

    def _chosen_device(self, user):
        token = normalise_code(self.cleaned_data.get("otp_token") or "")
        self.cleaned_data["otp_token"] = token
        model = TOTPDevice if token.isdigit() else StaticDevice
        device = model.objects.filter(user=user, confirmed=True).order_by("id").first()
        if device is None:
            if not twofactor.has_second_factor(user):
                raise forms.ValidationError(
                    "This account has no second factor set up. On an office node, log in on "
                    "the main login page first to set up an authenticator app; otherwise ask "
                    "for one (manage.py create_person --totp-secret).",
                    code="no_device",
                )
            raise forms.ValidationError(
                self.otp_error_messages["invalid_token"], code="invalid_token"
            )
        return device

    def _verify_token(self, user, token, device=None):
        # The same check as the people's login: the device row locked, throttled, a code
        # accepted once even when two admin logins race.
        try:
            return twofactor.verify_code(user=user, code=token)
        except CodeRejected:
            raise forms.ValidationError(
                self.otp_error_messages["invalid_token"], code="invalid_token"
            ) from None


class P2PAdminSite(OTPAdminSite):
    site_header = "p2psocial administration"
    site_title = "p2psocial admin"
    index_title = "Administration"
    login_form = CodeAuthenticationForm
    login_template = "admin/otp_login.html"
    index_template = "admin/p2p_index.html"

    def get_urls(self):
        return [
            path("health/", self.admin_view(self.health_view), name="health"),
            *super().get_urls(),
        ]

    def health_view(self, request):
        """The figures of /health, for staff: database, Redis, worker, queue, login server."""
        from p2psocial.health import collect

        figures = collect()
        context = {**self.each_context(request), "title": "Health", "figures": figures}
        return TemplateResponse(request, "admin/health.html", context)


admin_site = P2PAdminSite(name="admin")
