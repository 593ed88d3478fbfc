"""Drive people's conversations over HTTP on a real network (tests/network.py): log people
in, open a conversation, send through the compose form, read its messages.json.

The fixture puts the people on the network, then the tests speak as them:

    people_on(net, {"alice": "hq", "bob": "branch"}, PASSWORD)
    wait_until_listed(net, [("alice", "bob")])
    send(net, "alice", "bob", "hello")

Each request waits http_timeout_s seconds for its answer (10 unless a test needs more).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import requests

from tests.network import Network, csrf_token, wait_for

HTTP_TIMEOUT_S = 10.0


def people_on(
    net: Network, homes: dict[str, str], password: str, *, admins: Collection[str] = ()
) -> dict[str, str]:
    """Create each person on their home node (admins as office administrators), log them
    in, and keep their sessions and homes on net. Returns each person's TOTP secret."""
    secrets = {
        user: net.create_person(node, user, password, admin=user in admins)
        for user, node in homes.items()
    }
    net.sessions = {
        user: net.login(node, user, password, secrets[user]) for user, node in homes.items()
    }
    net.homes = homes
    return secrets


def url(net: Network, user: str, path: str) -> str:
    """The address of path on user's home node."""
    return net.node(net.homes[user]).url + path


def chat_page(
    net: Network, user: str, peer: str, *, http_timeout_s: float = HTTP_TIMEOUT_S
) -> requests.Response:
    """user opens the conversation with peer (any status: the caller checks it)."""
    return net.sessions[user].get(url(net, user, f"/chat/{peer}/"), timeout=http_timeout_s)


def wait_until_listed(
    net: Network,
    pairs: Iterable[tuple[str, str]],
    *,
    timeout: float = 60.0,
    http_timeout_s: float = HTTP_TIMEOUT_S,
) -> None:
    """Wait until, for each (user, peer), user's node lists peer: the conversation opens."""
    pairs = list(pairs)
    wait_for(
        lambda: all(
            chat_page(net, user, peer, http_timeout_s=http_timeout_s).status_code == 200
            for user, peer in pairs
        ),
        timeout=timeout,
        message=", ".join(f"{peer} in {user}'s directory" for user, peer in pairs),
    )


def send(
    net: Network, user: str, peer: str, text: str, *, http_timeout_s: float = HTTP_TIMEOUT_S
) -> None:
    """user sends text to peer through the compose form, as the browser does."""
    page = chat_page(net, user, peer, http_timeout_s=http_timeout_s)
    response = net.sessions[user].post(
        url(net, user, f"/chat/{peer}/"),
        data={"csrfmiddlewaretoken": csrf_token(page.text), "text": text},
        timeout=http_timeout_s,
        allow_redirects=False,
    )
    assert response.status_code == 302, response.text[:500]


def poll(net: Network, user: str, peer: str, *, http_timeout_s: float = HTTP_TIMEOUT_S) -> dict:
    """The conversation's messages.json from the start, as the page's script polls it."""
    response = net.sessions[user].get(
        url(net, user, f"/chat/{peer}/messages.json?after=0"), timeout=http_timeout_s
    )
    assert response.status_code == 200, response.text[:500]
    return response.json()


def texts(
    net: Network, user: str, peer: str, direction: str, *, http_timeout_s: float = HTTP_TIMEOUT_S
) -> list[str]:
    """The texts of the conversation going one way ("in" or "out"), oldest first."""
    messages = poll(net, user, peer, http_timeout_s=http_timeout_s)["messages"]
    return [m["text"] for m in messages if m["direction"] == direction]


def status_of(
    net: Network, user: str, peer: str, text: str, *, http_timeout_s: float = HTTP_TIMEOUT_S
) -> str | None:
    """The status user sees on the message they sent with this text; None if there is none."""
    answer = poll(net, user, peer, http_timeout_s=http_timeout_s)
    for m in answer["messages"]:
        if m["text"] == text and m["direction"] == "out":
            return answer["statuses"].get(str(m["id"]), m["status"])
    return None


def read_up_to_newest(
    net: Network, user: str, peer: str, *, http_timeout_s: float = HTTP_TIMEOUT_S
) -> None:
    """What the conversation page's script does once the newest message is on screen."""
    messages = poll(net, user, peer, http_timeout_s=http_timeout_s)["messages"]
    newest = max(m["id"] for m in messages if m["direction"] == "in")
    page = chat_page(net, user, peer, http_timeout_s=http_timeout_s)
    response = net.sessions[user].post(
        url(net, user, f"/chat/{peer}/read/"),
        data={"up_to": newest},
        headers={"X-CSRFToken": csrf_token(page.text)},
        timeout=http_timeout_s,
    )
    assert response.status_code == 200, response.text[:500]


def send_file(
    net: Network,
    user: str,
    peer: str,
    name: str,
    data: bytes,
    caption: str = "",
    *,
    http_timeout_s: float = 30.0,
) -> dict:
    """user sends a file to peer as the conversation page's script does; the message."""
    page = chat_page(net, user, peer, http_timeout_s=http_timeout_s)
    response = net.sessions[user].post(
        url(net, user, f"/chat/{peer}/files/"),
        files={"file": (name, data, "application/octet-stream")},
        data={"text": caption},
        headers={"X-CSRFToken": csrf_token(page.text), "Accept": "application/json"},
        timeout=http_timeout_s,
    )
    assert response.status_code == 201, response.text[:500]
    return response.json()["message"]


def file_state(
    net: Network, user: str, peer: str, file_id: str, *, http_timeout_s: float = HTTP_TIMEOUT_S
) -> str | None:
    """The state (pending, stored, failed) of file_id in user's conversation with peer."""
    for message in poll(net, user, peer, http_timeout_s=http_timeout_s)["messages"]:
        if message["file"] and message["file"]["id"] == file_id:
            return message["file"]["state"]
    return None
