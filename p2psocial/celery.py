"""The Celery app: broker is REDIS_URL (or the embedded Redis), tasks live in each app."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psocial.settings")

app = Celery("p2psocial")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.conf.imports = ("p2psocial.tasks",)


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
    ]
    for interval, task, name in periodic:
        sender.add_periodic_task(
            interval, sender.signature(task, options={"expires": interval}), name=name
        )
