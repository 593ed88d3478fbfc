"""The demo: a login server and two office nodes on loopback, with demo people.

    bin/demo [--data demo-data] [--reset] [--port-base 8000]

Starts one embedded Redis, the login server, nodes "hq" and "branch" (web, Celery
worker and beat each), enrols the nodes, creates demo people with profiles, prints how
to log in, and writes the same facts to DATA/demo.json. Ctrl-C (or SIGTERM) stops every
process it started; running it again resumes with the same data. Logs: DATA/<server>/logs/.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import quote

from .devnet import BASE_DIR, DevnetError, Network

PEOPLE = [
    ("hq", "alice", "Alice Martin", "Chief Executive Officer", "Paris", (52, 101, 164)),
    ("hq", "bob", "Bob Okafor", "Chief Financial Officer", "Paris", (46, 139, 87)),
    ("branch", "carol", "Carol Nguyễn", "Head of Sales", "Lyon", (178, 34, 52)),
    ("branch", "dave", "Dávid Kovács", "Chief Technology Officer", "Lyon", (120, 81, 169)),
]
DEMO_SETTINGS = {
    "P2P_PRESENCE_REPORT_INTERVAL_S": "5",
    "P2P_DIRECTORY_FETCH_INTERVAL_S": "3",
    "P2P_OUTBOX_SWEEP_INTERVAL_S": "2",
}


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


def create_people(net: Network) -> list[dict]:
    people = []
    for node, username, full_name, position, location, colour in PEOPLE:
        password = "-".join(secrets.token_urlsafe(6) for _ in range(3))
        initials = "".join(part[0] for part in full_name.split()[:2])
        picture = make_picture(net.root / "pictures" / f"{username}.png", initials, colour)
        secret = net.create_person(
            node, username, password, full_name=full_name, position=position,
            location=location, picture=str(picture),
            description=f"{position} at the {node} office. Ask me anything ✨",
        )  # fmt: skip
        people.append(
            {
                "node": node,
                "username": username,
                "full_name": full_name,
                "password": password,
                "totp_secret": secret,
                "otpauth_uri": otpauth_uri(username, node, secret),
            }
        )
    return people


def print_summary(facts: dict, *, qr: bool) -> None:
    out = sys.stdout
    out.write("\np2psocial demo is running. Ctrl-C stops it.\n\n")
    out.write(f"  login server  {facts['login_server']['url']}\n")
    for name, node in facts["nodes"].items():
        out.write(f"  node {name:<8} {node['url']}\n")
    out.write("\nPeople (password, then the 6-digit code from an authenticator app):\n")
    for person in facts["people"]:
        url = facts["nodes"][person["node"]]["url"]
        secret = person["totp_secret"]
        out.write(
            f"\n  {person['full_name']} - {person['username']} on {person['node']} ({url}/login/)\n"
            f"    password:    {person['password']}\n"
            f"    TOTP secret: {secret}   (oathtool --totp -b {secret})\n"
            f"    otpauth:     {person['otpauth_uri']}\n"
        )
        if qr:
            import qrcode

            code = qrcode.QRCode(border=1)
            code.add_data(person["otpauth_uri"])
            code.print_ascii(out=out, invert=True)
    out.write(f"\nThe same facts, for scripts: {facts['file']}\n")
    out.write(f"Logs: {facts['data']}/<server>/logs/{{web,worker,beat}}.log\n\n")
    out.flush()


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

    facts_file = root / "demo.json"
    with Network(root, nodes=("hq", "branch"), settings=DEMO_SETTINGS, ports=ports) as net:
        if facts_file.exists():
            people = json.loads(facts_file.read_text())["people"]
        else:
            people = create_people(net)
        facts = {
            "data": str(root),
            "file": str(facts_file),
            "login_server": {"url": net.login_server.url},
            "nodes": {name: {"url": node.url} for name, node in net.nodes.items()},
            "people": people,
        }
        facts_file.write_text(json.dumps(facts, indent=2, ensure_ascii=False))
        facts_file.chmod(0o600)
        print_summary(facts, qr=not args.no_qr)
        while not stop.wait(1.0):
            for server in net.all_servers():
                for proc in server.processes.values():
                    if proc.popen is not None and not proc.alive:
                        sys.stderr.write(f"{proc.name} exited; see {proc.log_path}\n")
                        stop.set()
        sys.stdout.write("stopping...\n")
    sys.stdout.write("stopped.\n")
    return 0


def run() -> int:
    try:
        return main()
    except DevnetError as error:
        sys.stderr.write(
            f"\nThe demo could not start: {error}\n"
            "Is another demo or program using its ports? Try --port-base with another "
            "number, or stop the other program.\n"
        )
        return 1


if __name__ == "__main__":
    sys.exit(run())
