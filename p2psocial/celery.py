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
    sender.add_periodic_task(
        settings.PRESENCE_REPORT_INTERVAL_S,
        sender.signature("peers.tasks.report_presence"),
        name="report presence",
    )
    sender.add_periodic_task(
        settings.DIRECTORY_FETCH_INTERVAL_S,
        sender.signature("peers.tasks.fetch_directory"),
        name="fetch directory",
    )
    sender.add_periodic_task(
        settings.OUTBOX_SWEEP_INTERVAL_S,
        sender.signature("messaging.tasks.sweep_outbox"),
        name="sweep outbox",
    )
    sender.add_periodic_task(
        settings.HEARTBEAT_INTERVAL_S,
        sender.signature("p2psocial.tasks.heartbeat"),
        name="worker heartbeat",
    )
