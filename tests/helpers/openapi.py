"""docs/openapi.yaml and what its tests need: the operations it gives each role, the
operations each role's Django actually serves (probed in a process of that role), and
a requests auth that signs every request as an enrolled node."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import requests
import yaml
from nacl.signing import SigningKey

from peers import protocol

BASE_DIR = Path(__file__).resolve().parent.parent.parent
SPEC_PATH = BASE_DIR / "docs" / "openapi.yaml"

# P2P_ROLE -> the tag of the operations that role serves in the description.
ROLE_TAGS = {"loginserver": "login-server", "node": "node"}
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# The routes the description covers: the node-to-server API and the health endpoints.
DESCRIBED_PREFIXES = ("/api/", "/health")
_ROUTE_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")


def load_spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def spec_operations(spec: dict, role: str) -> dict[str, list[str]]:
    """{path: sorted methods} of the operations the description gives to role."""
    tag = ROLE_TAGS[role]
    operations: dict[str, list[str]] = {}
    for path, item in spec["paths"].items():
        methods = [
            method.upper()
            for method, operation in item.items()
            if method.upper() in HTTP_METHODS and tag in operation.get("tags", [])
        ]
        if methods:
            operations[path] = sorted(methods)
    return operations


def served_operations(role: str, data_dir: Path) -> dict:
    """What Django serves in role, probed in a process of that role (settings read the
    role once, at import): {"routes": {path: sorted methods}, "resolves": {spec path:
    bool}, "fast_path": [[method, path], ...]}."""
    skipped = ("P2P_", "DJANGO_", "DATABASE_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skipped)}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "p2psocial.settings",
            "P2P_ROLE": role,
            "P2P_DATA_DIR": str(data_dir),
            "P2P_ALLOWED_HOSTS": "127.0.0.1",
            # Nothing listens on port 9 of loopback: /health finds no Redis at once.
            "REDIS_URL": "redis://127.0.0.1:9/0",
        }
    )
    probe = "from tests.helpers.openapi import print_served_operations; print_served_operations()"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _route_patterns(patterns, prefix: str = "") -> list[str]:
    """Every route of a URLconf as a path template: "/people/{username}/"."""
    from django.urls import URLResolver

    routes = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            routes += _route_patterns(pattern.url_patterns, route)
        else:
            routes.append("/" + _ROUTE_PARAMETER.sub(r"{\1}", route))
    return routes


def print_served_operations() -> None:
    """In the probing process: print what served_operations returns, as one JSON line.

    A method is served when the view answers it with anything but 405 (the views refuse
    other methods before reading anything); the requests carry no body and no signature.
    """
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.urls import Resolver404, get_resolver, resolve

    call_command("migrate", verbosity=0)  # /health reads the database
    client = Client(HTTP_HOST="127.0.0.1", raise_request_exception=False)
    routes = {}
    for route in _route_patterns(get_resolver().url_patterns):
        if route.startswith(DESCRIBED_PREFIXES):
            probe = re.sub(r"{\w+}", "x", route)
            answers = {m: client.generic(m, probe).status_code for m in HTTP_METHODS}
            routes[route] = sorted(m for m, status in answers.items() if status != 405)
    resolves = {}
    for path in spec_operations(load_spec(), settings.ROLE):
        try:
            resolve(path)
            resolves[path] = True
        except Resolver404:
            resolves[path] = False
    fast_path = []
    if settings.IS_LOGIN_SERVER:
        from loginserver.asgi import ROUTES

        fast_path = sorted([method, path] for method, path in ROUTES)
    print(json.dumps({"routes": routes, "resolves": resolves, "fast_path": fast_path}))


class NodeSignature(requests.auth.AuthBase):
    """Signs each request as node with key (peers.protocol.sign_request), over the method,
    path and exact body bytes that requests is about to send, with a fresh nonce."""

    def __init__(self, node: str, key: SigningKey):
        self.node = node
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            # Sent as these UTF-8 bytes (http.client would encode a str as Latin-1).
            body = body.encode()
            request.body = body
        if not isinstance(body, bytes):
            raise TypeError(f"cannot sign a streamed body ({type(body).__name__})")
        request.headers["Authorization"] = protocol.sign_request(
            self.key, node=self.node, method=request.method, path=request.path_url, body=body
        )
        return request


def enrolment(*, token: str, name: str, url: str) -> tuple[dict, NodeSignature]:
    """The body of POST /api/v1/enrol for a new key, and the signer that key makes."""
    key = SigningKey.generate()
    proof = protocol.sign_enrolment(key, token=token, name=name, url=url)
    body = {
        "token": token,
        "name": name,
        "url": url,
        "sign_key": protocol.b64e(bytes(key.verify_key)),
        "proof": protocol.b64e(proof),
    }
    return body, NodeSignature(name, key)


def rotation(signer: NodeSignature, new_key: SigningKey) -> dict:
    """The body of POST /api/v1/rotate-key that moves signer's node to new_key."""
    return {
        "sign_key": protocol.b64e(bytes(new_key.verify_key)),
        "proof": protocol.b64e(protocol.sign_rotation(new_key, node=signer.node)),
    }
