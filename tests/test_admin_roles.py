"""The administrator roles: office administrators run their office's people and watch
deliveries without reaching for more power; login server administrators enrol and revoke
nodes. Both are made by documented commands and log in with password and authenticator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pyotp
import pytest
from django.contrib.auth.models import Group, Permission
from django.core.management import CommandError, call_command
from django.db.models.fields.files import FieldFile
from django.test import Client, override_settings
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import roles, twofactor
from accounts.models import User
from messaging import sending
from messaging.models import Message, Outbox
from tests.helpers.accounts import admin_logged_in, logged_in
from tests.helpers.factories import DEFAULT_PASSWORD, make_office_administrator, make_person
from tests.helpers.messaging import join_local_node, make_remote_node, make_remote_person

BASE_DIR = Path(__file__).resolve().parent.parent

OFFICE_PERMISSIONS = {
    "accounts.add_user",
    "accounts.change_user",
    "accounts.view_user",
    "accounts.change_profile",
    "accounts.view_profile",
    "accounts.view_userkeys",
    "otp_totp.view_totpdevice",
    "otp_totp.delete_totpdevice",
    "otp_static.view_staticdevice",
    "otp_static.delete_staticdevice",
    "axes.view_accessattempt",
    "axes.delete_accessattempt",
    "messaging.view_message",
    "messaging.view_outbox",
    "messaging.view_destinationstate",
    "messaging.view_receivedenvelope",
    "messaging.view_attachment",  # messaging/0005
    "peers.view_nodeidentity",
    "peers.view_peernode",
    "peers.view_directoryuser",
    "peers.view_directorysync",
}
LOGIN_SERVER_PERMISSIONS = {
    "loginserver.view_node",
    "loginserver.change_node",
    "loginserver.add_enrolmenttoken",
    "loginserver.view_enrolmenttoken",
    "loginserver.view_userrecord",
    "loginserver.change_userrecord",  # the release action only (loginserver migration 0003)
    "loginserver.view_serverkey",
}


def _granted(group_name: str) -> set[str]:
    permissions = Group.objects.get(name=group_name).permissions.select_related("content_type")
    return {f"{p.content_type.app_label}.{p.codename}" for p in permissions}


def _office_admin_client(username: str = "itadmin") -> tuple[User, Client]:
    user, secret = make_office_administrator(username)
    return user, admin_logged_in(Client(), username, secret)


def _change_form_data(response) -> dict:
    """What a browser posts back from an admin change page, unchanged: every form field and
    every inline's management form, from the page's own forms."""
    forms = [response.context["adminform"].form]
    data: dict = {}
    for inline in response.context["inline_admin_formsets"]:
        forms.append(inline.formset.management_form)
        forms.extend(inline.formset.forms)
    for form in forms:
        for field in form:
            value = field.value()
            if isinstance(value, bool):
                if value:
                    data[field.html_name] = "on"
            elif isinstance(value, FieldFile) or value is None:
                data[field.html_name] = ""
            else:
                data[field.html_name] = value
    return data


def _failed_message(sender: User) -> Message:
    join_local_node("hq")
    bob = make_remote_person(make_remote_node("branch"), "bob")
    message = sending.send_message(sender=sender, recipient_username=bob.username, text="hello")
    Message.objects.filter(pk=message.pk).update(status=Message.Status.FAILED, error="expired")
    Outbox.objects.filter(message=message).update(failed_at=timezone.now())
    return message


# --- the groups ----------------------------------------------------------------------


@pytest.mark.django_db
def test_the_migration_gives_office_administrators_exactly_their_permissions():
    assert _granted(roles.OFFICE_ADMINISTRATORS) == OFFICE_PERMISSIONS


@pytest.mark.django_db
def test_the_migration_gives_login_server_administrators_exactly_their_permissions():
    assert _granted(roles.LOGIN_SERVER_ADMINISTRATORS) == LOGIN_SERVER_PERMISSIONS


def _subprocess_env(tmp_path: Path, role: str) -> dict:
    # A database and Redis of their own: never the ones the calling test run may point at.
    skipped = ("P2P_", "DJANGO_", "DATABASE_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
    env.update({"P2P_ROLE": role, "P2P_DATA_DIR": str(tmp_path)})
    return env


def _manage(env: dict, *args: str, input: str | None = None) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR, env=env, input=input, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


COUNT_GROUPS = (
    "from django.contrib.auth.models import Group; "
    "print({g.name: g.permissions.count() for g in Group.objects.all()})"
)


def test_the_migration_is_reversible_and_runs_again_on_a_database_that_has_permissions(
    tmp_path,
):
    env = _subprocess_env(tmp_path, "node")
    _manage(env, "migrate", "--noinput")
    made = _manage(env, "shell", "-c", COUNT_GROUPS)
    _manage(env, "migrate", "accounts", "0002", "--noinput")
    after_reverse = _manage(env, "shell", "-c", COUNT_GROUPS)
    _manage(env, "migrate", "--noinput")  # the permissions exist already this time
    made_again = _manage(env, "shell", "-c", COUNT_GROUPS)

    expected = (
        f"{{'{roles.OFFICE_ADMINISTRATORS}': {len(OFFICE_PERMISSIONS)}, "
        f"'{roles.LOGIN_SERVER_ADMINISTRATORS}': {len(LOGIN_SERVER_PERMISSIONS)}}}"
    )
    assert made.strip().splitlines()[-1] == expected
    assert after_reverse.strip().splitlines()[-1] == "{}"
    assert made_again.strip().splitlines()[-1] == expected


# --- office administrators ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/accounts/user/",
        "/admin/accounts/user/add/",
        "/admin/otp_totp/totpdevice/",
        "/admin/otp_static/staticdevice/",
        "/admin/axes/accessattempt/",
        "/admin/messaging/message/",
        "/admin/messaging/outbox/",
        "/admin/messaging/destinationstate/",
        "/admin/messaging/receivedenvelope/",
        "/admin/messaging/attachment/",
        "/admin/peers/peernode/",
        "/admin/peers/directoryuser/",
        "/admin/peers/directorysync/",
        "/admin/peers/nodeidentity/",
        "/admin/health/",
    ],
)
def test_an_office_administrator_can_open_the_pages_of_their_work(path):
    _, client = _office_admin_client()
    assert client.get(path).status_code == 200


@pytest.mark.django_db
def test_an_office_administrator_sees_a_persons_page_with_key_fingerprints():
    alice, _ = make_person("alice")
    _, client = _office_admin_client()

    page = client.get(f"/admin/accounts/user/{alice.pk}/change/")

    assert page.status_code == 200
    assert "Signing key (ed25519) fingerprint" in page.content.decode()


@pytest.mark.django_db
def test_an_office_administrator_can_create_a_person_who_gets_keys():
    _, client = _office_admin_client()

    response = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "newcomer",
            "usable_password": "true",
            "password1": DEFAULT_PASSWORD,
            "password2": DEFAULT_PASSWORD,
        },
    )

    assert response.status_code == 302, response.content
    newcomer = User.objects.get(username="newcomer")
    assert newcomer.keys.sign_public
    assert not newcomer.is_staff and not newcomer.is_superuser


@pytest.mark.django_db
def test_an_office_administrator_can_deactivate_a_person():
    alice, _ = make_person("alice")
    _, client = _office_admin_client()
    url = f"/admin/accounts/user/{alice.pk}/change/"
    data = _change_form_data(client.get(url))
    del data["is_active"]

    response = client.post(url, data)

    assert response.status_code == 302, response.content
    alice.refresh_from_db()
    assert not alice.is_active


@pytest.mark.django_db
def test_an_office_administrator_can_set_a_persons_password():
    alice, _ = make_person("alice")
    _, client = _office_admin_client()

    response = client.post(
        f"/admin/accounts/user/{alice.pk}/password/",
        {"password1": "a brand new passphrase", "password2": "a brand new passphrase"},
    )

    assert response.status_code == 302, response.content
    alice.refresh_from_db()
    assert alice.check_password("a brand new passphrase")


@pytest.mark.django_db
def test_an_office_administrator_can_reset_a_second_factor():
    alice, _ = make_person("alice")
    _, client = _office_admin_client()

    response = client.post(
        "/admin/accounts/user/",
        {"action": "reset_second_factor", "_selected_action": [alice.pk]},
        follow=True,
    )

    assert "Second factor reset for 1 person(s)" in response.content.decode()
    assert not twofactor.has_second_factor(alice)


@pytest.mark.django_db
def test_an_office_administrator_can_rotate_a_persons_keys():
    alice, _ = make_person("alice")
    old_key = bytes(alice.keys.sign_public)
    _, client = _office_admin_client()

    response = client.post(
        "/admin/accounts/user/",
        {"action": "rotate_keys", "_selected_action": [alice.pk]},
        follow=True,
    )

    assert "published at the next presence report" in response.content.decode()
    alice = User.objects.get(pk=alice.pk)
    assert bytes(alice.keys.sign_public) != old_key


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["message", "outbox"])
def test_an_office_administrator_can_retry_failed_deliveries(model):
    alice, _ = make_person("alice")
    message = _failed_message(alice)
    selected = message.pk if model == "message" else Outbox.objects.get(message=message).pk
    _, client = _office_admin_client()

    response = client.post(
        f"/admin/messaging/{model}/",
        {"action": "retry_failed_deliveries", "_selected_action": [selected]},
        follow=True,
    )

    assert "1 failed message(s) queued again" in response.content.decode()
    message.refresh_from_db()
    assert message.status == Message.Status.QUEUED


@pytest.mark.django_db
def test_staff_who_may_only_look_at_deliveries_cannot_retry_them():
    alice, _ = make_person("alice")
    message = _failed_message(alice)
    viewer, secret = make_person("viewer")
    viewer.is_staff = True
    viewer.save(update_fields=["is_staff"])
    viewer.user_permissions.add(Permission.objects.get(codename="view_message"))
    client = admin_logged_in(Client(), "viewer", secret)

    listing = client.get("/admin/messaging/message/").content.decode()
    client.post(
        "/admin/messaging/message/",
        {"action": "retry_failed_deliveries", "_selected_action": [message.pk]},
    )

    assert "retry_failed_deliveries" not in listing
    message.refresh_from_db()
    assert message.status == Message.Status.FAILED


@pytest.mark.django_db
def test_an_office_administrator_never_sees_message_text():
    alice, _ = make_person("alice")
    message = _failed_message(alice)
    _, client = _office_admin_client()

    page = client.get(f"/admin/messaging/message/{message.pk}/change/")

    assert page.status_code == 200
    assert "hello" not in page.content.decode()


@pytest.mark.django_db
def test_a_plain_person_is_refused_the_people_list():
    _, secret = make_person("alice")
    client = logged_in(Client(), "alice", secret)  # both factors, on the people's login

    response = client.get("/admin/accounts/user/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


# --- no escalation ------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_office_administrator_is_not_offered_superuser_groups_or_permissions():
    admin, client = _office_admin_client()

    page = client.get(f"/admin/accounts/user/{admin.pk}/change/").content.decode()

    for field in ("is_superuser", "groups", "user_permissions"):
        assert f'name="{field}"' not in page
    assert 'name="is_staff"' not in page  # shown, not editable
    assert 'name="is_active"' in page


@pytest.mark.django_db
def test_an_office_administrator_cannot_make_themselves_superuser():
    admin, client = _office_admin_client()
    every_permission = list(Permission.objects.values_list("pk", flat=True))
    url = f"/admin/accounts/user/{admin.pk}/change/"
    data = _change_form_data(client.get(url))
    data.update(
        is_superuser="on",
        is_staff="on",
        groups=[Group.objects.get(name=roles.LOGIN_SERVER_ADMINISTRATORS).pk],
        user_permissions=every_permission,
    )

    client.post(url, data)

    admin.refresh_from_db()
    assert not admin.is_superuser
    assert list(admin.groups.values_list("name", flat=True)) == [roles.OFFICE_ADMINISTRATORS]
    assert not admin.user_permissions.exists()


@pytest.mark.django_db
def test_an_office_administrator_cannot_make_someone_else_staff():
    alice, _ = make_person("alice")
    _, client = _office_admin_client()
    url = f"/admin/accounts/user/{alice.pk}/change/"
    data = _change_form_data(client.get(url))
    data.update(is_staff="on", is_superuser="on")

    client.post(url, data)

    alice.refresh_from_db()
    assert not alice.is_staff and not alice.is_superuser


@pytest.mark.django_db
@pytest.mark.parametrize("target", ["superuser", "another office administrator"])
def test_an_office_administrator_cannot_set_an_administrators_password(target):
    if target == "superuser":
        victim, _ = make_person("root", staff=True)
    else:
        victim, _ = make_office_administrator("other-it")
    _, client = _office_admin_client()

    response = client.post(
        f"/admin/accounts/user/{victim.pk}/password/",
        {"password1": "a takeover passphrase", "password2": "a takeover passphrase"},
    )

    assert response.status_code == 403
    victim.refresh_from_db()
    assert victim.check_password(DEFAULT_PASSWORD)


@pytest.mark.django_db
def test_an_office_administrator_cannot_reset_a_superusers_second_factor():
    root, _ = make_person("root", staff=True)
    _, client = _office_admin_client()

    client.post(
        "/admin/accounts/user/",
        {"action": "reset_second_factor", "_selected_action": [root.pk]},
    )

    assert twofactor.has_second_factor(root)


@pytest.mark.django_db
def test_a_superuser_still_sees_every_permission_field():
    root, secret = make_person("root", staff=True)
    client = admin_logged_in(Client(), "root", secret)

    page = client.get(f"/admin/accounts/user/{root.pk}/change/").content.decode()

    for field in ("is_superuser", "groups", "user_permissions", "is_staff"):
        assert f'name="{field}"' in page


# --- create_person --admin ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("option", ["--admin", "--staff"])
def test_create_person_admin_makes_an_office_administrator_who_can_use_the_admin(option):
    secret = pyotp.random_base32()
    out = StringIO()

    call_command(
        "create_person", "itadmin", option, "--password", DEFAULT_PASSWORD,
        "--totp-secret", secret, stdout=out,
    )  # fmt: skip

    assert "[office administrator]" in out.getvalue()
    user = User.objects.get(username="itadmin")
    assert user.is_staff and not user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == [roles.OFFICE_ADMINISTRATORS]
    client = admin_logged_in(Client(), "itadmin", secret)
    assert client.get("/admin/accounts/user/").status_code == 200


# --- create_admin -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_admin_refuses_on_an_office_node():
    with pytest.raises(CommandError, match="create_person USERNAME --admin"):
        call_command("create_admin", "root", "--password", DEFAULT_PASSWORD)
    assert not User.objects.filter(username="root").exists()


@pytest.mark.django_db
@override_settings(IS_LOGIN_SERVER=True, ROLE="loginserver")
def test_create_admin_prints_a_new_authenticator_secret_and_a_password():
    out = StringIO()

    call_command("create_admin", "root", "--full-name", "Root Admin", stdout=out)

    text = out.getvalue()
    user = User.objects.get(username="root")
    device = TOTPDevice.objects.get(user=user, confirmed=True)
    assert "[login server administrator]" in text
    assert f"authenticator secret: {twofactor.secret_base32(device)}" in text
    assert "otpauth://totp/" in text
    password = text.split("generated password: ")[1].split()[0]
    assert user.check_password(password)
    assert user.is_staff and not user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == [roles.LOGIN_SERVER_ADMINISTRATORS]
    assert user.profile.full_name == "Root Admin"


@pytest.mark.django_db
@override_settings(IS_LOGIN_SERVER=True, ROLE="loginserver")
def test_create_admin_refuses_an_existing_name_and_a_weak_password():
    make_person("root")
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_admin", "root", "--password", DEFAULT_PASSWORD)
    with pytest.raises(CommandError, match="password refused"):
        call_command("create_admin", "other", "--password", "short")
    assert not User.objects.filter(username="other").exists()


LOGIN_SERVER_VISIT = """
import json

import pyotp
from django.test import Client
from django.test.utils import setup_test_environment

from loginserver import services
from loginserver.models import EnrolmentToken, Node
from peers import protocol

setup_test_environment()  # lets the test client's host in
services.server_fingerprint()  # the server key, as the first start makes it
node = Node.objects.create(name="branch", url="http://127.0.0.1:9", sign_key=bytes(range(32)))
client = Client()
login = client.post(
    "/admin/login/?next=/admin/",
    {"username": "root", "password": PASSWORD, "otp_token": pyotp.TOTP(SECRET).now()},
)
paths = [
    "/admin/",
    "/admin/loginserver/node/",
    f"/admin/loginserver/node/{node.pk}/change/",
    "/admin/loginserver/enrolmenttoken/",
    "/admin/loginserver/enrolmenttoken/add/",
    "/admin/loginserver/userrecord/",
    "/admin/loginserver/serverkey/",
    "/admin/loginserver/serverkey/1/change/",
    "/admin/accounts/user/",
]
pages = {path: client.get(path).status_code for path in paths}
node_page = client.get(f"/admin/loginserver/node/{node.pk}/change/").content.decode()
token = client.post("/admin/loginserver/enrolmenttoken/add/", {"node_name": "paris"}, follow=True)
revoke = client.post(
    "/admin/loginserver/node/", {"action": "revoke", "_selected_action": [node.pk]}
)
node.refresh_from_db()
print(json.dumps({
    "login": login.status_code,
    "pages": pages,
    "fingerprint_shown": protocol.fingerprint(bytes(range(32))) in node_page,
    "token_shown": "shown once, single use" in token.content.decode(),
    "tokens": EnrolmentToken.objects.filter(node_name="paris").count(),
    "revoke": revoke.status_code,
    "node_active": node.active,
}))
"""


def test_a_login_server_administrator_enrols_and_revokes_nodes_in_the_admin(tmp_path):
    env = _subprocess_env(tmp_path, "loginserver")
    secret = pyotp.random_base32()
    _manage(env, "migrate", "--noinput")
    created = _manage(
        env, "create_admin", "root", "--password-stdin", "--totp-secret", secret,
        input=DEFAULT_PASSWORD + "\n",
    )  # fmt: skip
    script = f"PASSWORD = {DEFAULT_PASSWORD!r}\nSECRET = {secret!r}\n" + LOGIN_SERVER_VISIT

    seen = json.loads(_manage(env, "shell", "-c", script).strip().splitlines()[-1])

    assert "[login server administrator]" in created
    assert seen["login"] == 302
    assert seen["pages"] == {
        "/admin/": 200,
        "/admin/loginserver/node/": 200,
        "/admin/loginserver/node/1/change/": 200,
        "/admin/loginserver/enrolmenttoken/": 200,
        "/admin/loginserver/enrolmenttoken/add/": 200,
        "/admin/loginserver/userrecord/": 200,
        "/admin/loginserver/serverkey/": 200,
        "/admin/loginserver/serverkey/1/change/": 200,
        "/admin/accounts/user/": 403,  # people are not theirs to manage
    }
    assert seen["fingerprint_shown"]
    assert seen["token_shown"] and seen["tokens"] == 1
    assert seen["revoke"] == 302 and seen["node_active"] is False


@pytest.mark.django_db
@pytest.mark.parametrize("target", ["superuser", "another office administrator"])
def test_an_office_administrator_cannot_delete_an_administrators_devices(target):
    if target == "superuser":
        victim, _ = make_person("root", staff=True)
    else:
        victim, _ = make_office_administrator("other-it")
    device = TOTPDevice.objects.get(user=victim)
    _, client = _office_admin_client()

    listing = client.get("/admin/otp_totp/totpdevice/").content.decode()
    deleted = client.post(f"/admin/otp_totp/totpdevice/{device.pk}/delete/", {"post": "yes"})

    assert victim.username not in listing
    assert deleted.status_code in (403, 302)
    assert TOTPDevice.objects.filter(pk=device.pk).exists()


@pytest.mark.django_db
def test_an_office_administrator_cannot_clear_an_administrators_lockout():
    from axes.models import AccessAttempt

    make_person("root", staff=True)
    make_person("alice")
    for username in ("root", "alice"):
        AccessAttempt.objects.create(
            username=username, ip_address="203.0.113.9", user_agent="x", failures_since_start=5
        )
    _, client = _office_admin_client()

    listing = client.get("/admin/axes/accessattempt/").content.decode()
    client.post(
        "/admin/axes/accessattempt/",
        {"action": "delete_selected", "post": "yes",
         "_selected_action": list(AccessAttempt.objects.values_list("pk", flat=True))},
    )  # fmt: skip

    assert "alice" in listing and "root" not in listing
    assert list(AccessAttempt.objects.values_list("username", flat=True)) == ["root"]


@pytest.mark.django_db
def test_an_office_administrator_still_manages_their_own_account_and_people():
    admin, client = _office_admin_client()
    alice, _ = make_person("alice")

    for person in (admin, alice):
        response = client.post(
            f"/admin/accounts/user/{person.pk}/password/",
            {"password1": "a brand new passphrase", "password2": "a brand new passphrase"},
        )
        assert response.status_code == 302
        person.refresh_from_db()
        assert person.check_password("a brand new passphrase")
