from django.apps import AppConfig


class PeersConfig(AppConfig):
    name = "peers"

    def ready(self) -> None:
        from django.conf import settings

        from . import signals

        if not settings.IS_LOGIN_SERVER:
            signals.connect()
