"""The Celery app: broker is REDIS_URL (or the embedded Redis), tasks live in each app."""

import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_ready

from .logging import request_id_var

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psocial.settings")

SESSION_CLEANUP_INTERVAL_S = 3600

app = Celery("p2psocial")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.conf.imports = ("p2psocial.tasks",)


@before_task_publish.connect
def _carry_request_id(headers: dict | None = None, **kwargs: object) -> None:
    """A task enqueued while serving a request carries its id (to follow one message)."""
    request_id = request_id_var.get()
    if headers is not None and request_id != "-":
        headers.setdefault("p2p_request_id", request_id)


@task_prerun.connect
def _adopt_request_id(task=None, **kwargs: object) -> None:
    if task is None:
        return
    request_id = getattr(task.request, "p2p_request_id", None)
    request_id_var.set(request_id or f"task-{task.request.id}")


@task_prerun.connect
def _record_activity(**kwargs: object) -> None:
    from .tasks import record_activity

    record_activity()


@task_postrun.connect
def _forget_request_id(**kwargs: object) -> None:
    request_id_var.set("-")


@worker_ready.connect
def _first_heartbeat(**kwargs: object) -> None:
    from .tasks import heartbeat

    heartbeat()


@app.on_after_finalize.connect
def _schedule_periodic_tasks(sender: Celery, **kwargs: object) -> None:
    from django.conf import settings

    if settings.IS_LOGIN_SERVER:
        return
    # A periodic task that waited longer than its own interval is dropped (expires):
    # while a worker is down, stale reports and sweeps must not pile up in Redis.
    periodic = [
        (settings.PRESENCE_REPORT_INTERVAL_S, "peers.tasks.report_presence", "report presence"),
        (settings.DIRECTORY_FETCH_INTERVAL_S, "peers.tasks.fetch_directory", "fetch directory"),
        (settings.OUTBOX_SWEEP_INTERVAL_S, "messaging.tasks.sweep_outbox", "sweep outbox"),
        (settings.HEARTBEAT_INTERVAL_S, "p2psocial.tasks.heartbeat", "worker heartbeat"),
        (SESSION_CLEANUP_INTERVAL_S, "accounts.tasks.clear_expired_sessions", "clear sessions"),
    ]
    for interval, task, name in periodic:
        kwargs = {"periodic": True} if task == "peers.tasks.report_presence" else {}
        sender.add_periodic_task(
            interval,
            sender.signature(task, kwargs=kwargs, options={"expires": interval}),
            name=name,
        )
