"""Path converters for the apps' URLs; importing this module registers them.

<username:...> matches only what the protocol accepts as a username, so any other path
segment (a NUL byte, '@', accented letters) is a 404 before a view or a query sees it.
"""

from __future__ import annotations

from django.urls import register_converter

from peers import protocol


class UsernameConverter:
    regex = protocol._USERNAME.pattern  # the protocol's own rule, not a copy of it

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UsernameConverter, "username")
