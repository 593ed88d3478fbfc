"""The first login in real Chromium: password, QR enrolment, backup codes; then code login."""

from __future__ import annotations

import time

import pyotp
import pytest

from tests.helpers.browser import launch_chromium
from tests.helpers.factories import DEFAULT_PASSWORD, make_person
from tests.helpers.wait import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _step() -> int:
    return int(time.time() // 30)


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url)
    page = context.new_page()
    page.csp_violations = []
    page.on(
        "console",
        lambda message: (
            "Content Security Policy" in message.text and page.csp_violations.append(message.text)
        ),
    )
    yield page
    context.close()


def _password_step(page, username: str) -> None:
    page.goto("/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", DEFAULT_PASSWORD)
    page.click("button[type=submit]:has-text('Continue')")


def _submit_code(page, code: str) -> None:
    page.fill("#id_code", code)
    page.click("main button[type=submit]")


def test_first_login_enrols_an_authenticator_then_logs_in_with_codes(page):
    make_person("erin", totp=False)

    _password_step(page, "erin")
    page.wait_for_url("**/setup/2fa/")
    assert page.locator("img[alt^='QR code']").is_visible()
    assert page.evaluate("document.querySelector(\"img[alt^='QR code']\").naturalWidth") > 0
    secret = page.inner_text("#totp-secret").strip()
    assert f"secret={secret}" in page.text_content("#otpauth-uri")

    enrol_step = _step()
    enrol_code = pyotp.TOTP(secret).at(enrol_step * 30)  # independent TOTP implementation
    _submit_code(page, enrol_code)
    page.wait_for_url("**/setup/backup-codes/")
    assert page.locator("#backup-codes li").count() == 10
    assert "shown only now" in page.inner_text("main")

    page.goto("/profile/")
    assert page.locator("h1").inner_text() == "Your profile"

    page.click("header button:has-text('Log out')")
    page.wait_for_url("**/login/")
    assert "You are logged out." in page.inner_text("main")
    page.goto("/profile/")
    page.wait_for_url("**/login/?next=%2Fprofile%2F")

    _password_step(page, "erin")
    page.wait_for_url("**/login/code/")

    _submit_code(page, enrol_code)
    assert "already used" in page.inner_text("main")

    wrong = f"{(int(enrol_code) + 1) % 1_000_000:06d}"

    def wrong_code_refused() -> bool:  # after the reused code, a throttle delay may apply
        _submit_code(page, wrong)
        return "That code is not right" in page.inner_text("main")

    wait_for(wrong_code_refused, timeout=15, message="wrong code message", interval=0.5)
    assert "/login/code/" in page.url

    def fresh_code_accepted() -> bool:
        _submit_code(page, pyotp.TOTP(secret).at(max(enrol_step + 1, _step()) * 30))
        return "/login/" not in page.url

    wait_for(fresh_code_accepted, timeout=20, message="fresh code accepted", interval=0.5)
    page.goto("/profile/")
    assert page.locator("h1").inner_text() == "Your profile"
    assert page.csp_violations == []


def test_repeated_wrong_passwords_show_the_lockout_page(page, settings):
    settings.AXES_FAILURE_LIMIT = 2
    make_person("frank")
    for _ in range(2):
        page.goto("/login/")
        page.fill("#id_username", "frank")
        page.fill("#id_password", "not the right one")
        page.click("button[type=submit]")
    assert "Too many failed logins" in page.inner_text("main")
