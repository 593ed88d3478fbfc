"""SQL injection scan: sqlmap against an office node's forms and peer inbox, on loopback.

    bin/security-scan [--level 3] [--risk 2] [--per-target-s 150] [--out FILE] [--keep]

Starts a network in a temporary folder (p2psocial.devnet: a login server, nodes "hq" and
"branch", their workers, one Redis; SQLite), creates alice (hq) and bob (branch) with
known passwords and authenticator secrets, logs alice in over HTTP for a session cookie
and CSRF tokens, then runs sqlmap in batch mode, one target after the other, each within
--per-target-s (the login 1.6 times that: it hashes every password tried):

- login: POST /login/ (username, password), no session;
- compose: POST /chat/bob/ (text), alice's session;
- profile: POST /profile/ (full_name, position, location, description), alice's session;
- peer inbox, signed: POST /api/v1/inbox through a signing proxy (below);
- peer inbox, unsigned: the Authorization header's node name, straight to hq.

sqlmap cannot sign requests, and an unsigned request never gets past the signature
check. The signing proxy plays branch, an enrolled node, turned hostile: it takes a flat
JSON object ({"id", "kind", "sender", "recipient", "created_ms", "text"}), seals a real
envelope from bob to alice with bob's keys, puts the given fields in it as they are (as a
hostile peer may), signs the envelope with bob's key and the request with branch's node
key and a fresh nonce, posts it to hq's inbox and answers hq's answer unchanged. So
every value sqlmap tries reaches the code an enrolled peer reaches: parsing,
validation, the directory lookups and the store. What the proxy replaces, the
Authorization header, is the unsigned target's.

First, as a control, sqlmap scans a deliberately injectable page served by this script
(an SQLite query built by string formatting): if it does not find that one, the scan is
broken and says so (exit 2) rather than report the real targets clean.

It prints, per target, whether sqlmap found an injection and how many requests it made,
writes the same to bench/results/security-scan.json, and exits 1 when anything is
injectable (2 when a target could not be scanned). Loopback only; sqlmap's own files go
to the temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests

from p2psocial.devnet import BASE_DIR, PYTHON, Network, csrf_token, free_port, wait_until

RESULTS = BASE_DIR / "bench" / "results"
PASSWORD = "scan-password-Xq9!-long"
INBOX_PATH = "/api/v1/inbox"
SCAN_SETTINGS = {
    "P2P_LOG_LEVEL": "WARNING",
    "P2P_DIRECTORY_FETCH_INTERVAL_S": "2",
    "P2P_PRESENCE_REPORT_INTERVAL_S": "2",
    # Thousands of wrong passwords from one address: without this the lockout (5 failures)
    # would answer every later try with the same "locked out" page, and sqlmap would test
    # the lockout instead of the login's database lookups.
    "P2P_LOGIN_FAILURE_LIMIT": "1000000",
}
# The flat object sqlmap varies; the proxy turns it into a signed envelope and batch.
ENVELOPE_TEMPLATE = {
    "id": "0b7f4a36-5c2e-4d1a-9f3b-2a6c8e1d4f50",  # replaced by a fresh id when unchanged
    "kind": "message",
    "sender": "bob",
    "recipient": "alice",
    "created_ms": 1700000000000,
    "text": "hello",
}


@dataclass
class Target:
    name: str
    url: str
    data: str | None = None
    cookie: str | None = None
    headers: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # empty: the URL's or header's marker
    ignore_codes: str = ""  # answers sqlmap should read as pages, not as "stop here"
    time_factor: float = 1.0  # times --per-target-s


@dataclass
class Outcome:
    name: str
    method: str
    path: str
    parameters: list[str]
    injectable: bool
    requests: int
    duration_s: float
    stopped: str | None  # "time limit" or "sqlmap error" when sqlmap did not finish
    verdicts: list[str]

    def as_dict(self) -> dict:
        return self.__dict__.copy()


# --- the signing proxy (runs as its own process, with branch's settings) -----------------
def serve_signing_proxy(port: int, upstream: str) -> None:
    """Serve POST / on loopback: the flat object → a signed batch → upstream's inbox."""
    import django

    django.setup()
    from accounts.keys import box_key_for, signing_key_for
    from accounts.models import UserKeys
    from messaging.outbox import resolve_recipient
    from peers import client, protocol

    sender = UserKeys.objects.select_related("user").get(user__username="bob")
    sign_key, box_key = signing_key_for(sender), box_key_for(sender)
    recipient = resolve_recipient("alice")
    node = client.local_identity().name

    def batch_for(fields: dict) -> bytes:
        sealed = protocol.seal_envelope(
            sender_sign_key=sign_key,
            sender_box_key=box_key,
            recipient_box_key=recipient.box_key,
            envelope_id=str(uuid.uuid4()),
            kind="message",
            sender="bob",
            sender_node=node,
            recipient="alice",
            recipient_node=recipient.node,
            created_ms=int(time.time() * 1000),
            payload={"text": fields.get("text", "")},
        )
        envelope = json.loads(sealed.raw)
        for name in ("id", "kind", "sender", "recipient", "created_ms"):
            if name in fields and fields[name] != ENVELOPE_TEMPLATE[name]:
                envelope[name] = fields[name]  # as given, unchecked: a hostile peer
        raw = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        signature = sign_key.sign(protocol.DOMAIN_ENVELOPE + raw).signature
        return protocol.encode_batch([protocol.SignedEnvelope(raw, signature)])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                fields = json.loads(body)
                if not isinstance(fields, dict):
                    raise ValueError("not an object")
                batch = batch_for(fields)
            except (ValueError, TypeError, RecursionError) as exc:
                self._answer(400, json.dumps({"proxy_error": str(exc)[:200]}).encode())
                return
            try:
                answer = client.signed_post(upstream, INBOX_PATH, batch, timeout=30)
            except requests.RequestException as exc:
                self._answer(502, json.dumps({"proxy_error": type(exc).__name__}).encode())
                return
            self._answer(answer.status_code, answer.content)

        def _answer(self, status: int, content: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("listening", flush=True)
    server.serve_forever()


@contextlib.contextmanager
def signing_proxy(net: Network) -> Iterator[str]:
    """The signing proxy as branch, in front of hq's inbox; yields its URL."""
    port = free_port()
    branch, hq = net.node("branch"), net.node("hq")
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.security_scan", "--signing-proxy", str(port), hq.url],
        env=branch.env,
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        line = proc.stdout.readline()
        if line.strip() != "listening":
            raise RuntimeError(f"the signing proxy did not start: {line}{proc.stdout.read()}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


# --- the control: a page that is injectable on purpose -----------------------------------
@contextlib.contextmanager
def injectable_page() -> Iterator[str]:
    """Serve GET /?id=N on loopback from a query built by string formatting; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            wanted = parse_qs(urlsplit(self.path).query).get("id", ["1"])[0]
            with contextlib.closing(sqlite3.connect(":memory:")) as db:
                db.execute("CREATE TABLE people (id INTEGER, name TEXT)")
                db.executemany("INSERT INTO people VALUES (?, ?)", [(1, "ann"), (2, "ben")])
                try:
                    # Injectable on purpose: the value goes into the SQL text.
                    query = f"SELECT name FROM people WHERE id = {wanted}"
                    names = [row[0] for row in db.execute(query)]
                    status, text = 200, "<p>" + ", ".join(map(str, names)) + "</p>"
                except sqlite3.Error:
                    status, text = 500, "<p>error</p>"
            content = f"<html><body><h1>people</h1>{text}</body></html>".encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/?id=1"
    finally:
        server.shutdown()
        server.server_close()


# --- sqlmap --------------------------------------------------------------------------------
def sqlmap_argv(target: Target, *, level: int, risk: int, work: Path) -> list[str]:
    assert urlsplit(target.url).hostname == "127.0.0.1", "loopback only"
    argv = [
        "sqlmap", "-u", target.url, "--batch", f"--level={level}", f"--risk={risk}",
        "--dbms=SQLite", "--skip-waf", "--disable-coloring", "--flush-session",
        "--timeout=15", "--retries=1", "--time-sec=2", "--threads=1",
        f"--output-dir={work / 'sqlmap'}", "-t", str(work / f"{target.name}.traffic"),
    ]  # fmt: skip
    if target.data is not None:
        argv += ["--data", target.data]
    if target.cookie:
        argv += ["--cookie", target.cookie]
    for header in target.headers:
        argv += ["--headers", header]
    if target.params:
        argv += ["-p", ",".join(target.params)]
    if target.ignore_codes:
        argv += [f"--ignore-code={target.ignore_codes}"]
    # A form answers a POST with a redirect: follow it with a GET, as a browser does,
    # rather than post the same form again.
    return [*argv, "--answers=resend=N"]


_FOUND = re.compile(r"sqlmap identified the following injection point|is vulnerable")
_VERDICT = re.compile(
    r"(?:parameter|URI|header) '[^']*' (?:does not seem to be injectable|is vulnerable)"
    r"|all tested parameters do not appear to be injectable"
    r"|sqlmap identified the following injection point\(s\)"
)


def run_sqlmap(target: Target, *, level: int, risk: int, work: Path, limit_s: float) -> Outcome:
    traffic = work / f"{target.name}.traffic"
    output = work / f"{target.name}.out"
    started = time.monotonic()
    with open(output, "wb") as out:
        proc = subprocess.Popen(
            sqlmap_argv(target, level=level, risk=risk, work=work),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=limit_s)
            stopped = None
        except subprocess.TimeoutExpired:
            stopped = "time limit"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    text = output.read_text(errors="replace")
    sent = traffic.read_text(errors="replace").count("HTTP request [#") if traffic.exists() else 0
    finished = "all tested parameters do not appear" in text or _FOUND.search(text)
    if stopped is None and not finished:
        stopped = "sqlmap error"  # it stopped early; its output (kept with --keep) says why
    split = urlsplit(target.url)
    return Outcome(
        name=target.name,
        method="POST" if target.data is not None else "GET",
        path=split.path,
        parameters=target.params or ["Authorization header (node)"],
        injectable=bool(_FOUND.search(text)),
        requests=sent,
        duration_s=round(time.monotonic() - started, 1),
        stopped=stopped,
        verdicts=sorted(set(_VERDICT.findall(text))),
    )


# --- the network and the targets ---------------------------------------------------------
def form_token(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=30)
    page.raise_for_status()
    return csrf_token(page.text)


def cookie_header(session: requests.Session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def targets_for(net: Network, alice: requests.Session, proxy_url: str) -> list[Target]:
    hq = net.node("hq").url
    anonymous = requests.Session()
    login_token = form_token(anonymous, f"{hq}/login/")
    chat_token = form_token(alice, f"{hq}/chat/bob/")
    profile_token = form_token(alice, f"{hq}/profile/")
    forged = (
        'Authorization: P2P-Node node="branch*",ts="1700000000",'
        f'nonce="{"0" * 32}",sig="{"A" * 86}"'
    )
    return [
        Target(
            "login",
            f"{hq}/login/",
            data=f"csrfmiddlewaretoken={login_token}&username=alice&password=wrong",
            cookie=cookie_header(anonymous),
            params=["username", "password"],
            time_factor=1.6,  # every try hashes a password (Argon2): about 0.2 s each
        ),
        Target(
            "compose",
            f"{hq}/chat/bob/",
            data=f"csrfmiddlewaretoken={chat_token}&text=hello",
            cookie=cookie_header(alice),
            params=["text", "sessionid"],
        ),
        Target(
            "profile",
            f"{hq}/profile/",
            data=(
                f"csrfmiddlewaretoken={profile_token}&full_name=Alice&position=Clerk"
                "&location=Paris&description=Hello"
            ),
            cookie=cookie_header(alice),
            params=["full_name", "position", "location", "description"],
        ),
        Target(
            "peer inbox (signed)",
            proxy_url,
            data=json.dumps(ENVELOPE_TEMPLATE),
            params=list(ENVELOPE_TEMPLATE),
        ),
        Target(
            "peer inbox (unsigned)",
            f"{hq}{INBOX_PATH}",
            data='{"envelopes":[]}',
            headers=[forged],
            ignore_codes="401",
        ),
    ]


def start_network(root: Path) -> tuple[Network, requests.Session]:
    net = Network(root, nodes=("hq", "branch"), settings=SCAN_SETTINGS)
    net.start()
    secrets = {
        "alice": net.create_person("hq", "alice", PASSWORD),
        "bob": net.create_person("branch", "bob", PASSWORD),
    }
    alice = net.login("hq", "alice", PASSWORD, secrets["alice"])
    bob = net.login("branch", "bob", PASSWORD, secrets["bob"])
    wait_until(
        lambda: (
            alice.get(f"{net.node('hq').url}/chat/bob/", timeout=10).status_code == 200
            and bob.get(f"{net.node('branch').url}/chat/alice/", timeout=10).status_code == 200
        ),
        timeout=120,
        message="alice and bob in each other's directory",
        interval=1,
    )
    return net, alice


def print_summary(outcomes: list[Outcome]) -> None:
    print(f"\n{'target':<24}{'result':<18}{'requests':>9}{'time':>8}  parameters")
    for o in outcomes:
        result = "INJECTABLE" if o.injectable else "not injectable"
        if o.stopped and not o.injectable:
            result = f"unknown ({o.stopped})" if o.stopped == "sqlmap error" else result + "*"
        params = ", ".join(o.parameters)
        print(f"{o.name:<24}{result:<18}{o.requests:>9}{o.duration_s:>7.0f}s  {params}")
    if any(o.stopped == "time limit" for o in outcomes):
        print("* stopped at its time limit: the tests sqlmap made until then found nothing")


def sqlmap_version() -> str:
    answer = subprocess.run(["sqlmap", "--version"], capture_output=True, text=True, timeout=60)
    return answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--level", type=int, default=3, choices=range(1, 6))
    # Risk 3 adds OR-based payloads, which may change every row an UPDATE touches.
    parser.add_argument("--risk", type=int, default=2, choices=range(1, 3))
    parser.add_argument("--per-target-s", type=float, default=150.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "security-scan.json")
    parser.add_argument("--keep", action="store_true", help="keep the network's folder")
    parser.add_argument(
        "--signing-proxy", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.signing_proxy:
        serve_signing_proxy(int(args.signing_proxy[0]), args.signing_proxy[1])
        return 0
    if shutil.which("sqlmap") is None:
        print("sqlmap is not installed: run bin/security-scan (it installs it)", file=sys.stderr)
        return 2

    # bin/security-scan's overall timeout sends SIGTERM: stop the network on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="p2p-security-scan-"))
    print(f"network in {root}", flush=True)
    net = None
    outcomes: list[Outcome] = []
    try:
        with injectable_page() as url:
            print("scanning the control, injectable on purpose", flush=True)
            page = Target("control (injectable)", url, params=["id"])
            control = run_sqlmap(page, level=1, risk=1, work=root, limit_s=args.per_target_s)
        net, alice = start_network(root)
        with signing_proxy(net) as proxy_url:
            for target in targets_for(net, alice, proxy_url):
                limit_s = args.per_target_s * target.time_factor
                print(f"scanning {target.name} (at most {limit_s:.0f} s)", flush=True)
                outcomes.append(
                    run_sqlmap(target, level=args.level, risk=args.risk, work=root, limit_s=limit_s)
                )
    finally:
        if net is not None:
            net.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    print_summary([control, *outcomes])
    report = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sqlmap": sqlmap_version(),
        "level": args.level,
        "risk": args.risk,
        "per_target_s": args.per_target_s,
        "duration_s": round(time.monotonic() - started, 1),
        "injectable": any(o.injectable for o in outcomes),
        "control_found_injectable": control.injectable,
        "targets": [o.as_dict() for o in outcomes],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    if report["injectable"]:
        return 1
    if not control.injectable:
        print("the control was not found injectable: this scan proves nothing", file=sys.stderr)
        return 2
    return 2 if not outcomes or any(o.stopped == "sqlmap error" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
