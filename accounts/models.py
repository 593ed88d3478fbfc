"""People on this office node: accounts, profiles and their keys."""

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models

from .validators import USERNAME_HELP, validate_username


class User(AbstractUser):
    """A person on this office node."""

    # Only names the protocol accepts: one refused name makes the login server refuse the
    # node's whole report (Django's default also allows '@' and non-ASCII letters).
    username_validator = validate_username
    username = models.CharField(
        "username",
        max_length=150,
        unique=True,
        help_text=USERNAME_HELP,
        validators=[validate_username],
        error_messages={"unique": "A user with that username already exists."},
    )
    last_activity = models.DateTimeField(null=True, blank=True)


class Profile(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    full_name = models.CharField(max_length=150, blank=True)
    position = models.CharField(max_length=150, blank=True)
    description = models.TextField(max_length=4000, blank=True)
    location = models.CharField(max_length=150, blank=True)
    picture = models.ImageField(upload_to="pictures/", blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.full_name or self.user.get_username()


class UserKeys(models.Model):
    """A person's ed25519 signing key and X25519 encryption key; private parts encrypted at rest."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="keys"
    )
    sign_public = models.BinaryField(max_length=32)
    box_public = models.BinaryField(max_length=32)
    sign_private_encrypted = models.BinaryField()
    box_private_encrypted = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "user keys"

    def __str__(self) -> str:
        return f"keys of {self.user}"


class UserSession(models.Model):
    """A browser session of a person, so that logout and password change can end the others."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="browser_sessions"
    )
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"session of {self.user} since {self.created_at:%Y-%m-%d %H:%M}"
