"""The demo: a login server and two office nodes on loopback, with demo people.

    bin/demo [--data demo-data] [--reset] [--port-base 8000]

Starts one embedded Redis, the login server, nodes "hq" and "branch" (web, Celery
worker and beat each), enrols the nodes, creates demo people with profiles and the
administrators, waits until each office lists the other's people, then prints how to log
in and writes the same facts to DATA/demo.json. While it runs, a process that exits is
restarted (and a worker that stops consuming too), each restart said on the output.
Ctrl-C (or SIGTERM) stops every process it started; running it again resumes with the
same data. Logs: DATA/<server>/logs/.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

from .devnet import BASE_DIR, DevnetError, Network, PortInUse, Supervisor

PEOPLE = [
    ("hq", "alice", "Alice Martin", "Chief Executive Officer", "Paris", (52, 101, 164)),
    ("hq", "bob", "Bob Okafor", "Chief Financial Officer", "Paris", (46, 139, 87)),
    ("branch", "carol", "Carol Nguyễn", "Head of Sales", "Lyon", (178, 34, 52)),
    ("branch", "dave", "Dávid Kovács", "Chief Technology Officer", "Lyon", (120, 81, 169)),
]
OFFICE_ADMINS = [
    ("hq", "hq-it", "Hana Ito (HQ IT)"),
    ("branch", "branch-it", "Bruno Costa (branch IT)"),
]
LOGIN_SERVER_ADMIN = ("netadmin", "Nora Lindqvist (network administrator)")
DEMO_SETTINGS = {
    "P2P_PRESENCE_REPORT_INTERVAL_S": "5",
    "P2P_DIRECTORY_FETCH_INTERVAL_S": "3",
    "P2P_OUTBOX_SWEEP_INTERVAL_S": "2",
    # a worker that stops consuming is restarted after 6 intervals without a heartbeat
    "P2P_HEARTBEAT_INTERVAL_S": "3",
}
# Creating people, enrolment and the first directory round trips on a busy 2-core machine.
READY_TIMEOUT_S = 180.0


def otpauth_uri(username: str, node: str, secret: str) -> str:
    label = quote(f"p2psocial {node}:{username}")
    return f"otpauth://totp/{label}?secret={secret}&issuer=p2psocial&digits=6&period=30"


def make_picture(path: Path, initials: str, colour: tuple[int, int, int]) -> Path:
    """A plain avatar: initials on a coloured square."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (256, 256), colour)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=110)
    draw.text((128, 128), initials, fill=(255, 255, 255), font=font, anchor="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")
    return path


def new_password() -> str:
    return "-".join(secrets.token_urlsafe(6) for _ in range(3))


def login_facts(username: str, server: str, password: str, secret: str) -> dict:
    return {
        "username": username,
        "password": password,
        "totp_secret": secret,
        "otpauth_uri": otpauth_uri(username, server, secret),
    }


def create_people(net: Network) -> list[dict]:
    people = []
    for node, username, full_name, position, location, colour in PEOPLE:
        password = new_password()
        initials = "".join(part[0] for part in full_name.split()[:2])
        picture = make_picture(net.root / "pictures" / f"{username}.png", initials, colour)
        secret = net.create_person(
            node, username, password, full_name=full_name, position=position,
            location=location, picture=str(picture),
            description=f"{position} at the {node} office. Ask me anything ✨",
        )  # fmt: skip
        people.append(
            {"node": node, "full_name": full_name, **login_facts(username, node, password, secret)}
        )
    return people


def create_admins(net: Network) -> list[dict]:
    """One office administrator per node and the login server's administrator."""
    admins = []
    for node, username, full_name in OFFICE_ADMINS:
        password = new_password()
        secret = net.create_person(
            node, username, password, full_name=full_name, position="Office IT", admin=True
        )
        admins.append(
            {"node": node, "role": "office administrator", "full_name": full_name,
             **login_facts(username, node, password, secret)}
        )  # fmt: skip
    username, full_name = LOGIN_SERVER_ADMIN
    password = new_password()
    secret = net.create_login_server_admin(username, password, full_name=full_name)
    admins.append(
        {"node": None, "role": "login server administrator", "full_name": full_name,
         **login_facts(username, "login", password, secret)}
    )  # fmt: skip
    return admins


def _print_login(out, who: dict, url: str, *, qr: bool) -> None:
    secret = who["totp_secret"]
    out.write(
        f"\n  {who['full_name']} - {who['username']} ({url})\n"
        f"    password:    {who['password']}\n"
        f"    TOTP secret: {secret}   (oathtool --totp -b {secret})\n"
        f"    otpauth:     {who['otpauth_uri']}\n"
    )
    if qr:
        import qrcode

        code = qrcode.QRCode(border=1)
        code.add_data(who["otpauth_uri"])
        code.print_ascii(out=out, invert=True)


def print_summary(facts: dict, *, qr: bool) -> None:
    out = sys.stdout
    out.write("\np2psocial demo network\n\n")
    out.write(f"  login server  {facts['login_server']['url']}\n")
    for name, node in facts["nodes"].items():
        out.write(f"  node {name:<8} {node['url']}\n")
    out.write("\nPeople (password, then the 6-digit code from an authenticator app):\n")
    for person in facts["people"]:
        url = facts["nodes"][person["node"]]["url"]
        _print_login(out, person, f"on {person['node']}, {url}/login/", qr=qr)
    out.write(
        "\nAdministrators (the Django admin: username, password and code on one page).\n"
        "Office administrators manage their office's people (create, deactivate, reset the\n"
        "second factor, rotate keys) and see delivery state, never message content. The\n"
        "login server administrator issues enrolment tokens, revokes nodes, compares\n"
        "fingerprints and sees presence.\n"
    )
    for admin in facts["admins"]:
        if admin["node"]:
            url = facts["nodes"][admin["node"]]["url"]
        else:
            url = facts["login_server"]["url"]
        _print_login(out, admin, f"{admin['role']}, {url}/admin/", qr=qr)
    out.write(f"\nThe same facts, for scripts: {facts['file']}\n")
    out.write(f"Logs: {facts['data']}/<server>/logs/{{web,worker,beat}}.log\n")
    out.flush()


def say(line: str) -> None:
    """One line of the demo's own output (restarts, stopping), timestamped."""
    stamp = time.strftime("%H:%M:%S")
    sys.stdout.write("".join(f"[{stamp}] {part}\n" for part in line.splitlines()))
    sys.stdout.flush()


def load_credentials(root: Path) -> dict | None:
    """People and administrators of an earlier run (credentials.json, or an older demo.json)."""
    for name in ("credentials.json", "demo.json"):
        path = root / name
        if path.exists():
            return json.loads(path.read_text())
    return None


def write_private(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the p2psocial demo network on loopback.")
    parser.add_argument("--data", type=Path, default=BASE_DIR / "demo-data")
    parser.add_argument("--reset", action="store_true", help="delete the demo data first")
    parser.add_argument(
        "--port-base",
        type=int,
        default=8000,
        help="login server on BASE, nodes on BASE+1.., Redis on BASE+390",
    )
    parser.add_argument("--no-qr", action="store_true", help="do not print terminal QR codes")
    args = parser.parse_args(argv)

    root: Path = args.data.resolve()
    if args.reset and root.exists():
        shutil.rmtree(root)
    ports = {"login": args.port_base, "hq": args.port_base + 1, "branch": args.port_base + 2,
             "redis": args.port_base + 390}  # fmt: skip

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    root.mkdir(parents=True, exist_ok=True)
    facts_file = root / "demo.json"
    known = load_credentials(root) or {}
    facts_file.unlink(missing_ok=True)  # written again once this run is ready
    say("starting Redis, the login server and the offices hq and branch...")
    with Network(root, nodes=("hq", "branch"), settings=DEMO_SETTINGS, ports=ports) as net:
        people = known.get("people") or create_people(net)
        admins = known.get("admins") or create_admins(net)
        write_private(root / "credentials.json", {"people": people, "admins": admins})
        facts = {
            "data": str(root),
            "file": str(facts_file),
            "login_server": {"url": net.login_server.url},
            "nodes": {name: {"url": node.url} for name, node in net.nodes.items()},
            "people": people,
            "admins": admins,
        }
        say("waiting until each office lists the other's people...")
        net.wait_ready(timeout=READY_TIMEOUT_S, stop=stop.is_set)
        if not stop.is_set():
            write_private(facts_file, facts)
            print_summary(facts, qr=not args.no_qr)
            say("p2psocial demo is ready. Ctrl-C stops it.")
        supervisor = Supervisor(net, say)
        while not stop.wait(1.0):
            supervisor.check()
        say("stopping...")
    say("stopped.")
    return 0


def run() -> int:
    try:
        return main()
    except PortInUse as error:
        sys.stderr.write(
            f"\nThe demo could not start: {error}.\n"
            "Is another demo or program using it? Try --port-base with another number, or "
            "stop the other program.\n"
        )
        return 1
    except DevnetError as error:
        sys.stderr.write(f"\nThe demo could not start: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(run())
