"""Usernames: only names the network protocol accepts can be made, by the admin or by
manage.py create_person (one refused name makes the login server refuse the node's report)."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from accounts import services
from accounts.errors import UsernameRejected
from accounts.models import User
from tests.helpers.accounts import logged_in, step_now
from tests.helpers.factories import make_person
from tests.helpers.messaging import join_local_node, make_remote_node, make_remote_person

pytestmark = pytest.mark.django_db

REFUSED_NAMES = ["anne@hq", "josé", "two words"]


@pytest.fixture
def admin_client() -> Client:
    _, secret = make_person("root", staff=True)
    return logged_in(Client(), "root", secret, step_now())


def _add_person(admin_client: Client, username: str):
    return admin_client.post(
        "/admin/accounts/user/add/",
        {
            "username": username,
            "usable_password": "true",
            "password1": "a long enough passphrase",
            "password2": "a long enough passphrase",
        },
    )


@pytest.mark.parametrize("username", REFUSED_NAMES)
def test_the_admin_add_form_refuses_a_name_the_network_refuses(admin_client, username):
    response = _add_person(admin_client, username)
    assert response.status_code == 200
    assert "This username cannot be used on the network." in response.content.decode()
    assert not User.objects.filter(username=username).exists()


def test_the_admin_add_form_accepts_every_character_the_network_accepts(admin_client):
    response = _add_person(admin_client, "Anne.Hq+ops-1_x")
    assert response.status_code == 302
    assert User.objects.get(username="Anne.Hq+ops-1_x").keys is not None


def test_the_admin_change_form_refuses_renaming_to_a_name_the_network_refuses(admin_client):
    anne, _ = make_person("anne")
    page = admin_client.get(f"/admin/accounts/user/{anne.pk}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        {
            "username": "anne@hq",
            "date_joined_0": anne.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": anne.date_joined.strftime("%H:%M:%S"),
            "profile-TOTAL_FORMS": "1",
            "profile-INITIAL_FORMS": "1",
            "profile-0-id": anne.profile.pk,
            "profile-0-user": anne.pk,
            "keys-TOTAL_FORMS": "1",
            "keys-INITIAL_FORMS": "1",
            "keys-0-id": anne.keys.pk,
            "keys-0-user": anne.pk,
        }
    )
    data.pop("groups", None)
    data.pop("user_permissions", None)
    data.pop("password", None)
    response = admin_client.post(f"/admin/accounts/user/{anne.pk}/change/", data)
    assert response.status_code == 200
    assert "This username cannot be used on the network." in response.content.decode()
    anne.refresh_from_db()
    assert anne.username == "anne"


@pytest.mark.parametrize("username", [*REFUSED_NAMES, "a" * 151])
def test_create_person_command_refuses_a_name_the_network_refuses(username):
    with pytest.raises(CommandError) as refused:
        call_command("create_person", username, "--password", "a long enough passphrase")
    assert "This username cannot be used on the network." in str(refused.value)
    assert "letters A-Z and a-z, digits 0-9, and . _ + - only" in str(refused.value)
    assert not User.objects.filter(username=username).exists()


def test_the_create_person_service_refuses_the_name_even_without_password_checks():
    with pytest.raises(UsernameRejected) as refused:
        services.create_person(username="anne@hq", password="x", validate=False)
    assert refused.value.code == "invalid_username"
    assert not User.objects.exists()


# --- a name another office holds -----------------------------------------------------------
@pytest.fixture
def carol_at_branch():
    join_local_node("hq")
    make_remote_person(make_remote_node("branch"), "carol")


def test_create_person_refuses_a_name_another_office_holds(carol_at_branch):
    with pytest.raises(CommandError) as refused:
        call_command("create_person", "carol", "--password", "a long enough passphrase")
    assert "belongs to someone at the branch office" in str(refused.value)
    assert not User.objects.filter(username="carol").exists()


def test_the_admin_add_form_refuses_a_name_another_office_holds(carol_at_branch, admin_client):
    page = _add_person(admin_client, "carol").content.decode()
    assert "belongs to someone at the branch office" in page
    assert not User.objects.filter(username="carol").exists()


def test_a_name_no_other_office_holds_is_still_free(carol_at_branch, admin_client):
    response = _add_person(admin_client, "dora")
    assert response.status_code == 302
    assert User.objects.filter(username="dora").exists()
