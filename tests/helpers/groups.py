"""Drive group conversations over HTTP on a real network (tests/network.py), as people's
browsers do: create a group through its form, send through its compose box, change it,
read its messages.json and state.json.

    gid = create_group(net, "alice", "Board", ["bob", "carol"])
    group_send(net, "alice", gid, "hello")
    wait_for(lambda: "hello" in group_texts(net, "carol", gid), ...)
"""

from __future__ import annotations

import re

from tests.helpers.chat import HTTP_TIMEOUT_S, url
from tests.network import Network, csrf_token

_GROUP_URL = re.compile(r"/groups/([0-9a-f-]{36})/$")


def _form_token(net: Network, user: str, path: str) -> str:
    page = net.sessions[user].get(url(net, user, path), timeout=HTTP_TIMEOUT_S)
    assert page.status_code == 200, page.text[:500]
    return csrf_token(page.text)


def create_group(net: Network, user: str, name: str, members: list[str]) -> str:
    """user creates a group through the new group form; its id."""
    response = net.sessions[user].post(
        url(net, user, "/groups/new/"),
        data={
            "csrfmiddlewaretoken": _form_token(net, user, "/groups/new/"),
            "name": name,
            "names": ", ".join(members),
        },
        timeout=HTTP_TIMEOUT_S,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]
    found = _GROUP_URL.search(response.headers["Location"])
    assert found, response.headers["Location"]
    return found.group(1)


def group_send(net: Network, user: str, gid: str, text: str) -> None:
    response = net.sessions[user].post(
        url(net, user, f"/groups/{gid}/"),
        data={"csrfmiddlewaretoken": _form_token(net, user, f"/groups/{gid}/"), "text": text},
        timeout=HTTP_TIMEOUT_S,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]


def change(net: Network, user: str, gid: str, action: str, **fields: str) -> None:
    """user makes a change on the group's page (names= to add, member= for one person,
    name= to rename); the page answers a redirect whatever the outcome."""
    response = net.sessions[user].post(
        url(net, user, f"/groups/{gid}/change/"),
        data={
            "csrfmiddlewaretoken": _form_token(net, user, f"/groups/{gid}/"),
            "action": action,
            **fields,
        },
        timeout=HTTP_TIMEOUT_S,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]


def group_poll(net: Network, user: str, gid: str) -> dict | None:
    """The group's messages.json from the start; None while user's node lacks the group."""
    response = net.sessions[user].get(
        url(net, user, f"/groups/{gid}/messages.json?after=0"), timeout=HTTP_TIMEOUT_S
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text[:500]
    return response.json()


def group_texts(net: Network, user: str, gid: str, direction: str = "in") -> list[str]:
    answer = group_poll(net, user, gid)
    if answer is None:
        return []
    return [m["text"] for m in answer["messages"] if m["direction"] == direction]


def group_state(net: Network, user: str, gid: str) -> dict | None:
    """The group as user's node knows it (name, seq, head, members); None if unknown."""
    response = net.sessions[user].get(
        url(net, user, f"/groups/{gid}/state.json"), timeout=HTTP_TIMEOUT_S
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text[:500]
    return response.json()


def member_names(state: dict | None) -> set[str]:
    return {m["username"] for m in state["members"]} if state else set()


def group_send_file(
    net: Network, user: str, gid: str, name: str, data: bytes, caption: str = ""
) -> dict:
    """user sends a file to the group as its page's script does; the message."""
    response = net.sessions[user].post(
        url(net, user, f"/groups/{gid}/files/"),
        files={"file": (name, data, "application/octet-stream")},
        data={"text": caption},
        headers={
            "X-CSRFToken": _form_token(net, user, f"/groups/{gid}/"),
            "Accept": "application/json",
        },
        timeout=30,
    )
    assert response.status_code == 201, response.text[:500]
    return response.json()["message"]


def group_files(net: Network, user: str, gid: str) -> list[dict]:
    """The files of the group's received messages as user's page sees them."""
    answer = group_poll(net, user, gid)
    if answer is None:
        return []
    return [m["file"] for m in answer["messages"] if m["file"] and m["direction"] == "in"]
