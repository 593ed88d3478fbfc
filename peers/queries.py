"""Reads about peers and the login server."""


def login_server_health() -> dict:
    return {}
