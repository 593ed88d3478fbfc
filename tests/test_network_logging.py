"""One request id follows a message from the send view, through the worker, to the peer."""

from __future__ import annotations

import uuid

import pytest

from tests.network import Network, csrf_token, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "a long enough passphrase 42"


def test_the_send_request_id_appears_on_the_sender_worker_and_the_receiving_node(tmp_path):
    with Network(tmp_path, nodes=("hq", "branch")) as net:
        secret = net.create_person("hq", "alice", PASSWORD)
        net.create_person("branch", "bob", PASSWORD)
        session = net.login("hq", "alice", PASSWORD, secret)
        chat = f"{net.node('hq').url}/chat/bob/"
        wait_for(lambda: session.get(chat, timeout=10).status_code == 200, timeout=60,
                 message="hq's directory lists bob")  # fmt: skip
        request_id = f"trail-{uuid.uuid4().hex[:12]}"

        response = session.post(
            chat,
            data={"csrfmiddlewaretoken": csrf_token(session.get(chat, timeout=10).text),
                  "text": "follow me"},
            headers={"X-Request-Id": request_id},
            timeout=10,
        )  # fmt: skip

        assert response.history and response.history[0].headers["X-Request-Id"] == request_id
        logs = {
            "hq web": net.node("hq").processes["web"],
            "hq worker": net.node("hq").processes["worker"],
            "branch web": net.node("branch").processes["web"],
        }
        for where, process in logs.items():
            wait_for(lambda p=process: f"request_id={request_id}" in p.log_text(), timeout=30,
                     message=f"the request id in the {where} log")  # fmt: skip
        assert "follow me" not in "".join(p.log_text() for p in logs.values())
