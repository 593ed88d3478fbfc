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


def _resign_group_records(sender, key, **kwargs) -> None:
    from .groups import resign_records

    resign_records(key)


class MessagingConfig(AppConfig):
    name = "messaging"

    def ready(self) -> None:
        from peers.identity import node_key_rotated

        connection_created.connect(_register_search_fold, dispatch_uid="p2p_search_fold")
        node_key_rotated.connect(_resign_group_records, dispatch_uid="p2p_group_records")
