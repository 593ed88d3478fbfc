"""URLs that take a username match only the protocol's username characters: anything else
(a NUL byte, which PostgreSQL cannot store or compare, '@', accented letters) is a 404
before a view or a query sees it."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from tests.helpers.accounts import logged_in, step_now
from tests.helpers.factories import make_person

USERNAME_URLS = [
    "/chat/{}/",
    "/chat/{}/messages.json",
    "/chat/{}/retry/1/",
    "/people/{}/",
    "/people/{}/picture",
    "/people/{}/verify-keys",
]
REFUSED_NAMES = ["a\x00b", "josé", "anne@hq", "two words", "a" * 151]


@pytest.mark.parametrize("template", USERNAME_URLS)
@pytest.mark.parametrize("username", REFUSED_NAMES)
def test_no_username_url_matches_a_name_the_protocol_refuses(template, username):
    with pytest.raises(Resolver404):
        resolve(template.format(username))


@pytest.mark.parametrize("template", USERNAME_URLS)
def test_every_username_url_matches_every_character_the_protocol_accepts(template):
    match = resolve(template.format("Anne.Hq+ops-1_x"))
    assert match.kwargs["username"] == "Anne.Hq+ops-1_x"


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("messaging:conversation", ["josé"]),
        ("accounts:picture", ["anne@hq"]),
        ("peers:profile", ["a\x00b"]),
    ],
)
def test_no_link_is_made_to_a_name_the_protocol_refuses(name, args):
    with pytest.raises(NoReverseMatch):
        reverse(name, args=args)


@pytest.fixture
def alice_client(db) -> Client:
    _, secret = make_person("alice")
    return logged_in(Client(), "alice", secret, step_now())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/chat/%00/"),
        ("get", "/chat/%00/messages.json"),
        ("get", "/people/%00/"),
        ("get", "/people/%00/picture"),
        ("post", "/people/%00/verify-keys"),
        ("get", "/people/jos%C3%A9/"),
        ("get", "/chat/anne%40hq/"),
    ],
)
def test_a_refused_name_in_the_path_is_not_found(alice_client, method, path):
    response = getattr(alice_client, method)(path)
    assert response.status_code == 404
