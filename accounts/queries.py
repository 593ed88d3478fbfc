"""Reads about people that other apps use (the profile page, the users list)."""

from __future__ import annotations

from django.core.files import File
from django.urls import reverse

from .models import Profile, User


def local_people(usernames=None):
    """This node's people as the network knows them: active, with keys (a deactivated
    person's name can be released and taken by another office). usernames narrows it."""
    people = User.objects.filter(is_active=True, keys__isnull=False)
    return people if usernames is None else people.filter(username__in=usernames)


def local_usernames(usernames=None) -> set[str]:
    return set(local_people(usernames).values_list("username", flat=True))


def own_profile(user: User) -> Profile:
    """The person's profile; an empty one if it was never made (accounts made outside services)."""
    try:
        return user.profile
    except Profile.DoesNotExist:
        return Profile(user=user)


def profile_of(username: str) -> Profile | None:
    """The profile of a person of this node, or None."""
    return Profile.objects.select_related("user").filter(user__username=username).first()


def picture_of(username: str) -> File | None:
    profile = profile_of(username)
    if profile is None or not profile.picture:
        return None
    return profile.picture


def picture_url(profile: Profile) -> str | None:
    """The URL (authenticated) of a local person's picture, or None if there is none."""
    if not profile.picture:
        return None
    return reverse("accounts:picture", args=[profile.user.get_username()])


def picture_content_type(name: str) -> str:
    return "image/png" if name.lower().endswith(".png") else "image/jpeg"
