"""The devnet (demo, tests, bench) is ready only when it is usable, and keeps itself running.

Readiness and supervision are driven here with real child processes and a real Redis;
the whole demo is driven in tests/test_demo.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import redis
from django.core.management import CommandError, call_command

from p2psocial import redis_client, workerstate
from p2psocial.devnet import (
    DevnetError,
    Network,
    Process,
    Server,
    Supervisor,
    free_port,
    readiness_problems,
)
from tests.helpers.redis import running_redis

NODES = ["hq", "branch"]


def healthy_node(local_people: int = 3, refused: tuple[str, ...] = (), **directory: int) -> dict:
    return {
        "status": "ok",
        "worker_heartbeat_age_s": 1.0,
        "directory_people": directory,
        "local_people": local_people,
        "refused_usernames": list(refused),
    }


def all_healthy() -> dict:
    return {
        "login": {"status": "ok"},
        "hq": healthy_node(hq=3, branch=3),
        "branch": healthy_node(hq=3, branch=3),
    }


# --- readiness -----------------------------------------------------------------------------
def test_a_network_whose_offices_list_each_other_is_ready():
    assert readiness_problems(all_healthy(), NODES, login_server="login") == []


def test_it_is_not_ready_while_a_directory_lacks_people_of_the_other_office():
    figures = all_healthy()
    figures["hq"] = healthy_node(hq=3, branch=2)
    problems = readiness_problems(figures, NODES, login_server="login")
    assert problems == ["hq's directory lists 2 of 3 people of branch"]


def test_it_waits_for_the_people_a_node_has_now_not_those_it_once_had():
    figures = all_healthy()
    figures["branch"] = healthy_node(local_people=2, hq=3, branch=2)  # one deactivated
    figures["hq"] = healthy_node(hq=3, branch=2)
    assert readiness_problems(figures, NODES, login_server="login") == []


def test_a_name_held_by_another_office_is_not_waited_for():
    figures = all_healthy()
    figures["branch"] = healthy_node(local_people=4, refused=("alice",), hq=3, branch=3)
    assert readiness_problems(figures, NODES, login_server="login") == []


def test_it_is_not_ready_before_a_worker_has_a_heartbeat_or_a_server_answers():
    figures = all_healthy()
    figures["branch"]["worker_heartbeat_age_s"] = None
    figures["login"] = None
    problems = readiness_problems(figures, NODES, login_server="login")
    assert problems == [
        "the login server does not answer /health yet",
        "branch's worker has not reported a heartbeat yet",
    ]


def test_wait_ready_keeps_waiting_and_then_says_what_is_missing(tmp_path):
    net = Network(tmp_path)
    asked = []

    def still_missing(nodes):
        asked.append(nodes)
        return ["hq's directory lists 0 of 3 people of branch"]

    net.readiness_problems = still_missing
    with pytest.raises(DevnetError, match="hq's directory lists 0 of 3 people of branch"):
        net.wait_ready(NODES, timeout=0.3, interval=0.05)
    assert len(asked) > 1 and asked[0] == NODES


def test_wait_ready_returns_once_the_directories_are_complete(tmp_path):
    net = Network(tmp_path)
    answers = iter([["hq's directory lists 2 of 3 people of branch"]] * 3 + [[]])
    calls = []

    def problems(nodes):
        calls.append(1)
        return next(answers)

    net.readiness_problems = problems
    net.wait_ready(NODES, timeout=10, interval=0.01)
    assert len(calls) == 4


# --- supervision ---------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


def python_process(server: Server, kind: str, code: str) -> Process:
    proc = server._process(kind, [sys.executable, "-c", code])
    proc.start()
    return proc


def login_server(tmp_path: Path) -> tuple[Network, Server]:
    net = Network(tmp_path)
    server = Server(
        role="loginserver", name="login", data_dir=tmp_path / "login", port=free_port(),
        redis_url="redis://127.0.0.1:9/0",
    )  # fmt: skip
    net.login_server = server
    return net, server


def test_a_process_that_exits_is_reported_with_its_log_and_restarted_after_a_backoff(tmp_path):
    net, server = login_server(tmp_path)
    proc = python_process(server, "web", "import sys; print('port already bound'); sys.exit(3)")
    proc.popen.wait(timeout=10)
    first_pid = proc.pid
    clock, lines = Clock(), []
    supervisor = Supervisor(net, lines.append, clock=clock)

    supervisor.check()
    assert len(lines) == 1
    assert "login-web exited unexpectedly (exit code 3)" in lines[0]
    assert "port already bound" in lines[0]
    assert "Restarting login-web in 1 s" in lines[0]

    supervisor.check()  # the backoff has not passed
    assert len(lines) == 1 and proc.pid == first_pid

    clock.now += 1
    supervisor.check()
    assert lines[1] == f"login-web restarted (pid {proc.pid}, restart 1)."
    assert proc.pid != first_pid and proc.restarts == 1
    proc.popen.wait(timeout=10)

    supervisor.check()  # it died again at once: the next delay doubles
    assert "Restarting login-web in 2 s" in lines[2]
    proc.stop()


def test_a_killed_process_is_named_with_its_signal(tmp_path):
    net, server = login_server(tmp_path)
    proc = python_process(server, "web", "import time; time.sleep(60)")
    proc.popen.kill()
    proc.popen.wait(timeout=10)
    lines = []
    Supervisor(net, lines.append).check()
    assert "login-web exited unexpectedly (signal SIGKILL)" in lines[0]
    proc.stop()


def test_a_process_stopped_on_purpose_is_left_alone(tmp_path):
    net, server = login_server(tmp_path)
    proc = python_process(server, "web", "import time; time.sleep(60)")
    proc.stop()
    lines = []
    Supervisor(net, lines.append).check()
    assert lines == [] and not proc.alive


def stalled_worker_network(tmp_path: Path, url: str) -> tuple[Network, Server, Process]:
    net = Network(tmp_path)
    node = Server(role="node", name="hq", data_dir=tmp_path / "hq", port=free_port(),
                  redis_url=url, extra_env={"P2P_HEARTBEAT_INTERVAL_S": "2"})  # fmt: skip
    net.nodes["hq"] = node
    worker = python_process(node, "worker", "import time; time.sleep(60)")
    worker.started_at -= 60  # past the grace period a fresh worker gets
    return net, node, worker


def test_a_worker_alive_but_not_consuming_while_tasks_wait_is_restarted(tmp_path):
    with running_redis(tmp_path) as url:
        net, node, worker = stalled_worker_network(tmp_path, url)
        client = redis.Redis.from_url(url)
        client.lpush(node.celery_queue, b"a delivery task")
        client.set(workerstate.heartbeat_key(node.celery_queue), f"{time.time() - 30:.3f}")
        first_pid, lines = worker.pid, []

        Supervisor(net, lines.append).check()

        assert lines[0] == (
            "hq-worker is alive but not consuming (last heartbeat 30 s ago, 1 task(s) queued); "
            "killing it to restart."
        )
        assert lines[1] == f"hq-worker restarted (pid {worker.pid}, restart 1)."
        assert worker.alive and worker.pid != first_pid
        worker.stop()


@pytest.mark.parametrize("case", ["fresh heartbeat", "nothing queued"])
def test_a_worker_with_a_fresh_heartbeat_or_an_empty_queue_is_left_alone(tmp_path, case):
    with running_redis(tmp_path) as url:
        net, node, worker = stalled_worker_network(tmp_path, url)
        client = redis.Redis.from_url(url)
        if case == "fresh heartbeat":
            client.lpush(node.celery_queue, b"a delivery task")
            client.set(workerstate.heartbeat_key(node.celery_queue), f"{time.time():.3f}")
        first_pid, lines = worker.pid, []

        Supervisor(net, lines.append).check()

        assert lines == [] and worker.pid == first_pid
        worker.stop()


@pytest.mark.parametrize(
    ("age_s", "queued", "redis_uptime_s", "stalled"),
    [
        (30.0, 3, 600.0, True),  # tasks wait, the heartbeat is old
        (None, 3, 600.0, True),  # tasks wait, no heartbeat at all in a Redis up for long
        (None, 3, 2.0, False),  # Redis just restarted: it lost the heartbeat, not the worker
        (5.0, 3, 600.0, False),  # a recent heartbeat
        (None, 0, 600.0, False),  # nothing waits: beat is quiet, not the worker stuck
    ],
)
def test_the_stalled_worker_rule(age_s, queued, redis_uptime_s, stalled):
    assert (
        workerstate.worker_stalled(
            age_s=age_s, queued=queued, stall_after=12.0, redis_uptime_s=redis_uptime_s
        )
        is stalled
    )


def test_a_worker_without_a_heartbeat_in_a_just_restarted_redis_is_left_alone(tmp_path):
    with running_redis(tmp_path) as url:
        net, node, worker = stalled_worker_network(tmp_path, url)
        redis.Redis.from_url(url).lpush(node.celery_queue, b"a delivery task")
        first_pid, lines = worker.pid, []

        Supervisor(net, lines.append).check()

        assert lines == [] and worker.pid == first_pid
        worker.stop()


# --- the production watchdog: manage.py check_worker -------------------------------------
@pytest.fixture
def node_redis(tmp_path, settings):
    with running_redis(tmp_path) as url:
        settings.REDIS_URL = url
        redis_client.get.cache_clear()
        yield redis.Redis.from_url(url)
    redis_client.get.cache_clear()


def test_check_worker_passes_while_the_heartbeat_is_fresh(node_redis, settings, capsys):
    node_redis.lpush(settings.CELERY_TASK_DEFAULT_QUEUE, b"task")
    node_redis.set(redis_client.heartbeat_key(), f"{time.time():.3f}")
    call_command("check_worker")
    assert "worker ok: heartbeat 0 s ago, 1 task(s) queued" in capsys.readouterr().out


def test_check_worker_fails_when_tasks_wait_and_no_heartbeat_comes(node_redis, settings, capsys):
    node_redis.lpush(settings.CELERY_TASK_DEFAULT_QUEUE, b"task")
    stale = time.time() - workerstate.stall_after_s(settings.HEARTBEAT_INTERVAL_S) - 5
    node_redis.set(redis_client.heartbeat_key(), f"{stale:.3f}")
    with pytest.raises(SystemExit) as failed:
        call_command("check_worker")
    assert failed.value.code == 1
    assert "worker stalled" in capsys.readouterr().err


def test_check_worker_says_so_when_redis_itself_is_down(settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    redis_client.get.cache_clear()
    try:
        with pytest.raises(CommandError, match="Redis does not answer") as failed:
            call_command("check_worker")
        assert failed.value.returncode == 2
    finally:
        redis_client.get.cache_clear()


# --- what keeps the heartbeat honest --------------------------------------------------------
def test_a_task_starting_refreshes_the_heartbeat(node_redis, monkeypatch):
    from p2psocial import tasks

    monkeypatch.setattr(tasks, "_last_activity_write", 0.0)
    tasks.record_activity()
    first = float(node_redis.get(redis_client.heartbeat_key()))
    tasks.record_activity()  # within a second: no second write
    assert float(node_redis.get(redis_client.heartbeat_key())) == first
    assert redis_client.worker_state().heartbeat_age_s < 5


def test_only_one_caller_at_a_time_goes_ahead(node_redis):
    with redis_client.single_flight("report", ttl_s=30) as first:
        with redis_client.single_flight("report", ttl_s=30) as second:
            assert (first, second) == (True, False)
    with redis_client.single_flight("report", ttl_s=30) as after:
        assert after is True


def test_a_periodic_report_is_skipped_while_another_is_in_flight(node_redis, monkeypatch):
    from peers import services as peer_services
    from peers import tasks as peer_tasks

    calls = []
    monkeypatch.setattr(peer_tasks, "is_joined", lambda: True)
    monkeypatch.setattr(peer_services, "report_presence", lambda **kw: calls.append(kw))
    with redis_client.single_flight("report-presence", ttl_s=30):
        peer_tasks.report_presence(periodic=True)
        peer_tasks.report_presence()  # a login's report runs all the same
    assert calls == [{"exclude_session_hash": None}]
