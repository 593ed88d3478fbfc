"""ASGI entry point: `uvicorn p2psocial.asgi:application`."""

import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2psocial.settings")

application = get_asgi_application()

from django.conf import settings  # noqa: E402 (configured by get_asgi_application)


class BodyLimit:
    """Refuse a request body over its limit before it is read, not after.

    Django's ASGI handler reads the whole body (into a temporary file) before any view
    runs, so a view's 413 comes only after the last byte, and uvicorn alone bounds nothing:
    one client could stream gigabytes to disk. Each path takes what it needs: enrolment
    P2P_ENROL_MAX_BODY_BYTES (anyone may call it), the rest of the node API (/api/)
    P2P_PEER_MAX_BODY_BYTES, the pages that take a profile picture (the profile form, the
    admin) a form plus the largest picture, a conversation's upload (/chat/<name>/files/)
    a form plus the largest file, and every other page a form.
    """

    # Pages whose forms carry a profile picture.
    PICTURE_PREFIXES = ("/profile/", "/admin/")

    def __init__(self, app):
        self.app = app

    @staticmethod
    def is_upload(path: str) -> bool:
        """A conversation's file upload (/chat/<name>/files/)."""
        return path.startswith("/chat/") and path.endswith("/files/")

    @classmethod
    def limit_for(cls, path: str) -> int:
        if path == "/api/v1/enrol":
            return settings.ENROL_MAX_BODY_BYTES
        if path.startswith("/api/"):
            return settings.PEER_MAX_BODY_BYTES
        if path.startswith(cls.PICTURE_PREFIXES):
            return settings.DATA_UPLOAD_MAX_MEMORY_SIZE + settings.PROFILE_PICTURE_MAX_BYTES
        if cls.is_upload(path):
            return settings.DATA_UPLOAD_MAX_MEMORY_SIZE + settings.FILE_MAX_BYTES
        return settings.DATA_UPLOAD_MAX_MEMORY_SIZE

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        if self.is_upload(scope["path"]) and not _has_session_cookie(headers.get(b"cookie", b"")):
            # Django spools a whole body before any view can refuse it: a large upload
            # from someone with no session at all is refused before it is read.
            await _refuse(send, 401, "login_required", "log in to upload")
            return
        received, over, started = 0, False, False

        async def bounded_receive():
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body: cut when it passes the limit
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, bounded_receive, tracked_send)
        if over and not started:
            await _too_large(send, limit)


def _has_session_cookie(header: bytes) -> bool:
    name = settings.SESSION_COOKIE_NAME.encode()
    return any(
        part.strip().split(b"=", 1)[0] == name and part.strip()[len(name) + 1 :]
        for part in header.split(b";")
    )


async def _too_large(send, limit: int) -> None:
    await _refuse(send, 413, "body_too_large", f"body exceeds {limit} bytes")


async def _refuse(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


if settings.IS_LOGIN_SERVER:
    # The node API's hot endpoints (report, directory) skip Django's browser machinery.
    from loginserver.asgi import NodeApi

    application = NodeApi(application)

application = BodyLimit(application)
