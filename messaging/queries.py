"""Reads about messages and delivery."""


def delivery_health() -> dict:
    return {}
