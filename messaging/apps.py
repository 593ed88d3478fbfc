from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _register_search_fold(sender, connection, **kwargs) -> None:
    """SQLite's search triggers (migration 0006) index messages in search.index_form: a
    Python function every connection that writes messages must have."""
    if connection.vendor == "sqlite":
        from .search import index_form

        def fold(value):
            return None if value is None else index_form(str(value))

        connection.connection.create_function("p2p_search_fold", 1, fold, deterministic=True)


class MessagingConfig(AppConfig):
    name = "messaging"

    def ready(self) -> None:
        connection_created.connect(_register_search_fold, dispatch_uid="p2p_search_fold")
