"""Browser forms of the accounts pages. Validation of shape only; services do the writes."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib.auth.forms import PasswordChangeForm as DjangoPasswordChangeForm
from django.core.validators import MaxLengthValidator

from .models import Profile


class LoginForm(forms.Form):
    username = forms.CharField(max_length=150, widget=forms.TextInput(attrs={"autofocus": True}))
    password = forms.CharField(
        max_length=1024,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )


class CodeForm(forms.Form):
    code = forms.CharField(
        max_length=32,
        label="Code",
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "text",
                "autofocus": True,
                "spellcheck": "false",
                "autocapitalize": "off",
            }
        ),
    )


class ReauthForm(forms.Form):
    """Both factors again, for a change a stolen session must not be able to make."""

    password = forms.CharField(
        max_length=1024,
        strip=False,
        label="Your password",
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    code = forms.CharField(
        max_length=32,
        label="Authenticator code",
        help_text="The 6-digit code your authenticator app shows now (not a backup code).",
        widget=forms.TextInput(
            attrs={
                "autocomplete": "one-time-code",
                "inputmode": "numeric",
                "spellcheck": "false",
                "autocapitalize": "off",
            }
        ),
    )


def _text_field(model_field: str, *, textarea: bool = False) -> forms.CharField:
    field = Profile._meta.get_field(model_field)
    # dir="auto": right-to-left text shows right-to-left while it is typed.
    attrs = {"dir": "auto", "maxlength": field.max_length}
    widget = forms.Textarea(attrs={**attrs, "rows": 5}) if textarea else forms.TextInput(attrs)
    # strip=False: what the person typed is stored exactly (no trimming, no normalisation).
    return forms.CharField(
        label=field.verbose_name.capitalize(),
        max_length=field.max_length,
        required=False,
        strip=False,
        widget=widget,
    )


class ProfileForm(forms.Form):
    full_name = _text_field("full_name")
    position = _text_field("position")
    location = _text_field("location")
    description = _text_field("description", textarea=True)
    picture = forms.FileField(
        required=False,
        help_text="JPEG, PNG, GIF or WebP. It is resized and its metadata removed.",
        widget=forms.ClearableFileInput(
            attrs={"accept": "image/jpeg,image/png,image/gif,image/webp"}
        ),
    )
    remove_picture = forms.BooleanField(required=False, label="Remove my picture")

    def clean_picture(self):
        picture = self.cleaned_data.get("picture")
        if picture and picture.size > settings.PROFILE_PICTURE_MAX_BYTES:
            limit_mb = settings.PROFILE_PICTURE_MAX_BYTES // (1024 * 1024)
            raise forms.ValidationError(f"The picture is too large (at most {limit_mb} MB).")
        return picture


class PasswordChangeForm(DjangoPasswordChangeForm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("old_password", "new_password1", "new_password2"):
            self.fields[name].validators.append(MaxLengthValidator(1024))
            self.fields[name].widget.attrs["maxlength"] = 1024
